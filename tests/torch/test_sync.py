"""bnlib.torch.sync (SyncBatchNorm over torch.distributed): 2 real processes (gloo, 127.0.0.1)
equal one process on the concatenated batch.

The processes are started by bnlib.book.distributed (its own tests: tests/book/test_distributed.py)
with a timeout, after which they are killed; every test checks that no child process is left
behind.
"""

import time

import pytest
import torch
import torch.distributed as dist

from bnlib import torch as bnt
from bnlib.book.distributed import run_data_parallel
from bnlib.torch.sync import SyncBatchNorm, combine_statistics
from tests.reference import SPAWN_TIMEOUT, TOL, rel_err

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

# Shard sizes per step: equal, unequal, a single example, an empty shard.
SHARDS = [(4, 4), (2, 7), (1, 5), (6, 0)]


def _steps(gen, channels=3, length=2):
    inputs = [[torch.randn(n, channels, length, generator=gen, dtype=torch.float64) * 3 + 1
               for n in sizes] for sizes in SHARDS]
    upstream = [[torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in xs]
                for xs in inputs]
    return inputs, upstream


@pytest.fixture(scope="module")
def two_process_run():
    gen = torch.Generator().manual_seed(0)
    inputs, upstream = _steps(gen)
    sync = SyncBatchNorm(3, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        sync.weight.uniform_(0.5, 2.0, generator=gen)
        sync.bias.normal_(generator=gen)
    plain = bnt.BatchNorm1d(3, momentum=0.3, dtype=torch.float64)
    plain.load_state_dict(sync.state_dict())
    modules = {"sync": sync, "plain": plain,
               "cumulative": SyncBatchNorm(3, momentum=None, affine=False, dtype=torch.float64)}
    started = time.monotonic()
    results = run_data_parallel(modules, inputs, upstream, timeout=SPAWN_TIMEOUT)
    return modules, inputs, upstream, results, time.monotonic() - started


def _single_process(module, inputs, upstream):
    """The reference: one process, the concatenated batch, bnlib's (torch-tested) BatchNorm1d."""
    reference = bnt.BatchNorm1d(3, momentum=module.momentum, affine=module.affine,
                                dtype=torch.float64)
    reference.load_state_dict(module.state_dict())
    steps = []
    for xs, dys in zip(inputs, upstream):
        x = torch.cat(xs).requires_grad_()
        y = reference(x)
        y.backward(torch.cat(dys))
        grads = [None if p is None else p.grad.clone() for p in (reference.weight, reference.bias)]
        steps.append((y.detach(), x.grad, *grads))
        reference.zero_grad()
    return steps, reference.state_dict()


@pytest.mark.parametrize("name", ["sync", "cumulative"])
def test_sync_batch_norm_equals_one_process_on_the_concatenated_batch(two_process_run, name):
    modules, inputs, upstream, results, _ = two_process_run
    steps, final_state = _single_process(modules[name], inputs, upstream)
    for s, (y, dx, dweight, dbias) in enumerate(steps):
        records = [r[name] for r in results]
        assert rel_err(torch.cat([r["outputs"][s] for r in records]), y) <= TOL
        assert rel_err(torch.cat([r["input_grads"][s] for r in records]), dx) <= TOL
        if dweight is not None:  # each process holds its share; data parallelism adds them
            assert rel_err(sum(r["weight_grads"][s] for r in records), dweight) <= TOL
            assert rel_err(sum(r["bias_grads"][s] for r in records), dbias) <= TOL
    for record in results:
        state = record[name]["state"]
        assert list(state) == list(final_state)
        for key, value in final_state.items():
            assert rel_err(state[key].double(), value.double()) <= TOL, key


def test_per_process_batch_norm_differs_from_the_concatenated_batch(two_process_run):
    modules, inputs, upstream, results, _ = two_process_run
    steps, _ = _single_process(modules["plain"], inputs, upstream)
    outputs = torch.cat([r["plain"]["outputs"][0] for r in results])
    assert (outputs - steps[0][0]).abs().max() > 0.1


def test_a_single_process_group_or_no_group_is_plain_batch_norm():
    assert not dist.is_initialized()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    sync, bn = SyncBatchNorm(3, dtype=torch.float64), torch.nn.BatchNorm1d(3, dtype=torch.float64)
    assert rel_err(sync(x), bn(x)) <= TOL
    assert rel_err(sync.running_var, bn.running_var) <= TOL


def test_convert_replaces_bnlib_batch_norms_and_keeps_their_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), bnt.BatchNorm1d(3, dtype=torch.float64),
                                torch.nn.Sequential(bnt.BatchNorm2d(2)))
    model[1](torch.randn(5, 3, dtype=torch.float64))
    model[1].eval()
    converted = SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], SyncBatchNorm) and isinstance(converted[2][0], SyncBatchNorm)
    assert converted[1].running_var.dtype == torch.float64 and not converted[1].training
    assert int(converted[1].num_batches_tracked) == 1


def test_combine_statistics_is_the_statistics_of_the_union():
    gen = torch.Generator().manual_seed(2)
    parts = [torch.randn(n, 3, generator=gen, dtype=torch.float64) * 5 + 100 for n in (3, 8, 1)]
    counts = torch.tensor([3.0, 8.0, 1.0], dtype=torch.float64)
    means = torch.stack([p.mean(0) for p in parts])
    variances = torch.stack([p.var(0, unbiased=False) for p in parts])
    mean, var = combine_statistics(counts, means, variances)
    union = torch.cat(parts)
    assert rel_err(mean, union.mean(0)) <= TOL
    assert rel_err(var, union.var(0, unbiased=False)) <= TOL
