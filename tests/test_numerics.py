"""Numerics: large offsets (where torch's CPU kernel loses digits) and half precision."""

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt
from bnlib.book.edge_cases import float32_offset_errors


@pytest.mark.usefixtures("cpu_route")
@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
def test_large_offsets_lose_no_more_than_torch_and_stay_below_1e_4(offset):
    errors = float32_offset_errors(offset)
    for ours in ("bnt", "bnp"):
        assert errors[ours] < 1e-4, errors
        assert errors[ours] <= errors["torch"], errors


@pytest.mark.usefixtures("cpu_route")
def test_a_constant_channel_of_1e8_normalizes_to_zero():
    x = torch.full((1000, 1), 1e8)
    assert bnt.batch_norm(x, None, None, training=True).abs().max() == 0
    assert np.abs(bnp.batch_norm_forward(x.numpy())[0]).max() == 0


def test_numpy_float16_input_uses_float32_statistics_and_keeps_float16():
    x = (np.random.default_rng(0).uniform(0, 6e4, size=(4096, 2))).astype(np.float16)
    y, cache = bnp.batch_norm_forward(x)
    assert y.dtype == np.float16 and cache.mean.dtype == np.float32
    assert np.isfinite(y).all()
    ref, _ = bnp.batch_norm_forward(x.astype(np.float64))
    assert np.abs(y.astype(np.float64) - ref).max() < 5e-3


@pytest.mark.usefixtures("cpu_route")
@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
def test_large_offsets_normalize_to_mean_0_per_channel_like_float64(offset):
    """At 1e8 float32 values are 8 apart: the variance of the stored data is what it is, but
    the float32 output must still have the float64 reference's per-channel mean and variance."""
    x = (torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64) + offset).float()
    ref = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    for y in (bnt.batch_norm(x, None, None, training=True).double(),
              torch.from_numpy(bnp.batch_norm_forward(x.numpy())[0]).double()):
        assert y.mean((0, 2, 3)).abs().max() < 1e-3
        var_error = y.var((0, 2, 3), unbiased=False) - ref.var((0, 2, 3), unbiased=False)
        assert var_error.abs().max() < 1e-3


# Half precision: N*H*W = 16 * 256 * 256 > 1e6 values per channel, up to 6e4 in magnitude
# (the float16 maximum is 65504): a float16 sum or sum of squares would overflow at once.
HALF_SHAPE = (16, 2, 256, 256)


def _near_float16_limit():
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(HALF_SHAPE, generator=gen, dtype=torch.float64) * 2 - 1) * 6e4 + 1e3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_torch_half_input_accumulates_in_float32_without_overflow(dtype):
    x = _near_float16_limit().to(dtype)
    x64 = x.double()
    mean, var = torch.zeros(2), torch.ones(2)
    y = bnt.batch_norm(x, mean, var, torch.ones(2), torch.zeros(2), training=True, momentum=1.0)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = torch.nn.functional.batch_norm(x64, None, None, training=True)
    tol = 1e-3 if dtype == torch.float16 else 8e-3  # the rounding of the output itself
    assert (y.double() - ref).abs().max() < tol
    # momentum=1 stores the batch statistics themselves, computed in float32: a float16 or
    # bfloat16 accumulator would be off by far more than this (or overflow).
    assert mean.dtype == var.dtype == torch.float32
    m = x64[:, 0].numel()
    assert torch.allclose(mean.double(), x64.mean((0, 2, 3)), rtol=1e-5, atol=1e-2)
    assert torch.allclose(var.double(), x64.var((0, 2, 3)), rtol=1e-5)
    assert var.max() > 1e9 and m > 1e6  # far beyond the float16 range


def test_torch_half_backward_keeps_the_dtype_and_stays_finite():
    x = _near_float16_limit()[:2, :, :64, :64].half().requires_grad_()
    y = bnt.BatchNorm2d(2)(x)
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()


def test_numpy_float16_near_the_limit_with_a_million_values_per_channel():
    x = _near_float16_limit().half().numpy()
    y, cache = bnp.batch_norm_forward(x)
    assert y.dtype == np.float16 and np.isfinite(y).all()
    assert cache.mean.dtype == cache.var.dtype == np.float32
    x64 = x.astype(np.float64)
    assert np.allclose(cache.var, x64.var(axis=(0, 2, 3)), rtol=1e-5)
    ref, _ = bnp.batch_norm_forward(x64)
    assert np.abs(y.astype(np.float64) - ref).max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype_is_the_input_dtype(dtype):
    x = torch.randn(8, 3, 4, 4).to(dtype)
    params = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    module = bnt.BatchNorm2d(3, dtype=params)
    assert module(x).dtype == dtype
    assert module.eval()(x).dtype == dtype
    assert module.running_mean.dtype == params


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_output_dtype_is_the_input_dtype(dtype):
    x = np.random.default_rng(0).normal(size=(8, 3, 4)).astype(dtype)
    layer = bnp.BatchNorm(3)
    assert layer(x).dtype == dtype
    assert layer.backward(np.ones_like(x))[0].dtype == dtype
    assert layer.eval()(x).dtype == dtype
