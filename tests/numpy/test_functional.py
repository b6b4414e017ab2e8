"""bnlib.numpy.functional: the closed-form backward against central finite differences, and its
properties. (Parity with torch.nn: tests/test_parity.py; bad input: tests/book/test_edge_cases.py
and tests/test_errors.py; float16 and large offsets: tests/test_numerics.py.)"""

import numpy as np
import pytest

from bnlib import numpy as bnp
from tests.reference import batch


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 3, 2)])
def test_closed_form_backward_equals_finite_differences(shape):
    rng = np.random.default_rng(0)
    c = shape[1]
    x, dy = batch(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 2, c), rng.normal(size=c)
    _, cache = bnp.batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnp.batch_norm_backward(dy, cache)

    num_dx = bnp.numerical_gradient(lambda v: bnp.batch_norm_forward(v, gamma, beta)[0], x, dy)
    num_dgamma = bnp.numerical_gradient(lambda g: bnp.batch_norm_forward(x, g, beta)[0], gamma, dy)
    num_dbeta = bnp.numerical_gradient(lambda b: bnp.batch_norm_forward(x, gamma, b)[0], beta, dy)
    assert bnp.relative_error(dx, num_dx) < 1e-7
    assert bnp.relative_error(dgamma, num_dgamma) < 1e-7
    assert bnp.relative_error(dbeta, num_dbeta) < 1e-7


def test_eval_backward_equals_finite_differences():
    rng = np.random.default_rng(1)
    x, dy = batch(rng, (4, 3, 5)), rng.normal(size=(4, 3, 5))
    mean, var, gamma = rng.normal(size=3), rng.uniform(0.5, 2, 3), rng.uniform(0.5, 2, 3)
    _, cache = bnp.batch_norm_inference(x, mean, var, gamma)
    dx, _, _ = bnp.batch_norm_backward(dy, cache)
    num = bnp.numerical_gradient(lambda v: bnp.batch_norm_inference(v, mean, var, gamma)[0], x, dy)
    assert bnp.relative_error(dx, num) < 1e-7


def test_dx_sums_to_zero_and_is_orthogonal_to_xhat_per_channel():
    """sum(dx) = 0 exactly; sum(dx * xhat) = 0 only as eps -> 0 (it is O(eps / var))."""
    rng = np.random.default_rng(2)
    x, dy = batch(rng, (8, 4, 3, 3)), rng.normal(size=(8, 4, 3, 3))
    gamma, beta, axes = rng.uniform(0.5, 2, 4), rng.normal(size=4), (0, 2, 3)
    for eps, orthogonality in ((1e-5, 1e-3), (1e-14, 1e-11)):
        _, cache = bnp.batch_norm_forward(x, gamma, beta, eps=eps)
        dx, _, _ = bnp.batch_norm_backward(dy, cache)
        assert np.abs(dx.sum(axes)).max() < 1e-12
        assert np.abs((dx * cache.xhat).sum(axes)).max() < orthogonality


def test_output_is_invariant_to_positive_scale_and_shift_of_the_input():
    rng = np.random.default_rng(3)
    x = batch(rng, (32, 3))
    y, _ = bnp.batch_norm_forward(x, eps=1e-12)
    y2, _ = bnp.batch_norm_forward(7.5 * x - 40.0, eps=1e-12 * 7.5**2)
    assert np.abs(y - y2).max() < 1e-10
