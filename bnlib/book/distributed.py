"""Data-parallel runs on one machine: processes of one ``torch.distributed`` group, for the
chapter that compares synchronized and per-device batch norm.

:func:`spawn_local` starts the processes (gloo over the loopback interface: nothing leaves
the machine); :func:`run_data_parallel` trains normalization layers on one shard per process.
:func:`run_calls` runs several functions in one group, so that a chapter starts its processes
once (starting them costs seconds, the work often milliseconds): e.g.
:func:`data_parallel_steps` (what :func:`run_data_parallel` runs) and
:func:`time_sync_batch_norm` (what synchronizing batch norm costs next to the computation).
"""

import copy
import datetime
import io
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import _checks

__all__ = ["data_parallel_steps", "run_calls", "run_data_parallel", "spawn_local",
           "time_sync_batch_norm"]


def _local_process(rank, fn, world_size, port, backend, timeout, out_dir, payload):
    """Entry point of one spawned process: join the group, run fn, save its result."""
    torch.set_num_threads(1)  # the processes share the machine's cores
    args = torch.load(io.BytesIO(payload), weights_only=False)
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        # Keep gloo's traffic on the loopback interface too (by default it binds to the
        # address the host name resolves to).
        loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
        if loopback:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback[0]
    store = dist.TCPStore("127.0.0.1", port, world_size, False,
                          timeout=datetime.timedelta(seconds=timeout))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn_local(fn, world_size, args=(), backend="gloo", timeout=120.0):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes of one process group.

    The processes are started with ``torch.multiprocessing`` (spawn) on this machine and
    rendezvous through a TCP store that this process opens on 127.0.0.1 (on a free port);
    gloo's own connections use the loopback interface unless ``GLOO_SOCKET_IFNAME`` says
    otherwise. Nothing leaves the machine. ``fn`` must be importable (defined in a module, not in a
    notebook) and its arguments and result picklable.

    Args:
        fn: the function each process runs.
        world_size: number of processes.
        args: extra arguments for ``fn``.
        backend: "gloo" (CPU) or "nccl" (one GPU per process).
        timeout: seconds for the whole run; then every process is killed.

    Returns:
        The list of ``fn``'s results, by rank.

    Raises:
        TimeoutError: the processes did not finish in time (they are killed).
        ValueError: a bad world_size or backend.

    When a process raises, the others are stopped and ``torch.multiprocessing`` raises its
    ``ProcessRaisedException`` here, with the process's traceback in the message.
    """
    _checks.check_positive_int("world_size", world_size)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    # Arguments travel as bytes: torch.multiprocessing would otherwise move their tensors to
    # shared memory, and every process (and the caller) would update the same buffers.
    buffer = io.BytesIO()
    torch.save(tuple(args), buffer)
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=timeout),
                          wait_for_workers=False)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _local_process,
            args=(fn, world_size, store.port, backend, timeout, out_dir, buffer.getvalue()),
            nprocs=world_size, join=False, start_method="spawn")
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{world_size} processes did not finish within {timeout} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        results = [torch.load(os.path.join(out_dir, f"{rank}.pt"), weights_only=False)
                   for rank in range(world_size)]
    del store
    return results


def _run_shards(rank, world_size, modules, inputs, upstream):
    """Run each module on this rank's shards: forward, backward, and what they produced."""
    records = {}
    for name, module in modules.items():
        record = {"outputs": [], "input_grads": [], "weight_grads": [], "bias_grads": []}
        for xs, dys in zip(inputs, upstream):
            x = xs[rank].clone().requires_grad_()
            y = module(x)
            y.backward(dys[rank])
            record["outputs"].append(y.detach())
            record["input_grads"].append(x.grad)
            for key, p in (("weight_grads", module.weight), ("bias_grads", module.bias)):
                record[key].append(None if p is None or p.grad is None else p.grad.clone())
            module.zero_grad()
        record["state"] = module.state_dict()
        records[name] = record
    return records


def run_data_parallel(modules, inputs, upstream, backend="gloo", timeout=120.0):
    """Train normalization layers data-parallel for a few steps, one shard per process.

    Each of P = ``len(inputs[0])`` spawned processes (see :func:`spawn_local`) gets a copy of
    every module and, at step s, runs ``y = module(inputs[s][rank])`` and backward with
    ``upstream[s][rank]``. Shards may differ in size.

    Args:
        modules: ``{name: module}`` (picklable; e.g. a ``BatchNorm1d`` and a ``SyncBatchNorm``).
        inputs, upstream: lists over steps of lists over processes of tensors.

    Returns:
        A list over ranks of ``{name: record}``; a record holds per-step lists "outputs",
        "input_grads", "weight_grads", "bias_grads" (this process's share) and the final
        "state" (state_dict).
    """
    world_size = len(inputs[0])
    if any(len(xs) != world_size for xs in inputs) or any(len(d) != world_size for d in upstream):
        raise ValueError("every step needs one input and one upstream gradient per process")
    return spawn_local(_run_shards, world_size, (modules, inputs, upstream), backend, timeout)


def data_parallel_steps(rank, world_size, modules, inputs, upstream):
    """In a process of a group: what :func:`run_data_parallel` runs (for :func:`run_calls`).

    ``modules``, ``inputs``, ``upstream`` and the result are those of
    :func:`run_data_parallel`, for this process's ``rank``.
    """
    return _run_shards(rank, world_size, modules, inputs, upstream)


def _run_calls(rank, world_size, calls):
    return [fn(rank, world_size, *args) for fn, args in calls]


def run_calls(calls, world_size, backend="gloo", timeout=120.0):
    """Run several functions, one after another, in one group of ``world_size`` processes.

    Each process runs ``fn(rank, world_size, *args)`` for every ``(fn, args)`` of ``calls``,
    in order (collectives of one call pair with the same call's in the other processes).
    One start-up for all of them: see :func:`spawn_local` (which this calls) for how the
    processes are started and what ``fn`` and ``args`` must be.

    Returns:
        A list over ``calls`` of lists over ranks of the results.

    Raises:
        ValueError: no calls, or an entry that is not ``(function, args)``; and what
            :func:`spawn_local` raises.
    """
    calls = [tuple(call) for call in calls]
    if not calls or any(len(call) != 2 or not callable(call[0]) for call in calls):
        raise ValueError("calls must be a non-empty list of (function, args) pairs")
    per_rank = spawn_local(_run_calls, world_size, ([(fn, tuple(args)) for fn, args in calls],),
                           backend, timeout)
    return [[per_rank[rank][i] for rank in range(world_size)] for i in range(len(calls))]


def time_sync_batch_norm(rank, world_size, model, input_shape, repeats=10, warmup=2):
    """In a process of a group: what synchronizing a model's batch norms costs per step.

    Times, in wall-clock seconds (waiting for the other processes is the cost), one training
    step (forward, ``sum`` of the output, backward) of ``model`` on a random batch of
    ``input_shape`` in this process: once as it is, its batch norms normalizing this
    process's examples, and once as a copy converted by
    :meth:`bnlib.torch.SyncBatchNorm.convert_sync_batchnorm`. Also times the collectives
    alone that the synchronized layers add: per batch-norm layer of C channels, one
    ``all_gather`` of ``2 C + 1`` numbers (count, means, variances; float64) and one
    ``all_reduce`` of ``2 C``. The three are interleaved, each after a barrier, ``warmup``
    times untimed and then ``repeats`` times.

    Args:
        model: a module with batch-norm layers, in training mode, whose parameters set the
            dtype of the batch.
        input_shape: ``(N, ...)``, this process's batch.

    Returns:
        ``{"per_process": s, "synchronized": s, "collectives": s}``: medians over the repeats.

    Raises:
        ValueError: ``repeats`` < 1, or a model without batch norm.
    """
    from ..torch import SyncBatchNorm  # the library, imported where it is needed

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise ValueError("the model has no batch-norm layer: there is nothing to synchronize")
    dtype = next(model.parameters()).dtype
    synced = SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(*input_shape, generator=gen, dtype=dtype)

    def step(net):
        net(x).sum().backward()

    def collectives():
        for layer in layers:
            c = layer.num_features
            local = torch.zeros(2 * c + 1, dtype=torch.float64)
            table = [torch.empty_like(local) for _ in range(world_size)]
            dist.all_gather(table, local)
            dist.all_reduce(torch.zeros(2 * c, dtype=torch.float64))

    times = {"per_process": [], "synchronized": [], "collectives": []}
    work = {"per_process": lambda: step(model), "synchronized": lambda: step(synced),
            "collectives": collectives}
    for i in range(warmup + repeats):
        for name, fn in work.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
