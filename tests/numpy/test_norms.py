"""bnlib.numpy.norms (LayerNorm, GroupNorm): parity with torch.nn.LayerNorm / GroupNorm in
float64, gradients, errors."""

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from tests.reference import TOL, rel_err

LAYER_CASES = [((6, 5), (5,)), ((3, 4, 5), (5,)), ((3, 4, 5), (4, 5)), ((2, 3, 2, 3), (3, 2, 3)),
               ((7,), (7,))]
GROUP_CASES = [((5, 6), 3), ((4, 6, 5), 2), ((3, 8, 2, 3), 4), ((2, 4, 3), 1), ((2, 4, 3), 4),
               ((2, 3, 2, 2, 2), 3)]


def _torch_step(module, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    y.backward(torch.tensor(dy))
    grads = [None if p is None else p.grad for p in (module.weight, module.bias)]
    return y, xt.grad, *grads


def _randomize(ours, theirs, rng):
    """Give both layers the same non-trivial weight and bias."""
    for name in ("weight", "bias"):
        if getattr(ours, name) is not None:
            value = rng.normal(size=getattr(ours, name).shape)
            setattr(ours, name, value)
            getattr(theirs, name).data = torch.tensor(value)


def _assert_step_matches(ours, theirs, x, dy):
    y = ours(x)
    got = (y, *ours.backward(dy))
    want = _torch_step(theirs, x, dy)
    for name, g, w in zip(("y", "dx", "dweight", "dbias"), got, want):
        if w is None:
            assert g is None, name
        else:
            assert rel_err(g, w) <= TOL, f"{name}: {rel_err(g, w):.3g}"


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,normalized", LAYER_CASES, ids=[str(c) for c in LAYER_CASES])
def test_layer_norm_matches_torch(shape, normalized, affine, rng):
    x = rng.normal(size=shape) * 3 + rng.uniform(-5, 5, size=shape[-1:])
    dy = rng.normal(size=shape)
    ours = bnp.LayerNorm(normalized, elementwise_affine=affine)
    theirs = torch.nn.LayerNorm(normalized, elementwise_affine=affine, dtype=torch.float64)
    _randomize(ours, theirs, rng)
    _assert_step_matches(ours, theirs, x, dy)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,groups", GROUP_CASES, ids=[str(c) for c in GROUP_CASES])
def test_group_norm_matches_torch(shape, groups, affine, rng):
    x = rng.normal(size=shape) * 2 + 1
    dy = rng.normal(size=shape)
    ours = bnp.GroupNorm(groups, shape[1], affine=affine)
    theirs = torch.nn.GroupNorm(groups, shape[1], affine=affine, dtype=torch.float64)
    _randomize(ours, theirs, rng)
    _assert_step_matches(ours, theirs, x, dy)


def test_layer_norm_without_bias_matches_torch(rng):
    x, dy = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    ours = bnp.LayerNorm(6, bias=False)
    theirs = torch.nn.LayerNorm(6, bias=False, dtype=torch.float64)
    _randomize(ours, theirs, rng)
    _assert_step_matches(ours, theirs, x, dy)


@pytest.mark.parametrize("which", ["layer", "group"])
def test_closed_form_backward_matches_finite_differences(which, rng):
    x = rng.normal(size=(3, 4, 3)) * 2 + 1
    dy = rng.normal(size=x.shape)
    gamma, beta = rng.normal(size=4 if which == "group" else 3), rng.normal(size=4 if which == "group" else 3)
    if which == "layer":
        forward = lambda v: bnp.layer_norm_forward(v, 3, gamma, beta)  # noqa: E731
        backward = bnp.layer_norm_backward
    else:
        forward = lambda v: bnp.group_norm_forward(v, 2, gamma, beta)  # noqa: E731
        backward = bnp.group_norm_backward
    dx, _, _ = backward(dy, forward(x)[1])
    numeric = bnp.numerical_gradient(lambda v: forward(v)[0], x, dy)
    assert bnp.relative_error(dx, numeric) < 1e-7


def test_layer_norm_is_batch_norm_of_the_transpose(rng):
    x = rng.normal(size=(5, 8)) * 4 - 2
    y_layer, _ = bnp.layer_norm_forward(x, 8)
    y_batch, _ = bnp.batch_norm_forward(x.T)
    assert rel_err(y_layer, y_batch.T) <= TOL


def test_group_norm_with_one_group_per_channel_is_instance_norm(rng):
    x = rng.normal(size=(3, 4, 5)) * 2 + 3
    y, _ = bnp.group_norm_forward(x, 4)
    want = (x - x.mean(axis=2, keepdims=True)) / np.sqrt(x.var(axis=2, keepdims=True) + 1e-5)
    assert rel_err(y, want) <= TOL


def test_output_does_not_depend_on_the_rest_of_the_batch(rng):
    x = rng.normal(size=(6, 4, 3))
    ln, gn = bnp.LayerNorm((4, 3)), bnp.GroupNorm(2, 4)
    for layer in (ln, gn):
        assert np.array_equal(layer(x)[:2], layer(x[:2]))
        assert np.array_equal(layer.eval()(x), layer.train()(x))


def test_float16_input_keeps_its_dtype(rng):
    x = (rng.normal(size=(4, 8)) * 3 + 100).astype(np.float16)
    y, _ = bnp.layer_norm_forward(x, 8)
    want, _ = bnp.layer_norm_forward(x.astype(np.float64), 8)
    assert y.dtype == np.float16 and np.abs(y - want).max() < 5e-3


def test_state_dicts_load_both_ways_with_torch():
    theirs = torch.nn.GroupNorm(2, 4, dtype=torch.float64)
    theirs.weight.data.uniform_()
    ours = bnp.GroupNorm(2, 4)
    ours.load_state_dict(theirs.state_dict())
    assert np.array_equal(ours.weight, theirs.weight.detach().numpy())
    back = torch.nn.GroupNorm(2, 4, dtype=torch.float64)
    back.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    assert torch.equal(back.weight, theirs.weight)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: bnp.LayerNorm(0), ValueError, "normalized_shape"),
    (lambda: bnp.LayerNorm(4)(np.ones((2, 5))), ValueError, r"expects input of shape \(\*, 4\)"),
    (lambda: bnp.LayerNorm(1)(np.ones((2, 1))), ValueError, "single value"),
    (lambda: bnp.LayerNorm(4)(np.ones((2, 4), dtype=int)), TypeError, "floating-point"),
    (lambda: bnp.layer_norm_forward(np.ones((2, 4)), 4, gamma=np.ones(3)), ValueError,
     r"gamma must have shape \(4,\)"),
    (lambda: bnp.LayerNorm(4, eps=0.0), ValueError, "eps"),
    (lambda: bnp.GroupNorm(3, 4), ValueError, "divisor"),
    (lambda: bnp.GroupNorm(2, 4)(np.ones((2, 6))), ValueError, "input has 6 channels"),
    (lambda: bnp.GroupNorm(2, 2)(np.ones((3, 2))), ValueError, "single value"),
    (lambda: bnp.group_norm_forward(np.ones(4), 2), ValueError, r"\(N, C, \*\)"),
    (lambda: bnp.GroupNorm(2, 4).backward(np.ones((2, 4))), RuntimeError, "before forward"),
    (lambda: bnp.layer_norm_backward(np.ones((2, 3)), bnp.layer_norm_forward(np.eye(4), 4)[1]),
     ValueError, "dy must have the shape"),
    (lambda: bnp.GroupNorm(2, 4).load_state_dict({"weight": np.ones(4)}), KeyError, "keys"),
], ids=["ln-shape0", "ln-trailing", "ln-single", "ln-int", "ln-gamma", "ln-eps", "gn-divisor",
        "gn-channels", "gn-single", "gn-rank", "gn-no-forward", "ln-dy", "gn-state"])
def test_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
