"""bnlib.book.landscape.along_gradient: exact on a quadratic loss, and it changes nothing."""

import copy

import numpy as np
import pytest
import torch

from bnlib.book import models
from bnlib import torch as bnt
from bnlib.book.landscape import along_gradient


def _half_mse(out, y):
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def test_on_a_quadratic_the_gradient_changes_by_lr_times_hessian_times_gradient(rng):
    x, y = torch.from_numpy(rng.normal(size=(40, 3))), torch.from_numpy(rng.normal(size=40))
    model = torch.nn.Linear(3, 1, bias=False, dtype=torch.float64)
    w = model.weight.detach().reshape(-1).clone()
    hessian = x.T @ x / len(y)
    g = hessian @ w - x.T @ y / len(y)
    lrs = [0.1, 0.5, 2.0]
    got = along_gradient(model, x, y, lrs, loss_fn=_half_mse)
    expected_loss = [_half_mse(x @ (w - lr * g), y).item() for lr in lrs]
    np.testing.assert_allclose(got.loss, expected_loss, rtol=1e-12)
    np.testing.assert_allclose(got.gradient_change, [lr * (hessian @ g).norm().item() for lr in lrs],
                               rtol=1e-10)
    assert got.smoothness == pytest.approx(((hessian @ g).norm() / g.norm()).item(), rel=1e-10)
    assert got.smoothness <= torch.linalg.eigvalsh(hessian).max().item() * (1 + 1e-12)
    assert got.gradient_norm == pytest.approx(g.norm().item(), rel=1e-12)
    np.testing.assert_array_equal(got.lrs, lrs)


def test_the_model_and_the_random_state_are_left_alone(rng):
    torch.manual_seed(0)
    model = models.mlp(5, [4], 3, activation="sigmoid", norm=bnt.BatchNorm1d).double()
    x, y = torch.from_numpy(rng.normal(size=(12, 5))), torch.from_numpy(rng.integers(0, 3, 12))
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    a = along_gradient(model, x, y, [0.5, 1.0])
    after = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(1))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert a.loss.shape == (2,) and np.all(a.gradient_change > 0)


@pytest.mark.parametrize("lrs", [[], [0.1, 0.0], [-1.0]])
def test_bad_step_sizes_are_refused(lrs):
    with pytest.raises(ValueError, match="lrs"):
        along_gradient(torch.nn.Linear(2, 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), lrs)


def test_a_model_without_trainable_parameters_is_refused():
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        along_gradient(frozen, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), [0.1])
