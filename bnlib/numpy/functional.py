"""Batch normalization as NumPy functions: training forward, closed-form backward, inference.

Conventions (identical to ``torch.nn.BatchNorm1d/2d/3d``):

* Input ``x`` has shape ``(N, C, *)``: (N, D), (N, C, L), (N, C, H, W), ...; statistics are per
  channel (dim 1), over the m = N * prod(spatial dims) values of that channel.
* Training normalizes with the **biased** batch variance (divide by m):

  .. math::

      \\mu_c = \\frac{1}{m}\\sum_i x_i, \\quad
      \\sigma^2_c = \\frac{1}{m}\\sum_i (x_i - \\mu_c)^2, \\quad
      \\hat x_i = \\frac{x_i - \\mu_c}{\\sqrt{\\sigma^2_c + \\epsilon}}, \\quad
      y_i = \\gamma_c \\hat x_i + \\beta_c

* Mean and variance are computed from shifted data (each channel minus its first value) in
  two passes (mean first, then the mean of squared deviations), never as E[x^2] - E[x]^2,
  which cancels catastrophically for large offsets.
* Statistics are accumulated in float32 for float16 input and in the input's precision
  otherwise; the output has the input's dtype.
* Mixed dtypes are a defined result, not an error: gamma, beta, mean and var of any floating
  dtype are cast to the compute dtype of x (float32 for float16 x, x's own dtype otherwise).
  A NumPy function follows the array it normalizes; ``torch.nn`` instead refuses float64
  parameters with float32 input (and ``bnlib.torch`` does the same).
* NaN and inf are data, not errors (checking would cost a pass over x): in training they make
  their channel's output NaN and leave the other channels alone; an inf gives mean inf and
  variance NaN, as in torch. NumPy's ``RuntimeWarning`` for inf - inf is not silenced. In
  inference only the non-finite elements themselves are affected.
* Bad arguments (wrong rank or shape, non-floating or masked arrays, eps <= 0 or so small that
  it rounds to 0 in the compute dtype) raise an error naming the argument and its value;
  nothing passed in is ever modified. ``bnlib.edge_cases`` lists every case with its outcome.
"""

from typing import NamedTuple, Optional

import numpy as np

from .. import _checks

__all__ = ["BatchNormCache", "batch_norm_backward", "batch_norm_forward",
           "batch_norm_inference", "check_input"]


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs, plus the batch statistics for the caller.

    Attributes:
        xhat: the normalized input, shape of x, in the compute dtype.
        invstd: 1 / sqrt(var + eps) per channel, shape (C,).
        gamma: the scale per channel, shape (C,), or None when there is no affine transform.
        mean: the batch mean per channel, shape (C,).
        var: the **biased** batch variance per channel, shape (C,).
        input_dtype: the dtype of x (gradients are returned in it).
        training: True when the batch statistics were used (their dependence on x enters
            the backward pass), False for fixed statistics (backward is a per-channel scale).
    """

    xhat: np.ndarray
    invstd: np.ndarray
    gamma: Optional[np.ndarray]
    mean: np.ndarray
    var: np.ndarray
    input_dtype: np.dtype
    training: bool


def _reduce_axes(ndim):
    """All axes but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def _per_channel(v, ndim):
    """Reshape a (C,) vector to (1, C, 1, ...) so it broadcasts against an ``(N, C, *)`` array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _compute_dtype(dtype):
    """float16 -> float32; float32 and float64 unchanged."""
    return np.result_type(dtype, np.float32)


def _as_float_array(name, a):
    """``a`` as an array of a floating dtype, or the documented TypeError."""
    if a is None:
        raise TypeError(f"{name} must be a floating-point array, got None")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, and its mask would be silently ignored; pass "
            f"{name}.filled(value) or only the valid entries"
        )
    a = np.asarray(a)
    _checks.check_float_dtype(name, np.issubdtype(a.dtype, np.floating), a.dtype)
    return a


def _as_parameter(name, value, shape):
    """gamma or beta: None, or a floating array of ``shape`` (any floating dtype: it is cast
    to the dtype the input is computed in)."""
    if value is None:
        return None
    value = _as_float_array(name, value)
    _checks.check_parameter(name, value.shape, shape, True, value.dtype, (value.dtype,))
    return value


def _check_affine(gamma, beta, num_channels):
    """gamma and beta: both None, or float vectors of shape (C,)."""
    return _as_parameter("gamma", gamma, (num_channels,)), _as_parameter("beta", beta, (num_channels,))


def _check_eps_fits(eps, dtype):
    """eps must not round to 0 in the dtype the statistics of ``dtype`` input are computed in."""
    compute = _compute_dtype(dtype)
    _checks.check_eps_fits(eps, float(np.finfo(compute).smallest_subnormal), compute.name)


def check_input(x, training):
    """Return x as a float array of shape ``(N, C, *)``, or raise the documented error."""
    x = _as_float_array("x", x)
    _checks.check_input_shape(x.shape, training)
    return x


def batch_norm_forward(x, gamma=None, beta=None, eps=1e-5):
    """Training-mode batch normalization with the statistics of this batch.

    Args:
        x: input, shape ``(N, C, *)``, floating point.
        gamma: scale, shape (C,), or None for 1.
        beta: shift, shape (C,), or None for 0.
        eps: added to the variance, > 0.

    Returns:
        ``(y, cache)``: y has the shape and dtype of x; ``cache`` is a :class:`BatchNormCache`
        holding what the backward pass needs and the batch mean and (biased) variance.

    Raises:
        TypeError: x, gamma or beta None, masked or not floating point; non-numeric eps.
        ValueError: rank < 2, one value per channel, gamma/beta not of shape (C,), eps <= 0
            or eps rounding to 0 in the compute dtype.
    """
    x = check_input(x, training=True)
    _checks.check_eps(eps)
    gamma, beta = _check_affine(gamma, beta, x.shape[1])
    _check_eps_fits(eps, x.dtype)

    dtype = _compute_dtype(x.dtype)
    # A C-ordered array of the compute dtype: x itself when it already is one (then it must
    # not be modified), else a fresh copy (which can be modified in place).
    xc = x.astype(dtype, order="C", copy=False)
    gamma_c = None if gamma is None else gamma.astype(dtype, copy=False)
    if x.size == 0:  # an empty batch: an empty output and no statistics, as in torch
        nan = np.full(x.shape[1], np.nan, dtype)
        return x.copy(), BatchNormCache(xc.copy(), nan, gamma_c, nan, nan, x.dtype, True)
    m = x.size // x.shape[1]
    # Shifted data: subtract each channel's first value K (exact for nearby values, by
    # Sterbenz's lemma), so that a large offset costs no digits; then two passes.
    pivot = xc[0].reshape(x.shape[1], -1)[:, 0]
    # An infinite pivot would turn its whole channel into inf - inf = nan; shift by 0 there,
    # so that an inf gives mean inf and variance nan, as in torch. (np.where also makes pivot
    # a copy, not a view into xc, which may be updated in place below.)
    pivot = np.where(np.isfinite(pivot), pivot, 0).astype(dtype, copy=False)
    if xc is x:
        xhat = x - _per_channel(pivot, x.ndim)  # a new array: x is never modified
    else:
        xhat = xc
        xhat -= _per_channel(pivot, x.ndim)
    shift = _channel_sums(xhat) / m
    xhat -= _per_channel(shift, x.ndim)
    mean = pivot + shift
    var = _channel_dots(xhat, xhat) / m
    invstd = 1.0 / np.sqrt(var + dtype.type(eps))
    xhat *= _per_channel(invstd, x.ndim)

    y = _affine(xhat, gamma_c, beta, dtype)
    cache = BatchNormCache(xhat, invstd, gamma_c, mean, var, x.dtype, True)
    return y.astype(x.dtype, copy=False), cache


def _channel_sums(a):
    """Per-channel sum over every axis but 1; ``np.einsum`` reduces without a temporary."""
    n, c = a.shape[:2]
    return np.einsum("ncl->c", a.reshape(n, c, -1))


def _channel_dots(a, b):
    """Per-channel sum of ``a * b`` over every axis but 1, without an array-sized temporary."""
    n, c = a.shape[:2]
    return np.einsum("ncl,ncl->c", a.reshape(n, c, -1), b.reshape(n, c, -1))


def _affine(xhat, gamma, beta, dtype):
    """gamma * xhat + beta in a new array (never xhat itself, which the cache keeps)."""
    if gamma is None:
        return xhat.copy() if beta is None else xhat + _per_channel(beta.astype(dtype), xhat.ndim)
    y = xhat * _per_channel(gamma, xhat.ndim)
    if beta is not None:
        y += _per_channel(beta.astype(dtype, copy=False), xhat.ndim)
    return y


def batch_norm_backward(dy, cache):
    """Closed-form backward pass of :func:`batch_norm_forward` (or :func:`batch_norm_inference`).

    With the means taken over the m values of each channel,

    .. math::

        \\frac{\\partial L}{\\partial \\beta} = \\sum_i dy_i, \\quad
        \\frac{\\partial L}{\\partial \\gamma} = \\sum_i dy_i \\hat x_i, \\quad
        \\frac{\\partial L}{\\partial x_i} = \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}
            \\left(dy_i - \\overline{dy} - \\hat x_i \\, \\overline{dy\\,\\hat x}\\right)

    The two subtracted terms exist because the batch mean and variance depend on every x_i.
    With fixed statistics (a cache from :func:`batch_norm_inference`) they vanish and
    ``dx = dy * gamma / sqrt(var + eps)``.

    Args:
        dy: upstream gradient, the shape of x.
        cache: the cache returned by :func:`batch_norm_forward`.

    Returns:
        ``(dx, dgamma, dbeta)``. dx has the dtype of x; dgamma and dbeta have shape (C,) and are
        returned even when the forward had no gamma or beta (they are then the gradients with
        respect to a gamma of 1 and a beta of 0).

    Raises:
        TypeError: cache is not a :class:`BatchNormCache` (for instance the whole ``(y, cache)``
            pair); dy None, masked or not floating point.
        ValueError: dy does not have the shape of x.
    """
    if not isinstance(cache, BatchNormCache):
        hint = " (the whole (y, cache) pair?)" if isinstance(cache, tuple) else ""
        raise TypeError(
            f"cache must be the BatchNormCache returned by batch_norm_forward or "
            f"batch_norm_inference, got {type(cache).__name__}{hint}"
        )
    xhat, invstd, gamma = cache.xhat, cache.invstd, cache.gamma
    dy = _as_float_array("dy", dy)
    if dy.shape != xhat.shape:
        raise ValueError(f"dy must have the shape of x {xhat.shape}, got {dy.shape}")
    dtype = xhat.dtype
    if dy.size == 0:  # an empty batch or C = 0: sums over no values are 0, nothing to scale
        zeros = np.zeros(dy.shape[1], dtype)
        return dy.astype(cache.input_dtype), zeros, zeros.copy()
    dy = dy.astype(dtype, copy=False)
    m = dy.size // dy.shape[1]

    dbeta = _channel_sums(dy)
    dgamma = _channel_dots(dy, xhat)
    scale = invstd if gamma is None else gamma * invstd
    if not cache.training:
        dx = dy * _per_channel(scale, dy.ndim)
        return dx.astype(cache.input_dtype, copy=False), dgamma, dbeta
    # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), built in one buffer.
    dx = xhat * _per_channel(-dgamma / m, dy.ndim)
    dx += dy
    dx -= _per_channel(dbeta / m, dy.ndim)
    dx *= _per_channel(scale, dy.ndim)
    return dx.astype(cache.input_dtype, copy=False), dgamma, dbeta


def batch_norm_inference(x, mean, var, gamma=None, beta=None, eps=1e-5):
    """Inference-mode batch normalization with fixed statistics (an affine map per channel).

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, with ``mean`` and ``var`` the running
    (or population) statistics, shape (C,). Nothing here depends on the rest of the batch.

    Returns:
        ``(y, cache)``: y has the shape and dtype of x; the cache serves
        :func:`batch_norm_backward`.

    Raises:
        As :func:`batch_norm_forward` (one value per channel is allowed here); TypeError when
        mean or var is None, masked or not floating point; ValueError when mean or var is not
        of shape (C,) or var has a negative entry (NaN is let through).
    """
    x = check_input(x, training=False)
    _checks.check_eps(eps)
    gamma, beta = _check_affine(gamma, beta, x.shape[1])
    mean = _as_float_array("mean", mean)
    var = _as_float_array("var", var)
    _checks.check_channel_vector("mean", mean.shape, x.shape[1])
    _checks.check_channel_vector("var", var.shape, x.shape[1])
    _checks.check_nonnegative("var", var)
    _check_eps_fits(eps, x.dtype)

    dtype = _compute_dtype(x.dtype)
    invstd = 1.0 / np.sqrt(var.astype(dtype) + dtype.type(eps))
    xhat = (x.astype(dtype, copy=False) - _per_channel(mean.astype(dtype), x.ndim))
    xhat *= _per_channel(invstd, x.ndim)
    gamma_c = None if gamma is None else gamma.astype(dtype, copy=False)
    y = _affine(xhat, gamma_c, beta, dtype).astype(x.dtype, copy=False)
    return y, BatchNormCache(xhat, invstd, gamma_c, mean, var, x.dtype, False)
