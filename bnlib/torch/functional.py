"""Batch normalization for torch tensors: ``batch_norm`` with the signature of ``F.batch_norm``.

Training mode runs an ``autograd.Function`` whose backward is the hand-derived closed form
(the same formula as :func:`bnlib.numpy.batch_norm_backward`). It saves only the input and
two per-channel vectors; forward and backward are memory-lean kernels (:mod:`._kernels`).
When a graph of the backward is requested (``create_graph=True``, ``gradgradcheck``) the same
formula runs as differentiable torch operations, so double backward works. Eval mode is a fixed
per-channel affine map made of plain torch operations.

Conventions (identical to ``torch.nn.functional.batch_norm``):

* input ``(N, C, *)``, statistics per channel over the m = N * prod(spatial dims)
  other values;
* training normalizes with the **biased** batch variance and stores the **unbiased** one
  (times m / (m - 1)) in ``running_var``;
* ``running = (1 - momentum) * running + momentum * batch_statistic``;
* float16 / bfloat16 input: statistics in float32, output in the input dtype; parameters and
  running statistics may then be float32 (or the input's dtype).
* NaN and inf are data, not errors: in training they make their channel's output NaN and
  leave the other channels alone; an inf gives running_mean inf and running_var NaN, as in
  torch. In eval only the non-finite elements themselves are affected.
* Bad arguments raise an error naming the argument and its value before anything is updated;
  ``bnlib.edge_cases`` lists every case with its outcome.
"""

import torch

from .. import _checks
from . import _kernels
from ._reductions import HALF, per_channel, pivot, reduce_dims, stats_dtype, sum_of_products


def _batch_stats(x):
    """Per-channel mean and biased variance by shifted data, two passes, tracked by autograd.

    Each channel is first shifted by a value K near its mean (:func:`._reductions.pivot`;
    ``x - K`` is exact when the values are close, by Sterbenz's lemma), then
    ``mean = K + mean(x - K)`` and ``var = mean((x - mean)^2)``. Neither ``E[x^2] - E[x]^2``
    nor a plain mean survives a large offset: in float32 the mean of 1000 copies of 1e8 is
    off by 8. Autograd can follow every step (K is a constant), which the double backward and
    the variants built on these statistics (sync, renorm) rely on. Returns
    ``mean, var, centred``.
    """
    dims, ndim = reduce_dims(x.dim()), x.dim()
    m = x.numel() // x.shape[1]
    xs = x.to(stats_dtype(x.dtype))
    k = pivot(xs.detach())
    centred = xs - per_channel(k, ndim)
    shift = centred.mean(dims)
    centred.sub_(per_channel(shift, ndim))  # in place: the mean's backward needs no values
    var = sum_of_products(centred, centred) / m
    return k + shift, var, centred


class _BatchNormTraining(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the batch's own mean and invstd.

    Forward and backward are the kernels of :mod:`._kernels` (each allocates only its output
    at input size; the backward walks over cache-sized blocks). Saved for backward: x and two
    per-channel vectors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, var, invstd = _kernels.forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: rebuild mean and invstd from x with tracked operations, so
            # that the second derivative sees how they depend on x.
            mean, var, _ = _batch_stats(x)
            invstd = torch.rsqrt(var + ctx.eps)
            dx, dgamma, dbeta = _backward_differentiable(x, dy, weight, mean, invstd)
        else:
            dx, dgamma, dbeta = _kernels.backward(x, dy, weight, mean, invstd)
        dweight = dgamma.to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = dbeta.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dweight, dbias, None


def _backward_differentiable(x, dy, weight, mean, invstd):
    """The closed form, out of place, so that autograd can differentiate it again.

    dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)): the batch mean and variance depend
    on every input, which removes the mean and the projection onto xhat.
    """
    ndim, dims = x.dim(), reduce_dims(x.dim())
    m = x.numel() // x.shape[1]
    xhat = (x.to(mean.dtype) - per_channel(mean, ndim)) * per_channel(invstd, ndim)
    dy = dy.to(mean.dtype)
    dbeta = dy.sum(dims)
    dgamma = sum_of_products(dy, xhat)
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    dx = dy - per_channel(dbeta / m, ndim) - xhat * per_channel(dgamma / m, ndim)
    return dx * per_channel(scale, ndim), dgamma, dbeta


def _check_tensor(name, t, x, num_channels):
    """A per-channel tensor: shape (C,), floating, x's device, x's dtype (float32 allowed for half x)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    _checks.check_channel_vector(name, t.shape, num_channels)
    _checks.check_float_dtype(name, t.is_floating_point(), t.dtype)
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {x.device}")
    allowed = (x.dtype, torch.float32) if x.dtype in HALF else (x.dtype,)
    if t.dtype not in allowed:
        raise TypeError(
            f"{name} has dtype {t.dtype} but the input has dtype {x.dtype}; they must match "
            f"(float32 parameters are also accepted for float16/bfloat16 input)"
        )


def check_arguments(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """Raise the documented error for any bad argument of :func:`bnlib.torch.batch_norm`; change nothing."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    _checks.check_float_dtype("input", x.is_floating_point(), x.dtype)
    _checks.check_input_shape(tuple(x.shape), training)
    _checks.check_eps(eps)
    _checks.check_eps_fits(eps, "float64" if x.dtype == torch.float64 else "float32")
    _checks.check_momentum(momentum, allow_none=False)
    _checks.check_running_pair(running_mean, running_var)
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(name, t, x, x.shape[1])
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            _checks.check_no_grad(name, t.requires_grad)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    Training (``training=True``): normalize with the batch mean and biased variance; when
    running statistics are given, update them in place with
    ``running = (1 - momentum) * running + momentum * stat`` (unbiased variance stored).
    Eval (``training=False``): ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    Args:
        input: ``(N, C, *)`` floating-point tensor, any device.
        running_mean, running_var: (C,) tensors updated in place in training, or both None.
        weight, bias: (C,) tensors (gamma and beta) or None.
        training: use batch statistics.
        momentum: weight of the new batch in [0, 1] (for a cumulative average use the module
            with ``momentum=None``).
        eps: added to the variance, > 0.

    Returns:
        A tensor of the input's shape, dtype and device.

    Raises:
        TypeError: non-tensor or non-floating input; parameters of another dtype.
        ValueError: rank < 2; one value per channel in training; a (C,) tensor of another
            shape or device; only one of running_mean / running_var; running statistics that
            require grad; no running statistics in eval; eps <= 0 or rounding to 0 in the
            statistics' dtype; momentum outside [0, 1]. Nothing is updated when an error is
            raised.

    A negative ``running_var`` is not checked (that would read a value back from the device on
    every call): its channel comes out NaN, as in ``torch.nn``.
    """
    check_arguments(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not training:
        return _normalize_fixed(input, running_mean, running_var, weight, bias, eps)
    if input.numel() == 0:  # an empty batch: an empty output and nothing to update, as in torch
        return input.clone()
    y, mean, var = _BatchNormTraining.apply(input, weight, bias, eps)
    update_running_stats(running_mean, running_var, mean, var, input, momentum)
    return y


def update_running_stats(running_mean, running_var, mean, var, input, momentum):
    """``running = (1 - momentum) * running + momentum * stat`` in place, unbiased variance.

    Does nothing when there are no running statistics (both None).
    """
    if running_mean is None:
        return
    m = input.numel() // input.shape[1]
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        unbiased = var * (m / (m - 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _normalize_fixed(x, mean, var, weight, bias, eps):
    """Eval mode: a per-channel affine map, differentiable by autograd (also twice).

    When autograd needs none of the intermediate values (inference), the same operations run
    in place in one buffer: the same numbers, without two extra input-sized allocations.
    """
    dtype, ndim = stats_dtype(x.dtype), x.dim()
    scale = torch.rsqrt(var.to(dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    # Subtract the mean before scaling: x * scale + (bias - mean * scale) loses digits when
    # the mean is large.
    y = x.to(dtype) - per_channel(mean.to(dtype), ndim)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    if tracked:
        y = y * per_channel(scale, ndim)
        if bias is not None:
            y = y + per_channel(bias.to(dtype), ndim)
    else:
        y.mul_(per_channel(scale, ndim))
        if bias is not None:
            y.add_(per_channel(bias.to(dtype), ndim))
    return y.to(x.dtype)
