"""How noisy the statistics of a mini-batch are: exact formulas and Monte Carlo measurements.

A batch of m values drawn independently from a population with mean mu, variance sigma^2,
skewness g1 and kurtosis k (fourth central moment mu4 = k sigma^4) gives

.. math::

    \\frac{\\mathrm{std}(\\mu_B)}{\\sigma} = \\frac{1}{\\sqrt m}, \\qquad
    \\frac{\\mathrm{std}(\\sigma^2_B)}{\\sigma^2} = \\frac{m-1}{m}
        \\sqrt{\\frac{k}{m} - \\frac{m-3}{m(m-1)}}

(exact, for the biased variance sigma^2_B that batch norm divides by; ``k = 3`` for a
Gaussian gives ``sqrt(2(m-1))/m``). The normalized value of one example sitting at
``mu + z sigma`` in the batch moves with its batch-mates; to first order in 1/m,

.. math::

    \\mathrm{std}(\\hat x) \\approx \\sqrt{\\frac{1 + z\\,g_1 + z^2 (k - 1)/4}{m}} .

For m = 2 it is exact that ``xhat = +-1`` (up to eps), whatever the example's value.

Batch norm divides by the standard deviation ``sigma_B``, not by the variance. To first order
(the delta method, ``d sqrt(v) = dv / (2 sqrt(v))``) its relative spread is half the
variance's:

.. math::

    \\frac{\\mathrm{std}(\\sigma_B)}{\\sigma} \\approx
        \\frac{1}{2} \\frac{\\mathrm{std}(\\sigma^2_B)}{\\sigma^2}
        \\approx \\sqrt{\\frac{k - 1}{4 m}}

(:func:`scale_noise`; measured by :func:`measured_scale_noise`).
"""

from typing import NamedTuple

import torch

__all__ = ["BatchNoise", "measured_noise", "measured_scale_noise", "population_moments",
           "predicted_noise", "scale_noise", "variance_noise"]


class BatchNoise(NamedTuple):
    """Per feature: std of the batch mean / sigma, std of the biased batch variance / sigma^2,
    and std of the normalized value of an example at mu + z sigma. Each of shape (D,)."""

    mean: torch.Tensor
    var: torch.Tensor
    xhat: torch.Tensor


def population_moments(x):
    """Per feature of ``(N, D)`` data: mean, biased variance, skewness and kurtosis (float64)."""
    x = x.double()
    mu = x.mean(0)
    centred = x - mu
    var = (centred ** 2).mean(0)
    skew = (centred ** 3).mean(0) / var ** 1.5
    kurt = (centred ** 4).mean(0) / var ** 2
    return mu, var, skew, kurt


def _check_batch_size(m):
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"the batch size must be an int >= 2 (one value has no variance), "
                         f"got {m!r}")


def variance_noise(m, kurtosis):
    """Exact ``std(sigma^2_B) / sigma^2`` for m values drawn from a population of that kurtosis."""
    _check_batch_size(m)
    return (m - 1) / m * torch.sqrt(torch.as_tensor(kurtosis, dtype=torch.float64) / m
                                    - (m - 3) / (m * (m - 1)))


def predicted_noise(x, m, z=1.0):
    """The formulas of the module docstring for batches of m examples drawn from ``x`` (N, D).

    Raises:
        ValueError: m < 2.
    """
    _check_batch_size(m)
    _, _, skew, kurt = population_moments(x)
    mean = torch.full_like(kurt, m ** -0.5)
    var = variance_noise(m, kurt)
    xhat = torch.sqrt((1 + z * skew + z ** 2 * (kurt - 1) / 4) / m)
    return BatchNoise(mean, var, xhat)


def measured_noise(x, m, num_batches=1000, z=1.0, eps=1e-5, seed=0):
    """Draw ``num_batches`` batches of m rows of ``x`` (with replacement) and measure the noise.

    The batch statistics are those of :func:`bnlib.torch.batch_norm` (mean, biased
    variance). For ``xhat``, the first row of every batch is replaced by an example at
    ``mu + z sigma`` (per feature) and normalized with the batch's statistics and ``eps``.

    Returns:
        A ``BatchNoise`` of measured standard deviations over the batches.

    Raises:
        ValueError: m < 2 or num_batches < 2.
    """
    batches = _draw_batches(x, m, num_batches, seed)
    mu, var, _, _ = population_moments(x)
    batch_mean = batches.mean(1)
    batch_var = ((batches - batch_mean.unsqueeze(1)) ** 2).mean(1)
    batches[:, 0] = mu + z * var.sqrt()
    with_example_mean = batches.mean(1)
    with_example_var = ((batches - with_example_mean.unsqueeze(1)) ** 2).mean(1)
    xhat = (batches[:, 0] - with_example_mean) / torch.sqrt(with_example_var + eps)
    return BatchNoise(batch_mean.std(0, unbiased=False) / var.sqrt(),
                      batch_var.std(0, unbiased=False) / var,
                      xhat.std(0, unbiased=False))


def _draw_batches(x, m, num_batches, seed):
    """``num_batches`` batches of m rows of ``x`` (N, D) drawn with replacement, in float64:
    shape (num_batches, m, D); the same batches for the same seed."""
    _check_batch_size(m)
    if num_batches < 2:
        raise ValueError(f"num_batches must be >= 2 to measure a spread, got {num_batches!r}")
    gen = torch.Generator().manual_seed(seed)
    return x.double()[torch.randint(len(x), (num_batches, m), generator=gen)]


def scale_noise(m, kurtosis):
    """First-order ``std(sigma_B) / sigma`` for m values of a population of that kurtosis.

    Half of :func:`variance_noise` (the delta method; see the module docstring): good from a
    few tens of values on, too small for a handful (where ``sigma_B`` is far from Gaussian).

    Raises:
        ValueError: m < 2.
    """
    return variance_noise(m, kurtosis) / 2


def measured_scale_noise(x, m, num_batches=1000, eps=1e-5, seed=0):
    """``std(sqrt(sigma^2_B + eps)) / sqrt(sigma^2 + eps)`` per feature of ``x`` (N, D), over
    ``num_batches`` batches of m rows drawn with replacement (the divisor batch norm uses).

    The batches are those of :func:`measured_noise` with the same ``seed``.

    Raises:
        ValueError: m < 2 or num_batches < 2.
    """
    batches = _draw_batches(x, m, num_batches, seed)
    _, var, _, _ = population_moments(x)
    batch_var = ((batches - batches.mean(1, keepdim=True)) ** 2).mean(1)
    return torch.sqrt(batch_var + eps).std(0, unbiased=False) / torch.sqrt(var + eps)
