"""Two measures of internal covariate shift: how far a layer's input distribution moves, and
how much a layer's gradient changes when the layers below it are updated.

>>> from bnlib.book.covariate_shift import wasserstein_1d, gradient_shift
>>> moved = wasserstein_1d(z_before, z_after)           # (D,): one distance per unit
>>> g = gradient_shift(model, list(model), x, y, lr=0.5)  # one value per layer

The first is the paper's notion (Ioffe and Szegedy, 2015): the distribution of a layer's
input changes because the parameters before it change. The second is the gradient-based
notion of Santurkar et al. (2018): what matters to a layer is how much its gradient changes
when the layers below it take their step.
"""

import copy
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["GradientShift", "as_numpy", "gradient_shift", "wasserstein_1d"]


def as_numpy(z):
    """A detached CPU NumPy copy of a tensor (or the array itself): statistics are computed in
    NumPy, whose sort is an order of magnitude faster than torch's on the CPU."""
    if isinstance(z, torch.Tensor):
        return z.detach().cpu().numpy()
    return np.asarray(z)


def wasserstein_1d(a, b):
    """Per-column 1-D Wasserstein-1 distance between two samples of the same size.

    For two empirical distributions with n values each, ``W1 = mean_k |a_(k) - b_(k)|`` where
    ``a_(k)`` is the k-th smallest value: the average distance each value must travel to turn
    one histogram into the other. It is in the units of the data and catches a change of
    location (a shift by c gives exactly ``|c|``) as well as of spread.

    Args:
        a, b: arrays or tensors of shape (N, D) (or (N,)): N values of each of D units.

    Returns:
        A NumPy array of shape (D,) (or a NumPy scalar for 1-D input).

    Raises:
        ValueError: shapes differ, or there are no values.
    """
    a, b = as_numpy(a), as_numpy(b)
    if a.shape != b.shape:
        raise ValueError(f"both samples need the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (1, 2) or a.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N,) or (N, D) sample, got shape {a.shape}")
    return np.abs(np.sort(a, axis=0) - np.sort(b, axis=0)).mean(axis=0)


class GradientShift(NamedTuple):
    """Per layer: ``l2`` = ||G - G'||, ``relative`` = ||G - G'|| / ||G||, ``cosine`` of G and G'."""

    l2: list
    relative: list
    cosine: list


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def gradient_shift(model, layers, x, y, lr, loss_fn=torch.nn.functional.cross_entropy):
    """Santurkar et al.'s internal covariate shift of each layer, for one SGD step.

    For layer i with parameters W_i (all parameters of the module ``layers[i]``):

    - ``G_i = dL/dW_i`` at the current parameters (what a simultaneous update of all layers
      uses), and
    - ``G'_i = dL/dW_i`` after the layers *before* it have taken their SGD step,
      ``W_j <- W_j - lr * G_j`` for j < i, the layers from i on unchanged,

    both on the same batch (x, y). If layer i's input did not move, or moved in a way that
    does not matter to it, then ``G'_i = G_i``. Only the listed layers take steps, so the
    first listed layer's shift is 0 by definition.

    The model runs in its current mode (training mode: batch statistics). The computation
    happens on a copy, so the model's parameters and buffers (running statistics) are
    unchanged, and the random number generator is reset before every forward pass so that a
    random layer (dropout, :class:`bnlib.book.layers.NoisyBatchNorm1d`) draws the same numbers for
    G and G' and is left as it was.

    Args:
        model: maps x to what ``loss_fn`` takes.
        layers: submodules of ``model`` in forward order, e.g. ``list(model)`` for a
            ``bnlib.book.models.mlp``; each must have parameters.
        x, y: one batch.
        lr: the SGD learning rate of the step, >= 0.
        loss_fn: ``loss_fn(model(x), y)`` is the loss.

    Returns:
        A :class:`GradientShift` of Python floats, one entry per layer.

    Raises:
        ValueError: a layer is not a submodule of ``model`` or has no parameters, or ``lr`` < 0.
    """
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    submodules = {id(m): name for name, m in model.named_modules()}
    names = []
    for k, layer in enumerate(layers):
        if id(layer) not in submodules:
            raise ValueError(f"layers[{k}] ({type(layer).__name__}) is not a submodule of the model")
        if not any(True for _ in layer.parameters()):
            raise ValueError(f"layers[{k}] ({type(layer).__name__}) has no parameters")
        names.append(submodules[id(layer)])

    work = copy.deepcopy(model)
    params = [list(work.get_submodule(name).parameters()) for name in names]
    with torch.random.fork_rng(devices=[]):
        state = torch.get_rng_state()

        def gradient(i=None):
            torch.set_rng_state(state)
            loss = loss_fn(work(x), y)
            wanted = [p for group in params for p in group] if i is None else params[i]
            return torch.autograd.grad(loss, wanted)

        all_grads = gradient()
        grads, start = [], 0
        for group in params:
            grads.append(all_grads[start:start + len(group)])
            start += len(group)

        l2, relative, cosine = [], [], []
        for i in range(len(params)):
            g = _flat(grads[i])
            if i == 0:
                g_after = g
            else:
                with torch.no_grad():  # layer i - 1 takes its step; layers before it took theirs
                    for p, dp in zip(params[i - 1], grads[i - 1]):
                        p.sub_(lr * dp)
                g_after = _flat(gradient(i))
            diff = (g - g_after).norm().item()
            norm = g.norm().item()
            l2.append(diff)
            relative.append(diff / norm if norm > 0 else float("nan"))
            cosine.append(torch.nn.functional.cosine_similarity(g, g_after, dim=0).item())
    return GradientShift(l2, relative, cosine)
