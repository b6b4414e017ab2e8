"""bnlib.numpy.gradcheck: the central finite-difference gradient that checks every backward."""

import numpy as np

from bnlib import numpy as bnp


def test_numerical_gradient_is_exact_for_a_quadratic():
    x = np.array([1.0, -2.0, 3.0])
    grad = bnp.numerical_gradient(lambda v: v**2, x, np.ones(3))
    assert np.abs(grad - 2 * x).max() < 1e-8
    assert np.array_equal(x, [1.0, -2.0, 3.0])  # the caller's array is untouched
