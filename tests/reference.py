"""What the tests share: the yardstick (relative error), inputs with offsets and scales per
channel, torch.nn references, and helpers used by tests of more than one module.

Imported as ``from tests.reference import ...`` (tests/ is a package; pytest puts the
repository root on sys.path)."""

import numpy as np
import torch

from bnlib import torch as bnt

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


BNT_MODULES = {2: bnt.BatchNorm1d, 3: bnt.BatchNorm1d, 4: bnt.BatchNorm2d, 5: bnt.BatchNorm3d}
"""The bnlib.torch class that accepts inputs of each rank (the twin of torch_module_for)."""


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


def functional_data(shape, dtype=torch.float64, seed=0, offset=0.0, channels_last=False):
    """``x, dy, weight, bias`` for a functional batch norm: N(offset, 2) inputs, N(0, 1)
    gradients, weight in [0.5, 1.5), N(0, 1) bias; drawn in float64, then cast to dtype; x
    and dy channels-last on request (4-D and 5-D)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    x, dy, weight, bias = (t.to(dtype) for t in (x, dy, weight, bias))
    if channels_last:
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x, dy = (t.contiguous(memory_format=memory_format) for t in (x, dy))
    return x, dy, weight, bias


def functional_step(fn, x, dy, weight, bias):
    """One training step of ``fn`` (the signature of F.batch_norm) without running
    statistics: ``y, dx, dweight, dbias`` (leaves cloned in their layout)."""
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(x, None, None, weight, bias, True)
    y.backward(dy)
    return y.detach(), x.grad, weight.grad, bias.grad


# ---------------------------------------------------------------------------------------------
# State: layers trained a few steps, state_dicts compared exactly (tests/numpy/test_layer.py,
# tests/torch/test_modules.py).

def trained(module, steps=3, shape=(8, 4, 3, 3)):
    """A torch (or bnlib.torch) module after a few float64 training steps, with gamma and beta
    away from 1 and 0, in eval mode."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        module(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1)
    if module.affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 2, generator=gen)
            module.bias.uniform_(-1, 1, generator=gen)
    return module.eval()


def old_checkpoint(num_features=4):
    """A torch.nn.BatchNorm1d state_dict as torch wrote it before num_batches_tracked existed."""
    return {k: v for k, v in torch.nn.BatchNorm1d(num_features).state_dict().items()
            if k != "num_batches_tracked"}


def assert_same_state(a, b):
    """Two state_dicts (arrays or tensors) with the same keys, in order, and equal values."""
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


# ---------------------------------------------------------------------------------------------
# Models with batch norm for population statistics (tests/torch/test_inference.py,
# tests/book/test_inference.py).

def rows(n=240, d=12, seed=0, dtype=torch.float64):
    """(n, d) normal data whose columns have scales 0.5..3 and mean 2."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=dtype) * torch.linspace(0.5, 3, d) + 2


def small_mlp(norm, dtype=torch.float64, seed=0):
    """``mlp(12, [8, 6], 3)`` with the given batch norm after each hidden Linear."""
    from bnlib.book import models  # the chapters' toolkit, only for the tests that need it

    torch.manual_seed(seed)
    return models.mlp(12, [8, 6], 3, norm=norm).to(dtype)


def batch_norms(model):
    """Every batch-norm module of a model, in order."""
    return [m for m in model.modules() if bnt.is_batch_norm(m)]


def randomize_affine(model, seed=1):
    """gamma and beta away from 1 and 0, so that a test sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in batch_norms(model):
            if bn.weight is not None:
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen, dtype=bn.bias.dtype))
    return model


def assert_buffers_equal(a, b, atol=0.0):
    """The running statistics and counts of two models' batch norms agree within atol."""
    for bn_a, bn_b in zip(batch_norms(a), batch_norms(b)):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            x, y = getattr(bn_a, name), getattr(bn_b, name)
            assert torch.allclose(x.double(), y.double(), rtol=0, atol=atol), name


# ---------------------------------------------------------------------------------------------
# Local multi-process runs (tests/torch/test_sync.py, tests/book/test_distributed.py).

SPAWN_TIMEOUT = 180.0  # seconds for a whole spawned run (two processes importing torch, on a busy machine)
