"""How smooth the loss is along the gradient: Santurkar et al.'s (2018) landscape measurements.

>>> from bnlib.book.landscape import along_gradient
>>> a = along_gradient(model, x, y, lrs=[0.05, 0.1, 0.2, 0.5, 1.0])
>>> a.loss, a.gradient_change, a.smoothness

Their explanation of why batch normalization helps: it makes the loss and its gradient
change more slowly as the parameters move, so the gradient at the current point stays a
good guide for a larger step.
"""

import copy
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["AlongGradient", "along_gradient"]


class AlongGradient(NamedTuple):
    """What happens to the loss and the gradient along one gradient step, per learning rate.

    Attributes:
        lrs: the step sizes (NumPy array).
        loss: ``L(w - lr * g)`` for each lr (NumPy array).
        gradient_change: ``||grad L(w - lr * g) - g||`` for each lr (NumPy array).
        smoothness: ``max_lr ||grad L(w - lr * g) - g|| / ||lr * g||``: an estimate, along this
            direction, of the gradient's Lipschitz constant ("effective beta-smoothness").
        gradient_norm: ``||g||`` at the current parameters.
    """

    lrs: np.ndarray
    loss: np.ndarray
    gradient_change: np.ndarray
    smoothness: float
    gradient_norm: float


def along_gradient(model, x, y, lrs, loss_fn=torch.nn.functional.cross_entropy):
    """Move every parameter w of ``model`` to ``w - lr * g`` (g = the gradient at w on the batch
    (x, y)) for each lr, and measure the loss and the gradient there.

    The model runs in its current mode (training mode: batch statistics) on a copy, so its
    parameters and buffers do not change, and the random number generator is reset before
    every forward pass (random layers draw the same numbers at every point) and restored.
    The spread of ``loss`` over the lrs is Santurkar et al.'s "variation of the loss",
    ``gradient_change`` their "gradient predictiveness" (smaller is more predictive).

    Args:
        model: maps x to what ``loss_fn`` takes.
        x, y: one batch.
        lrs: step sizes, each > 0.
        loss_fn: ``loss_fn(model(x), y)`` is the loss.

    Returns:
        An :class:`AlongGradient`.

    Raises:
        ValueError: no lrs, an lr <= 0, or a model without trainable parameters.
    """
    lrs = np.asarray(lrs, dtype=float).reshape(-1)
    if lrs.size == 0 or not np.all(lrs > 0):
        raise ValueError(f"lrs must be a non-empty list of step sizes > 0, got {lrs.tolist()}")
    work = copy.deepcopy(model)
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    start = [p.detach().clone() for p in params]
    with torch.random.fork_rng(devices=[]):
        state = torch.get_rng_state()

        def loss_and_gradient():
            torch.set_rng_state(state)
            loss = loss_fn(work(x), y)
            grads = torch.autograd.grad(loss, params)
            return loss.item(), torch.cat([g.reshape(-1) for g in grads])

        _, g = loss_and_gradient()
        losses, changes = [], []
        for lr in lrs:
            with torch.no_grad():
                offset = 0
                for p, p0 in zip(params, start):
                    n = p.numel()
                    p.copy_(p0 - lr * g[offset:offset + n].view_as(p))
                    offset += n
            loss, g_there = loss_and_gradient()
            losses.append(loss)
            changes.append((g_there - g).norm().item())
    norm = g.norm().item()
    changes = np.array(changes)
    smoothness = float(np.max(changes / (lrs * norm))) if norm > 0 else float("nan")
    return AlongGradient(lrs, np.array(losses), changes, smoothness, norm)
