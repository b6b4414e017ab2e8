"""Per-channel reductions for the training-mode kernels, written for memory traffic.

Batch norm is memory-bound: on a CPU its cost is the number of passes over input-sized
memory, and the temporaries each operation writes. These helpers compute the per-channel
statistics of an ``(N, C, *)`` tensor with as few passes as plain torch operations allow, and
without an input-sized temporary where torch has a reduction that needs none.

Conventions: statistics are per channel (dim 1) over the m = N * prod(spatial) other values;
the variance is the **biased** one (divide by m).
"""

import functools
import math

import torch

HALF = (torch.float16, torch.bfloat16)  # half-precision dtypes: statistics in float32

# The pivot averages at least this many values per channel from the first samples.
PIVOT_VALUES = 16
# Longest row the vector-norm kernel sums in one piece (it accumulates a row sequentially:
# rows of 2**18 values lose ~3e-6, rows of 1024 ~1e-7, like a plain sum).
MAX_ROW = 1024
# Block size of the CPU kernels (a block and its partners fit in a core's L2 cache).
BLOCK_BYTES = 512 * 1024


def reduce_dims(ndim):
    """All dims but the channel dim 1."""
    return [0] + list(range(2, ndim))


def per_channel(v, ndim):
    """View a (C,) vector as (1, C, 1, ...) to broadcast against ``(N, C, *)``.

    For (N, C) input the (C,) vector itself broadcasts so: no view (each operation costs
    a dispatch, which is what small inputs pay for).
    """
    return v if ndim == 2 else v.view([1, -1] + [1] * (ndim - 2))


def stats_dtype(dtype):
    """Statistics are accumulated in float32 for half-precision input."""
    return torch.float32 if dtype in HALF else dtype


def as_dtype(t, dtype):
    """``t.to(dtype)``, without a call when t already has that dtype (a call that does
    nothing still costs a dispatch)."""
    return t if t.dtype == dtype else t.to(dtype)


@functools.lru_cache(maxsize=256)
def _row_length(spatial):
    """The largest divisor of ``spatial`` that is at most MAX_ROW (1 if only that divides it)."""
    for d in range(min(spatial, MAX_ROW), 0, -1):
        if spatial % d == 0:
            return d
    return 1


def row_sum_of_squares(c):
    """Per-channel sum of ``c ** 2`` in one read without a temporary; None where there is no route.

    A contiguous ``(N, C, *)`` tensor is viewed as rows of at most MAX_ROW values (each inside
    one channel), whose 2-norms torch computes without writing anything; the squared norms are
    then summed per channel. (N, C) input, where each channel is strided, other layouts and
    spatial sizes without a divisor of at least 16 have no such route.
    """
    if c.dim() > 2 and c.is_contiguous():
        n, channels = c.shape[:2]
        row = _row_length(c[0, 0].numel())
        if row >= 16:
            norms = torch.linalg.vector_norm(c.view(-1, row), dim=1)
            return norms.square_().view(n, channels, -1).sum((0, 2))
    return None


def sum_of_products(a, b):
    """Per-channel sum of ``a * b`` over every dim but 1.

    torch has no fused multiply-and-reduce for this layout: ``linalg.vecdot`` writes the
    product to a temporary and sums it. Callers keep that temporary small by passing blocks
    (see :func:`blocks`).

    Computed in the inputs' dtype under ``torch.autocast`` too: autocast counts ``vecdot``
    among the matrix products it runs in float16/bfloat16, which would round the variance
    and the backward's sums to 8 or 11 bits.
    """
    if torch.is_autocast_enabled(a.device.type):
        with torch.autocast(a.device.type, enabled=False):
            return sum_of_products(a, b)
    if a.dim() == 2:
        return torch.linalg.vecdot(a, b, dim=0)
    if a.is_contiguous() and b.is_contiguous():
        n, c = a.shape[:2]
        return torch.linalg.vecdot(a.view(n, c, -1), b.view(n, c, -1), dim=2).sum(0)
    return (a * b).sum(reduce_dims(a.dim()))


def blocks(x):
    """Slices of dim 0 holding about BLOCK_BYTES each (one slice for small or CUDA input).

    On a CPU the kernels walk over the input block by block, so that what one operation
    writes is still in cache when the next reads it: a fresh input-sized temporary costs far
    more than its arithmetic (the first touch of every page of a new allocation), and so does
    each extra trip to memory. The blocks depend only on the shape and dtype, so results are
    reproducible.
    """
    n = x.shape[0]
    per_sample = max(math.prod(x.shape[1:]) * x.element_size(), 1)
    if x.device.type != "cpu" or n * per_sample <= 2 * BLOCK_BYTES:
        return [slice(None)]
    step = max(1, BLOCK_BYTES // per_sample)
    return [slice(i, i + step) for i in range(0, n, step)]


def add_up(parts):
    """Sum per-block (C,) partial results."""
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)


def pivot(xs):
    """A per-channel value near the mean: the mean of the first samples, about PIVOT_VALUES each.

    In the statistics' dtype (float32 for half-precision input).

    Shifting by it first makes the statistics independent of a large common offset
    (``x - K`` is exact when x and K are close, by Sterbenz's lemma). A non-finite pivot (an
    inf or NaN among those samples) is replaced by 0, so that an inf gives its channel mean
    inf and variance NaN, as torch's kernel does, instead of inf - inf everywhere.
    """
    n, spatial = xs.shape[0], math.prod(xs.shape[2:])
    k = min(n, -(-PIVOT_VALUES // max(spatial, 1)))
    first, dims = (xs if k == n else xs[:k]), reduce_dims(xs.dim())
    # (mean with a dtype argument costs a conversion step even when nothing converts)
    p = first.mean(dims, dtype=torch.float32) if xs.dtype in HALF else first.mean(dims)
    return torch.nan_to_num_(p, nan=0.0, posinf=0.0, neginf=0.0)
