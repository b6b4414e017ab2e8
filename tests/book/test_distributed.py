"""bnlib.book.distributed: the local launcher of the data-parallel runs (spawn_local,
run_data_parallel) kills what outlives its timeout and reports a failing process. (What the
runs compute, SyncBatchNorm: tests/torch/test_sync.py.)"""

import time

import pytest
import torch

from bnlib.book.distributed import run_data_parallel, spawn_local
from bnlib.torch.sync import SyncBatchNorm
from tests.reference import SPAWN_TIMEOUT

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def _sleep(rank, world_size, seconds):
    time.sleep(seconds)


def test_spawn_local_kills_its_processes_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        spawn_local(_sleep, 2, (600,), timeout=5.0)
    assert time.monotonic() - started < 60


def test_a_failing_process_is_reported_and_the_others_stopped():
    # Shards of 1 and 0 examples: one value per channel over all processes, in every process.
    inputs = [[torch.randn(1, 3, dtype=torch.float64), torch.randn(0, 3, dtype=torch.float64)]]
    upstream = [[torch.ones(1, 3, dtype=torch.float64), torch.ones(0, 3, dtype=torch.float64)]]
    with pytest.raises(Exception, match="more than 1 value per channel"):
        run_data_parallel({"sync": SyncBatchNorm(3, dtype=torch.float64)}, inputs, upstream,
                          timeout=SPAWN_TIMEOUT)


def test_bad_arguments_raise_a_clear_error():
    with pytest.raises(ValueError, match="world_size"):
        spawn_local(_sleep, 0, (0,))
    with pytest.raises(ValueError, match="backend"):
        spawn_local(_sleep, 2, (0,), backend="mpi")
    with pytest.raises(ValueError, match="one input and one upstream gradient per process"):
        run_data_parallel({}, [[torch.ones(2, 3)] * 2], [[torch.ones(2, 3)]])
