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


def _use_fused_loops(monkeypatch, on):
    from bnlib.torch import _fused_kernels
    if on and not _fused_kernels.available():
        pytest.skip("bnlib.torch's fused loops were not built (no C++ compiler at install)")
    monkeypatch.setattr(_fused_kernels, "enabled", on)


@pytest.fixture(params=["fused loops", "torch operations"])
def cpu_route(request, monkeypatch):
    """Run the test on both CPU routes of bnlib.torch's training mode: the compiled loops
    (bnlib/torch/_fused.cpp) and the kernels of torch operations (bnlib/torch/_kernels.py)."""
    _use_fused_loops(monkeypatch, request.param == "fused loops")
    return request.param


@pytest.fixture
def torch_operations_route(monkeypatch):
    """Only the kernels of torch operations (the route without the compiled loops)."""
    _use_fused_loops(monkeypatch, False)
