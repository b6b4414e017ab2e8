"""Data-parallel runs on one machine: processes of one ``torch.distributed`` group, for the
chapter that compares synchronized and per-device batch norm.

:func:`spawn_local` starts the processes (gloo over the loopback interface: nothing leaves
the machine); :func:`run_data_parallel` trains normalization layers on one shard per process.
"""

import datetime
import io
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import _checks

__all__ = ["run_data_parallel", "spawn_local"]


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

