"""bnlib.book.layers: NoisyBatchNorm1d is batch norm in eval mode and, in training, batch norm
followed by a fresh per-channel scale and shift within the stated ranges at every call (errors
before anything is built); RandomDomain gives mixed or domain-sorted batches in training,
nothing in eval."""

import numpy as np
import pytest
import torch

from bnlib import torch as bnt
from bnlib.book.layers import InjectedNoise, NoisyBatchNorm1d, RandomDomain

# NoisyBatchNorm1d ----------------------------------------------------------------------------


def _pair(shape, **noise):
    torch.manual_seed(0)
    noisy = NoisyBatchNorm1d(shape[1], dtype=torch.float64, **noise)
    plain = bnt.BatchNorm1d(shape[1], dtype=torch.float64)
    with torch.no_grad():
        for m in (noisy, plain):
            m.weight.copy_(torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1.0, 1.0, shape[1], dtype=torch.float64))
    return noisy, plain, torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(16, 5), (8, 4, 3)])
def test_training_output_is_a_per_channel_affine_map_of_batch_norm_within_the_ranges(shape):
    noisy, plain, x = _pair(shape, shift=0.8, scale=3.0)
    y, reference = noisy(x), plain(x)
    dims = [0] + list(range(2, x.dim()))
    flat = lambda t: t.transpose(0, 1).reshape(shape[1], -1)  # noqa: E731 (one channel per row)
    for c, (yc, rc) in enumerate(zip(flat(y), flat(reference))):
        slope, intercept = np.polyfit(rc.detach().numpy(), yc.detach().numpy(), 1)
        residual = yc.detach().numpy() - (slope * rc.detach().numpy() + intercept)
        assert np.abs(residual).max() < 1e-10, c  # one scale and one shift per channel
        assert 1 / 3.0 <= slope <= 3.0 and abs(intercept) <= 0.8 + 1e-12
    torch.testing.assert_close(noisy.running_mean, plain.running_mean)  # statistics as plain BN
    assert y.shape == x.shape and not torch.allclose(y.mean(dims), reference.mean(dims))


def test_every_call_draws_new_noise_and_eval_mode_has_none():
    noisy, plain, x = _pair((16, 5))
    assert not torch.allclose(noisy(x), noisy(x))
    plain(x), plain(x)  # the same two updates of the running statistics
    noisy.eval(), plain.eval()
    torch.testing.assert_close(noisy(x), plain(x), rtol=0, atol=0)


def test_no_noise_is_plain_batch_norm_and_gradients_flow():
    noisy, plain, x = _pair((16, 5), shift=0.0, scale=1.0)
    x.requires_grad_(True)
    torch.testing.assert_close(noisy(x), plain(x), rtol=0, atol=0)
    noisy, _, x = _pair((16, 5))
    noisy(x.requires_grad_(True)).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and noisy.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,match", [({"shift": -0.1}, "shift"), ({"scale": 0.5}, "scale"),
                                          ({"shift": float("nan")}, "shift")])
def test_bad_noise_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyBatchNorm1d(4, **kwargs)
    assert "shift=1.0, scale=2.0" in repr(NoisyBatchNorm1d(4))


# RandomDomain --------------------------------------------------------------------------------


def _domains(out, x, gain, offset):
    """Per example: 0 if unchanged, 1 if in the second domain (checked to be one or the other)."""
    first = (out == x).flatten(1).all(1)
    second = (out == RandomDomain.shift(x, gain, offset)).flatten(1).all(1)
    assert bool((first ^ second).all())
    return second.long()


def test_per_batch_puts_a_whole_batch_in_one_domain_and_both_domains_occur():
    layer = RandomDomain(3.0, 2.0, per="batch", seed=0)
    x = torch.randn(16, 5)
    seen = set()
    for _ in range(20):
        d = _domains(layer(x), x, 3.0, 2.0)
        assert d.min() == d.max()
        seen.add(int(d[0]))
    assert seen == {0, 1}


def test_per_example_mixes_the_domains_within_a_batch():
    layer = RandomDomain(3.0, 2.0, per="example", seed=0)
    x = torch.randn(64, 2, 3)
    d = _domains(layer(x), x, 3.0, 2.0)
    assert 10 < int(d.sum()) < 54


def test_eval_mode_is_the_identity_and_the_seed_fixes_the_draws():
    x = torch.randn(8, 4)
    assert torch.equal(RandomDomain(3.0, 2.0).eval()(x), x)
    a, b = RandomDomain(3.0, 2.0, seed=5), RandomDomain(3.0, 2.0, seed=5)
    assert all(torch.equal(a(x), b(x)) for _ in range(5))


def test_unknown_mixing_is_an_error():
    with pytest.raises(ValueError, match="per must be"):
        RandomDomain(1.0, 0.0, per="class")


def test_without_a_seed_torchs_global_seed_fixes_the_draws():
    x = torch.randn(32, 3)
    torch.manual_seed(3)
    a = RandomDomain(2.0, 1.0)
    torch.manual_seed(3)
    b = RandomDomain(2.0, 1.0)
    torch.manual_seed(4)
    c = RandomDomain(2.0, 1.0)
    outputs = [[layer(x) for _ in range(4)] for layer in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(outputs[0], outputs[1]))
    assert not all(torch.equal(p, q) for p, q in zip(outputs[0], outputs[2]))


# InjectedNoise -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4000, 6), (500, 6, 8)])
def test_injected_noise_is_iid_per_entry_with_a_drawn_mean_and_std_per_channel(shape):
    torch.manual_seed(0)
    layer = InjectedNoise(shape[1], mean=0.7, std=1.5)
    x = torch.randn(*shape, dtype=torch.float64)
    noise = (layer(x) - x).transpose(0, 1).reshape(shape[1], -1)  # one channel per row
    mu, sigma = noise.mean(1), noise.std(1)
    n = noise.shape[1]
    assert (mu.abs() <= 0.7 + 4 * sigma / n ** 0.5).all() and (sigma <= 1.5 * 1.1).all()
    assert mu.std() > 0.05 and sigma.std() > 0.05  # the channels got different distributions
    for row, m, s in zip(noise, mu, sigma):  # within a channel: Gaussian around its own mean
        z = ((row - m) / s).numpy()
        assert abs(np.mean(np.abs(z)) - (2 / np.pi) ** 0.5) < 0.05


def test_injected_noise_changes_at_every_call_and_is_identity_in_eval_mode():
    torch.manual_seed(0)
    layer, x = InjectedNoise(5), torch.randn(64, 5, dtype=torch.float64)
    first, second = layer(x) - x, layer(x) - x
    assert not torch.allclose(first.mean(0), second.mean(0))  # a new distribution per step
    assert first.std(0).min() > 0  # examples of one batch get different noise
    layer.eval()
    assert layer(x) is x


def test_injected_noise_without_noise_is_identity_and_passes_gradients_unchanged():
    torch.manual_seed(0)
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(InjectedNoise(3, mean=0.0, std=0.0)(x), x, rtol=0, atol=0)
    weights = torch.randn(16, 3, dtype=torch.float64)
    (InjectedNoise(3)(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,match", [({"mean": -0.1}, "mean"), ({"std": float("inf")}, "std")])
def test_injected_noise_refuses_bad_settings_and_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InjectedNoise(4, **kwargs)
    with pytest.raises(ValueError, match=r"\(N, 4, \.\.\.\)"):
        InjectedNoise(4)(torch.zeros(2, 3))
    assert repr(InjectedNoise(4)) == "InjectedNoise(4, mean=1.0, std=1.0)"


# WSConv2d --------------------------------------------------------------------------------------


def test_weight_standardization_matches_a_hand_computation():
    from bnlib.book.layers import WSConv2d

    conv = WSConv2d(1, 2, 2, bias=False, eps=1e-300, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]],
                                        [[[0.0, 0.0], [0.0, 8.0]]]], dtype=torch.float64))
    # channel 0: mean 2.5, biased variance 1.25; channel 1: mean 2, variance (3*4 + 36) / 4 = 12
    expected = torch.tensor([[[[-1.5, -0.5], [0.5, 1.5]]], [[[-2.0, -2.0], [-2.0, 6.0]]]],
                            dtype=torch.float64) / torch.tensor([1.25, 12.0], dtype=torch.float64).sqrt().view(2, 1, 1, 1)
    torch.testing.assert_close(conv.standardized_weight(), expected, rtol=1e-15, atol=1e-15)
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]], dtype=torch.float64)
    y = conv(x)  # a one-hot input reads one weight; a constant input gives 0 (weights sum to 0)
    torch.testing.assert_close(y[0, :, 0, 0], expected[:, 0, 0, 0], rtol=1e-15, atol=1e-15)
    assert y[1].abs().max() < 1e-14


def test_weight_standardization_ignores_the_scale_and_offset_of_the_stored_weights():
    from bnlib.book.layers import WSConv2d

    torch.manual_seed(0)
    conv = WSConv2d(3, 4, 3, padding=1, eps=1e-12, dtype=torch.float64)
    w_hat = conv.standardized_weight().detach()
    flat = w_hat.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-14,
                               rtol=0)
    var = conv.weight.detach().flatten(1).var(1, unbiased=False)
    torch.testing.assert_close(flat.var(1, unbiased=False), var / (var + conv.eps), rtol=1e-12,
                               atol=0)  # 1 up to eps
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    y = conv(x).detach()
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.3)
    torch.testing.assert_close(conv(x), y, rtol=1e-8, atol=1e-8)  # only eps sees the scale


def test_weight_standardization_gradients_pass_gradcheck():
    from bnlib.book.layers import WSConv2d

    torch.manual_seed(1)
    conv = WSConv2d(2, 3, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: torch.nn.functional.conv2d(
        x, WSConv2d.standardized_weight(_with_weight(conv, w)), conv.bias, padding=1),
        (x, conv.weight.detach().clone().requires_grad_()))


def _with_weight(conv, w):
    """A stand-in with ``weight`` = w (a tensor that gradcheck perturbs)."""
    class _Holder:
        pass
    holder = _Holder()
    holder.weight, holder.eps = w, conv.eps
    return holder


def test_convert_swaps_every_plain_conv2d_and_keeps_its_weights():
    from bnlib.book import models
    from bnlib.book.layers import WSConv2d

    torch.manual_seed(0)
    model = models.cnn(1, [4, 8], 10, norm=lambda c: torch.nn.GroupNorm(2, c)).double()
    before = [m.weight.detach().clone() for m in model.modules()
              if isinstance(m, torch.nn.Conv2d)]
    same = WSConv2d.convert(model)
    convs = [m for m in same.modules() if isinstance(m, torch.nn.Conv2d)]
    assert same is model and len(convs) == 2 and all(type(m) is WSConv2d for m in convs)
    for conv, weight in zip(convs, before):
        torch.testing.assert_close(conv.weight, weight, rtol=0, atol=0)
        assert conv.weight.dtype == torch.float64 and conv.padding == (1, 1)
    assert WSConv2d.convert(convs[0]) is convs[0]  # already standardized: left alone
    single = WSConv2d.convert(torch.nn.Conv2d(2, 3, 3, bias=True))
    assert type(single) is WSConv2d and single.bias is not None
    model(torch.randn(2, 1, 8, 8, dtype=torch.float64)).sum().backward()


@pytest.mark.parametrize("kwargs,match", [({"eps": 0.0}, "eps"), ({"eps": -1e-5}, "eps")])
def test_weight_standardization_refuses_bad_settings(kwargs, match):
    from bnlib.book.layers import WSConv2d

    with pytest.raises(ValueError, match=match):
        WSConv2d(2, 3, 3, **kwargs)
    with pytest.raises(ValueError, match="fan-in"):
        WSConv2d(1, 3, 1)


# TorchGhostBatchNorm ------------------------------------------------------------------------


@pytest.mark.parametrize("shape,group_size", [((8, 3), 2), ((12, 4, 3, 3), 4), ((8, 2, 5), 8)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_ghost_batch_norm_equals_bnlibs_ghost_batch_norm(shape, group_size, momentum):
    from bnlib.book.layers import TorchGhostBatchNorm

    torch.manual_seed(0)
    layers = [cls(shape[1], group_size=group_size, momentum=momentum, dtype=torch.float64)
              for cls in (bnt.GhostBatchNorm, TorchGhostBatchNorm)]
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, shape[1], dtype=torch.float64))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, shape[1], dtype=torch.float64))
    for step in range(2):
        x = torch.randn(*shape, dtype=torch.float64)
        dy = torch.randn(*shape, dtype=torch.float64)
        outs = []
        for layer in layers:
            xi = x.clone().requires_grad_()
            y = layer(xi)
            y.backward(dy)
            outs.append((y.detach(), xi.grad))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layers[1], name), getattr(layers[0], name),
                                   rtol=1e-12, atol=1e-12)
    for a, b in zip(layers[1].parameters(), layers[0].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    x = torch.randn(*shape, dtype=torch.float64)
    for layer in layers:
        layer.eval()
    torch.testing.assert_close(layers[1](x), layers[0](x), rtol=1e-12, atol=1e-12)


def test_torch_ghost_batch_norm_refuses_what_ghost_batch_norm_refuses():
    from bnlib.book.layers import TorchGhostBatchNorm

    layer = TorchGhostBatchNorm(3, group_size=4, dtype=torch.float64)
    with pytest.raises(ValueError, match="groups of 4"):
        layer(torch.randn(6, 3, dtype=torch.float64))
    assert layer.num_batches_tracked == 0


# DetachedBatchNorm1d -------------------------------------------------------------------------


def _detached_pair(num_features, momentum):
    from bnlib.book.layers import DetachedBatchNorm1d

    torch.manual_seed(0)
    detached = DetachedBatchNorm1d(num_features, momentum=momentum, dtype=torch.float64)
    full = bnt.BatchNorm1d(num_features, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        for m in (detached, full):
            m.weight.copy_(torch.linspace(0.5, 2.0, num_features, dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1.0, 1.0, num_features, dtype=torch.float64))
    return detached, full


@pytest.mark.parametrize("shape", [(16, 5), (8, 4, 3)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_detached_forward_and_running_statistics_are_batch_norms(shape, momentum):
    detached, full = _detached_pair(shape[1], momentum)
    for _ in range(3):
        x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
        torch.testing.assert_close(detached(x), full(x), rtol=0, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(detached, name), getattr(full, name), rtol=0,
                                   atol=1e-12)
    detached.eval(), full.eval()
    torch.testing.assert_close(detached(x), full(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 5), (8, 4, 3)])
def test_detached_gradient_is_the_eval_mode_gradient_at_the_batch_statistics(shape):
    detached, full = _detached_pair(shape[1], 0.1)
    x = (torch.randn(*shape, dtype=torch.float64) * 2).requires_grad_()
    dy = torch.randn(*shape, dtype=torch.float64)
    detached(x).backward(dy)
    dims = [0] + list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    var = x.detach().var(dims, unbiased=False)
    expected = dy * (detached.weight.detach() / torch.sqrt(var + detached.eps)).view(view)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    assert x.grad.sum(dims).abs().max() > 1e-3  # unlike batch norm's, it does not sum to zero
    x2 = x.detach().clone().requires_grad_()
    full(x2).backward(dy)  # gamma and beta get the same gradients as with batch norm
    torch.testing.assert_close(detached.weight.grad, full.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(detached.bias.grad, full.bias.grad, rtol=1e-12, atol=1e-12)


def test_detached_statistics_let_a_bias_before_drift_while_the_output_stays():
    detached, full = _detached_pair(4, 0.1)
    torch.manual_seed(1)
    u, readout = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)
    linear = torch.nn.Linear(6, 4, dtype=torch.float64)
    grads = {}
    for name, layer in (("full", full), ("detached", detached)):
        linear.zero_grad()
        y = layer(linear(u))
        (y * readout).sum().backward()
        grads[name] = linear.bias.grad.clone()
        with torch.no_grad():
            shifted = layer(linear(u) + 3.0)  # a step of the bias changes nothing downstream
        torch.testing.assert_close(shifted, y.detach(), rtol=0, atol=1e-12)
    assert grads["full"].abs().max() < 1e-10 and grads["detached"].abs().min() > 1e-3


def test_detached_refuses_what_batch_norm_refuses_before_updating():
    detached, _ = _detached_pair(3, 0.1)
    for bad in (torch.randn(4, 5, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64),
                torch.randn(2, 3, 2, 2, dtype=torch.float64)):
        with pytest.raises(ValueError):
            detached(bad)
    assert detached.num_batches_tracked == 0
    torch.testing.assert_close(detached.running_mean, torch.zeros(3, dtype=torch.float64))
