"""Shared fixtures: the devices to test on (CUDA skipped with a visible reason when absent),
torch's default dtype restored after every test (``training.deterministic`` sets float64), and
a check that a test of spawned processes leaves none behind."""

import multiprocessing

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device on this machine")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def rng():
    return __import__("numpy").random.default_rng(0)


@pytest.fixture(autouse=True)
def restore_default_dtype():
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def no_leftover_processes():
    """Fails the test if a child process outlives it (tests that spawn processes use it)."""
    yield
    assert multiprocessing.active_children() == []


def _route(on):
    from bnlib import torch as bnt
    if on and not bnt.fused_loops_available():
        pytest.skip("bnlib.torch's compiled loops were not built (no C++ compiler at install)")
    return bnt.use_fused_loops(on)


@pytest.fixture(params=["fused loops", "torch operations"])
def cpu_route(request):
    """Run the test on both CPU routes of bnlib.torch: the compiled loops
    (bnlib/torch/_fused.cpp) and the kernels of torch operations (bnlib/torch/_kernels.py)."""
    with _route(request.param == "fused loops"):
        yield request.param


@pytest.fixture
def fused_loops_route():
    """Only the compiled loops (skipped where they were not built)."""
    with _route(True):
        yield


@pytest.fixture
def torch_operations_route():
    """Only the kernels of torch operations (the route without the compiled loops)."""
    with _route(False):
        yield
