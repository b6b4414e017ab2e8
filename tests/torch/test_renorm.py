"""bnlib.torch.renorm (Batch Renormalization) against a line-by-line transcription of Ioffe
(2017), Algorithm 1, in float64."""

import math

import pytest
import torch

from bnlib import torch as bnt
from bnlib.torch.renorm import renorm_corrections
from tests.reference import TOL, forward_backward, rel_err


def paper_algorithm_1(x, gamma, beta, mu, sigma, r_max, d_max, eps):
    """Algorithm 1 of the paper for (m, C) values, with stop_gradient as detach().

    Returns y and the batch statistics (mu_B, sigma_B) that the moving averages are fed with.
    """
    mu_b = x.mean(0)
    sigma_b = torch.sqrt(((x - mu_b) ** 2).mean(0) + eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max).detach()
    d = torch.clamp((mu_b - mu) / sigma, -d_max, d_max).detach()
    x_hat = (x - mu_b) / sigma_b * r + d
    y = gamma * x_hat + beta
    return y, mu_b.detach(), sigma_b.detach()


def _as_rows(t):
    """(N, C, *) -> (m, C): every value of a channel in one column."""
    return t.transpose(0, 1).reshape(t.shape[1], -1).t()


def _from_rows(rows, shape):
    c = shape[1]
    return rows.t().reshape((c, shape[0]) + tuple(shape[2:])).transpose(0, 1)


@pytest.mark.parametrize("shape", [(16, 3), (6, 4, 5), (4, 3, 3, 2)])
@pytest.mark.parametrize("limits", [(1.5, 0.5), (3.0, 5.0), (math.inf, math.inf)],
                         ids=["tight", "paper", "unclipped"])
def test_matches_the_papers_algorithm_over_several_steps(shape, limits):
    r_max, d_max = limits
    gen = torch.Generator().manual_seed(0)
    c, eps, momentum = shape[1], 1e-5, 0.3
    brn = bnt.BatchRenorm(c, r_max, d_max, eps=eps, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        brn.weight.uniform_(0.5, 2.0, generator=gen)
        brn.bias.normal_(generator=gen)
    clipped = 0
    for step in range(3):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + step) + 2 * step
        dy = torch.randn(shape, generator=gen, dtype=torch.float64)
        mu, var = brn.running_mean.clone(), brn.running_var.clone()
        sigma = torch.sqrt(var + eps)
        # The paper's algorithm, on a detached copy of every input.
        xp = _as_rows(x).clone().requires_grad_()
        gp, bp = brn.weight.detach().clone().requires_grad_(), brn.bias.detach().clone().requires_grad_()
        yp, mu_b, sigma_b = paper_algorithm_1(xp, gp, bp, mu, sigma, r_max, d_max, eps)
        yp.backward(_as_rows(dy))
        r = sigma_b / sigma
        clipped += int(((r > r_max) | (r < 1 / r_max)).sum())
        # bnlib.
        xb = x.clone().requires_grad_()
        y = brn(xb)
        y.backward(dy)
        assert rel_err(y, _from_rows(yp, shape)) <= TOL
        assert rel_err(xb.grad, _from_rows(xp.grad, shape)) <= TOL
        assert rel_err(brn.weight.grad, gp.grad) <= TOL
        assert rel_err(brn.bias.grad, bp.grad) <= TOL
        brn.zero_grad()
        # Moving averages: the paper's for the mean; BatchNorm's (unbiased variance) for var.
        m = xp.shape[0]
        assert rel_err(brn.running_mean, mu + momentum * (mu_b - mu)) <= TOL
        unbiased = (sigma_b ** 2 - eps) * m / (m - 1)
        assert rel_err(brn.running_var, (1 - momentum) * var + momentum * unbiased) <= TOL
    if limits == (1.5, 0.5):
        assert clipped > 0  # the test exercises the clipping, not only its absence


def test_with_r_max_1_and_d_max_0_it_is_batch_norm():
    gen = torch.Generator().manual_seed(2)
    brn = bnt.BatchRenorm(4, 1.0, 0.0, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    for step in range(3):
        x = torch.randn(5, 4, 3, 3, generator=gen, dtype=torch.float64) * 3 + step
        dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        outs = [forward_backward(module, x, dy) for module in (brn, bn)]
        for got, want in zip(*outs):
            assert rel_err(got, want) <= TOL
    for key, value in bn.state_dict().items():
        assert rel_err(brn.state_dict()[key].double(), value.double()) <= TOL
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    assert rel_err(brn.eval()(x), bn.eval()(x)) <= TOL


def test_unclipped_training_output_is_the_inference_transform():
    """r and d undo the batch statistics: training sees (x - mu) / sigma, as inference does."""
    brn = bnt.BatchRenorm(3, math.inf, math.inf, dtype=torch.float64)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        brn.weight.copy_(torch.tensor([2.0, 0.5, 1.0]))
    x = torch.randn(8, 3, dtype=torch.float64) * 5
    want = brn.eval()(x)
    assert rel_err(brn.train()(x), want) <= TOL


def test_groups_are_renormalized_separately_and_statistics_averaged():
    gen = torch.Generator().manual_seed(3)
    grouped = bnt.BatchRenorm(3, 2.0, 1.0, group_size=4, momentum=0.2, dtype=torch.float64)
    with torch.no_grad():
        grouped.running_mean.normal_(generator=gen)
        grouped.weight.uniform_(0.5, 2.0, generator=gen)
    x = torch.randn(12, 3, 2, generator=gen, dtype=torch.float64) * 2 + 1
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    singles = []
    for part in range(3):
        single = bnt.BatchRenorm(3, 2.0, 1.0, momentum=0.2, dtype=torch.float64)
        single.load_state_dict(grouped.state_dict())
        singles.append(single)
    xg = x.clone().requires_grad_()
    grouped(xg).backward(dy)
    xs = x.clone().requires_grad_()
    y = torch.cat([s(xs[4 * i:4 * i + 4]) for i, s in enumerate(singles)])
    y.backward(dy)
    assert rel_err(xg.grad, xs.grad) <= TOL
    assert rel_err(grouped.weight.grad, sum(s.weight.grad for s in singles)) <= TOL
    for key in ("running_mean", "running_var"):
        average = sum(getattr(s, key) for s in singles) / 3
        assert rel_err(getattr(grouped, key), average) <= TOL


def test_corrections_are_clipped():
    r, d = renorm_corrections(torch.tensor([10.0, 0.0]), torch.tensor([100.0, 1e-4]),
                              torch.zeros(2), torch.ones(2), 0.0, 3.0, 5.0)
    assert torch.allclose(r, torch.tensor([3.0, 1 / 3])) and torch.allclose(d, torch.tensor([5.0, 0.0]))


def test_schedule_starts_as_batch_norm_and_reaches_the_limits():
    from bnlib.torch import renorm_limits
    assert renorm_limits(0, 100, 200) == (1.0, 0.0)
    assert renorm_limits(100, 100, 200) == (1.0, 0.0)
    assert renorm_limits(200, 100, 200) == (2.0, 2.5)
    assert renorm_limits(10_000, 100, 200) == (3.0, 5.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        renorm_limits(0, -1, 10)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: bnt.BatchRenorm(3, r_max=0.5), ValueError, "r_max must be >= 1"),
    (lambda: bnt.BatchRenorm(3, d_max=-1.0), ValueError, "d_max must be >= 0"),
    (lambda: bnt.BatchRenorm(3, r_max="3"), TypeError, "r_max must be a number"),
    (lambda: bnt.BatchRenorm(3, group_size=0), ValueError, "group_size"),
    (lambda: bnt.batch_renorm(torch.ones(4, 3), None, None, training=True), ValueError,
     "needs running statistics"),
    (lambda: bnt.BatchRenorm(3, group_size=3)(torch.ones(4, 3)), ValueError,
     "does not split into groups of 3"),
    (lambda: bnt.BatchRenorm(3)(torch.ones(1, 3)), ValueError, "more than 1 value per channel"),
], ids=["r_max", "d_max", "r_max-type", "group_size", "no-stats", "groups", "one-value"])
def test_bad_settings_raise_a_clear_error_and_change_nothing(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_an_error_leaves_the_running_statistics_unchanged():
    brn = bnt.BatchRenorm(3, group_size=2)
    before = {k: v.clone() for k, v in brn.state_dict().items()}
    with pytest.raises(ValueError):
        brn(torch.randn(5, 3))
    assert all(torch.equal(before[k], v) for k, v in brn.state_dict().items())


def test_relax_limits_sets_every_batch_renorm_of_a_model():
    model = torch.nn.Sequential(bnt.BatchRenorm(3, 1.0, 0.0), torch.nn.Sequential(bnt.BatchRenorm(2, 1.0, 0.0)))
    on_step = bnt.relax_limits(warmup_steps=10, ramp_steps=20)
    on_step(9, model)  # after step 9 comes step 10: still batch norm
    assert (model[0].r_max, model[1][0].d_max) == (1.0, 0.0)
    on_step(19, model)
    assert (model[0].r_max, model[1][0].d_max) == (2.0, 2.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        bnt.relax_limits(-1, 5)
