"""bnlib.torch.ghost: each group normalized as its own batch by torch.nn.functional.batch_norm,
in one call."""

import pytest
import torch

from bnlib import torch as bnt
from tests.reference import TOL, rel_err


@pytest.mark.parametrize("shape,group_size", [((12, 3), 4), ((8, 2, 5), 2), ((6, 3, 2, 2), 3),
                                              ((4, 3, 2, 2), 1)])
def test_each_group_is_normalized_with_its_own_statistics(shape, group_size):
    gen = torch.Generator().manual_seed(0)
    c, momentum = shape[1], 0.2
    ghost = bnt.GhostBatchNorm(c, group_size, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2.0, generator=gen)
        ghost.bias.normal_(generator=gen)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight, bias = ghost.weight.detach().clone().requires_grad_(), ghost.bias.detach().clone().requires_grad_()
    xr = x.clone().requires_grad_()
    groups = xr.split(group_size)
    reference = torch.cat([torch.nn.functional.batch_norm(g, None, None, weight, bias, training=True)
                           for g in groups])
    reference.backward(dy)
    xg = x.clone().requires_grad_()
    y = ghost(xg)
    y.backward(dy)
    for got, want in ((y, reference), (xg.grad, xr.grad), (ghost.weight.grad, weight.grad),
                      (ghost.bias.grad, bias.grad)):
        assert rel_err(got, want) <= TOL
    dims = [0] + list(range(2, len(shape)))
    means = torch.stack([g.detach().mean(dims) for g in groups])
    variances = torch.stack([g.detach().var(dims, unbiased=True) for g in groups])
    assert rel_err(ghost.running_mean, momentum * means.mean(0)) <= TOL
    assert rel_err(ghost.running_var, (1 - momentum) + momentum * variances.mean(0)) <= TOL


def test_one_group_is_batch_norm_and_eval_mode_is_batch_norms():
    gen = torch.Generator().manual_seed(1)
    ghost = bnt.GhostBatchNorm(3, 8, momentum=None, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 2 - 1
        assert rel_err(ghost(x), bn(x)) <= TOL
    for key, value in bn.state_dict().items():
        assert rel_err(ghost.state_dict()[key].double(), value.double()) <= TOL
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)  # any batch size in eval mode
    assert rel_err(ghost.eval()(x), bn.eval()(x)) <= TOL


@pytest.mark.parametrize("call,exc,message", [
    (lambda: bnt.GhostBatchNorm(3, 0), ValueError, "group_size"),
    (lambda: bnt.GhostBatchNorm(3, 4)(torch.ones(6, 3)), ValueError, "does not split into groups of 4"),
    (lambda: bnt.GhostBatchNorm(3, 1)(torch.ones(6, 3)), ValueError, "one value per channel"),
    (lambda: bnt.GhostBatchNorm(3, 2)(torch.ones(6, 4)), ValueError, "input has 4 channels"),
], ids=["group_size", "split", "one-value", "channels"])
def test_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
