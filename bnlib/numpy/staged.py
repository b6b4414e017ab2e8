"""Batch normalization as a computational graph of elementary steps, for teaching.

The training-mode forward pass is split into the nodes of :data:`~bnlib.numpy.staged.GRAPH`
(the staged derivation of CS231n and of Kratzert's blog).
:func:`~bnlib.numpy.batch_norm_backward_staged` visits them in reverse order and applies each
node's local derivative (the chain rule), adding up the gradients where a value feeds two
nodes: x feeds ``mu`` and ``xmu``, and ``xmu`` feeds ``sq`` and ``xhat``.

The result equals :func:`bnlib.numpy.batch_norm_backward` (the closed form) up to rounding; it
is slower and keeps more memory (two input-sized arrays in its cache instead of one, and more
temporaries), which is why libraries use the closed form.

Conventions are those of :func:`bnlib.numpy.batch_norm_forward`: input ``(N, C, *)``,
statistics per channel over the m = N * prod(spatial dims) values, biased variance.
Per-channel values (``mu``, ``var``, ``std``, ``invstd``, ``gamma``) are kept in the broadcast
shape ``(1, C, 1, ...)`` so that the code reads like the formulas. The mean and variance are
computed the textbook way (``mean(x)``, then ``mean((x - mu)^2)``), without the closed form's
shifted-data guard against large offsets.
"""

from typing import NamedTuple

import numpy as np

from .. import _checks
from .functional import (_check_affine, _check_eps_fits, _compute_dtype, _per_channel,
                         _reduce_axes, check_input)

__all__ = ["GRAPH", "Node", "StagedCache", "batch_norm_backward_staged",
           "batch_norm_forward_staged"]


class Node(NamedTuple):
    """One node of the forward graph: its name, what it computes (LaTeX), and its inputs."""

    name: str
    formula: str
    inputs: tuple


#: The forward graph in evaluation order. The leaves (inputs of the graph) are x, gamma, beta.
#: The formulas use the book's notation: mu_B and sigma_B^2 are the batch mean and biased variance.
GRAPH = (
    Node("mu", r"\mu_B = \frac{1}{m}\sum_i x_i", ("x",)),
    Node("xmu", r"x - \mu_B", ("x", "mu")),
    Node("sq", r"(x - \mu_B)^2", ("xmu",)),
    Node("var", r"\sigma_B^2 = \frac{1}{m}\sum_i (x_i - \mu_B)^2", ("sq",)),
    Node("std", r"\sqrt{\sigma_B^2 + \epsilon}", ("var",)),
    Node("invstd", r"1 / \sqrt{\sigma_B^2 + \epsilon}", ("std",)),
    Node("xhat", r"\hat x = (x - \mu_B) \cdot \mathrm{invstd}", ("xmu", "invstd")),
    Node("gxhat", r"\gamma \hat x", ("gamma", "xhat")),
    Node("y", r"y = \gamma \hat x + \beta", ("gxhat", "beta")),
)


class StagedCache(NamedTuple):
    """The node values that :func:`~bnlib.numpy.batch_norm_backward_staged` reads, and statistics.

    Attributes:
        xmu: x - mu, the shape of x, in the compute dtype.
        xhat: the normalized input, the shape of x.
        mu: the batch mean, shape (1, C, 1, ...).
        var: the **biased** batch variance, shape (1, C, 1, ...).
        std: sqrt(var + eps), shape (1, C, 1, ...).
        invstd: 1 / std, shape (1, C, 1, ...).
        gamma: the scale, shape (1, C, 1, ...) (ones when the forward had no gamma).
        input_dtype: the dtype of x (dx is returned in it).
    """

    xmu: np.ndarray
    xhat: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    std: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    input_dtype: np.dtype


def batch_norm_forward_staged(x, gamma=None, beta=None, eps=1e-5):
    """Training-mode batch normalization, node by node along :data:`~bnlib.numpy.staged.GRAPH`.

    Same result as :func:`bnlib.numpy.batch_norm_forward` (up to rounding, for data without
    huge offsets), written as one line per node.

    Args:
        x: input, shape ``(N, C, *)``, floating point, more than one value per channel.
        gamma: scale, shape (C,), or None for 1.
        beta: shift, shape (C,), or None for 0.
        eps: added to the variance, > 0.

    Returns:
        ``(y, cache)``: y has the shape and dtype of x; ``cache`` is a
        :class:`~bnlib.numpy.StagedCache`.

    Raises:
        TypeError: non-floating x, gamma or beta; non-numeric eps.
        ValueError: rank < 2, an empty batch, one value per channel, gamma/beta not of shape
            (C,), eps <= 0 or rounding to 0 in the compute dtype.
    """
    x = check_input(x, training=True)
    _checks.check_eps(eps)
    gamma, beta = _check_affine(gamma, beta, x.shape[1])
    _check_eps_fits(eps, x.dtype)
    if x.size == 0:
        raise ValueError(f"the staged forward needs a non-empty batch, got shape {x.shape}")
    input_dtype, dtype = x.dtype, _compute_dtype(x.dtype)
    axes, c = _reduce_axes(x.ndim), x.shape[1]
    gamma = _per_channel(np.ones(c, dtype) if gamma is None else gamma.astype(dtype), x.ndim)
    beta = _per_channel(np.zeros(c, dtype) if beta is None else beta.astype(dtype), x.ndim)
    x = x.astype(dtype, copy=False)

    mu = x.mean(axis=axes, keepdims=True)
    xmu = x - mu
    sq = xmu**2
    var = sq.mean(axis=axes, keepdims=True)
    std = np.sqrt(var + dtype.type(eps))
    invstd = 1.0 / std
    xhat = xmu * invstd
    gxhat = gamma * xhat
    y = gxhat + beta
    cache = StagedCache(xmu, xhat, mu, var, std, invstd, gamma, input_dtype)
    return y.astype(input_dtype, copy=False), cache


def batch_norm_backward_staged(dy, cache):
    """The backward of :func:`~bnlib.numpy.batch_norm_forward_staged`, node by node in reverse.

    Each line is one node's local derivative times the gradient arriving from above; sums
    over the batch appear where the forward broadcast a per-channel value, and gradients
    are added where a value fed two nodes.

    Args:
        dy: upstream gradient dL/dy, the shape of x.
        cache: the :class:`~bnlib.numpy.StagedCache` returned by the forward.

    Returns:
        ``(dx, dgamma, dbeta)``: dx has the shape and dtype of x; dgamma and dbeta have
        shape (C,) (returned also when the forward had no gamma or beta).

    Raises:
        ValueError: dy does not have the shape of x.
    """
    xmu, xhat, _, _, std, invstd, gamma, input_dtype = cache
    dy = np.asarray(dy)
    if dy.shape != xhat.shape:
        raise ValueError(f"dy must have the shape of x {xhat.shape}, got {dy.shape}")
    dy = dy.astype(xhat.dtype, copy=False)
    axes = _reduce_axes(dy.ndim)
    m = dy.size // dy.shape[1]

    # y = gxhat + beta: beta was broadcast over the batch, so its gradient is a sum.
    dbeta = dy.sum(axis=axes)
    dgxhat = dy
    # gxhat = gamma * xhat
    dgamma = (dgxhat * xhat).sum(axis=axes)
    dxhat = dgxhat * gamma
    # xhat = xmu * invstd: invstd was broadcast (a sum), xmu gets its first contribution.
    dinvstd = (dxhat * xmu).sum(axis=axes, keepdims=True)
    dxmu = dxhat * invstd
    # invstd = 1 / std, std = sqrt(var + eps)
    dstd = -dinvstd / std**2
    dvar = dstd * 0.5 / std
    # var = mean(sq): every sq value gets 1/m of dvar.
    dsq = np.broadcast_to(dvar / m, dy.shape)
    # sq = xmu^2: the second contribution to dxmu.
    dxmu = dxmu + 2 * xmu * dsq
    # xmu = x - mu: mu was broadcast (a sum); x receives dxmu directly ...
    dmu = -dxmu.sum(axis=axes, keepdims=True)
    # ... and through mu = mean(x), 1/m of dmu each: the two contributions add up.
    dx = dxmu + dmu / m
    return dx.astype(input_dtype, copy=False), dgamma, dbeta
