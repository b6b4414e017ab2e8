"""bnlib.torch.recurrent.RecurrentBatchNorm: batch norm inside a recurrence, with per-step and
shared running statistics. (The recurrent classifier of the chapters: tests/book/test_models.py.)"""

import pytest
import torch

from bnlib import torch as bnt
from bnlib.torch import RecurrentBatchNorm
from tests.reference import TOL, rel_err


def _inputs(steps, gen):
    return [torch.randn(8, 3, generator=gen, dtype=torch.float64) * (t + 1) + t for t in range(steps)]


def test_training_uses_batch_statistics_and_updates_both_sets_of_running_statistics():
    gen = torch.Generator().manual_seed(0)
    rbn = RecurrentBatchNorm(3, max_steps=2, momentum=0.2).double()
    shared = torch.nn.BatchNorm1d(3, momentum=0.2, dtype=torch.float64)  # one module, every step
    per_step = [torch.nn.BatchNorm1d(3, momentum=0.2, dtype=torch.float64) for _ in range(2)]
    for xs in (_inputs(4, gen), _inputs(3, gen)):
        for t, x in enumerate(xs):
            y = rbn(x, t)
            assert rel_err(y, shared(x)) <= TOL  # gamma = 1, beta = 0: plain batch statistics
            per_step[min(t, 1)](x)  # steps beyond max_steps use the last step's statistics
    assert rel_err(rbn.shared_mean, shared.running_mean) <= TOL
    assert rel_err(rbn.shared_var, shared.running_var) <= TOL
    for s in range(2):
        assert rel_err(rbn.running_mean[s], per_step[s].running_mean) <= TOL
        assert rel_err(rbn.running_var[s], per_step[s].running_var) <= TOL


def test_eval_uses_the_chosen_statistics():
    gen = torch.Generator().manual_seed(1)
    rbn = RecurrentBatchNorm(3, max_steps=2).double()
    for t, x in enumerate(_inputs(3, gen)):
        rbn(x, t)
    rbn.eval()
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    rbn.statistics = "per_step"
    want = bnt.batch_norm(x, rbn.running_mean[1], rbn.running_var[1], rbn.weight, rbn.bias)
    assert rel_err(rbn(x, 7), want) <= TOL
    rbn.statistics = "shared"
    want = bnt.batch_norm(x, rbn.shared_mean, rbn.shared_var, rbn.weight, rbn.bias)
    assert rel_err(rbn(x, 0), want) <= TOL
    rbn.statistics = "batch"
    assert rel_err(rbn(x, 0), bnt.batch_norm(x, None, None, rbn.weight, rbn.bias, training=True)) <= TOL
    rbn.statistics = "median"
    with pytest.raises(ValueError, match="statistics must be one of"):
        rbn(x, 0)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: RecurrentBatchNorm(4, max_steps=0), ValueError, "max_steps"),
    (lambda: RecurrentBatchNorm(4, max_steps=2, momentum=None), ValueError, "momentum"),
], ids=["rbn-steps", "rbn-momentum"])
def test_bad_settings_raise_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_without_bias_has_no_beta_and_normalizes_like_batch_norm_without_one():
    gen = torch.Generator().manual_seed(2)
    rbn = RecurrentBatchNorm(3, max_steps=2, gamma_init=0.1, bias=False).double()
    assert rbn.bias is None and [name for name, _ in rbn.named_parameters()] == ["weight"]
    assert rbn.weight.detach().tolist() == pytest.approx([0.1] * 3)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64) + 2
    assert rel_err(rbn(x, 0), bnt.batch_norm(x, None, None, rbn.weight, None, training=True)) <= TOL
    rbn.eval()
    want = bnt.batch_norm(x, rbn.running_mean[0], rbn.running_var[0], rbn.weight, None)
    assert rel_err(rbn(x, 0), want) <= TOL
