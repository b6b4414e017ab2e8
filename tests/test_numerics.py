"""Numerics: large offsets (where torch's CPU kernel loses digits) and half precision."""

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt


def _float32_errors(offset):
    """max |y - y_float64| of float32 batch norm on data with this offset and std 1."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 3, 16, 16, generator=gen, dtype=torch.float64) + offset).float()
    ref = torch.nn.functional.batch_norm(x.double(), None, None, training=True)

    def err(y):
        return float((torch.as_tensor(y).double() - ref).abs().max())

    return {"torch": err(torch.nn.functional.batch_norm(x, None, None, training=True)),
            "bnt": err(bnt.batch_norm(x, None, None, training=True)),
            "bnp": err(bnp.batch_norm_forward(x.numpy())[0])}


@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
def test_large_offsets_lose_no_more_than_torch_and_stay_below_1e_4(offset):
    errors = _float32_errors(offset)
    for ours in ("bnt", "bnp"):
        assert errors[ours] < 1e-4, errors
        assert errors[ours] <= errors["torch"], errors


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
