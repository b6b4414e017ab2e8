"""The formulas of batch normalization in torch, once; every path of :mod:`bnlib.torch` calls them.

* :func:`batch_statistics`: per-channel mean and biased variance, from shifted data in two
  passes (tracked by autograd);
* :func:`normalize_coefficients`: ``y = (x - centre) * scale + offset`` per channel;
* :func:`backward_coefficients`: the closed-form backward as ``dx = c * a + dy * scale + b``
  with ``c = x - mean``, from the two per-channel sums ``sum(dy)`` and ``sum(dy * c)``;
* :func:`update_running_stats`: ``running = (1 - momentum) * running + momentum * stat``;
* :func:`formula_forward`, :func:`formula_backward`: the training forward and backward
  composed of these in plain out-of-place operations, for autograd, ``torch.compile``,
  ``torch.func`` and double backward. The eager kernels (:mod:`._kernels`) compute the same
  sums with fewer passes over memory and call the same coefficient functions; synchronized
  batch norm adds the sums over processes first.

Conventions: statistics per channel (dim 1) over the m = N * prod(spatial) other values;
biased variance to normalize; half-precision input is computed in float32.
"""

import torch

from ._reductions import (as_dtype, per_channel, pivot, reduce_dims, stats_dtype,
                          sum_of_products)


def batch_statistics(x):
    """Per-channel mean and biased variance by shifted data, two passes, tracked by autograd.

    Each channel is first shifted by a value K near its mean (:func:`._reductions.pivot`;
    ``x - K`` is exact when the values are close, by Sterbenz's lemma), then
    ``mean = K + mean(x - K)`` and ``var = mean((x - mean)^2)`` with ``x - mean`` computed as
    ``(x - K) - mean(x - K)``. Neither ``E[x^2] - E[x]^2`` nor a plain mean survives a large
    offset: in float32 the mean of 1000 copies of 1e8 is off by 8. Autograd can follow every
    step (K is a constant). Returns ``mean, var, centred`` (centred = x - mean, in the
    statistics' dtype).
    """
    dims, ndim = reduce_dims(x.dim()), x.dim()
    m = x.numel() // x.shape[1]
    xs = as_dtype(x, stats_dtype(x.dtype))
    k = pivot(xs.detach())
    shifted = xs - per_channel(k, ndim)
    shift = shifted.mean(dims)
    centred = shifted - per_channel(shift, ndim)
    var = sum_of_products(centred, centred) / m
    return k + shift, var, centred


def normalize_coefficients(var, eps, weight, bias, shift=None):
    """``invstd, scale, offset`` with ``y = (x - centre) * scale + offset`` per channel.

    ``invstd = 1 / sqrt(var + eps)``, ``scale = weight * invstd`` and
    ``offset = bias - shift * scale``: x is centred on the batch mean (shift None) or on a
    point ``shift`` below it (the single-pass kernel centres on its pivot). ``offset`` is None
    when there is nothing to add.
    """
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * as_dtype(weight, invstd.dtype)
    offset = None if bias is None else as_dtype(bias, scale.dtype)
    if shift is not None:  # addcmul: one operation (each costs a dispatch)
        offset = -shift * scale if offset is None else torch.addcmul(offset, shift, scale,
                                                                     value=-1)
    return invstd, scale, offset


def backward_coefficients(sum_dy, sum_dy_c, invstd, weight, m):
    """The closed-form backward as per-channel coefficients: ``dx = c * a + dy * scale + b``.

    With ``c = x - mean``, ``xhat = c * invstd`` and ``scale = weight * invstd``,

        dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)),

    because the batch mean and variance depend on every input, which removes the mean and
    the projection onto xhat. With ``dgamma = invstd * sum(dy * c)`` and
    ``dbeta = sum(dy)``: ``a = -scale * invstd^2 * sum(dy * c) / m = -scale * invstd *
    dgamma / m`` and ``b = -scale * sum(dy) / m``. The sums may come from one process or be
    added over several (synchronized batch norm), with m the total count.

    Returns ``a, scale, b, dgamma, dbeta``, each of shape (C,).
    """
    scale = invstd if weight is None else invstd * as_dtype(weight, invstd.dtype)
    dgamma = invstd * sum_dy_c
    return scale * invstd * dgamma / -m, scale, scale * sum_dy / -m, dgamma, sum_dy


def update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """``running = (1 - momentum) * running + momentum * stat`` in place, unbiased variance.

    ``var`` is the biased variance of m values per channel; ``running_var`` stores
    ``var * m / (m - 1)``. ``momentum`` is a number in [0, 1] or a 0-d tensor (a module's
    ``1 / num_batches_tracked`` for ``momentum=None``). Does nothing without running
    statistics (both None). The buffers stay plain tensors: no graph (``no_grad``) and no
    tangent of forward-mode AD (``detach``, which ``no_grad`` does not cover).
    """
    if running_mean is None:
        return
    with torch.no_grad():
        mean, var = mean.detach(), var.detach()
        running_mean.lerp_(as_dtype(mean, running_mean.dtype), momentum)
        running_var.lerp_(as_dtype(var * m / (m - 1), running_var.dtype), momentum)


def formula_forward(x, weight, bias, eps):
    """The training forward in plain out-of-place operations: ``y, mean, var, invstd``."""
    mean, var, centred = batch_statistics(x)
    invstd, scale, offset = normalize_coefficients(var, eps, weight, bias)
    y = centred * per_channel(scale, x.dim())
    if offset is not None:
        y = y + per_channel(offset, x.dim())
    return y, mean, var, invstd


def formula_backward(x, dy, weight, mean, invstd):
    """The closed-form backward in plain out-of-place operations: ``dx, dgamma, dbeta``."""
    ndim, dims = x.dim(), reduce_dims(x.dim())
    c = as_dtype(x, mean.dtype) - per_channel(mean, ndim)
    dy = as_dtype(dy, mean.dtype)
    a, scale, b, dgamma, dbeta = backward_coefficients(
        dy.sum(dims), sum_of_products(dy, c), invstd, weight, x.numel() // x.shape[1])
    dx = c * per_channel(a, ndim) + dy * per_channel(scale, ndim) + per_channel(b, ndim)
    return dx, dgamma, dbeta
