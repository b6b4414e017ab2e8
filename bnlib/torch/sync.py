"""Synchronized batch normalization over ``torch.distributed``.

In data-parallel training every process (device) sees only its own shard of the batch. An
ordinary BatchNorm then normalizes with the shard's statistics; :class:`SyncBatchNorm`
normalizes with the statistics of the whole batch, exactly as one process would on the
concatenated batch:

* forward: each process computes its count n_k, mean mu_k and biased variance v_k per
  channel; one ``all_gather`` shares them and every process combines them (Chan et al.):
  ``n = sum n_k``, ``mu = sum n_k mu_k / n``, ``var = sum n_k (v_k + (mu_k - mu)^2) / n``;
* backward: the two per-channel sums that the batch-norm gradient needs, ``sum(dy)`` and
  ``sum(dy * (x - mu))``, are added over processes with one ``all_reduce``; then the closed
  form of :func:`bnlib.torch._formulas.backward_coefficients` with the total count n.

The gradients of gamma and beta stay local (each process's own sums), as in
``torch.nn.SyncBatchNorm``: data-parallel training adds or averages parameter gradients
anyway. Communication uses the real ``torch.distributed`` collectives, so any backend works
(gloo on CPU, nccl on GPUs).
"""


import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from ._formulas import (backward_coefficients, batch_statistics, normalize_coefficients,
                        update_running_stats)
from ._reductions import per_channel, reduce_dims, stats_dtype, sum_of_products
from .functional import batch_norm, check_arguments
from .modules import _BatchNormForward

__all__ = ["SyncBatchNorm", "combine_statistics", "sync_batch_norm"]


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
            mean, var, _ = batch_statistics(x)
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
        invstd, scale, offset = normalize_coefficients(var, eps, weight, bias)
        y = (x.to(mean.dtype) - per_channel(mean, ndim)) * per_channel(scale, ndim)
        if offset is not None:
            y = y + per_channel(offset, ndim)
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
        ndim, dims, c = x.dim(), reduce_dims(x.dim()), x.shape[1]
        centred = x.to(mean.dtype) - per_channel(mean, ndim)
        dy = dy.to(mean.dtype)
        if x.numel() > 0:
            local = torch.cat([dy.sum(dims), sum_of_products(dy, centred)])
        else:
            local = torch.zeros(2 * c, dtype=mean.dtype, device=x.device)
        own = local.clone()  # this process's sums: its share of dgamma and dbeta
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=ctx.group)
        a, scale, b, _, _ = backward_coefficients(local[:c], local[c:], invstd, weight,
                                                  ctx.total)
        dx = (centred * per_channel(a, ndim) + dy * per_channel(scale, ndim)
              + per_channel(b, ndim))
        dweight = (invstd * own[c:]).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = own[:c].to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
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
    check_arguments(input, running_mean, running_var, weight, bias, training, momentum, eps,
                    check_count=False)
    y, mean, var, total = _SyncBatchNormFunction.apply(input, weight, bias, eps, process_group,
                                                       world_size)
    if int(total) > 0:
        update_running_stats(running_mean, running_var, mean, var, int(total), momentum)
    return y


class SyncBatchNorm(_BatchNormForward, torch.nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` computed by bnlib: statistics over the processes of a group.

    A subclass of ``torch.nn.SyncBatchNorm`` (same constructor, parameters, buffers,
    state_dict keys and conventions; any ``(N, C, *)`` input, CPU or GPU). In training with an
    initialized process group of more than one process, the statistics are those of the batch
    formed by all processes' inputs (see :func:`sync_batch_norm`); otherwise it is ordinary
    batch normalization.

    Example (in each process of an initialized group)::

        model = SyncBatchNorm.convert_sync_batchnorm(model)   # every batch norm becomes one
    """

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
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Return ``module`` with every batch norm (torch's or bnlib's ``BatchNorm1d/2d/3d``)
        replaced by a bnlib ``SyncBatchNorm``.

        torch's own ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does the same but makes
        ``torch.nn.SyncBatchNorm`` modules (torch's kernels), also from bnlib layers. Here the
        parameters and buffers are copied (shared values, not references), and the replaced
        modules keep their mode and ``requires_grad``. ``module`` itself is changed in place
        for its children.
        """
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
                module, torch.nn.SyncBatchNorm):
            ref = module.weight if module.weight is not None else module.running_mean
            factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, process_group, **factory)
            if module.affine and module.bias is None:
                sync.register_parameter("bias", None)
            sync.load_state_dict(module.state_dict())
            sync.train(module.training)
            for name in ("weight", "bias"):
                mine, theirs = getattr(sync, name), getattr(module, name)
                if mine is not None:
                    mine.requires_grad_(theirs.requires_grad)
            return sync
        for name, child in module.named_children():
            module.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return module
