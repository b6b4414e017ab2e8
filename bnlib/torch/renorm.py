"""Batch Renormalization (Ioffe, 2017): batch statistics, corrected toward the running ones.

With the batch statistics mu_B, sigma_B = sqrt(var_B + eps) and the running ones mu,
sigma = sqrt(running_var + eps), Algorithm 1 of the paper computes

.. math::

    r = \\mathrm{clip}_{[1/r_{max},\\, r_{max}]}\\left(\\frac{\\sigma_B}{\\sigma}\\right), \\quad
    d = \\mathrm{clip}_{[-d_{max},\\, d_{max}]}\\left(\\frac{\\mu_B - \\mu}{\\sigma}\\right), \\quad
    y = \\gamma \\left(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\right) + \\beta

with r and d treated as constants by backpropagation. Unclipped, the bracket equals
``(x - mu) / sigma``: the model trains on the transform it will use at inference.
``r_max = 1, d_max = 0`` is batch normalization.

The bracket times gamma is batch normalization with weight ``gamma * r`` and bias
``gamma * d + beta``, so :func:`bnlib.torch.batch_renorm` calls
:func:`bnlib.torch.batch_norm` with those, which also gives the gradient
``sum(dy * (r * xhat + d))`` for gamma. The running statistics
follow BatchNorm's conventions (the paper averages sigma_B; we keep the unbiased variance in
``running_var``, as torch does, so that eval mode and the state dict are BatchNorm's).
"""

import math

import torch

from .. import _checks
from ._formulas import batch_statistics
from .functional import batch_norm, check_arguments
from .ghost import per_group
from .modules import _BatchNormForward

__all__ = ["BatchRenorm", "batch_renorm", "relax_limits", "renorm_corrections",
           "renorm_limits"]


def _check_limits(r_max, d_max):
    for name, value, low in (("r_max", r_max, 1.0), ("d_max", d_max, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low:g} (r is clipped to [1/r_max, r_max], "
                             f"d to [-d_max, d_max]), got {value!r}")


def renorm_corrections(mean, var, running_mean, running_var, eps, r_max, d_max):
    """The paper's ``r = clip(sigma_B / sigma)`` and ``d = clip((mu_B - mu) / sigma)`` per channel.

    ``sigma_B = sqrt(var + eps)`` (biased batch variance) and ``sigma = sqrt(running_var + eps)``.
    """
    with torch.no_grad():
        sigma = torch.sqrt(running_var.to(var.dtype) + eps)
        r = (torch.sqrt(var + eps) / sigma).clamp(1.0 / r_max, r_max)
        d = ((mean - running_mean.to(mean.dtype)) / sigma).clamp(-d_max, d_max)
    return r, d


def _renorm_single(input, running_mean, running_var, weight, bias, training, momentum, eps,
                   r_max, d_max):
    """One group: batch norm with weight gamma * r and bias gamma * d + beta."""
    if input.numel() == 0:
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    mean, var, _ = batch_statistics(input.detach())
    r, d = renorm_corrections(mean, var, running_mean, running_var, eps, r_max, d_max)
    if weight is not None:
        r, d = weight * r.to(weight.dtype), weight * d.to(weight.dtype)
    if bias is not None:
        d = d + bias
    return batch_norm(input, running_mean, running_var, r, d, True, momentum, eps)


def batch_renorm(input, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, r_max=3.0, d_max=5.0, group_size=None):
    """Batch Renormalization: :func:`bnlib.torch.batch_norm`'s signature plus the clipping limits.

    Training: r and d from the batch and the running statistics *before* this batch's
    update (see the module docstring), then normalization and the usual update of the
    running statistics. Eval: BatchNorm's eval mode. With ``group_size``, each group of that
    many examples is renormalized with its own statistics (see
    :func:`bnlib.torch.ghost.per_group`).

    Args:
        r_max: >= 1; r is clipped to [1 / r_max, r_max] (``math.inf``: no clipping).
        d_max: >= 0; d is clipped to [-d_max, d_max].
        group_size: None (the whole batch) or the examples per group.

    Raises:
        The errors of :func:`bnlib.torch.batch_norm`; ValueError when training without
        running statistics or with r_max < 1, d_max < 0, or a batch that does not split
        into groups. Nothing is updated when an error is raised.
    """
    check_arguments(input, running_mean, running_var, weight, bias, training, momentum, eps)
    _check_limits(r_max, d_max)
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    if running_mean is None:
        raise ValueError("batch renormalization needs running statistics in training: r and d "
                         "compare the batch with them")
    if group_size is None:
        return _renorm_single(input, running_mean, running_var, weight, bias, True, momentum,
                              eps, r_max, d_max)
    return per_group(_renorm_single, input, group_size, running_mean, running_var, weight, bias,
                     momentum=momentum, eps=eps, r_max=r_max, d_max=d_max)


def renorm_limits(step, warmup_steps, ramp_steps, r_max=3.0, d_max=5.0):
    """The paper's schedule: batch norm (1, 0) for ``warmup_steps``, then linear to (r_max, d_max).

    Ioffe (2017) trains with r_max = 1, d_max = 0 for the first 5000 steps and then relaxes
    them gradually (to 3 at step 40k and 5 at step 25k). Here both reach their final values
    ``ramp_steps`` after the warm-up. Returns ``(r_max, d_max)`` for ``step``.
    """
    if warmup_steps < 0 or ramp_steps < 0:
        raise ValueError(f"warmup_steps and ramp_steps must be >= 0, "
                         f"got {warmup_steps}, {ramp_steps}")
    if ramp_steps:
        progress = min(max(step - warmup_steps, 0) / ramp_steps, 1.0)
    else:
        progress = float(step >= warmup_steps)
    return 1.0 + progress * (r_max - 1.0), progress * d_max


def relax_limits(warmup_steps, ramp_steps, r_max=3.0, d_max=5.0):
    """An ``on_step(step, model)`` callback for :func:`bnlib.book.training.train`: :func:`renorm_limits`.

    After training step ``step`` it sets ``r_max`` and ``d_max`` of every
    :class:`BatchRenorm` in the model to their values for the next step.
    """
    renorm_limits(0, warmup_steps, ramp_steps, r_max, d_max)  # checks the arguments now

    def on_step(step, model):
        limits = renorm_limits(step + 1, warmup_steps, ramp_steps, r_max, d_max)
        for module in model.modules():
            if isinstance(module, BatchRenorm):
                module.r_max, module.d_max = limits

    return on_step


class BatchRenorm(_BatchNormForward, torch.nn.modules.batchnorm._BatchNorm):
    """Batch Renormalization of ``(N, C, *)`` input (Ioffe, 2017); eval mode is BatchNorm's.

    See :func:`bnlib.torch.batch_renorm`. ``r_max`` and ``d_max`` are plain attributes, to be raised
    during training (the paper starts from 1 and 0: see :func:`renorm_limits`).
    A subclass of torch's ``_BatchNorm`` with its parameters, buffers and conventions; any
    input of shape ``(N, C, *)``; running statistics are required.

    Args:
        num_features: C.
        r_max, d_max: the clipping limits. Default 3 and 5 (the paper's final values).
        group_size: None, or renormalize each group of that many examples on its own.
        eps, momentum, affine, device, dtype, \\*\\*kwargs: as for ``torch.nn.BatchNorm1d``
            (``bias=`` too where torch has it).

    Example:
        >>> brn = BatchRenorm(16, r_max=1.0, d_max=0.0)   # starts as batch norm
        >>> y = brn(torch.randn(8, 16))
        >>> brn.r_max, brn.d_max = renorm_limits(step=3000, warmup_steps=1000, ramp_steps=4000)
    """

    def __init__(self, num_features, r_max=3.0, d_max=5.0, group_size=None, eps=1e-5,
                 momentum=0.1, affine=True, device=None, dtype=None, **kwargs):
        _check_limits(r_max, d_max)
        if group_size is not None:
            _checks.check_positive_int("group_size", group_size)
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, **kwargs)
        self.r_max, self.d_max, self.group_size = r_max, d_max, group_size

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        return batch_renorm(input, running_mean, running_var, self.weight, self.bias,
                            use_batch_stats, momentum, self.eps, self.r_max, self.d_max,
                            self.group_size)

    def extra_repr(self):
        return (f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
                f"group_size={self.group_size}")
