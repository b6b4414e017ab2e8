"""bnlib.book.activations: the saturation threshold against autograd, percentiles against NumPy,
probes that leave the model and the random state alone, and a trace that changes no run."""

import copy
import functools

import numpy as np
import pytest
import torch

from bnlib.book import data, models, training
from bnlib import torch as bnt
from bnlib.book.activations import (ActivationTrace, layer_inputs, percentiles, saturated_fraction,
                               sigmoid_saturation_threshold)
from bnlib.book.covariate_shift import wasserstein_1d
from bnlib.book.layers import NoisyBatchNorm1d


@pytest.mark.parametrize("ratio", [0.5, 0.1, 0.01])
def test_the_sigmoid_slope_at_the_threshold_is_the_ratio_of_its_maximum(ratio):
    z = torch.tensor([sigmoid_saturation_threshold(ratio)], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(torch.sigmoid(z).sum(), z)
    assert slope.item() == pytest.approx(ratio * 0.25, rel=1e-12)
    assert sigmoid_saturation_threshold() == pytest.approx(3.6368, abs=1e-4)
    with pytest.raises(ValueError, match="ratio"):
        sigmoid_saturation_threshold(1.0)


def test_saturated_fraction_counts_entries_beyond_the_threshold():
    z = torch.tensor([[-5.0, 0.0], [1.0, 4.0]])
    assert saturated_fraction(z, 3.0) == 0.5 and saturated_fraction(z.numpy(), 10.0) == 0.0
    with pytest.raises(ValueError, match="empty"):
        saturated_fraction(torch.zeros(0, 3), 1.0)


@pytest.mark.parametrize("q", [(15, 50, 85), (0, 100), (33.3,)])
def test_percentiles_match_numpy_and_torch(rng, q):
    z = rng.normal(size=(41, 6))
    expected = np.percentile(z, q, axis=0)
    np.testing.assert_allclose(percentiles(z, q), expected, rtol=1e-12)
    as_torch = torch.quantile(torch.from_numpy(z), torch.tensor(q, dtype=torch.float64) / 100, dim=0)
    np.testing.assert_allclose(percentiles(torch.from_numpy(z), q), as_torch.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="in \\[0, 100\\]"):
        percentiles(z, (50, 101))
    with pytest.raises(ValueError, match="2-D|\\(N, D\\)"):
        percentiles(z[:, 0], q)


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return models.mlp(8, [6, 5], 3, activation="sigmoid", norm=bnt.BatchNorm1d).double()


def test_layer_inputs_are_the_pre_activations_and_change_nothing(rng):
    net, x = _bn_net(), torch.from_numpy(rng.normal(size=(20, 8)))
    state = copy.deepcopy(net.state_dict())
    torch.manual_seed(3)
    got = layer_inputs(net, x, ["0.act", "1.linear"])
    next_random = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(next_random, torch.rand(1))
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        work = copy.deepcopy(net)
        pre = work[0].norm(work[0].linear(x))
        expected_hidden = work[0].act(pre)
    torch.testing.assert_close(got["0.act"], pre, rtol=0, atol=1e-12)
    torch.testing.assert_close(got["1.linear"], expected_hidden, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["0.act"].mean(0).numpy(), 0, atol=1e-12)  # batch statistics


def test_layer_inputs_in_eval_mode_use_the_running_statistics(rng):
    net, x = _bn_net(), torch.from_numpy(rng.normal(size=(20, 8)))
    net[0].norm.running_mean.fill_(2.0)
    got = layer_inputs(net, x, ["0.act"], mode="eval")["0.act"]
    assert net.training  # the probe ran a copy in eval mode; the caller's model keeps its mode
    with torch.no_grad():
        net.eval()
        expected = net[0].norm(net[0].linear(x))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_layer_inputs_reject_bad_names_and_modes():
    net = _bn_net()
    with pytest.raises(ValueError, match="no submodule"):
        layer_inputs(net, torch.zeros(4, 8, dtype=torch.float64), ["9.act"])
    with pytest.raises(ValueError, match="mode"):
        layer_inputs(net, torch.zeros(4, 8, dtype=torch.float64), ["0.act"], mode="test")


def _noisy_run(trace_every=None):
    training.deterministic(0)
    net = models.mlp(64, [16, 16], 10, activation="sigmoid",
                     norm=functools.partial(NoisyBatchNorm1d, shift=0.5, scale=1.5))
    d = data.load_digits()
    trace = None if trace_every is None else ActivationTrace(net, d.x_train[:100], ["0.act", "1.act"],
                                                             every=trace_every)
    history = training.train(net, d, steps=30, batch_size=32, lr=0.5, eval_every=10, on_step=trace)
    return history, trace, net


def test_a_trace_records_every_k_steps_and_does_not_change_the_run():
    plain, _, net_plain = _noisy_run()
    traced, trace, net_traced = _noisy_run(trace_every=10)
    assert plain.train_loss == traced.train_loss and plain.test_accuracy == traced.test_accuracy
    for a, b in zip(net_plain.state_dict().values(), net_traced.state_dict().values()):
        assert torch.equal(a, b)
    assert trace.steps == [0, 10, 20, 30]
    layer = trace.layers["1.act"]
    assert len(layer.percentiles) == 4 and len(layer.saturation) == 4 and len(layer.shift) == 3
    assert layer.percentiles[0].shape == (3, 16) and layer.percentile_curves(2).shape == (4, 3)
    assert all(np.all(s > 0) for s in layer.shift)  # noise moves every unit at every step


def test_a_trace_stores_the_distance_between_consecutive_records():
    net = _bn_net()
    x = torch.randn(30, 8, dtype=torch.float64)
    trace = ActivationTrace(net, x, ["1.act"], every=1)
    first = layer_inputs(net, x, ["1.act"])["1.act"]
    with torch.no_grad():
        net[1].norm.bias.add_(0.25)
    trace(0, net)
    np.testing.assert_allclose(trace.layers["1.act"].shift[0], 0.25, rtol=1e-12)
    second = layer_inputs(net, x, ["1.act"])["1.act"]
    np.testing.assert_allclose(trace.layers["1.act"].shift[0], wasserstein_1d(first, second), rtol=1e-12)
    with pytest.raises(ValueError, match="every"):
        ActivationTrace(net, x, ["1.act"], every=0)
