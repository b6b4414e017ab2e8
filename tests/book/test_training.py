"""bnlib.book.training: seeding (float64 the default dtype), the SGD loop (learning,
reproducibility, divergence, an explicit evaluation schedule), evaluation, mean and spread."""

import numpy as np
import pytest
import torch

from bnlib import torch as bnt
from bnlib.book import data, models, training


def _run_digits(seed, lr=0.1, steps=150):
    training.deterministic(seed)
    net = models.mlp(64, [32], 10, norm=bnt.BatchNorm1d)
    return training.train(net, data.load_digits(), steps=steps, batch_size=32, lr=lr,
                          eval_every=50, seed=seed)


def test_training_learns_and_is_reproducible():
    a, b = _run_digits(0), _run_digits(0)
    assert a.accuracy == b.accuracy and a.test_accuracy == b.test_accuracy and a.train_loss == b.train_loss
    assert a.steps == [0, 50, 100, 150]
    assert a.accuracy[0] < 0.3 and a.final_accuracy > 0.85
    assert a.steps_to(0.85) is not None and a.steps_to(1.01) is None
    assert not a.diverged


def test_a_huge_learning_rate_is_reported_as_divergence():
    training.deterministic(0)
    net = models.mlp(64, [32], 10)
    with torch.no_grad():
        net[0].linear.weight.mul_(1e150)
    h = training.train(net, data.load_digits(), steps=50, lr=1e300, eval_every=10)
    assert h.diverged and h.final_accuracy == pytest.approx(0.1)
    assert h.steps == sorted(set(h.steps))


def test_deterministic_makes_the_data_s_dtype_the_default():
    torch.set_default_dtype(torch.float32)
    training.deterministic(0)
    assert torch.get_default_dtype() == data.DTYPE == torch.float64
    assert models.mlp(4, [3], 2)[0].linear.weight.dtype == torch.float64


def test_training_refuses_a_model_of_another_dtype_before_any_step():
    training.deterministic(0)
    net = models.mlp(64, [8], 10).float()
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(TypeError, match="torch.float32.*torch.float64"):
        training.train(net, data.load_digits(), steps=5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_evaluate_restores_every_module_s_own_mode():
    training.deterministic(0)
    net = models.mlp(64, [8], 10, norm=bnt.BatchNorm1d)
    d = data.load_digits()
    net.train()
    net[0].norm.eval()  # frozen statistics inside a training model
    training.evaluate(net, d.x_test, d.y_test)
    assert net.training and net[0].linear.training
    assert not net[0].norm.training


def test_mean_and_spread_is_mean_std_min_and_max():
    assert training.mean_and_spread([1.0, 3.0]) == (2.0, 1.0, 1.0, 3.0)


# train(eval_steps=...): an explicit evaluation schedule -------------------------------------

def _run_with(**kwargs):
    training.deterministic(0)
    net = models.mlp(64, [16], 10)
    return training.train(net, data.load_digits(), steps=40, batch_size=32, lr=0.1, **kwargs)


def test_eval_steps_sets_where_accuracy_is_measured_and_not_the_training():
    dense = _run_with(eval_steps=[0, 3, 7, 25])
    every = _run_with(eval_every=10)
    assert dense.steps == [0, 3, 7, 25, 40]  # the last step is always measured
    assert dense.train_loss == every.train_loss
    assert dense.accuracy[-1] == every.accuracy[-1]
    assert _run_with(eval_steps=np.arange(0, 41, 20)).steps == [0, 20, 40]


@pytest.mark.parametrize("bad", [[-1], [41], [2.5], [True]])
def test_eval_steps_outside_the_run_are_refused(bad):
    with pytest.raises(ValueError, match="eval_steps"):
        _run_with(eval_steps=bad)
