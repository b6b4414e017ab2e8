"""The training-mode forward and backward of ``bnlib.torch.batch_norm`` in torch operations,
written for speed.

They run in plain eager execution wherever the compiled loops (:mod:`._fused_kernels`) do
not: half precision, GPUs, layouts other than contiguous and channels-last, inputs over 1 MiB
when torch uses more than two threads, dispatch modes, ``use_fused_loops(False)``, and every
CPU input when bnlib was installed without a C++ compiler.

Batch norm is memory-bound, so these kernels count trips to memory and input-sized
allocations rather than arithmetic: only the output is allocated at input size, and every
reduction but one reads memory without writing a temporary.

Nothing here is tracked by autograd (``_BatchNormFunction`` calls these inside an
``autograd.Function`` in plain eager execution). The per-channel maths is that of
:mod:`._formulas` (:func:`normalize_coefficients`, :func:`backward_coefficients`); what the
kernels add is how the sums are computed.

Conventions: statistics per channel over the m = N * prod(spatial) other values; **biased**
variance; half-precision input is computed in float32.
"""

import torch

from ._formulas import backward_coefficients, normalize_coefficients
from ._reductions import (BLOCK_BYTES, add_up, as_dtype, blocks, per_channel, pivot,
                          reduce_dims, row_sum_of_squares, stats_dtype, sum_of_products)

# The single-pass variance E[c^2] - E[c]^2 of centred data c loses about
# log2(1 + E[c]^2 / var) bits; above this ratio the two-pass formula is used instead.
MAX_SHIFT_RATIO = 4.0


def _output(x):
    """An uninitialized tensor of x's shape in the statistics' dtype (float32 for half
    precision), contiguous or channels-last as torch's kernel returns (``suggest_memory_format``)."""
    layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if x.dim() not in (4, 5) or x.is_contiguous() or not x.is_contiguous(memory_format=layout):
        layout = torch.contiguous_format
    return torch.empty(x.shape, dtype=stats_dtype(x.dtype), device=x.device, memory_format=layout)


def _small(x):
    """Input so small that the number of operations, not the bytes moved, sets the time."""
    return x.numel() * x.element_size() <= BLOCK_BYTES


def _affine_in_place(c, scale, offset):
    """``c * scale + offset`` (offset may be None), written over c in one pass.

    scale and offset are per-channel vectors already shaped by :func:`per_channel`. Where
    the channel is the innermost dim of c ((N, C) and channels-last), ``addcmul`` computes
    the product and the sum in one trip over memory (a fused multiply-add where the CPU has
    it), and so it does on a GPU. Elsewhere on a CPU it would not: torch's CPU loop
    vectorizes at most one operand that is constant along the innermost dim, and addcmul has
    two (4x slower than the two passes of ``mul_`` and ``add_`` on (64, 64, 32, 32) in
    float32).
    """
    if offset is None:
        return c.mul_(scale)
    if c.stride(1) == 1 or c.device.type != "cpu":
        return torch.addcmul(offset, c, scale, out=c)
    return c.mul_(scale).add_(offset)


def _squares_in_place(c, dims):
    """Per-channel sum of ``c ** 2``; returns ``(sum, kept)``.

    On the row-norm route (:func:`._reductions.row_sum_of_squares`) c is only read, and a
    small c is multiplied into a small temporary (kept=True). Otherwise c is squared in place
    and summed (kept=False): the caller recomputes it, which costs one pass but no
    input-sized temporary.
    """
    s = row_sum_of_squares(c)
    if s is not None:
        return s, True
    if _small(c):
        return sum_of_products(c, c), True
    return c.mul_(c).sum(dims), False


def forward(x, weight, bias, eps, two_pass=False):
    """y = (x - mean) * rsqrt(var + eps) * weight + bias with the batch's mean and variance.

    ``c = x - K`` (K near the mean, :func:`._reductions.pivot`) is written into the output
    buffer; one pass sums c and one sums c ** 2: ``shift = mean(c)``,
    ``var = mean(c^2) - shift^2``, ``mean = K + shift``. Then
    ``y = c * scale + (bias - shift * scale)`` in place (:func:`_affine_in_place`). No
    allocation but the output (a fresh input-sized temporary costs more than its arithmetic:
    the first touch of each of its pages), and on a CPU five passes over memory where the
    sum of squares has a row-norm route (contiguous input with spatial dims: subtract, sum,
    row norms, scale, shift), six for (N, C) and channels-last input (c squared in place,
    summed and computed again, see :func:`_squares_in_place`; scale and shift in one pass).

    Small inputs (up to BLOCK_BYTES), where the count of operations sets the time, take the
    two-pass route directly.

    The single-pass variance loses digits when the shift is large next to the spread. Since K
    is close to the mean this is rare (an outlier among the first values); whenever
    ``shift^2 > MAX_SHIFT_RATIO * var`` in any channel (including var < 0 from rounding), the
    variance is recomputed from ``x - mean`` (the two-pass formula). That test reads one value
    back from the device, so CUDA tensors (and ``two_pass=True``) always take the two-pass
    route: no host synchronization there.

    Returns ``y, mean, var, invstd`` (y in the statistics' dtype; mean, var, invstd of shape
    (C,)).
    """
    ndim, dims, m = x.dim(), reduce_dims(x.dim()), x.numel() // x.shape[1]
    k = pivot(x)
    pivot_c = per_channel(k, ndim)
    c = torch.sub(x, pivot_c, out=_output(x))
    shift = c.sum(dims).div_(m)
    single_pass = not two_pass and x.device.type == "cpu" and not _small(x)
    if single_pass:
        squares, kept = _squares_in_place(c, dims)
        shift_squared = shift * shift
        var = squares.div_(m).sub_(shift_squared)
        single_pass = not bool(shift_squared.gt_(var * MAX_SHIFT_RATIO).any())
        if not kept:
            c = torch.sub(x, pivot_c, out=c)
    if not single_pass:
        # Two passes: centre on the batch mean as (x - K) - shift, which keeps the digits
        # that x - (K + shift) would lose to the rounding of K + shift.
        shift_c = per_channel(shift, ndim)
        squares, kept = _squares_in_place(c.sub_(shift_c), dims)
        var = squares.div_(m)
        if not kept:
            c = torch.sub(x, pivot_c, out=c).sub_(shift_c)
    # c is now x - K (single pass) or x - K - shift (two passes).
    invstd, scale, offset = normalize_coefficients(var, eps, weight, bias,
                                                   shift if single_pass else None)
    y = _affine_in_place(c, per_channel(scale, ndim),
                         None if offset is None else per_channel(offset, ndim))
    return y, k.add_(shift), var, invstd


def backward(x, dy, weight, mean, invstd):
    """dx, dgamma, dbeta of :func:`forward`, by the closed form.

    With c = x - mean, the two sums ``sum(dy)`` and ``sum(dy * c)`` give every coefficient
    (:func:`._formulas.backward_coefficients`): ``dx = c * a + b + dy * scale``, in two
    passes where the channel is the innermost dim and three elsewhere
    (:func:`_affine_in_place`, then ``addcmul_``).

    torch has no fused multiply-and-reduce for sum(dy * c), and an input-sized temporary for
    the product costs more than its arithmetic. So sweep 1 walks over cache-sized blocks
    (:func:`._reductions.blocks`): it writes c into a block-sized scratch buffer (dx itself
    when there is one block), multiplies it by dy in place and sums, and sums dy. Sweep 2
    writes ``dx = c * a + b + dy * scale`` block by block. A small input keeps c in dx and
    multiplies into a small temporary instead, which saves recomputing c. x and dy are read
    twice and dx written once, as by torch's own kernel, plus the passes over blocks that are
    in cache.
    """
    ndim, dims, m = x.dim(), reduce_dims(x.dim()), x.numel() // x.shape[1]
    dx = _output(x)
    dy = as_dtype(dy, mean.dtype)
    centre = per_channel(mean, ndim)
    parts = blocks(dx)
    if len(parts) == 1:  # the same sweeps without slicing (each slice costs a dispatch)
        c = torch.sub(x, centre, out=dx)
        if _small(dx):  # c stays in dx; the product temporary is small
            sum_dy_c = sum_of_products(dy, c)
        else:
            sum_dy_c = c.mul_(dy).sum(dims)
            c = torch.sub(x, centre, out=dx)
        a, scale, b, dgamma, dbeta = backward_coefficients(dy.sum(dims), sum_dy_c, invstd,
                                                           weight, m)
        a, scale, b = (per_channel(v, ndim) for v in (a, scale, b))
        return _affine_in_place(c, a, b).addcmul_(dy, scale), dgamma, dbeta
    scratch = torch.empty_like(dx[parts[0]])
    dy_sums, products = [], []
    for part in parts:
        rows, dy_rows = x[part], dy[part]
        c = torch.sub(rows, centre, out=scratch[:rows.shape[0]])
        dy_sums.append(dy_rows.sum(dims))
        products.append(c.mul_(dy_rows).sum(dims))
    a, scale, b, dgamma, dbeta = backward_coefficients(add_up(dy_sums), add_up(products),
                                                       invstd, weight, m)
    a, scale, b = (per_channel(v, ndim) for v in (a, scale, b))
    for part in parts:
        block = torch.sub(x[part], centre, out=dx[part])
        _affine_in_place(block, a, b).addcmul_(dy[part], scale)
    return dx, dgamma, dbeta
