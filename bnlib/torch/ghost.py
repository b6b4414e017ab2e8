"""Ghost batch normalization: a batch normalized in groups, each with its own statistics.

Hoffer et al. (2017) normalize a large batch in "ghost" groups of a few examples. The same
computation describes data-parallel training without synchronization: each of G devices
normalizes its own ``group_size`` examples. This module computes all groups in one call:
the batch ``(G * B, C, *)`` is rearranged to ``(B, G * C, *)`` so that each (group,
channel) pair is a channel of an ordinary batch norm.
"""

import math

import torch

from .. import _checks
from .functional import batch_norm
from .modules import _BatchNormForward

__all__ = ["GhostBatchNorm", "ghost_batch_norm", "per_group"]


def _check_group_size(group_size, shape):
    _checks.check_positive_int("group_size", group_size)
    n = shape[0]
    if n % group_size:
        raise ValueError(f"a batch of {n} examples does not split into groups of {group_size}")
    if group_size * math.prod(shape[2:]) == 1:
        raise ValueError(f"groups of {group_size} example(s) of shape {tuple(shape[1:])} have one "
                         f"value per channel: their variance is 0. Use larger groups.")


def per_group(norm, input, group_size, running_mean, running_var, weight, bias, **kwargs):
    """Apply a batch-norm function to each group of ``group_size`` consecutive examples.

    ``norm`` has :func:`bnlib.torch.batch_norm`'s signature and is called once, in training
    mode, on the input rearranged to ``(B, G * C, *)`` with the running statistics, weight and
    bias repeated G times. Afterwards each running statistic is the average of its G updated
    copies: with ``momentum`` m, ``running = (1 - m) * running + m * (average over groups of
    the group's statistic)`` (unbiased group variances, B * prod(spatial) values each).
    Gradients of weight and bias add up over the groups.

    Raises:
        ValueError: N not a multiple of ``group_size``, or groups with one value per channel.
    """
    _checks.check_input_shape(tuple(input.shape), training=False)
    _check_group_size(group_size, input.shape)
    n, c, rest = input.shape[0], input.shape[1], tuple(input.shape[2:])
    g = n // group_size
    grouped = input.reshape(g, group_size, c, *rest).transpose(0, 1)
    grouped = grouped.reshape(group_size, g * c, *rest)
    repeat = (lambda t: None if t is None else t.repeat(g))
    stats = [repeat(running_mean), repeat(running_var)]
    y = norm(grouped, *stats, repeat(weight), repeat(bias), training=True, **kwargs)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(stats[0].view(g, c).mean(0))
            running_var.copy_(stats[1].view(g, c).mean(0))
    return y.reshape(group_size, g, c, *rest).transpose(0, 1).reshape(input.shape)


def ghost_batch_norm(input, group_size, running_mean, running_var, weight=None, bias=None,
                     training=False, momentum=0.1, eps=1e-5):
    """Batch normalization of each group of ``group_size`` examples with the group's statistics.

    Training: as :func:`bnlib.torch.batch_norm` applied to each group separately, with one
    update of the running statistics by the average of the groups' statistics (see
    :func:`bnlib.torch.ghost.per_group`). Eval: the ordinary fixed affine map with the
    running statistics. ``group_size = N`` is ordinary batch normalization.

    Raises:
        The errors of :func:`bnlib.torch.batch_norm`, and ValueError when N is not a multiple
        of ``group_size``.
    """
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    return per_group(batch_norm, input, group_size, running_mean, running_var, weight, bias,
                     momentum=momentum, eps=eps)


class GhostBatchNorm(_BatchNormForward, torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics per group of ``group_size`` examples (Hoffer et al., 2017).

    In training, the batch (N a multiple of ``group_size``) is split into consecutive groups
    and each is normalized with its own mean and biased variance: what G = N / group_size
    devices of data-parallel training compute without synchronized BN. The running
    statistics get one update per forward with the groups' average; eval mode is BatchNorm's.
    A subclass of torch's ``_BatchNorm`` with its parameters, buffers and conventions; any
    input of shape ``(N, C, *)``.

    Args:
        num_features: C.
        group_size: examples per group, B.
        \\*args, \\*\\*kwargs: the other arguments of ``torch.nn.BatchNorm1d`` (eps, momentum,
            affine, track_running_stats, device, dtype, bias).

    Example:
        >>> gbn = GhostBatchNorm(16, group_size=4)
        >>> y = gbn(torch.randn(32, 16, 8, 8))   # 8 groups of 4 images
    """

    def __init__(self, num_features, group_size, *args, **kwargs):
        _checks.check_positive_int("group_size", group_size)
        super().__init__(num_features, *args, **kwargs)
        self.group_size = group_size

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        return ghost_batch_norm(input, self.group_size, running_mean, running_var, self.weight,
                                self.bias, use_batch_stats, momentum, self.eps)

    def extra_repr(self):
        return f"{super().extra_repr()}, group_size={self.group_size}"
