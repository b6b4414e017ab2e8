"""bnlib.book.layers: NoisyBatchNorm1d is batch norm in eval mode and, in training, batch norm
followed by a fresh per-channel scale and shift within the stated ranges at every call (errors
before anything is built); RandomDomain gives mixed or domain-sorted batches in training,
nothing in eval."""

import numpy as np
import pytest
import torch

from bnlib import torch as bnt
from bnlib.book.layers import NoisyBatchNorm1d, RandomDomain

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
