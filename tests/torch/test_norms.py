"""bnlib.torch.norms (LayerNorm, GroupNorm): parity with torch.nn in float64 (outputs and every
gradient), autograd checks, errors."""

import pytest
import torch

from bnlib import torch as bnt
from tests.reference import TOL, rel_err

LAYER_CASES = [((6, 5), (5,)), ((3, 4, 5), (4, 5)), ((2, 3, 2, 3), (3, 2, 3)), ((7,), (7,))]
GROUP_CASES = [((5, 6), 3), ((4, 6, 5), 2), ((3, 8, 2, 3), 4), ((2, 4, 3), 1), ((2, 4, 3), 4)]


def _pair(make_ours, make_theirs, device, gen):
    ours, theirs = make_ours().to(device), make_theirs().to(device)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            q.copy_(p)
    return ours, theirs


def _assert_same_step(ours, theirs, shape, device, gen):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2).to(device)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    results = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(dy)
        results.append([y, xi.grad] + [p.grad for p in module.parameters()])
    assert len(results[0]) == len(results[1])
    for got, want in zip(*results):
        assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,normalized", LAYER_CASES, ids=[str(c) for c in LAYER_CASES])
def test_layer_norm_matches_torch(shape, normalized, affine, device):
    gen = torch.Generator().manual_seed(0)
    kw = dict(elementwise_affine=affine, dtype=torch.float64)
    ours, theirs = _pair(lambda: bnt.LayerNorm(normalized, **kw),
                         lambda: torch.nn.LayerNorm(normalized, **kw), device, gen)
    _assert_same_step(ours, theirs, shape, device, gen)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,groups", GROUP_CASES, ids=[str(c) for c in GROUP_CASES])
def test_group_norm_matches_torch(shape, groups, affine, device):
    gen = torch.Generator().manual_seed(0)
    kw = dict(affine=affine, dtype=torch.float64)
    ours, theirs = _pair(lambda: bnt.GroupNorm(groups, shape[1], **kw),
                         lambda: torch.nn.GroupNorm(groups, shape[1], **kw), device, gen)
    _assert_same_step(ours, theirs, shape, device, gen)


@pytest.mark.parametrize("which", ["layer", "group"])
def test_layer_norm_and_group_norm_pass_gradcheck_and_gradgradcheck(which):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 4, 2, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    if which == "layer":
        w, b = (torch.randn(4, 2, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
        f = lambda x, w, b: bnt.layer_norm(x, (4, 2), w, b)  # noqa: E731
    else:
        w, b = (torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
        f = lambda x, w, b: bnt.group_norm(x, 2, w, b)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_group_norm_with_one_group_is_layer_norm_with_per_channel_affine():
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    assert rel_err(bnt.group_norm(x, 1), bnt.layer_norm(x, (6, 3))) <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_keeps_its_dtype(dtype):
    x = torch.randn(8, 16) * 3 + 50
    ln = bnt.LayerNorm(16)  # float32 parameters, as with torch autocast
    y = ln(x.to(dtype))
    assert y.dtype == dtype
    assert (y.float() - torch.nn.functional.layer_norm(x, (16,))).abs().max() < 0.1


def test_state_dicts_load_both_ways_with_torch():
    ours, theirs = bnt.LayerNorm((3, 2)), torch.nn.LayerNorm((3, 2))
    with torch.no_grad():
        theirs.weight.uniform_()
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight)
    gn = torch.nn.GroupNorm(2, 4)
    gn.load_state_dict(bnt.GroupNorm(2, 4).state_dict())


def test_output_is_the_same_in_training_and_eval_and_per_example():
    x = torch.randn(6, 4, 3)
    for module in (bnt.LayerNorm((4, 3)), bnt.GroupNorm(2, 4)):
        y = module.train()(x)
        assert torch.equal(module.eval()(x), y)
        assert torch.allclose(module(x[:2]), y[:2], atol=1e-6)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: bnt.LayerNorm((2, 0)), ValueError, "normalized_shape"),
    (lambda: bnt.LayerNorm(4)(torch.ones(2, 5)), ValueError, r"expects input of shape \(\*, 4\)"),
    (lambda: bnt.LayerNorm(1)(torch.ones(2, 1)), ValueError, "single value"),
    (lambda: bnt.LayerNorm(4)(torch.ones(2, 4, dtype=torch.long)), TypeError, "floating-point"),
    (lambda: bnt.LayerNorm(4)([1.0, 2.0, 3.0, 4.0]), TypeError, "torch.Tensor"),
    (lambda: bnt.layer_norm(torch.ones(2, 4), 4, torch.ones(4, dtype=torch.float64)), TypeError,
     "weight has dtype"),
    (lambda: bnt.layer_norm(torch.ones(2, 4), 4, None, torch.ones(3)), ValueError,
     r"bias must have shape \(4,\)"),
    (lambda: bnt.GroupNorm(3, 4), ValueError, "divisor"),
    (lambda: bnt.GroupNorm(2, 4)(torch.ones(2, 6)), ValueError, "input has 6 channels"),
    (lambda: bnt.GroupNorm(2, 2)(torch.ones(3, 2)), ValueError, "single value"),
    (lambda: bnt.group_norm(torch.ones(4), 2), ValueError, r"\(N, C, \*\)"),
    (lambda: bnt.GroupNorm(2, 4, eps=-1.0), ValueError, "eps"),
], ids=["ln-shape", "ln-trailing", "ln-single", "ln-int", "ln-list", "ln-dtype", "ln-bias",
        "gn-divisor", "gn-channels", "gn-single", "gn-rank", "gn-eps"])
def test_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_empty_batch_gives_an_empty_output():
    assert bnt.LayerNorm(4)(torch.ones(0, 4)).shape == (0, 4)
    assert bnt.GroupNorm(2, 4)(torch.ones(0, 4, 3)).shape == (0, 4, 3)
