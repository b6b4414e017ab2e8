"""Argument checks shared by the NumPy and the torch implementations.

Every check runs before any state changes, so a raised error never leaves a layer
half-updated. The functions take plain Python values (shapes as tuples, dtype names as
strings) or NumPy arrays, so that both backends use exactly the same rules and messages.
"""

import math
import numbers

import numpy as np


def _is_real(value):
    """A real number (Python or NumPy scalar), but not a bool (True is 1 by accident)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_eps(eps):
    """``eps`` must be a finite number > 0 (it keeps ``1 / sqrt(var + eps)`` finite)."""
    if not _is_real(eps):
        raise TypeError(f"eps must be a positive float, got {type(eps).__name__} {eps!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")


def check_eps_fits(eps, smallest_subnormal, dtype_name):
    """``eps`` must not round to 0 in the dtype the statistics are computed in.

    Otherwise a constant channel gives ``0 * (1 / sqrt(0)) = nan`` instead of 0. A value
    rounds to 0 when it is at most half the dtype's smallest subnormal number (ties go to
    the even neighbour, 0): a comparison of Python floats, so that ``torch.compile`` traces
    it without a graph break.
    """
    if eps <= smallest_subnormal / 2:
        raise ValueError(
            f"eps={eps!r} rounds to 0 in {dtype_name}, the dtype the statistics are computed "
            f"in; use eps >= {smallest_subnormal}"
        )


def check_momentum(momentum, allow_none=True):
    """``momentum`` is the weight of the new batch, in [0, 1]; ``None`` means cumulative average.

    A 0-d floating tensor is what a module with ``momentum=None`` passes (``1 / count``,
    kept on the device); it is not read back to check its range.
    """
    if getattr(momentum, "ndim", None) == 0 and getattr(momentum, "is_floating_point", bool)():
        return
    if momentum is None:
        if allow_none:
            return
        raise ValueError(
            "momentum=None (cumulative average) needs num_batches_tracked; "
            "use a BatchNorm module, or pass momentum = 1 / (number of batches seen)"
        )
    if not _is_real(momentum):
        raise TypeError(
            f"momentum must be a float in [0, 1] or None, got {type(momentum).__name__} "
            f"{momentum!r}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must be in [0, 1] (the weight of the new batch, torch's convention), "
            f"got {momentum!r}"
        )


def check_positive_int(name, value):
    """A count (channels, groups, steps, processes): a positive int; a NumPy integer is fine,
    a bool is not."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_num_features(num_features):
    """The number of channels C of a layer: a positive int."""
    check_positive_int("num_features", num_features)


def check_num_groups(num_groups, num_channels):
    """Group norm: the number of groups G must be a positive divisor of the channels C."""
    if (not isinstance(num_groups, numbers.Integral) or isinstance(num_groups, bool)
            or num_groups < 1 or num_channels % num_groups):
        raise ValueError(f"num_groups must be a positive divisor of the {num_channels} "
                         f"channels, got {num_groups!r}")


def normalized_shape(value):
    """Layer norm's ``normalized_shape`` as a tuple of positive ints (an int means a 1-tuple)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    shape = tuple(value)
    if not shape or any(not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 1
                        for d in shape):
        raise ValueError(f"normalized_shape must be a positive int or a non-empty sequence of "
                         f"positive ints, got {value!r}")
    return tuple(int(d) for d in shape)


def check_input_shape(shape, training, allowed_ndims=None, num_features=None):
    """Check the shape of an input (N, C, *) before any computation.

    Args:
        shape: the input's shape as a tuple.
        training: whether batch statistics will be computed (then each channel needs more
            than one value).
        allowed_ndims: ranks a module accepts, e.g. ``(2, 3)`` for BatchNorm1d; ``None``
            accepts any rank >= 2.
        num_features: the expected channel count C, or ``None`` to skip that check.

    Raises:
        ValueError: wrong rank, wrong channel count, or a single value per channel in training.
    """
    ndim = len(shape)
    if allowed_ndims is not None and ndim not in allowed_ndims:
        expected = " or ".join(f"{d}D" for d in allowed_ndims)
        raise ValueError(f"expected {expected} input (got {ndim}D input of shape {tuple(shape)})")
    if ndim < 2:
        raise ValueError(
            f"expected input of shape (N, C, *) with at least 2 dimensions, "
            f"got {ndim}D input of shape {tuple(shape)}"
        )
    if num_features is not None and shape[1] != num_features:
        raise ValueError(
            f"input has {shape[1]} channels (dim 1 of shape {tuple(shape)}) "
            f"but the layer expects {num_features}"
        )
    values_per_channel = math.prod(shape) // shape[1] if shape[1] else 0
    if training and values_per_channel == 1:
        raise ValueError(
            f"expected more than 1 value per channel when training (or in eval mode without "
            f"running statistics), got input of shape {tuple(shape)}: with one value the batch "
            f"variance is 0 and every output equals beta. Use a larger batch, or eval mode "
            f"with running statistics."
        )


def check_float_dtype(name, is_floating, dtype):
    """Inputs and parameters must be floating point (integer or bool data is a mistake)."""
    if not is_floating:
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}")


def check_channel_vector(name, shape, num_channels):
    """A per-channel vector (gamma, beta, running statistics) must have shape (C,)."""
    if tuple(shape) != (num_channels,):
        raise ValueError(
            f"{name} must have shape ({num_channels},) to match the input's {num_channels} "
            f"channels, got shape {tuple(shape)}"
        )


def check_parameter(name, shape, expected_shape, floating, dtype, allowed_dtypes,
                    device=None, input_device=None):
    """A weight, bias or running statistic next to an input: floating, of ``expected_shape``,
    on the input's device (torch only) and of one of ``allowed_dtypes``: the input's dtype
    first, then any other accepted one (float32 for half-precision input)."""
    check_float_dtype(name, floating, dtype)
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)} to match the input, "
                         f"got shape {tuple(shape)}")
    if device != input_device:
        raise ValueError(f"{name} is on {device} but the input is on {input_device}")
    if dtype not in allowed_dtypes:
        raise TypeError(f"{name} has dtype {dtype} but the input has dtype {allowed_dtypes[0]}; "
                        f"they must match (float32 parameters are also accepted for "
                        f"float16/bfloat16 input)")


def check_running_pair(running_mean, running_var):
    """Running statistics come as a pair: both given or both ``None``."""
    if (running_mean is None) != (running_var is None):
        given = "running_mean" if running_var is None else "running_var"
        raise ValueError(f"running_mean and running_var must be given together; only {given} was")


def check_no_grad(name, requires_grad):
    """Running statistics are updated in place, outside autograd: they must not require grad."""
    if requires_grad:
        raise ValueError(
            f"{name} requires grad, but running statistics are buffers updated in place "
            f"without autograd; pass {name}.detach() (or register it as a buffer, not a Parameter)"
        )


def check_nonnegative(name, values):
    """A variance (a NumPy array) must be >= 0; NaN is let through (it marks a poisoned channel)."""
    negative = np.flatnonzero(np.asarray(values) < 0)
    if negative.size:
        c = int(negative[0])
        more = f" (and {negative.size - 1} more channels)" if negative.size > 1 else ""
        raise ValueError(f"{name} must be >= 0, got {float(values[c])!r} for channel {c}{more}")


def check_set_size(shape, set_size):
    """LayerNorm/GroupNorm: each normalized set must hold more than one value."""
    if set_size == 1:
        raise ValueError(
            f"each normalized set of input of shape {tuple(shape)} holds a single value: its "
            f"normalized value is always 0 and the output would be beta whatever the input. "
            f"Normalize over more values."
        )
