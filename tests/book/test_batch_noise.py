"""bnlib.book.batch_noise: the exact formulas agree with Monte Carlo, and the m = 2 case is +-1."""

import pytest
import torch

from bnlib.book.batch_noise import measured_noise, population_moments, predicted_noise, variance_noise


@pytest.fixture(scope="module")
def population():
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(20000, 2, generator=gen, dtype=torch.float64) * 3 + 5
    skewed = torch.empty(20000, 2, dtype=torch.float64).exponential_(generator=gen)
    return torch.cat([gaussian, skewed], 1)


def test_population_moments_of_known_distributions(population):
    _, var, skew, kurt = population_moments(population)
    assert torch.allclose(var[:2], torch.tensor([9.0, 9.0], dtype=torch.float64), rtol=0.05)
    assert torch.allclose(kurt, torch.tensor([3.0, 3.0, 9.0, 9.0], dtype=torch.float64), rtol=0.25)
    assert torch.allclose(skew[2:], torch.tensor([2.0, 2.0], dtype=torch.float64), rtol=0.15)


@pytest.mark.parametrize("m", [4, 16, 64])
def test_formulas_agree_with_measurement(population, m):
    predicted, measured = predicted_noise(population, m), measured_noise(population, m, 4000)
    for name in ("mean", "var"):
        # Monte Carlo with 4000 batches: a standard deviation is known to ~2 %, more for the
        # heavy-tailed variance of the exponential columns.
        assert torch.allclose(getattr(measured, name), getattr(predicted, name), rtol=0.15), name
    if m >= 16:  # the xhat formula is first order in 1/m
        assert torch.allclose(measured.xhat, predicted.xhat, rtol=0.15)


@pytest.mark.parametrize("m", [2, 3, 10, 256])
def test_gaussian_variance_noise_is_sqrt_2_m_minus_1_over_m(m):
    assert torch.isclose(variance_noise(m, 3.0), torch.tensor(2.0 * (m - 1), dtype=torch.float64).sqrt() / m)


def test_two_examples_always_normalize_to_plus_or_minus_one(population):
    noise = measured_noise(population, 2, 500, eps=1e-12)
    # xhat is +1 or -1: its std is 2 sqrt(p (1 - p)) with p the chance the other one is below.
    assert torch.all(noise.xhat <= 1.0 + 1e-9) and torch.all(noise.xhat > 0.5)


@pytest.mark.parametrize("call", [lambda x: predicted_noise(x, 1), lambda x: measured_noise(x, 1),
                                  lambda x: measured_noise(x, 4, num_batches=1)])
def test_fewer_than_two_examples_or_batches_are_refused(call):
    with pytest.raises(ValueError):
        call(torch.randn(10, 2))


@pytest.mark.parametrize("m", [32, 128])
def test_the_standard_deviation_is_half_as_noisy_as_the_variance(population, m):
    from bnlib.book.batch_noise import measured_scale_noise, scale_noise

    _, _, _, kurt = population_moments(population)
    measured = measured_scale_noise(population, m, 4000)
    assert torch.allclose(measured, scale_noise(m, kurt), rtol=0.15)
    assert torch.allclose(scale_noise(m, kurt), variance_noise(m, kurt) / 2, rtol=0, atol=0)
    # the same batches as measured_noise's: the ratio to the variance's spread is about 1/2
    ratio = measured / measured_noise(population, m, 4000).var
    assert ((ratio > 0.4) & (ratio < 0.6)).all()


def test_gaussian_scale_noise_is_about_one_over_sqrt_2m():
    from bnlib.book.batch_noise import scale_noise

    for m in (50, 200, 1000):
        assert abs(float(scale_noise(m, 3.0)) * (2 * m) ** 0.5 - 1) < 0.02
    with pytest.raises(ValueError, match="batch size"):
        scale_noise(1, 3.0)
