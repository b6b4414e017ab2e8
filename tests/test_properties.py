"""Property-based tests (Hypothesis) over random shapes, scales, offsets and dtypes.

Each property is a statement about every input, checked on examples Hypothesis draws:
ranks 2-5, 1-4 channels, 2 or more values per channel, per-channel scales from 1e-3 to 1e3
and offsets up to 100 scales away from 0. ``derandomize=True`` makes every run draw the same
examples, so CI is reproducible; ``database=None`` keeps the checkout free of Hypothesis files.
"""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib import numpy as bnp
from bnlib import torch as bnt
from tests.reference import BNT_MODULES, TOL, dx_scale, rel_err, torch_module_for

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)
FEWER = settings(FAST, max_examples=25)  # three modules and two backward passes per example
EPS = 1e-5
# Tolerances of the output's per-channel mean and variance, by dtype: float16 output is
# rounded to 11 bits, and each of its values is O(1).
MOMENT_TOL = {np.float64: 1e-9, np.float32: 1e-4, np.float16: 5e-3}
MAX_OFFSET = {np.float64: 100.0, np.float32: 100.0, np.float16: 10.0}  # in units of the scale
MAX_LOG_SCALE = {np.float64: 3.0, np.float32: 3.0, np.float16: 2.0}  # float16 ends at 65504


@st.composite
def batches(draw, dtypes=(np.float64,)):
    """(x, dtype): an (N, C, *) batch with >= 2 values per channel, each channel its own scale."""
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.integers(2, 5))
    spatial = draw(st.lists(st.integers(1, 4), min_size=rank - 2, max_size=rank - 2))
    channels = draw(st.integers(1, 4))
    n = draw(st.integers(1 if math.prod(spatial) >= 2 else 2, 6))
    log_scale = draw(st.floats(-3.0, MAX_LOG_SCALE[dtype]))
    offset = draw(st.floats(-MAX_OFFSET[dtype], MAX_OFFSET[dtype]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    view = (1, channels) + (1,) * len(spatial)
    scale = 10.0 ** log_scale * rng.uniform(0.5, 2.0, size=channels).reshape(view)
    x = rng.normal(size=(n, channels, *spatial)) * scale + offset * scale
    return x.astype(dtype), dtype


def _axes(ndim):
    return (0,) + tuple(range(2, ndim))


@FAST
@given(batches(dtypes=(np.float64, np.float32, np.float16)))
def test_output_has_mean_0_and_variance_var_over_var_plus_eps_per_channel(sample):
    """Affine off: mean(y) = 0 and var(y) = var(x) / (var(x) + eps), in every channel."""
    x, dtype = sample
    axes = _axes(x.ndim)
    var = x.astype(np.float64).var(axis=axes)
    expected_var = var / (var + EPS)
    outputs = {"numpy": bnp.batch_norm_forward(x, eps=EPS)[0]}
    if dtype != np.float16:  # bnt takes float16 too, but NumPy has no bfloat16: keep it paired
        outputs["torch"] = bnt.batch_norm(torch.from_numpy(x), None, None, training=True,
                                          eps=EPS).numpy()
    for name, y in outputs.items():
        assert y.dtype == dtype, name
        y = y.astype(np.float64)
        assert np.abs(y.mean(axis=axes)).max() <= MOMENT_TOL[dtype], name
        assert np.abs(y.var(axis=axes) - expected_var).max() <= 2 * MOMENT_TOL[dtype], name


@FAST
@given(batches(), st.floats(-2.0, 2.0), st.floats(-1e3, 1e3))
def test_normalizing_a_x_plus_b_equals_normalizing_x_with_eps_over_a_squared(sample, log_a, b):
    """BN_eps(a x + b) = BN_{eps / a^2}(x) for a > 0: the shift cancels, the scale moves to eps."""
    x, _ = sample
    a = 10.0 ** log_a
    b = b * a * x.std()  # a shift of up to 1000 standard deviations of a * x
    moved = a * x + b
    ours = bnp.batch_norm_forward(moved, eps=EPS)[0]
    want = bnp.batch_norm_forward(x, eps=EPS / a**2)[0]
    assert np.abs(ours - want).max() <= 1e-8
    theirs = bnt.batch_norm(torch.from_numpy(moved), None, None, training=True, eps=EPS)
    assert np.abs(theirs.numpy() - want).max() <= 1e-8


@FAST
@given(batches(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1))
def test_input_gradient_sums_to_zero_in_every_channel(sample, seed):
    """sum(dx) = 0 per channel: shifting a channel's input by a constant changes no output."""
    x, dtype = sample
    rng = np.random.default_rng(seed)
    c = x.shape[1]
    dy = rng.normal(size=x.shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, size=c).astype(dtype)
    m = x.size // c
    x64 = x.astype(np.float64)
    # m terms, each as large as the terms dx is a difference of, each with the rounding error
    # of x - mean (relative to the spread of x: large for a large offset).
    spread = np.sqrt(x64.var(axis=_axes(x.ndim)).min() + EPS)
    condition = 1 + np.abs(x64).max() / spread
    bound = m * dx_scale(x64, dy, gamma) * condition * 10 * np.finfo(dtype).eps
    dx_numpy = bnp.batch_norm_backward(dy, bnp.batch_norm_forward(x, gamma)[1])[0]
    xt = torch.from_numpy(x).requires_grad_()
    bnt.batch_norm(xt, None, None, torch.from_numpy(gamma), training=True).backward(
        torch.from_numpy(dy))
    for dx in (dx_numpy, xt.grad.numpy()):
        assert dx.dtype == dtype
        assert np.abs(dx.astype(np.float64).sum(axis=_axes(x.ndim))).max() <= bound


@FEWER
@given(batches(), st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.9, None]))
def test_numpy_torch_and_torch_nn_agree_in_float64(sample, seed, momentum):
    """bnp.BatchNorm == bnt.BatchNorm*d == torch.nn.BatchNorm*d: y, dx, dgamma, dbeta, buffers."""
    x, _ = sample
    rng = np.random.default_rng(seed)
    c = x.shape[1]
    dy = rng.normal(size=x.shape)
    kw = dict(num_features=c, momentum=momentum)
    reference = torch_module_for(x.ndim)(**kw, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=c)))
        reference.bias.copy_(torch.from_numpy(rng.normal(size=c)))
    ours_torch = BNT_MODULES[x.ndim](**kw, dtype=torch.float64)
    ours_torch.load_state_dict(reference.state_dict())
    ours_numpy = bnp.BatchNorm(**kw)
    ours_numpy.load_state_dict(reference.state_dict())

    def torch_step(module):
        xt = torch.tensor(x, requires_grad=True)
        y = module(xt)
        y.backward(torch.from_numpy(dy))
        return y, xt.grad, module.weight.grad, module.bias.grad

    want = torch_step(reference)
    y = ours_numpy(x)
    got = {"torch": torch_step(ours_torch), "numpy": (y, *ours_numpy.backward(dy))}
    scale = dx_scale(x, dy, reference.weight.detach().numpy())
    for name, results in got.items():
        for what, g, w in zip(("y", "dx", "dgamma", "dbeta"), results, want):
            err = rel_err(g, w, scale=scale if what == "dx" else 0.0)
            assert err <= TOL, (name, what, err)
    for name, module in (("torch", ours_torch), ("numpy", ours_numpy)):
        state = module.state_dict()
        for key, value in reference.state_dict().items():
            assert rel_err(state[key], value) <= TOL, (name, key)
