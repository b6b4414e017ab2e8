"""The training-mode forward and backward on a CPU in fused loops (the compiled ``_fused``).

Each direction is two passes over memory: the forward sums x's moments, then writes y; the
backward sums dy and dy * (x - mean), then writes dx. Between them :mod:`._formulas` turns
the sums into per-channel coefficients, as for every other route. torch's eager operations
need five or six passes and about thirty dispatches for the same (:mod:`._kernels`, which
still runs where these loops do not apply).

The loops (``bnlib/torch/_fused.cpp``) compute each element in its own dtype and each sum in
double over partial sums of at most 16 values per accumulator, in an order their source
fixes, so the bits do not depend on the CPU's vector units or the thread count. They apply
to CPU tensors of float32 or float64 that are contiguous or channels-last
(:func:`layout`); the module is built when bnlib is installed, where a C++ compiler is
(``setup.py``); without it every call takes :mod:`._kernels`.

Conventions: as :mod:`._kernels` (statistics over the m = N * prod(spatial) values of each
channel, biased variance); the pivot is that of :func:`._reductions.pivot`, the mean of the
first values of each channel (about PIVOT_VALUES of them), 0 where not finite.
"""

import torch

from ._formulas import backward_coefficients, normalize_coefficients
from ._reductions import PIVOT_VALUES, as_dtype

try:
    from . import _fused
except ImportError:  # installed without a C++ compiler
    _fused = None

# Switched off by tests that exercise the torch-operations route on the same inputs.
enabled = _fused is not None

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def available():
    """True when the fused loops were built (a C++ compiler at install time)."""
    return _fused is not None


def layout(x):
    """How the loops see x: ``(dtype code, outer, C, inner, pivot_rows, memory format)``, or None.

    x is viewed as (outer, C, inner) with strides (C * inner, inner, 1): contiguous
    ``(N, C, *)`` as ``(N, C, prod(spatial))`` and channels-last as
    ``(N * prod(spatial), C, 1)``. ``pivot_rows`` of the outer dim hold the first
    ``min(N, ceil(PIVOT_VALUES / prod(spatial)))`` samples. None where the loops do not apply
    (not built or switched off, not a CPU tensor, half precision, another layout).
    """
    if not enabled or x.device.type != "cpu" or x.dtype not in _DTYPE_CODES:
        return None
    n, c = x.shape[0], x.shape[1]
    spatial = x.numel() // (n * c)
    samples = min(n, -(-PIVOT_VALUES // spatial))
    if x.is_contiguous():
        return _DTYPE_CODES[x.dtype], n, c, spatial, samples, torch.contiguous_format
    memory_format = _CHANNELS_LAST.get(x.dim())
    if memory_format is not None and x.is_contiguous(memory_format=memory_format):
        return _DTYPE_CODES[x.dtype], n * spatial, c, 1, samples * spatial, memory_format
    return None


def _address(t):
    """The address of a tensor's data, or 0 for None (the loops' 'no such term')."""
    return 0 if t is None else t.data_ptr()


def forward(x, weight, bias, eps, view):
    """``y, mean, var, invstd`` of the training forward, x laid out as ``view`` (:func:`layout`).

    Pass 1 (``moments``): the pivot K, ``shift = mean(x - K)``, ``mean = K + shift`` and the
    biased variance (single pass from the sums of x - K and its squares, or two passes
    where ``shift^2 > 4 var`` in a channel, as in :func:`._kernels.forward`). Pass 2
    (``affine``): ``y = (x - K) * scale + (bias - shift * scale)``
    (:func:`._formulas.normalize_coefficients`).
    """
    code, outer, c, inner, pivot_rows, memory_format = view
    threads = torch.get_num_threads()
    stats = torch.empty((4, c), dtype=x.dtype)
    _fused.moments(code, threads, x.data_ptr(), outer, c, inner, pivot_rows, stats.data_ptr())
    k, shift, mean, var = stats.unbind()
    invstd, scale, offset = normalize_coefficients(var, eps, weight, bias, shift)
    y = torch.empty(x.shape, dtype=x.dtype, memory_format=memory_format)
    _fused.affine(code, threads, x.data_ptr(), outer, c, inner, k.data_ptr(), scale.data_ptr(),
                  _address(offset), 0, 0, y.data_ptr())
    return y, mean, var, invstd


def backward(x, dy, weight, mean, invstd, view):
    """``dx, dgamma, dbeta`` by the closed form, x laid out as ``view`` (:func:`layout`).

    Pass 1 (``sums``): ``sum(dy)`` and ``sum(dy * (x - mean))``; the coefficients of
    :func:`._formulas.backward_coefficients`; pass 2 (``affine``):
    ``dx = (x - mean) * a + b + dy * scale``. dy is first laid out as x (a copy only when it
    is not, e.g. the expanded gradient of a sum).
    """
    code, outer, c, inner, _, memory_format = view
    threads = torch.get_num_threads()
    dy = as_dtype(dy, x.dtype)
    if not dy.is_contiguous(memory_format=memory_format):
        dy = dy.contiguous(memory_format=memory_format)
    sums = torch.empty((2, c), dtype=x.dtype)
    _fused.sums(code, threads, x.data_ptr(), dy.data_ptr(), outer, c, inner, mean.data_ptr(),
                sums.data_ptr())
    sum_dy, sum_dy_c = sums.unbind()
    a, scale, b, dgamma, dbeta = backward_coefficients(sum_dy, sum_dy_c, invstd, weight,
                                                       outer * inner)
    dx = torch.empty(x.shape, dtype=x.dtype, memory_format=memory_format)
    _fused.affine(code, threads, x.data_ptr(), outer, c, inner, mean.data_ptr(), a.data_ptr(),
                  b.data_ptr(), dy.data_ptr(), scale.data_ptr(), dx.data_ptr())
    return dx, dgamma, dbeta
