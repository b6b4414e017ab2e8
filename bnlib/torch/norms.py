"""Layer and group normalization for torch: ``torch.nn.LayerNorm`` and ``GroupNorm`` computed by bnlib.

Both standardize sets of values that belong to one example, so their output never depends on
the rest of the batch and is the same in training and eval mode. Each set becomes a column of
a (K, R) matrix (K values per set, R sets) and :func:`bnlib.torch.batch_norm` of that matrix
normalizes the columns, forward and backward (closed form, double backward included); the
affine map is then elementwise (layer norm) or per channel (group norm). The NumPy versions
in :mod:`bnlib.numpy.norms` do the same.

Unlike torch, a set of a single value is an error (its output would be ``beta`` whatever
the input).
"""

import math

import torch

from .. import _checks
from ._reductions import HALF
from .functional import batch_norm

__all__ = ["GroupNorm", "LayerNorm", "group_norm", "layer_norm"]


def _normalize_sets(x, set_size, eps):
    """Standardize x in consecutive (row-major) sets of ``set_size`` values (batch norm of the transpose)."""
    _checks.check_set_size(x.shape, set_size)
    if x.numel() == 0:
        return x.clone()
    columns = x.reshape(-1, set_size).t()  # (K, R): one set per column
    return batch_norm(columns, None, None, training=True, eps=eps).t().reshape(x.shape)


def _check_input(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    _checks.check_float_dtype("input", x.is_floating_point(), x.dtype)


def _check_param(name, t, shape, x):
    """weight / bias: None, or of ``shape`` on x's device, x's dtype (float32 also for half x)."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    _checks.check_parameter(name, t.shape, shape, t.is_floating_point(), t.dtype,
                            (x.dtype, torch.float32) if x.dtype in HALF else (x.dtype,),
                            t.device, x.device)


def _affine(xhat, weight, bias, view):
    y = xhat if weight is None else xhat * weight.view(view).to(xhat.dtype)
    return y if bias is None else y + bias.view(view).to(xhat.dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization with the signature and results of ``torch.nn.functional.layer_norm``.

    Each example is standardized over its last ``len(normalized_shape)`` dims with their mean
    and **biased** variance, then ``y = xhat * weight + bias`` elementwise (weight and bias of
    shape ``normalized_shape``).

    Raises:
        TypeError: non-tensor or non-floating input; weight/bias of another dtype.
        ValueError: bad ``normalized_shape`` or input whose trailing dims differ from it;
            weight/bias of another shape or device; eps <= 0; a single normalized value.
    """
    _check_input(input)
    shape = _checks.normalized_shape(normalized_shape)
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise ValueError(f"layer norm over normalized_shape={shape} expects input of shape "
                         f"(*, {', '.join(map(str, shape))}), got {tuple(input.shape)}")
    _checks.check_eps(eps)
    _check_param("weight", weight, shape, input)
    _check_param("bias", bias, shape, input)
    xhat = _normalize_sets(input, math.prod(shape), eps)
    return _affine(xhat, weight, bias, shape)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalization with the signature and results of ``torch.nn.functional.group_norm``.

    The C channels of ``(N, C, *)`` input form ``num_groups`` consecutive groups; each
    example's group is standardized over its (C / G) * prod(spatial) values (biased variance),
    then ``y = xhat * weight[c] + bias[c]``. G = 1 is the Group Normalization paper's layer
    norm; G = C is instance norm.

    Raises:
        TypeError: non-tensor or non-floating input; weight/bias of another dtype.
        ValueError: rank < 2; G not a positive divisor of C; weight/bias not of shape (C,);
            eps <= 0; groups of a single value.
    """
    _check_input(input)
    if input.dim() < 2:
        raise ValueError(f"group norm expects input of shape (N, C, *), got {tuple(input.shape)}")
    c = input.shape[1]
    _checks.check_num_groups(num_groups, c)
    _checks.check_eps(eps)
    _check_param("weight", weight, (c,), input)
    _check_param("bias", bias, (c,), input)
    xhat = _normalize_sets(input, (c // num_groups) * math.prod(input.shape[2:]), eps)
    return _affine(xhat, weight, bias, (c,) + (1,) * (input.dim() - 2))


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by bnlib: normalization over the last dims.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with mean and biased variance over
    the last ``len(normalized_shape)`` dims of each example (:func:`layer_norm`). Constructor,
    parameters, ``extra_repr`` and state dict are torch's; ``eps`` and ``normalized_shape``
    are checked when the module is built.

    Example:
        >>> ln = LayerNorm(64)
        >>> y = ln(torch.randn(32, 64))
    """

    def __init__(self, normalized_shape, *args, **kwargs):
        _checks.normalized_shape(normalized_shape)
        super().__init__(normalized_shape, *args, **kwargs)
        _checks.check_eps(self.eps)

    def forward(self, input):
        """Normalize ``(*, *normalized_shape)`` input; errors as :func:`layer_norm`."""
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` computed by bnlib: normalization of ``(N, C, *)`` input per
    example and group of channels (:func:`group_norm`).

    Constructor, parameters, ``extra_repr`` and state dict are torch's; ``num_groups``,
    ``num_channels`` and ``eps`` are checked when the module is built.

    Raises:
        ValueError: G not a positive divisor of C, or a bad eps.

    Example:
        >>> gn = GroupNorm(4, 16)
        >>> y = gn(torch.randn(2, 16, 8, 8))
    """

    def __init__(self, num_groups, num_channels, *args, **kwargs):
        _checks.check_positive_int("num_channels", num_channels)
        _checks.check_num_groups(num_groups, num_channels)
        super().__init__(num_groups, num_channels, *args, **kwargs)
        _checks.check_eps(self.eps)

    def forward(self, input):
        """Normalize ``(N, C, *)`` input; errors as :func:`group_norm`; C must be ``num_channels``."""
        if (isinstance(input, torch.Tensor) and input.dim() >= 2
                and input.shape[1] != self.num_channels):
            raise ValueError(f"input has {input.shape[1]} channels (dim 1 of shape "
                             f"{tuple(input.shape)}) but the layer expects {self.num_channels}")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
