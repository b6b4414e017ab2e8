"""Helpers of the chapter on inference: what running averages hold, and predictions that use
each batch's own statistics (what forgetting ``model.eval()`` does).

The library's inference tools (population statistics, folding, frozen batch norm) are in
:mod:`bnlib.torch.inference`.
"""

import copy

import numpy as np
import torch

from .. import _checks

__all__ = ["predict_with_batch_statistics", "running_average"]


def running_average(values, momentum=0.1, initial=0.0):
    """The running averages a batch-norm layer stores after each batch of a sequence.

    With ``v_t`` the statistic of batch t (its mean, or its **unbiased** variance) and
    ``p = momentum`` (torch's convention: the weight of the new batch),

    .. math::

        r_0 = \\text{initial}, \\qquad r_t = (1 - p)\\, r_{t-1} + p\\, v_t
            = (1 - p)^t r_0 + \\sum_{k=1}^t p (1 - p)^{t-k} v_k .

    The weight ``(1 - p)^t`` left on the initial value is the start-up bias. With
    ``momentum=None`` the factor is ``1 / t``: ``r_t`` is the plain mean of ``v_1 .. v_t``
    and the initial value is forgotten at once. Keras, Flax and CS231n call ``1 - p`` the
    momentum.

    Args:
        values: shape ``(T, *)``, the statistic of each of T batches (array or tensor).
        momentum: in [0, 1], or None for the cumulative average.
        initial: the value before the first batch, a number or shape ``(*)`` (torch starts
            ``running_mean`` at 0 and ``running_var`` at 1).

    Returns:
        float64 array of shape ``(T, *)``: ``r_1 .. r_T``.

    Raises:
        ValueError: momentum outside [0, 1]; values with no batch axis.
        TypeError: a momentum that is not a number or None.
    """
    _checks.check_momentum(momentum)
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                   dtype=np.float64)
    if v.ndim == 0:
        raise ValueError("values needs a leading batch axis: shape (T, *), got a scalar")
    out = np.empty_like(v)
    r = np.broadcast_to(np.asarray(initial, dtype=np.float64), v.shape[1:])
    for t in range(len(v)):
        factor = 1.0 / (t + 1) if momentum is None else momentum
        r = (1.0 - factor) * r + factor * v[t]
        out[t] = r
    return out


@torch.no_grad()
def predict_with_batch_statistics(model, x, batches):
    """Outputs of ``model`` when each group of examples is normalized as one batch.

    Runs a copy of the model in training mode (batch statistics), one forward per group,
    so the outputs of an example depend on the other members of its group. The model and
    its running statistics are not touched.

    Args:
        model: a torch module.
        x: inputs, shape ``(N, *)``.
        batches: index tensors (or lists) that together hold every index of ``range(N)``
            exactly once, e.g. ``torch.randperm(N).split(60)``.

    Returns:
        A tensor with the outputs of all N examples in their original order.

    Raises:
        ValueError: batches that are not a partition of ``range(N)``; errors of the forward
            pass (e.g. a group of one example: one value per channel).
    """
    groups = [torch.as_tensor(b, dtype=torch.long).reshape(-1) for b in batches]
    if not groups:
        raise ValueError("batches is empty: there is nothing to predict")
    order = torch.cat(groups)
    if not torch.equal(order.sort().values, torch.arange(len(x))):
        raise ValueError(f"batches must hold every index of range({len(x)}) exactly once, "
                         f"got {len(order)} indices")
    runner = copy.deepcopy(model).train()
    outputs = [runner(x[g]) for g in groups]
    result = torch.empty((len(x),) + outputs[0].shape[1:], dtype=outputs[0].dtype,
                         device=outputs[0].device)
    result[order] = torch.cat(outputs)
    return result
