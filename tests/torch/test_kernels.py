"""The speed-minded training kernels (bnlib.torch._kernels) and their reductions
(bnlib.torch._reductions): every route they can take.

The parity suite uses small inputs, which take the simplest route (one block, single-pass
variance). These tests force the others: several blocks in the backward, the two-pass
fallback of the variance, the row-norm and product routes of the sum of squares, and they
bound the float32 error of the fast route against float64.
"""

import pytest
import torch

from bnlib import torch as bnt
from bnlib.torch import _kernels, _reductions
from tests.reference import TOL, functional_data, functional_step, rel_err

# These kernels run where the compiled loops do not apply (tests/torch/test_fused_kernels.py);
# here they run everywhere.
pytestmark = pytest.mark.usefixtures("torch_operations_route")


@pytest.mark.parametrize("shape", [(40, 8, 32, 32), (3000, 130), (9, 64, 7, 7, 7)])
def test_several_blocks_match_torch_in_float64(shape):
    x, dy, weight, bias = functional_data(shape)
    assert len(_reductions.blocks(x)) > 2  # the blocked backward really runs
    got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    want = functional_step(torch.nn.functional.batch_norm, x, dy, weight, bias)
    for g, w, what in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert rel_err(g, w) < TOL, what


@pytest.mark.parametrize("shape", [(100, 8, 10, 10), (700, 120)])
def test_one_block_above_the_small_size_matches_torch_in_float64(shape):
    """Between BLOCK_BYTES and two blocks: one block, c recomputed after the product."""
    x, dy, weight, bias = functional_data(shape)
    assert _reductions.blocks(x) == [slice(None)] and not _kernels._small(x)
    got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    want = functional_step(torch.nn.functional.batch_norm, x, dy, weight, bias)
    for g, w, what in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert rel_err(g, w) < TOL, what


def test_blocks_cover_dim_0_once_in_order():
    x = torch.empty(1000, 3, 50, 50)  # 30 KiB per sample: 17 samples per 512 KiB block
    parts = _reductions.blocks(x)
    rows = torch.arange(1000)
    assert torch.equal(torch.cat([rows[p] for p in parts]), rows)
    assert len(parts) == 59
    assert _reductions.blocks(torch.empty(4, 3)) == [slice(None)]


def _outlier_first_values(dtype):
    """Channel 0 starts with 16 values of 50 among 50000 N(0, 1): the pivot is far from the mean.

    (600 KiB in float32: large enough for the single-pass route to be tried.)
    """
    x, _, weight, bias = functional_data((50000, 3), dtype=torch.float64)
    x[:16, 0] = 50.0
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_far_pivot_falls_back_to_the_two_pass_variance(dtype):
    x, weight, bias = _outlier_first_values(dtype)
    fast = _kernels.forward(x, weight, bias, 1e-5)
    two_pass = _kernels.forward(x, weight, bias, 1e-5, two_pass=True)
    for a, b in zip(fast, two_pass):  # the guard chose the two-pass route: identical bits
        assert torch.equal(a, b)
    ref = torch.nn.functional.batch_norm(x.double(), None, None, weight.double(),
                                         bias.double(), True)
    assert rel_err(fast[0].double(), ref) < (1e-6 if dtype == torch.float32 else TOL)


def test_small_input_takes_the_two_pass_route():
    x, _, weight, bias = functional_data((64, 16, 8, 8))  # 512 KiB: operations, not bytes, cost here
    fast = _kernels.forward(x, weight, bias, 1e-5)
    two_pass = _kernels.forward(x, weight, bias, 1e-5, two_pass=True)
    for a, b in zip(fast, two_pass):
        assert torch.equal(a, b)


def test_ordinary_data_takes_the_single_pass_route_and_agrees_with_two_pass():
    x, _, weight, bias = functional_data((64, 16, 16, 16))
    fast = _kernels.forward(x, weight, bias, 1e-5)
    two_pass = _kernels.forward(x, weight, bias, 1e-5, two_pass=True)
    assert not torch.equal(fast[2], two_pass[2])  # a different route (different rounding)...
    for a, b in zip(fast, two_pass):  # ...to the same numbers
        assert rel_err(a, b) < TOL


@pytest.mark.parametrize("shape,has_route", [
    ((8, 3, 2048), True),   # rows of 1024
    ((8, 3, 6, 40), True),  # rows of 240
    ((8, 3, 1031), False),  # 1031 is prime: no row length between 16 and 1024
    ((8, 3, 7), False),     # too short for rows
    ((300, 5), False),      # (N, C): each channel is strided
])
def test_row_sum_of_squares_equals_the_plain_formula_where_it_has_a_route(shape, has_route):
    c = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = _reductions.row_sum_of_squares(c)
    assert (got is not None) == has_route
    if has_route:
        assert rel_err(got, (c * c).sum(_reductions.reduce_dims(c.dim()))) < TOL
        # A channels-last copy has the same values in another layout: no row route.
        assert _reductions.row_sum_of_squares(
            c.unsqueeze(-1).contiguous(memory_format=torch.channels_last)
            if c.dim() == 3 else c.contiguous(memory_format=torch.channels_last)) is None


def test_a_channels_last_input_takes_the_product_route_and_matches_torch():
    x, dy, weight, bias = functional_data((8, 6, 5, 20))
    x = x.contiguous(memory_format=torch.channels_last)
    got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    want = functional_step(torch.nn.functional.batch_norm, x, dy, weight, bias)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


@pytest.mark.parametrize("offset", [0.0, 3.0, 100.0])
def test_float32_error_of_the_fast_route_stays_at_rounding_level(offset):
    """Against float64 on the same float32 values: output and gradients within a few ulps
    (torch's own kernel: about 1e-7 relative here; the bound leaves a factor of ~10)."""
    x, dy, weight, bias = functional_data((64, 16, 16, 16), dtype=torch.float32, offset=offset)
    got = functional_step(bnt.batch_norm, x, dy, weight, bias)
    want = functional_step(torch.nn.functional.batch_norm, *(t.double() for t in
                                                               (x, dy, weight, bias)))
    for g, w, what in zip(got, want, ("y", "dx", "dweight", "dbias")):
        assert rel_err(g.double(), w) < 5e-6, (what, rel_err(g.double(), w))


@pytest.mark.parametrize("shape,channels_last,fused", [
    ((50, 7), False, True),          # (N, C): the channel is the innermost dim
    ((6, 7, 5, 4), True, True),      # channels-last: the same
    ((6, 7, 5, 4), False, False),    # (N, C, H, W): two passes (addcmul would not vectorize)
])
def test_the_affine_step_fuses_where_the_channel_is_the_innermost_dim(shape, channels_last,
                                                                      fused):
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(shape, generator=gen)
    if channels_last:
        c = c.contiguous(memory_format=torch.channels_last)
    scale, offset = (_reductions.per_channel(torch.randn(7, generator=gen), c.dim())
                     for _ in range(2))
    got = _kernels._affine_in_place(c.clone(memory_format=torch.preserve_format), scale, offset)
    two_ops = c * scale + offset
    assert rel_err(got.double(), c.double() * scale.double() + offset.double()) < 1e-6
    # Which route ran shows in the rounding: addcmul rounds once where the CPU fuses
    # multiply and add, mul_ then add_ twice.
    assert torch.equal(got, torch.addcmul(offset, c, scale) if fused else two_ops)
    assert got.stride() == c.stride()
    assert torch.equal(_kernels._affine_in_place(c.clone(), scale, None), c * scale)
