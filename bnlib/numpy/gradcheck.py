"""Central finite differences: check an analytic gradient of a NumPy function."""

import numpy as np

__all__ = ["numerical_gradient", "relative_error"]


def numerical_gradient(f, x, dy, h=1e-6):
    """The gradient of ``sum(f(x) * dy)`` with respect to x, by central differences.

    Each element is perturbed by ``+h`` and ``-h``:
    ``dx_i = sum((f(x + h e_i) - f(x - h e_i)) * dy) / (2 h)``, with truncation error O(h^2).
    Use float64 inputs: in float32 the rounding error ~1e-7 / h swamps the result.

    Args:
        f: a function of one array returning an array of dy's shape.
        x: the point, any shape (float64); a copy is perturbed, x itself is never touched.
        dy: the upstream gradient, the shape of ``f(x)``.
        h: the step.

    Returns:
        An array of x's shape.
    """
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
        raise TypeError(f"x must be floating point, got dtype {np.asarray(x).dtype}")
    x = np.array(x, copy=True, order="C")
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)  # views of the C-ordered copies
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        up = np.sum(f(x) * dy)
        flat_x[i] = old - h
        down = np.sum(f(x) * dy)
        flat_x[i] = old
        flat_grad[i] = (up - down) / (2 * h)
    return grad


def relative_error(a, b, floor=1e-12):
    """``max|a - b| / max(max|a|, max|b|, floor)``: one number, scale-free, 0 when equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0), floor)
    return float(np.max(np.abs(a - b), initial=0.0) / scale)
