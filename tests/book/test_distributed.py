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


def _rank_times(rank, world_size, factor):
    return rank * factor + world_size


def test_run_calls_runs_every_call_in_every_process_in_one_group():
    from bnlib.book.distributed import data_parallel_steps, run_calls

    x = torch.randn(6, 3, dtype=torch.float64)
    inputs, upstream = [[x[:2], x[2:]]], [[torch.ones(2, 3, dtype=torch.float64),
                                           torch.ones(4, 3, dtype=torch.float64)]]
    layers = {"sync": SyncBatchNorm(3, dtype=torch.float64)}
    shards, scaled = run_calls([(data_parallel_steps, (layers, inputs, upstream)),
                                (_rank_times, (10,))], world_size=2, timeout=SPAWN_TIMEOUT)
    assert scaled == [2, 12]
    expected = torch.nn.functional.batch_norm(x, None, None, training=True)
    out = torch.cat([shards[rank]["sync"]["outputs"][0] for rank in range(2)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_time_sync_batch_norm_reports_three_positive_medians():
    from bnlib.book.distributed import run_calls, time_sync_batch_norm

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False),
                                torch.nn.BatchNorm2d(4))
    (timings,) = run_calls([(time_sync_batch_norm, (model, (2, 2, 5, 5), 2, 1))], world_size=2,
                           timeout=SPAWN_TIMEOUT)
    for per_rank in timings:
        assert set(per_rank) == {"per_process", "synchronized", "collectives"}
        assert all(t > 0 for t in per_rank.values())


def test_run_calls_and_timing_refuse_bad_arguments():
    from bnlib.book.distributed import run_calls, time_sync_batch_norm

    with pytest.raises(ValueError, match="non-empty list"):
        run_calls([], 2)
    with pytest.raises(ValueError, match="non-empty list"):
        run_calls([(_rank_times,)], 2)
    with pytest.raises(ValueError, match="no batch-norm layer"):
        time_sync_batch_norm(0, 1, torch.nn.Linear(2, 2), (2, 2))
    with pytest.raises(ValueError, match="repeats"):
        time_sync_batch_norm(0, 1, torch.nn.BatchNorm1d(2), (2, 2), repeats=0)
