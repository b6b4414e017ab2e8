"""Batch norm on a CPU in fused loops (the compiled ``_fused``): training forward and backward,
and eval mode.

Each training direction is two passes over memory: the forward sums x's moments, then writes
y; the backward sums dy and dy * (x - mean), then writes dx. Between the passes
:mod:`._formulas` turns the sums into per-channel coefficients, as for every other route.
Eval mode is one pass. In torch's eager operations
(:mod:`._kernels`, which still runs where these loops do not apply) the forward takes five or
six passes, and a forward and backward about forty operations (22 and 17 on a (60, 100) input
with running statistics, 26 and 26 on a 4-D one, counted with a ``TorchDispatchMode``).

The loops (``bnlib/torch/_fused.cpp``) compute each element in its own dtype and each sum in
double over partial sums of at most 64 values per accumulator, in an order their source
fixes, so the bits do not depend on the CPU's vector units. They run on one thread. They
apply to CPU tensors of float32 or float64 that are contiguous or channels-last
(:func:`layout`), except inputs above SMALL_BYTES when torch may use more than
MAX_THREADS threads: there torch's thread pool runs :mod:`._kernels` on every core. The
module is built when bnlib is installed, where a C++ compiler is (``setup.py``); without it
every call takes :mod:`._kernels`.

Conventions: as :mod:`._kernels` (statistics over the m = N * prod(spatial) values of each
channel, biased variance); the pivot is that of :func:`._reductions.pivot`, the mean of the
first values of each channel (about PIVOT_VALUES of them), 0 where not finite.
"""

import contextvars

import torch

from ._formulas import backward_coefficients, normalize_coefficients
from ._reductions import PIVOT_VALUES, as_dtype

try:
    from . import _fused
except ImportError:  # installed without a C++ compiler
    _fused = None

# Whether the loops may run in this thread (and context): bnlib.torch.use_fused_loops.
_ENABLED = contextvars.ContextVar("bnlib_fused_loops", default=True)

# On the 2-core machine that builds the book, with torch at 2 threads, the one-thread loops
# took 0.81 (64, 64, 32, 32) and 0.84 (32, 256, 14, 14) of native's forward+backward time,
# the kernels of torch operations 1.16 and 1.29 (each call after a native one, which leaves
# torch's OpenMP workers spinning as a network's previous layer does; `python -m bnlib.bench
# --threads 2`: the loops 0.79-0.80). So the loops run at up to MAX_THREADS threads at any
# size. More threads were not measured; with them, torch's multi-threaded operations take
# inputs larger than SMALL_BYTES, which a core's cache holds and a thread pool speeds up
# little.
MAX_THREADS = 2
SMALL_BYTES = 1 << 20

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def available():
    """True when the fused loops were built (a C++ compiler at install time)."""
    return _fused is not None


def enabled():
    """True when the loops were built and are not switched off in this context."""
    return _fused is not None and _ENABLED.get()


def _plain(t):
    """A dense tensor whose memory holds its values: not a lazy negation (``is_neg``), not an
    efficient zero tensor (no memory at all), not sparse or mkldnn."""
    return (t.layout == torch.strided and not t.is_neg()
            and not (hasattr(t, "_is_zerotensor") and t._is_zerotensor()))


def _view(x):
    """:func:`layout` without the switch and the threads rule: the layout alone."""
    if x.device.type != "cpu" or x.dtype not in _DTYPE_CODES or x.numel() == 0 or not _plain(x):
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


def layout(x):
    """How the loops see x: ``(dtype code, outer, C, inner, pivot_rows, memory format)``, or None.

    x is viewed as (outer, C, inner) with strides (C * inner, inner, 1): contiguous
    ``(N, C, *)`` as ``(N, C, prod(spatial))`` and channels-last as
    ``(N * prod(spatial), C, 1)``. ``pivot_rows`` of the outer dim hold the first
    ``min(N, ceil(PIVOT_VALUES / prod(spatial)))`` samples. None where the loops do not apply
    (not built or switched off, not a CPU tensor, half precision, empty, another layout or not
    plain memory, or larger than SMALL_BYTES while torch may use more than MAX_THREADS
    threads).
    """
    if not enabled():
        return None
    if torch.get_num_threads() > MAX_THREADS and x.numel() * x.element_size() > SMALL_BYTES:
        return None
    return _view(x)


def _address(t):
    """The address of a tensor's data, or 0 for None (the loops' 'no such term')."""
    return 0 if t is None else t.data_ptr()


def _affine(x, view, centre, scale, offset, dy=None, dy_scale=None):
    """A new tensor laid out as x: ``(x - centre) * scale [+ offset] [+ dy * dy_scale]``, one pass.

    centre, scale, offset and dy_scale are contiguous (C,) tensors of x's dtype (offset may be
    None: no such term); dy, when given, is laid out as x.
    """
    code, outer, c, inner, _, memory_format = view
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    _fused.affine(code, x.data_ptr(), outer, c, inner, centre.data_ptr(), scale.data_ptr(),
                  _address(offset), _address(dy), _address(dy_scale), out.data_ptr())
    return out


def forward(x, weight, bias, eps, view):
    """``y, mean, var, invstd`` of the training forward, x laid out as ``view`` (:func:`layout`).

    Pass 1 (``moments``): the pivot K, ``shift = mean(x - K)``, ``mean = K + shift`` and the
    biased variance (single pass from the sums of x - K and its squares, or two passes
    where ``shift^2 > 4 var`` in a channel, as in :func:`._kernels.forward`). Pass 2
    (``affine``): ``y = (x - K) * scale + (bias - shift * scale)``
    (:func:`._formulas.normalize_coefficients`).
    """
    code, outer, c, inner, pivot_rows, _ = view
    stats = torch.empty((4, c), dtype=x.dtype, device=x.device)
    _fused.moments(code, x.data_ptr(), outer, c, inner, pivot_rows, stats.data_ptr())
    k, shift, mean, var = stats.unbind()
    invstd, scale, offset = normalize_coefficients(var, eps, weight, bias, shift)
    return _affine(x, view, k, scale, offset), mean, var, invstd


def backward(x, dy, weight, mean, invstd, view):
    """``dx, dgamma, dbeta`` by the closed form, x laid out as ``view`` (:func:`layout` of the
    forward), or None where the saved x or mean no longer fit that view (a saved-tensor hook
    may return them in another layout or dtype) or dy is not plain memory: the caller then
    takes the kernels of torch operations.

    Pass 1 (``sums``): ``sum(dy)`` and ``sum(dy * (x - mean))``; the coefficients of
    :func:`._formulas.backward_coefficients`; pass 2 (``affine``):
    ``dx = (x - mean) * a + b + dy * scale``. dy is first laid out as x (a copy only when it
    is not, e.g. the expanded gradient of a sum).
    """
    if _view(x) != view or not (_read_as_is(mean, x) and _plain(dy)):
        return None  # what was saved came back changed (saved-tensor hooks), or dy is not plain
    code, outer, c, inner, _, memory_format = view
    dy = as_dtype(dy, x.dtype)
    if not dy.is_contiguous(memory_format=memory_format):
        dy = dy.contiguous(memory_format=memory_format)
    sums = torch.empty((2, c), dtype=x.dtype, device=x.device)
    _fused.sums(code, x.data_ptr(), dy.data_ptr(), outer, c, inner, mean.data_ptr(),
                sums.data_ptr())
    sum_dy, sum_dy_c = sums.unbind()
    a, scale, b, dgamma, dbeta = backward_coefficients(sum_dy, sum_dy_c, invstd, weight,
                                                       outer * inner)
    return _affine(x, view, mean, a, b, dy, scale), dgamma, dbeta


def _read_as_is(t, x):
    """True when the loops can read the (C,) vector t directly: x's dtype, contiguous, plain."""
    return t.dtype == x.dtype and t.is_contiguous() and _plain(t)


def normalize_fixed(x, mean, var, weight, bias, eps, view):
    """Eval mode, ``y = (x - mean) * scale + offset`` per channel in one pass, or None.

    The same operations in the same order as the torch-operations route (subtract, multiply,
    add, each rounded to x's dtype), so the same bits (a NaN's sign and payload aside: where
    x and the scale are both NaN the two may pick different ones). None (the caller takes
    that route) where the running mean or the bias, which the loops read as they are, are
    not plain memory of x's dtype, or var has another dtype.
    """
    if not (_read_as_is(mean, x) and var.dtype == x.dtype
            and (bias is None or (bias.dtype == x.dtype and _plain(bias)))):
        return None
    _, scale, offset = normalize_coefficients(var, eps, weight, bias)
    if offset is not None and not offset.is_contiguous():  # a strided bias: its own copy
        offset = offset.contiguous()
    return _affine(x, view, mean, scale, offset)
