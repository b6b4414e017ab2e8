"""Layer and group normalization for torch: twins of ``torch.nn.LayerNorm`` and ``GroupNorm``.

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
import numbers

import torch

from .. import _checks
from ._reductions import HALF
from .functional import batch_norm


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
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but the input is on {x.device}")
    allowed = (x.dtype, torch.float32) if x.dtype in HALF else (x.dtype,)
    if t.dtype not in allowed:
        raise TypeError(f"{name} has dtype {t.dtype} but the input has dtype {x.dtype}")


def _affine(xhat, weight, bias, view):
    y = xhat if weight is None else xhat * weight.view(view).to(xhat.dtype)
    return y if bias is None else y + bias.view(view).to(xhat.dtype)


def _normalized_shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    shape = tuple(normalized_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
                        for d in shape):
        raise ValueError(f"normalized_shape must be a positive int or a non-empty sequence of "
                         f"positive ints, got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


def _check_num_groups(num_groups, num_channels):
    if (isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral)
            or num_groups < 1 or num_channels % num_groups):
        raise ValueError(f"num_groups must be a positive divisor of the {num_channels} "
                         f"channels, got {num_groups!r}")


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
    shape = _normalized_shape(normalized_shape)
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
    _check_num_groups(num_groups, c)
    _checks.check_eps(eps)
    _check_param("weight", weight, (c,), input)
    _check_param("bias", bias, (c,), input)
    xhat = _normalize_sets(input, (c // num_groups) * math.prod(input.shape[2:]), eps)
    return _affine(xhat, weight, bias, (c,) + (1,) * (input.dim() - 2))


class LayerNorm(torch.nn.Module):
    """Layer normalization over the last dims: the twin of ``torch.nn.LayerNorm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with mean and biased variance over
    the last ``len(normalized_shape)`` dims of each example; weight (init 1) and bias (init 0)
    have shape ``normalized_shape``. The state_dict keys (weight, bias) are torch's.

    Args:
        normalized_shape: an int or a sequence of ints.
        eps: added to the variance, > 0. Default 1e-5.
        elementwise_affine: learn ``weight`` (and ``bias``). Default True.
        bias: learn ``bias`` when ``elementwise_affine``. Default True.
        device, dtype: of the parameters.

    Example:
        >>> ln = LayerNorm(64)
        >>> y = ln(torch.randn(32, 64))
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        _checks.check_eps(eps)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        weight = torch.ones(self.normalized_shape, **factory) if elementwise_affine else None
        bias = (torch.zeros(self.normalized_shape, **factory)
                if elementwise_affine and bias else None)
        self.register_parameter("weight", None if weight is None else torch.nn.Parameter(weight))
        self.register_parameter("bias", None if bias is None else torch.nn.Parameter(bias))

    def reset_parameters(self):
        """weight = 1, bias = 0."""
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, input):
        """Normalize ``(*, *normalized_shape)`` input; errors as :func:`layer_norm`."""
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GroupNorm(torch.nn.Module):
    """Group normalization of ``(N, C, *)`` input: the twin of ``torch.nn.GroupNorm``.

    See :func:`group_norm`. Per-channel weight (init 1) and bias (init 0); the state_dict
    keys are torch's.

    Args:
        num_groups: G, a divisor of ``num_channels``.
        num_channels: C.
        eps: added to the variance, > 0. Default 1e-5.
        affine: learn ``weight`` and ``bias``. Default True.
        device, dtype: of the parameters.

    Raises:
        ValueError: G not a positive divisor of C, or a bad eps.

    Example:
        >>> gn = GroupNorm(4, 16)
        >>> y = gn(torch.randn(2, 16, 8, 8))
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None):
        super().__init__()
        _checks.check_num_features(num_channels)
        _check_num_groups(num_groups, num_channels)
        _checks.check_eps(eps)
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = eps, affine
        factory = {"device": device, "dtype": dtype}
        for name, init in (("weight", torch.ones), ("bias", torch.zeros)):
            self.register_parameter(
                name, torch.nn.Parameter(init(num_channels, **factory)) if affine else None)

    def reset_parameters(self):
        """weight = 1, bias = 0."""
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def forward(self, input):
        """Normalize ``(N, C, *)`` input; errors as :func:`group_norm`; C must be ``num_channels``."""
        if (isinstance(input, torch.Tensor) and input.dim() >= 2
                and input.shape[1] != self.num_channels):
            raise ValueError(f"input has {input.shape[1]} channels (dim 1 of shape "
                             f"{tuple(input.shape)}) but the layer expects {self.num_channels}")
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
