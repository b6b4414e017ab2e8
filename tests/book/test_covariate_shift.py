"""bnlib.book.covariate_shift: the Wasserstein distance against SciPy, the gradient-based measure
against a step-by-step computation with torch.optim.SGD, and that measuring changes nothing."""

import copy
import functools

import numpy as np
import pytest
import scipy.stats
import torch

from bnlib.book import models
from bnlib import torch as bnt
from bnlib.book.covariate_shift import gradient_shift, wasserstein_1d
from bnlib.book.layers import NoisyBatchNorm1d


@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (200, 5)])
def test_wasserstein_matches_scipy_per_column(rng, n, d):
    a, b = rng.normal(size=(n, d)), rng.standard_t(3, size=(n, d)) * 2 + 1
    expected = [scipy.stats.wasserstein_distance(a[:, j], b[:, j]) for j in range(d)]
    np.testing.assert_allclose(wasserstein_1d(a, b), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(wasserstein_1d(torch.from_numpy(a), torch.from_numpy(b)), expected,
                               rtol=1e-12, atol=1e-14)


def test_wasserstein_of_a_shift_is_the_shift_and_of_a_permutation_is_zero(rng):
    a = rng.normal(size=(50, 4))
    np.testing.assert_allclose(wasserstein_1d(a, a + 0.7), 0.7, rtol=1e-12)
    assert np.all(wasserstein_1d(a, a[rng.permutation(50)]) == 0)
    assert wasserstein_1d(a[:, 0], a[:, 0] - 2).shape == ()


def test_wasserstein_rejects_mismatched_or_empty_samples():
    with pytest.raises(ValueError, match="same shape"):
        wasserstein_1d(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(np.zeros((0, 2)), np.zeros((0, 2)))


def _net(norm=None, seed=0):
    torch.manual_seed(seed)
    return models.mlp(6, [5, 4], 3, activation="sigmoid", norm=norm).double()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)


def _by_hand(model, x, y, lr):
    """G_i and G'_i built from torch.optim.SGD steps on fresh copies, layer by layer."""
    layers = list(model)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [p for layer in layers for p in layer.parameters()])
    relative, start = [], 0
    for i, layer in enumerate(layers):
        n = len(list(layer.parameters()))
        g = torch.cat([t.reshape(-1) for t in grads[start:start + n]])
        moved = copy.deepcopy(model)
        earlier = [p for lay in list(moved)[:i] for p in lay.parameters()]
        if earlier:
            for p, dp in zip(earlier, grads[:start]):
                p.grad = dp.clone()
            torch.optim.SGD(earlier, lr=lr).step()
        loss2 = torch.nn.functional.cross_entropy(moved(x), y)
        g2 = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss2, list(list(moved)[i].parameters()))])
        relative.append(((g - g2).norm() / g.norm()).item())
        start += n
    return relative


@pytest.mark.parametrize("norm", [None, bnt.BatchNorm1d])
def test_gradient_shift_matches_sgd_steps_taken_by_hand(norm):
    model, (x, y) = _net(norm), _batch()
    got = gradient_shift(model, list(model), x, y, lr=0.7)
    expected = _by_hand(copy.deepcopy(model), x, y, lr=0.7)
    np.testing.assert_allclose(got.relative, expected, rtol=1e-10, atol=1e-14)
    assert got.relative[0] == 0 and got.cosine[0] == pytest.approx(1)
    assert all(r > 1e-4 for r in got.relative[1:])  # later layers do feel the step
    assert all(-1 <= c <= 1 + 1e-12 for c in got.cosine)


def test_gradient_shift_is_zero_without_a_step_even_with_noise():
    noisy = functools.partial(NoisyBatchNorm1d, shift=1.0, scale=2.0, dtype=torch.float64)
    model, (x, y) = _net(noisy), _batch()
    got = gradient_shift(model, list(model), x, y, lr=0.0)
    assert got.l2 == [0.0] * 3 and all(c == pytest.approx(1) for c in got.cosine)


def test_gradient_shift_changes_neither_the_model_nor_the_random_state():
    model, (x, y) = _net(bnt.BatchNorm1d), _batch()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    gradient_shift(model, list(model), x, y, lr=0.5)
    after_call = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after_call, torch.rand(1))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_gradient_shift_rejects_bad_layers_and_lr():
    model, (x, y) = _net(), _batch()
    with pytest.raises(ValueError, match="not a submodule"):
        gradient_shift(model, [torch.nn.Linear(2, 2)], x, y, lr=0.1)
    with pytest.raises(ValueError, match="no parameters"):
        gradient_shift(model, [model[0].act], x, y, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        gradient_shift(model, list(model), x, y, lr=-1.0)
