"""Helpers of the chapter on inference: what running averages hold, predictions that use
each batch's own statistics (what forgetting ``model.eval()`` does), population statistics
recomputed one layer at a time, and how well calibrated a classifier's probabilities are.

The library's inference tools (population statistics, folding, frozen batch norm) are in
:mod:`bnlib.torch.inference`.
"""

import copy
from typing import NamedTuple

import numpy as np
import torch

from .. import _checks
from ..torch.inference import _first_element, _recomputing, _reset, _statistics_layers

__all__ = ["Calibration", "calibration", "entropy_adaptation", "predict_with_batch_statistics",
           "recompute_statistics_layer_by_layer", "running_average"]


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


@torch.no_grad()
def recompute_statistics_layer_by_layer(model, batches):
    """Algorithm 2 with every earlier batch norm already in eval mode: one pass per layer.

    :func:`bnlib.torch.recompute_statistics` runs the whole model in training mode, so each
    layer's statistics are collected on inputs that the earlier layers normalized with *batch*
    statistics, while at inference those layers use population statistics. With small batches
    the two differ (with m = 2 every unit leaves its batch norm as ``beta +- gamma``). Here the
    batch-norm layers are recomputed in the order of ``model.modules()`` (the forward order of
    a ``Sequential``): layer l is reset, set to ``momentum=None`` and run in training mode over
    all batches while every other module is in eval mode, the layers before it holding their
    new population statistics. Afterwards, as for Algorithm 2, layer l holds
    ``mean = E_B[mu_B]`` and ``var = m/(m-1) E_B[sigma_B^2]`` of its inputs, now the inputs
    it sees at inference. Every module's mode and every layer's momentum are restored; an
    error leaves every statistic as it was. Costs L passes over the batches for L layers.

    Args:
        model: a ``torch.nn.Module`` whose batch norms (torch's and bnlib's) with running
            statistics are recomputed; modules registered in forward order.
        batches: an iterable of inputs, or of tuples/lists whose first item is the input; it
            is read once and kept (the passes reuse it).

    Raises:
        TypeError: a model that is not a ``torch.nn.Module``.
        ValueError: no batch-norm layer with running statistics; no batches; any error of a
            forward pass (nothing is changed then).
    """
    layers = _statistics_layers(model)
    batches = [_first_element(b) for b in batches]
    if not batches:
        raise ValueError("batches is empty: population statistics need at least one batch")
    with _recomputing(model, layers):
        model.eval()
        for layer in layers:
            _reset(layer)  # then only this layer trains: the layers below are already final
            for x in batches:
                model(x)
            layer.eval()


class Calibration(NamedTuple):
    """What :func:`calibration` returns."""

    nll: float  # mean negative log-likelihood of the labels
    ece: float  # expected calibration error, in [0, 1]
    per_example_nll: np.ndarray  # (N,) float64, for paired comparisons


def calibration(logits, labels, bins=15):
    """How well a classifier's predicted probabilities match how often it is right.

    With ``p = softmax(logits)``, each example's prediction ``argmax p`` and confidence
    ``max p``:

    - ``nll``: the mean of ``-log p[label]`` (cross-entropy, a proper scoring rule: it is
      lowest for probabilities that are both right and honest);
    - ``ece``: the expected calibration error of Naeini et al. (2015) and Guo et al. (2017),
      ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over ``bins`` equal-width bins of
      confidence in (0, 1]: 0 when, within every bin, the mean confidence equals the fraction
      of correct predictions. An over-confident network (probabilities too close to 0 and 1)
      has a larger ECE and, usually, a larger NLL.

    Args:
        logits: (N, K) tensor; labels: (N,) integer tensor; bins: number of bins (>= 1).

    Raises:
        ValueError: shapes that do not match, no examples, or ``bins`` < 1.
    """
    logits = torch.as_tensor(logits).detach().double().cpu()
    labels = torch.as_tensor(labels).detach().cpu().long()
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N >= 1, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    confidence, prediction = logits.softmax(dim=1).max(dim=1)
    correct = (prediction == labels).double()
    which = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)
    count = torch.bincount(which, minlength=bins).double()
    gap = (torch.bincount(which, weights=correct, minlength=bins)
           - torch.bincount(which, weights=confidence, minlength=bins)).abs()
    return Calibration(float(nll.mean()), float(gap.sum() / count.sum()), nll.numpy())


def entropy_adaptation(model, batches, lr, momentum=0.9):
    """Test-time adaptation by entropy minimization (TENT, Wang et al., 2021), on a copy.

    The copy's batch-norm layers normalize with the statistics of each test batch (their
    running statistics are dropped: ``track_running_stats=False``) and only their gamma and
    beta are trained; every other parameter is frozen and every other module is in eval mode.
    For each batch in order, the predictions are made and then one SGD step (``lr``,
    ``momentum``) lowers the mean entropy ``-sum_k p_k log p_k`` of the batch's predicted
    distributions: online, as in TENT, each batch is predicted before the update it causes.
    No labels are used. ``model`` is not changed.

    Args:
        model: a classifier with batch-norm layers (torch's or bnlib's) with affine parameters.
        batches: a list of input tensors (the test data in the order it arrives).
        lr, momentum: of the SGD steps on gamma and beta.

    Returns:
        ``(logits, adapted)``: the predictions, all batches concatenated in order, and the
        adapted copy.

    Raises:
        ValueError: no batches, or a model without affine batch norm.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: there is nothing to adapt to")
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not norms:
        raise ValueError("the model has no batch norm with gamma and beta to adapt")
    for p in adapted.parameters():
        p.requires_grad_(False)
    params = []
    for m in norms:
        m.track_running_stats, m.running_mean, m.running_var = False, None, None
        m.num_batches_tracked = None
        params += [p.requires_grad_(True) for p in (m.weight, m.bias) if p is not None]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    outputs = []
    for x in batches:
        logits = adapted(x)
        outputs.append(logits.detach())
        log_p = torch.log_softmax(logits, dim=1)
        entropy = -(log_p.exp() * log_p).sum(1).mean()
        optimizer.zero_grad()
        entropy.backward()
        optimizer.step()
    return torch.cat(outputs), adapted
