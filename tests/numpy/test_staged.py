"""bnlib.numpy.staged: the node-by-node forward and backward equal the closed form and torch."""

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib.numpy.staged import GRAPH
from tests.reference import batch, rel_err, torch_module_for

SHAPES = [(5, 3), (3, 2, 4), (2, 3, 3, 2), (2, 2, 2, 3, 2)]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return batch(rng, shape), rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=shape)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("shape", SHAPES)
def test_staged_forward_and_backward_equal_the_closed_form(shape, affine):
    x, gamma, beta, dy = _inputs(shape)
    if not affine:
        gamma = beta = None
    y, cache = bnp.batch_norm_forward_staged(x, gamma, beta)
    y_ref, ref_cache = bnp.batch_norm_forward(x, gamma, beta)
    assert rel_err(y, y_ref) < 1e-13
    staged = bnp.batch_norm_backward_staged(dy, cache)
    closed = bnp.batch_norm_backward(dy, ref_cache)
    for got, want in zip(staged, closed):
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-13
    assert rel_err(cache.mu.ravel(), ref_cache.mean) < 1e-13
    assert rel_err(cache.var.ravel(), ref_cache.var) < 1e-13


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_backward_equals_torch_autograd_in_float64(shape):
    x, gamma, beta, dy = _inputs(shape, seed=1)
    module = torch_module_for(len(shape))(shape[1], dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).requires_grad_()
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))

    y, cache = bnp.batch_norm_forward_staged(x, gamma, beta)
    dx, dgamma, dbeta = bnp.batch_norm_backward_staged(dy, cache)
    assert rel_err(y, yt) < 1e-12
    assert rel_err(dx, xt.grad) < 1e-12
    assert rel_err(dgamma, module.weight.grad) < 1e-12
    assert rel_err(dbeta, module.bias.grad) < 1e-12


def test_staged_backward_equals_central_finite_differences():
    x, gamma, beta, dy = _inputs((4, 3, 2, 2), seed=2)
    _, cache = bnp.batch_norm_forward_staged(x, gamma, beta)
    dx, dgamma, dbeta = bnp.batch_norm_backward_staged(dy, cache)

    def forward(xv=x, gv=gamma, bv=beta):
        return bnp.batch_norm_forward_staged(xv, gv, bv)[0]

    assert bnp.relative_error(dx, bnp.numerical_gradient(lambda v: forward(xv=v), x, dy)) < 1e-7
    assert bnp.relative_error(
        dgamma, bnp.numerical_gradient(lambda v: forward(gv=v), gamma, dy)) < 1e-7
    assert bnp.relative_error(
        dbeta, bnp.numerical_gradient(lambda v: forward(bv=v), beta, dy)) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_input_keeps_its_dtype_and_matches_float64(dtype):
    x, gamma, beta, dy = _inputs((16, 3))
    x_low, dy_low = x.astype(dtype), dy.astype(dtype)
    y, cache = bnp.batch_norm_forward_staged(x_low, gamma.astype(dtype), beta.astype(dtype))
    dx, dgamma, dbeta = bnp.batch_norm_backward_staged(dy_low, cache)
    assert y.dtype == dtype and dx.dtype == dtype
    assert cache.xhat.dtype == np.float32  # float16 is computed in float32
    y64, cache64 = bnp.batch_norm_forward(x_low.astype(np.float64), gamma.astype(dtype),
                                          beta.astype(dtype))
    dx64, _, _ = bnp.batch_norm_backward(dy_low.astype(np.float64), cache64)
    tol = 1e-5 if dtype == np.float32 else 2e-3
    assert rel_err(y.astype(np.float64), y64) < tol
    assert rel_err(dx.astype(np.float64), dx64) < tol


def test_staged_cache_keeps_two_input_sized_arrays_and_per_channel_statistics():
    x, gamma, beta, _ = _inputs((6, 4, 3))
    _, cache = bnp.batch_norm_forward_staged(x, gamma, beta)
    full = [name for name, v in cache._asdict().items()
            if isinstance(v, np.ndarray) and v.shape == x.shape]
    assert full == ["xmu", "xhat"]
    for name in ("mu", "var", "std", "invstd", "gamma"):
        assert getattr(cache, name).shape == (1, 4, 1)
    assert np.allclose(cache.std * cache.invstd, 1.0, rtol=1e-15)


def test_graph_is_in_evaluation_order_and_ends_in_y():
    known = {"x", "gamma", "beta"}
    for node in GRAPH:
        assert set(node.inputs) <= known, f"{node.name} uses a value not computed before it"
        known.add(node.name)
    assert GRAPH[-1].name == "y"
    # The fields of the cache that are node values are nodes of the graph.
    nodes = {node.name for node in GRAPH} | {"gamma"}
    assert set(bnp.StagedCache._fields) - {"input_dtype"} <= nodes


@pytest.mark.parametrize("x,kwargs,exc,message", [
    (np.ones(3), {}, ValueError, "at least 2 dimensions"),
    (np.ones((1, 3)), {}, ValueError, "more than 1 value per channel"),
    (np.ones((0, 3)), {}, ValueError, "non-empty batch"),
    (np.ones((4, 3), dtype=np.int64), {}, TypeError, "floating-point"),
    (np.ones((4, 3)), {"gamma": np.ones(2)}, ValueError, "gamma must have shape (3,)"),
    (np.ones((4, 3)), {"beta": np.ones((3, 1))}, ValueError, "beta must have shape (3,)"),
    (np.ones((4, 3)), {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
], ids=["rank-1", "one-value", "empty", "int", "gamma-shape", "beta-shape", "eps"])
def test_staged_forward_rejects_bad_input_with_a_clear_error(x, kwargs, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        bnp.batch_norm_forward_staged(x, **kwargs)


def test_staged_backward_rejects_dy_of_another_shape():
    _, cache = bnp.batch_norm_forward_staged(np.arange(12.0).reshape(4, 3))
    with pytest.raises(ValueError, match=r"dy must have the shape of x \(4, 3\), got \(3, 4\)"):
        bnp.batch_norm_backward_staged(np.ones((3, 4)), cache)
