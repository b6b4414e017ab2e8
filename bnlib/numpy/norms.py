"""Layer and group normalization in NumPy, built on batch normalization of the transpose.

All three normalizations standardize a set of values with its own mean and **biased**
variance; they differ only in *which* values form a set:

* batch norm: one channel, over the batch (and spatial) dims;
* layer norm: one example, over its last dims (``normalized_shape``);
* group norm: one example and one group of ``C / G`` channels, over those channels and the
  spatial dims.

Write each set as a column of a matrix of shape (K, R) (K values per set, R sets): batch
normalization of that matrix normalizes every column, forward and backward. So these
functions reshape, call :func:`~bnlib.numpy.batch_norm_forward` /
:func:`~bnlib.numpy.batch_norm_backward` on the transpose, and apply their own affine map
(elementwise for layer norm, per channel for group norm), exactly as
``torch.nn.LayerNorm`` / ``torch.nn.GroupNorm`` do.

Unlike torch, a set of a single value is an error: its normalized value is always 0 and the
output is ``beta`` whatever the input.
"""

from typing import NamedTuple, Optional

import numpy as np

from .. import _checks
from .functional import (BatchNormCache, _as_float_array, _as_parameter, batch_norm_backward,
                         batch_norm_forward)
from .layer import _Layer

__all__ = ["GroupNorm", "LayerNorm", "NormCache", "group_norm_backward",
           "group_norm_forward", "layer_norm_backward", "layer_norm_forward"]


class NormCache(NamedTuple):
    """What :func:`bnlib.numpy.layer_norm_backward` / :func:`bnlib.numpy.group_norm_backward` need.

    Attributes:
        rows: the batch-norm cache of the (K, R) transposed matrix (K values per set).
        xhat: the normalized input, shape of x, in the compute dtype.
        gamma: the scale or None.
        param_axes: the axes of x summed to get dgamma and dbeta.
        gamma_shape: ``normalized_shape`` for layer norm, (C,) for group norm.
        gamma_view: the shape gamma takes to broadcast against x.
        input_dtype: the dtype of x (dx is returned in it).
    """

    rows: BatchNormCache
    xhat: np.ndarray
    gamma: Optional[np.ndarray]
    param_axes: tuple
    gamma_shape: tuple
    gamma_view: tuple
    input_dtype: np.dtype


def _normalize_sets(x, set_size, eps):
    """Normalize x in consecutive (C-order) sets of ``set_size`` values: (xhat, rows cache)."""
    _checks.check_set_size(x.shape, set_size)
    rows = x.reshape(-1, set_size)  # (R, K): one set per row
    _, cache = batch_norm_forward(rows.T, eps=eps)  # the transpose has one set per column
    return cache.xhat.T.reshape(x.shape), cache


def _affine(xhat, gamma, beta, view, input_dtype):
    """gamma * xhat + beta in the compute dtype, returned in the input's dtype."""
    y = xhat if gamma is None else xhat * gamma.astype(xhat.dtype).reshape(view)
    if beta is not None:
        y = y + beta.astype(xhat.dtype).reshape(view)
    return y.astype(input_dtype, copy=False)


def layer_norm_forward(x, normalized_shape, gamma=None, beta=None, eps=1e-5):
    """Layer normalization (``torch.nn.functional.layer_norm``): each example over its last dims.

    With the K values of the last ``len(normalized_shape)`` dims of one example,

    .. math::

        \\mu = \\frac{1}{K}\\sum_k x_k, \\quad \\sigma^2 = \\frac{1}{K}\\sum_k (x_k - \\mu)^2,
        \\quad y_k = \\gamma_k \\frac{x_k - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta_k

    with gamma and beta of shape ``normalized_shape`` (elementwise). Nothing depends on the
    other examples, so training and inference compute the same thing.

    Args:
        x: input of shape ``(*, *normalized_shape)``, floating point.
        normalized_shape: an int or a tuple, the trailing dims to normalize over.
        gamma, beta: arrays of shape ``normalized_shape``, or None.
        eps: added to the variance, > 0.

    Returns:
        ``(y, cache)``; y has the shape and dtype of x.

    Raises:
        TypeError: non-floating x, gamma or beta.
        ValueError: bad ``normalized_shape``, x whose trailing dims differ from it, gamma/beta
            of another shape, eps <= 0, or a ``normalized_shape`` of a single value.
    """
    x = _as_float_array("x", x)
    shape = _checks.normalized_shape(normalized_shape)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"layer norm over normalized_shape={shape} expects input of shape "
                         f"(*, {', '.join(map(str, shape))}), got {x.shape}")
    _checks.check_eps(eps)
    gamma, beta = _as_parameter("gamma", gamma, shape), _as_parameter("beta", beta, shape)
    xhat, rows = _normalize_sets(x, int(np.prod(shape)), eps)
    lead = tuple(range(x.ndim - len(shape)))
    cache = NormCache(rows, xhat, gamma, lead, shape, shape, x.dtype)
    return _affine(xhat, gamma, beta, shape, x.dtype), cache


def group_norm_forward(x, num_groups, gamma=None, beta=None, eps=1e-5):
    """Group normalization (``torch.nn.functional.group_norm``) of ``(N, C, *)`` input.

    The C channels are split into ``num_groups`` consecutive groups of C / G channels; each
    example's group is standardized over its (C / G) * prod(spatial) values, then every
    channel gets its own gamma and beta:

    .. math::

        y_{n,c,s} = \\gamma_c \\frac{x_{n,c,s} - \\mu_{n,g(c)}}
                    {\\sqrt{\\sigma^2_{n,g(c)} + \\epsilon}} + \\beta_c

    ``num_groups=1`` is layer normalization over ``(C, *)`` with a per-channel affine map (the
    Group Normalization paper's "LN"); ``num_groups=C`` is instance normalization.

    Args:
        x: input of shape ``(N, C, *)``, floating point.
        num_groups: G, a divisor of C.
        gamma, beta: (C,) arrays or None.
        eps: added to the variance, > 0.

    Returns:
        ``(y, cache)``; y has the shape and dtype of x.

    Raises:
        TypeError: non-floating x, gamma or beta.
        ValueError: rank < 2, G not a positive divisor of C, gamma/beta not of shape (C,),
            eps <= 0, or groups of a single value.
    """
    x = _as_float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"group norm expects input of shape (N, C, *), got {x.shape}")
    _checks.check_num_groups(num_groups, x.shape[1])
    _checks.check_eps(eps)
    c = x.shape[1]
    gamma, beta = _as_parameter("gamma", gamma, (c,)), _as_parameter("beta", beta, (c,))
    set_size = (c // num_groups) * int(np.prod(x.shape[2:], dtype=np.int64))
    xhat, rows = _normalize_sets(x, set_size, eps)
    view = (c,) + (1,) * (x.ndim - 2)
    cache = NormCache(rows, xhat, gamma, (0,) + tuple(range(2, x.ndim)), (c,), view, x.dtype)
    return _affine(xhat, gamma, beta, view, x.dtype), cache


def _norm_backward(dy, cache):
    """Backward of both: dgamma and dbeta directly; dx by batch-norm backward of the transpose."""
    xhat = cache.xhat
    dy = np.asarray(dy)
    if dy.shape != xhat.shape:
        raise ValueError(f"dy must have the shape of x {xhat.shape}, got {dy.shape}")
    dy = dy.astype(xhat.dtype, copy=False)
    dbeta = dy.sum(axis=cache.param_axes).reshape(cache.gamma_shape)
    dgamma = (dy * xhat).sum(axis=cache.param_axes).reshape(cache.gamma_shape)
    dxhat = dy
    if cache.gamma is not None:
        dxhat = dy * cache.gamma.astype(xhat.dtype).reshape(cache.gamma_view)
    set_size = cache.rows.xhat.shape[0]
    dx_t, _, _ = batch_norm_backward(dxhat.reshape(-1, set_size).T, cache.rows)
    return dx_t.T.reshape(xhat.shape).astype(cache.input_dtype, copy=False), dgamma, dbeta


def layer_norm_backward(dy, cache):
    """Gradients of :func:`layer_norm_forward`: ``(dx, dgamma, dbeta)``.

    For each example, with ``g = dy * gamma`` and means over its K normalized values,
    ``dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)``: the batch-norm backward
    formula with the roles of examples and features exchanged. dgamma and dbeta
    (``sum(dy * xhat)``, ``sum(dy)`` over the leading dims) have shape ``normalized_shape``
    and are returned even without gamma/beta.

    Raises:
        ValueError: dy does not have the shape of x.
    """
    return _norm_backward(dy, cache)


def group_norm_backward(dy, cache):
    """Gradients of :func:`group_norm_forward`: ``(dx, dgamma, dbeta)``, dgamma/dbeta of shape (C,).

    Raises:
        ValueError: dy does not have the shape of x.
    """
    return _norm_backward(dy, cache)


class _Norm(_Layer):
    """Parameters, state and backward shared by :class:`LayerNorm` and :class:`GroupNorm`."""

    def __init__(self, param_shape, eps, affine, bias, dtype):
        _checks.check_eps(eps)
        self.eps = eps
        self.dtype = np.dtype(dtype)
        _checks.check_float_dtype("dtype", np.issubdtype(self.dtype, np.floating), self.dtype)
        self.weight = np.ones(param_shape, self.dtype) if affine else None
        self.bias = np.zeros(param_shape, self.dtype) if affine and bias else None
        self.training = True  # a uniform interface: both modes compute the same here
        self._cache = None

    def backward(self, dy):
        """Gradients of the last forward: ``(dx, dweight, dbias)`` (None where absent).

        Raises:
            RuntimeError: no forward pass yet.
            ValueError: dy does not have the shape of the last input.
        """
        if self._cache is None:
            raise RuntimeError("backward() called before forward(): "
                               "there is nothing to differentiate")
        dx, dgamma, dbeta = _norm_backward(dy, self._cache)
        dweight = None if self.weight is None else dgamma.astype(self.dtype, copy=False)
        dbias = None if self.bias is None else dbeta.astype(self.dtype, copy=False)
        return dx, dweight, dbias

    def state_dict(self):
        """Copies of ``weight`` and ``bias`` (where present), torch's keys."""
        return {k: np.array(getattr(self, k)) for k in ("weight", "bias")
                if getattr(self, k) is not None}

    def load_state_dict(self, state_dict):
        """Load arrays or torch tensors saved by this class or by its ``torch.nn`` twin.

        Nothing is loaded when an error is raised.

        Raises:
            KeyError: missing or unexpected keys.
            ValueError: a value of the wrong shape.
        """
        expected = [k for k in ("weight", "bias") if getattr(self, k) is not None]
        if sorted(state_dict) != sorted(expected):
            raise KeyError(f"state_dict has keys {sorted(state_dict)}, this layer needs {expected}")
        loaded = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                  for k, v in state_dict.items()}
        for k, v in loaded.items():
            if v.shape != getattr(self, k).shape:
                raise ValueError(f"state_dict[{k!r}] has shape {v.shape}, this layer needs "
                                 f"{getattr(self, k).shape}")
        for k, v in loaded.items():
            setattr(self, k, v.astype(self.dtype, copy=True))


class LayerNorm(_Norm):
    """Layer normalization over the last dims: the NumPy twin of ``torch.nn.LayerNorm``.

    See :func:`layer_norm_forward` for the formula. Same output in training and eval mode.

    Args:
        normalized_shape: an int or a tuple, the trailing dims of the input to normalize over.
        eps: added to the variance, > 0. Default 1e-5.
        elementwise_affine: learn ``weight`` (gamma, init 1) of shape ``normalized_shape``.
        bias: also learn ``bias`` (beta, init 0) when ``elementwise_affine``. Default True.
        dtype: of the parameters. Default float64.

    Example:
        >>> ln = LayerNorm(8)
        >>> y = ln(np.random.default_rng(0).normal(size=(4, 8)))
        >>> dx, dweight, dbias = ln.backward(np.ones_like(y))
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float64):
        self.normalized_shape = _checks.normalized_shape(normalized_shape)
        super().__init__(self.normalized_shape, eps, elementwise_affine, bias, dtype)

    def forward(self, x):
        """Normalize x of shape ``(*, *normalized_shape)``; errors as :func:`layer_norm_forward`."""
        y, self._cache = layer_norm_forward(x, self.normalized_shape, self.weight, self.bias,
                                            self.eps)
        return y

    def __repr__(self):
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.weight is not None})")


class GroupNorm(_Norm):
    """Group normalization of ``(N, C, *)`` input: the NumPy twin of ``torch.nn.GroupNorm``.

    See :func:`group_norm_forward` for the formula. Same output in training and eval mode.

    Args:
        num_groups: G, a divisor of ``num_channels``.
        num_channels: C.
        eps: added to the variance, > 0. Default 1e-5.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0). Default True.
        dtype: of the parameters. Default float64.

    Raises:
        ValueError: G not a positive divisor of C, or a bad eps.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float64):
        _checks.check_num_features(num_channels)
        _checks.check_num_groups(num_groups, num_channels)
        self.num_groups, self.num_channels = num_groups, num_channels
        super().__init__((num_channels,), eps, affine, True, dtype)

    def forward(self, x):
        """Normalize x of shape ``(N, C, *)``; errors as :func:`group_norm_forward`.

        Raises:
            ValueError: also when C differs from ``num_channels``.
        """
        shape = np.shape(x)
        if len(shape) >= 2 and shape[1] != self.num_channels:
            raise ValueError(f"input has {shape[1]} channels (dim 1 of shape {shape}) but the "
                             f"layer expects {self.num_channels}")
        y, self._cache = group_norm_forward(x, self.num_groups, self.weight, self.bias, self.eps)
        return y

    def __repr__(self):
        return f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps})"
