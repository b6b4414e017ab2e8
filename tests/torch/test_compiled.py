"""The opt-in compiled path (bnlib.torch.compiled.batch_norm_compiled).

Compiling takes seconds per shape, so the parity tests run only with BNLIB_TEST_COMPILED=1
(``make test-compiled``). What needs no compiler runs always: argument errors, eval mode, and
that importing bnlib compiles nothing.
"""

import os
import subprocess
import sys

import pytest
import torch

from bnlib import torch as bnt
from tests.reference import TOL, batch, rel_err


def needs_compiler(test):
    """Run only with BNLIB_TEST_COMPILED=1; torch's compiler itself warns of deprecations."""
    skip = pytest.mark.skipif(os.environ.get("BNLIB_TEST_COMPILED") != "1",
                              reason="compiles for seconds: run with make test-compiled")
    return skip(pytest.mark.filterwarnings("ignore::DeprecationWarning")(test))


def test_importing_bnlib_loads_no_compiler():
    code = ("import sys, bnlib, bnlib.torch, bnlib.bench; "
            "print('torch._dynamo' in sys.modules or 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_errors_come_before_any_compiling():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnt.batch_norm_compiled(torch.ones(1, 3), None, None, training=True)
    with pytest.raises(TypeError, match="dtype"):
        bnt.batch_norm_compiled(torch.ones(4, 3), None, None, torch.ones(3, dtype=torch.float64),
                                training=True)


def test_eval_mode_is_the_eager_function():
    x = torch.randn(8, 3, 4)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    assert torch.equal(bnt.batch_norm_compiled(x, mean, var), bnt.batch_norm(x, mean, var))


def _run(fn, x, dy, weight, bias, running):
    x, leaves = x.clone().requires_grad_(), [t.clone().requires_grad_() if t is not None
                                             else None for t in (weight, bias)]
    stats = [t.clone() for t in running] if running else [None, None]
    y = fn(x, *stats, *leaves, True, 0.3, 1e-5)
    y.backward(dy)
    grads = [x.grad] + [t.grad for t in leaves if t is not None]
    return [y.detach()] + grads + [s for s in stats if s is not None]


@needs_compiler
@pytest.mark.parametrize("shape", [(16, 5), (6, 4, 5, 3)])
@pytest.mark.parametrize("affine,running", [(True, True), (False, False)])
def test_training_matches_torch_in_float64(shape, affine, running):
    rng = __import__("numpy").random.default_rng(0)
    x = torch.from_numpy(batch(rng, shape))
    dy = torch.from_numpy(rng.normal(size=shape))
    c = shape[1]
    params = (torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)) \
        if affine else (None, None)
    stats = (torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)) \
        if running else ()
    got = _run(bnt.batch_norm_compiled, x, dy, *params, stats)
    want = _run(torch.nn.functional.batch_norm, x, dy, *params, stats)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


@needs_compiler
def test_float32_matches_the_eager_kernels_to_rounding():
    x, dy = torch.randn(8, 16, 8, 8), torch.randn(8, 16, 8, 8)
    w, b = torch.rand(16) + 0.5, torch.randn(16)
    got = _run(bnt.batch_norm_compiled, x, dy, w, b, ())
    want = _run(bnt.batch_norm, x, dy, w, b, ())
    for g, v in zip(got, want):
        assert rel_err(g, v) < 1e-5
