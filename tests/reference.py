"""The tests' yardstick: relative error, and inputs with offsets and scales per channel."""

import numpy as np
import torch

TOL = 1e-10  # relative error allowed against torch.nn in float64


def rel_err(a, b, scale=0.0):
    """max|a - b| / max(max|b|, scale), b the reference; arrays or tensors; 0 when empty.

    ``scale`` is for results that are small differences of large terms (see dx_scale).
    """
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), scale, 1e-300))


def dx_scale(x, dy, gamma=None, eps=1e-5):
    """The size of the terms whose difference is dx in training: max|dy| * max|gamma| / min std.

    With two values per channel dx is O(eps) while those terms are O(1): the relative error
    of dx itself then measures cancellation, not a mistake.
    """
    x = np.asarray(x)
    var = x.var(axis=(0,) + tuple(range(2, x.ndim)))
    gain = 1.0 if gamma is None else np.max(np.abs(np.asarray(gamma)))
    return float(np.max(np.abs(dy)) * gain / np.sqrt(var.min() + eps))


def batch(rng, shape):
    """float64 data whose channels have different means (-3..3) and scales (0.5..4)."""
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    offsets = rng.uniform(-3, 3, size=c).reshape(view)
    scales = rng.uniform(0.5, 4, size=c).reshape(view)
    return rng.normal(size=shape) * scales + offsets


def torch_module_for(ndim):
    """The torch.nn class that accepts inputs of this rank."""
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d,
            4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]


def forward_backward(module, x, dy):
    """One training step of a torch module: ``[y, dx, dweight, dbias]`` (None where absent).

    The module's gradients are read, then cleared, so the next step starts from zero.
    """
    xi = torch.as_tensor(x).clone().requires_grad_()
    y = module(xi)
    y.backward(torch.as_tensor(dy))
    grads = [None if p is None or p.grad is None else p.grad.clone()
             for p in (module.weight, module.bias)]
    module.zero_grad()
    return [y, xi.grad, *grads]
