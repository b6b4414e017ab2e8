"""A batch-normalization layer in NumPy with the state and semantics of ``torch.nn.BatchNorm1d/2d/3d``."""

import numpy as np

from .. import _checks
from .functional import (_as_float_array, batch_norm_backward, batch_norm_forward,
                         batch_norm_inference)

__all__ = ["BatchNorm"]

_STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class _Layer:
    """What the NumPy layers share: a training flag, ``train()``/``eval()``, call = forward."""

    training = True

    def train(self, mode=True):
        """Set training mode (``mode=True``) or eval mode. Returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode: same as ``train(False)``. Returns self."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)


class BatchNorm(_Layer):
    """Batch normalization over dim 1 of an ``(N, C, *)`` input, with running statistics.

    The NumPy twin of ``torch.nn.BatchNorm1d/2d/3d`` (one class serves every rank).

    Training mode normalizes with the batch mean and **biased** variance and updates

    * ``running_mean = (1 - momentum) * running_mean + momentum * mean``
    * ``running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)``
      (the **unbiased** variance is stored; m values per channel),

    where ``momentum`` is the weight of the *new* batch (torch's convention; Keras and Flax
    weight the old value instead). With ``momentum=None`` the factor is
    ``1 / num_batches_tracked``: a cumulative average over all batches seen.
    ``num_batches_tracked`` counts every training forward (an empty batch too, as in torch).

    Eval mode normalizes with the running statistics, an affine map that does not depend on
    the rest of the batch. With ``track_running_stats=False`` there are no running statistics
    and batch statistics are used in both modes.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, > 0. Default 1e-5.
        momentum: weight of the new batch in [0, 1], or None. Default 0.1.
        affine: learn gamma (``weight``, init 1) and beta (``bias``, init 0). Default True.
        track_running_stats: keep ``running_mean`` (init 0), ``running_var`` (init 1) and
            ``num_batches_tracked`` (int64, init 0). Default True.
        dtype: dtype of the parameters and statistics. Default float64 (NumPy's default;
            torch's default is float32).

    Shape: input ``(N, C, *)``, output the same shape and dtype.

    Input of another floating dtype than the layer is a defined result, not an error: it is
    normalized in its own compute dtype (float32 for float16) with the parameters cast to it,
    the output keeps the input's dtype, and the running statistics keep the layer's dtype.
    Every argument, setting and buffer is checked before anything is updated, so a raised
    error leaves the layer exactly as it was (``bnlib.edge_cases`` lists the cases). The state
    saves without pickle: ``np.savez(f, **bn.state_dict())`` and
    ``bn.load_state_dict(np.load(f))`` restore it exactly.

    Example:
        >>> bn = BatchNorm(3)
        >>> y = bn(np.random.default_rng(0).normal(size=(8, 3)))
        >>> dx, dgamma, dbeta = bn.backward(np.ones_like(y))
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float64):
        _checks.check_num_features(num_features)
        _checks.check_eps(eps)
        _checks.check_momentum(momentum)
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise TypeError(f"dtype must be a floating-point dtype, got {np.dtype(dtype)}")
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.dtype = np.dtype(dtype)
        self.weight = np.ones(num_features, self.dtype) if affine else None
        self.bias = np.zeros(num_features, self.dtype) if affine else None
        if track_running_stats:
            self.running_mean = np.zeros(num_features, self.dtype)
            self.running_var = np.ones(num_features, self.dtype)
            self.num_batches_tracked = np.array(0, dtype=np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.training = True
        self._cache = None

    def forward(self, x):
        """Normalize x of shape ``(N, C, *)``; see the class docstring for the two modes.

        Raises:
            TypeError: input None, masked or not floating point (see
                :func:`~bnlib.numpy.batch_norm_forward`); ``eps`` or ``momentum`` reassigned
                to a non-number.
            ValueError: wrong rank, one value per channel in training, or C different from
                ``num_features``; ``eps``, ``momentum`` or a parameter or buffer reassigned to
                a bad value. Nothing is updated when an error is raised.
        """
        use_batch_stats = self.training or self.running_mean is None
        x = _as_float_array("x", x)
        _checks.check_input_shape(x.shape, use_batch_stats, num_features=self.num_features)
        self._check_state()
        if not use_batch_stats:
            y, self._cache = batch_norm_inference(
                x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
            return y
        y, cache = batch_norm_forward(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(cache)
        self._cache = cache
        return y

    def _check_state(self):
        """Settings and buffers are plain attributes a user may reassign: check them before use."""
        _checks.check_eps(self.eps)
        _checks.check_momentum(self.momentum)
        _checks.check_running_pair(self.running_mean, self.running_var)
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name} must be a NumPy array, got {type(value).__name__}")
            _checks.check_channel_vector(name, value.shape, self.num_features)
        if self.running_var is not None:
            _checks.check_nonnegative("running_var", self.running_var)
        tracking = self.running_mean is not None
        count = self.num_batches_tracked
        if tracking and not (isinstance(count, np.ndarray) and count.dtype == np.int64):
            raise TypeError(
                f"num_batches_tracked must be an int64 array while running statistics are "
                f"kept, got {count!r}"
            )

    def _update_running_stats(self, cache):
        """Torch's update: count the batch, then blend its statistics into the buffers."""
        self.num_batches_tracked += 1
        m = cache.xhat.size // self.num_features
        if m == 0:  # an empty batch is counted but has no statistics
            return
        factor = 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased_var = cache.var * (m / (m - 1))
        self.running_mean *= 1.0 - factor
        self.running_mean += factor * cache.mean
        self.running_var *= 1.0 - factor
        self.running_var += factor * unbiased_var

    def backward(self, dy):
        """Gradients of the last forward: ``(dx, dgamma, dbeta)``.

        In training mode this is the closed form of :func:`~bnlib.numpy.batch_norm_backward`;
        in eval mode ``dx = dy * gamma / sqrt(running_var + eps)``. dgamma and dbeta are None
        when ``affine=False``.

        Raises:
            RuntimeError: no forward pass yet.
            ValueError: dy does not have the shape of the last input.
        """
        if self._cache is None:
            raise RuntimeError("backward() called before forward(): there is nothing to differentiate")
        dx, dgamma, dbeta = batch_norm_backward(dy, self._cache)
        if not self.affine:
            return dx, None, None
        return dx, dgamma.astype(self.dtype, copy=False), dbeta.astype(self.dtype, copy=False)

    def state_dict(self):
        """Copies of the parameters and buffers under torch's keys (absent ones are left out)."""
        return {k: np.array(getattr(self, k)) for k in _STATE_KEYS if getattr(self, k) is not None}

    def load_state_dict(self, state_dict):
        """Load arrays (or torch tensors) saved by this class or by ``torch.nn.BatchNorm1d/2d/3d``.

        Every key of :meth:`state_dict` is required except ``num_batches_tracked``, which
        old torch checkpoints lack (the current count is kept, as torch does). Values are cast
        to this layer's dtype. An ``np.load`` of an ``np.savez`` file works as ``state_dict``.

        Raises:
            KeyError: missing or unexpected keys (all named).
            TypeError: a value that is not numeric.
            ValueError: a value of the wrong shape, a negative ``running_var``, or a
                ``num_batches_tracked`` that is not a whole number >= 0. Every value is checked
                and converted before the first is stored: nothing is loaded when an error is
                raised.
        """
        expected = [k for k in _STATE_KEYS if getattr(self, k) is not None]
        missing = [k for k in expected if k not in state_dict and k != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise KeyError(f"state_dict does not fit this layer: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        loaded = {k: self._checked_value(k, _to_numpy(v)) for k, v in state_dict.items()}
        if "running_var" in loaded:
            _checks.check_nonnegative("state_dict['running_var']", loaded["running_var"])
        for k, v in loaded.items():
            setattr(self, k, v)

    def _checked_value(self, key, value):
        """A copy of one state_dict value in this layer's dtype, or the documented error."""
        want = () if key == "num_batches_tracked" else (self.num_features,)
        if value.shape != want:
            raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, this layer needs {want}")
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(f"state_dict[{key!r}] must be numeric, got dtype {value.dtype}")
        if key != "num_batches_tracked":
            return value.astype(self.dtype, copy=True)
        count = value.item()
        if not (np.isfinite(count) and count >= 0 and count == int(count)):
            raise ValueError(f"state_dict['num_batches_tracked'] must be a whole number >= 0, "
                             f"got {count!r}")
        return np.array(int(count), dtype=np.int64)

    def __repr__(self):
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")


def _to_numpy(value):
    """An array from a NumPy array, a number or a (possibly CUDA) torch tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
