"""Synchronized batch normalization over ``torch.distributed``, and a local process launcher.

In data-parallel training every process (device) sees only its own shard of the batch. An
ordinary BatchNorm then normalizes with the shard's statistics; :class:`SyncBatchNorm`
normalizes with the statistics of the whole batch, exactly as one process would on the
concatenated batch:

* forward: each process computes its count n_k, mean mu_k and biased variance v_k per
  channel; one ``all_gather`` shares them and every process combines them (Chan et al.):
  ``n = sum n_k``, ``mu = sum n_k mu_k / n``, ``var = sum n_k (v_k + (mu_k - mu)^2) / n``;
* backward: the two per-channel sums that the batch-norm gradient needs, ``sum(dy)`` and
  ``sum(dy * xhat)``, are added over processes with one ``all_reduce``; then
  ``dx = gamma / sqrt(var + eps) * (dy - sum(dy) / n - xhat * sum(dy * xhat) / n)``.

The gradients of gamma and beta stay local (each process's own sums), as in
``torch.nn.SyncBatchNorm``: data-parallel training adds or averages parameter gradients
anyway. Communication uses the real ``torch.distributed`` collectives, so any backend works
(gloo on CPU, nccl on GPUs).
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
from torch.autograd.function import once_differentiable

from .. import _checks
from ._variant import BatchNormVariant
from ._reductions import per_channel, reduce_dims, stats_dtype
from .functional import _batch_stats, _check_tensor, batch_norm


def _group_size(group):
    """The number of processes to synchronize over; 1 when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def combine_statistics(counts, means, variances):
    """Mean and biased variance of a union of sets, from each set's count, mean and biased variance.

    ``mu = sum n_k mu_k / n`` and ``var = sum n_k (v_k + (mu_k - mu)^2) / n`` (Chan, Golub and
    LeVeque, 1983): exact, and free of the cancellation of ``E[x^2] - E[x]^2``.

    Args:
        counts: (P,) values per set (sets of count 0 are ignored).
        means, variances: (P, C).

    Returns:
        ``(mean, var)`` of shape (C,).
    """
    n = counts.sum()
    if n == 0:
        return torch.zeros_like(means[0]), torch.zeros_like(variances[0])
    weights = (counts / n).unsqueeze(1)
    mean = (weights * means).sum(0)
    var = (weights * (variances + (means - mean) ** 2)).sum(0)
    return mean, var


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics gathered over a process group."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, world_size):
        c, ndim = x.shape[1], x.dim()
        m = x.numel() // c
        if m > 0:
            mean, var, _ = _batch_stats(x)
        else:  # an empty shard still takes part in the collectives, with weight 0
            mean = var = torch.zeros(c, dtype=stats_dtype(x.dtype), device=x.device)
        # One float64 vector per process: [n, means, variances].
        local = torch.cat([torch.tensor([float(m)], dtype=torch.float64, device=x.device),
                           mean.to(torch.float64), var.to(torch.float64)])
        table = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(table, local, group=group)
        table = torch.stack(table)
        total = int(table[:, 0].sum().item())
        if total == 1:  # every process sees the same total, so all of them raise together
            raise ValueError(
                "expected more than 1 value per channel when training, got 1 over all processes: "
                "the batch variance is 0 and every output equals beta")
        mean, var = combine_statistics(table[:, 0], table[:, 1:1 + c], table[:, 1 + c:])
        mean, var = mean.to(stats_dtype(x.dtype)), var.to(stats_dtype(x.dtype))
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        y = (x.to(mean.dtype) - per_channel(mean, ndim)) * per_channel(scale, ndim)
        if bias is not None:
            y = y + per_channel(bias.to(y.dtype), ndim)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.group, ctx.total = group, total
        ctx.bias_dtype = None if bias is None else bias.dtype
        total = torch.tensor(total)
        ctx.mark_non_differentiable(mean, var, total)
        return y.to(x.dtype), mean, var, total

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar, _dtotal):
        x, weight, mean, invstd = ctx.saved_tensors
        ndim, dims = x.dim(), reduce_dims(x.dim())
        xhat = (x.to(mean.dtype) - per_channel(mean, ndim)) * per_channel(invstd, ndim)
        dy = dy.to(mean.dtype)
        c = x.shape[1]
        if x.numel() > 0:
            local = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])
        else:
            local = torch.zeros(2 * c, dtype=mean.dtype, device=x.device)
        dbeta, dgamma = local[:c].clone(), local[c:].clone()  # this process's share
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=ctx.group)
        sum_dy, sum_dy_xhat = local[:c], local[c:]
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        dx = (dy - per_channel(sum_dy / ctx.total, ndim)
              - xhat * per_channel(sum_dy_xhat / ctx.total, ndim))
        dx = dx * per_channel(scale, ndim)
        dweight = dgamma.to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = dbeta.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dweight, dbias, None, None, None


def sync_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5, process_group=None):
    """Batch normalization with statistics over all processes of ``process_group``.

    Every process of the group must call it (in the same order as its other collectives),
    with the same C; batch sizes may differ, and may be 0. In training, the result on each
    process is that process's rows of :func:`bnlib.torch.batch_norm` applied to the
    concatenation of all processes' inputs, and every process's running statistics get the
    same update (unbiased variance of the whole batch). Eval mode, and training without an
    initialized process group or with a single process, is :func:`bnlib.torch.batch_norm`.

    Args:
        process_group: a ``torch.distributed`` group; None for the default (world) group.

    Raises:
        The errors of :func:`bnlib.torch.batch_norm`, except that one value per channel is
        fine on one process as long as all processes together have more than one.
    """
    world_size = _group_size(process_group) if training else 1
    if world_size == 1:
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    _check_shard(input, running_mean, running_var, weight, bias, momentum, eps)
    y, mean, var, total = _SyncBatchNormFunction.apply(input, weight, bias, eps, process_group,
                                                       world_size)
    n = int(total)
    if running_mean is not None and n > 0:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = var * (n / (n - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return y


def _check_shard(x, running_mean, running_var, weight, bias, momentum, eps):
    """:func:`bnlib.torch.batch_norm`'s checks but the local count (one value per channel is fine)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    _checks.check_float_dtype("input", x.is_floating_point(), x.dtype)
    _checks.check_input_shape(tuple(x.shape), training=False)
    _checks.check_eps(eps)
    _checks.check_momentum(momentum, allow_none=False)
    _checks.check_running_pair(running_mean, running_var)
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(name, t, x, x.shape[1])


class SyncBatchNorm(BatchNormVariant):
    """Batch normalization synchronized over the processes of a ``torch.distributed`` group.

    The twin of ``torch.nn.SyncBatchNorm`` for bnlib: same parameters, buffers, state_dict
    keys and conventions as :class:`bnlib.torch.BatchNorm1d` (any ``(N, C, *)`` input). In
    training with an initialized process group of more than one process, the statistics are
    those of the batch formed by all processes' inputs (see :func:`sync_batch_norm`);
    otherwise it is ordinary batch normalization.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, device, dtype: as for BatchNorm.
        process_group: the group to synchronize over; None for the default group.

    Example (in each process of an initialized group)::

        model = SyncBatchNorm.convert(model)   # every bnlib BatchNorm becomes a SyncBatchNorm
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input(self, input, use_batch_stats):
        # With several processes a shard of one value per channel is fine; the total is checked.
        synced = use_batch_stats and _group_size(self.process_group) > 1
        super()._check_input(input, use_batch_stats and not synced)

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        return sync_batch_norm(input, running_mean, running_var, self.weight, self.bias,
                               use_batch_stats, momentum, self.eps, self.process_group)

    def __getstate__(self):
        # A process group cannot be pickled: a copy sent to another process uses its default group.
        state = self.__dict__.copy()
        state["process_group"] = None
        return state

    @classmethod
    def convert(cls, module, process_group=None):
        """Return ``module`` with every bnlib ``BatchNorm1d/2d/3d`` replaced by a SyncBatchNorm.

        Parameters and buffers are copied (shared values, not references); the replaced
        modules keep their mode. ``module`` itself is changed in place for its children.
        """
        from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

        if isinstance(module, (BatchNorm1d, BatchNorm2d, BatchNorm3d)):
            ref = module.weight if module.weight is not None else module.running_mean
            factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, process_group, **factory)
            sync.load_state_dict(module.state_dict())
            sync.train(module.training)
            if module.affine:
                sync.weight.requires_grad_(module.weight.requires_grad)
                sync.bias.requires_grad_(module.bias.requires_grad)
            return sync
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, process_group))
        return module


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
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
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

