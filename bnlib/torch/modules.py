"""``BatchNorm1d/2d/3d`` modules: drop-in twins of ``torch.nn.BatchNorm1d/2d/3d`` built on bnlib."""

import torch

from .. import _checks
from .functional import batch_norm


class _BatchNorm(torch.nn.Module):
    """Parameters, buffers and forward shared by the BatchNorm modules (torch's ``_NormBase``).

    Training mode normalizes with the batch mean and **biased** variance and updates
    ``running = (1 - momentum) * running + momentum * stat``, storing the **unbiased**
    variance (times m / (m - 1), m values per channel). ``momentum`` is the weight of the
    *new* batch; ``momentum=None`` uses ``1 / num_batches_tracked`` (cumulative average).
    ``num_batches_tracked`` counts every training forward. Eval mode uses the running
    statistics; with ``track_running_stats=False`` batch statistics are used in both modes.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, > 0. Default 1e-5.
        momentum: weight of the new batch in [0, 1], or None. Default 0.1.
        affine: learnable ``weight`` (gamma, init 1) and ``bias`` (beta, init 0). Default True.
        track_running_stats: buffers ``running_mean`` (init 0), ``running_var`` (init 1) and
            ``num_batches_tracked`` (int64, init 0). Default True.
        device, dtype: of the parameters and buffers (as for any torch module).

    The ``state_dict`` keys are torch's (weight, bias, running_mean, running_var,
    num_batches_tracked), so state dicts load both ways with ``torch.nn.BatchNorm1d/2d/3d``.
    """

    _version = 2  # torch's BatchNorm version that has num_batches_tracked
    _allowed_ndims = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        _checks.check_num_features(num_features)
        _checks.check_eps(eps)
        _checks.check_momentum(momentum)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = torch.nn.Parameter(torch.empty(num_features, **factory))
            self.bias = torch.nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        """Reset the running statistics, weight = 1 and bias = 0."""
        self.reset_running_stats()
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def forward(self, input):
        """Normalize ``(N, C, *)`` input with batch or running statistics.

        Raises:
            TypeError: input that is not a floating-point tensor, or parameters of another dtype.
            ValueError: wrong rank for this module, C different from ``num_features``, one
                value per channel in training. Nothing is updated when an error is raised.
        """
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        _checks.check_input_shape(tuple(input.shape), use_batch_stats, self._allowed_ndims,
                                  self.num_features)
        counting = self.training and self.track_running_stats and self.num_batches_tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if counting and self.momentum is None:
            factor = 1.0 / (int(self.num_batches_tracked) + 1)
        keep_stats = not self.training or self.track_running_stats
        y = batch_norm(input,
                       self.running_mean if keep_stats else None,
                       self.running_var if keep_stats else None,
                       self.weight, self.bias, use_batch_stats, factor, self.eps)
        if counting:  # only after batch_norm succeeded: an error leaves the count unchanged
            self.num_batches_tracked.add_(1)
        return y

    def _checkpoint(self):
        """A function that puts every parameter and buffer back to its current object and value."""
        saved = [(name, t, t.detach().clone())
                 for name, t in [*self._parameters.items(), *self._buffers.items()]
                 if t is not None]

        def restore():
            with torch.no_grad():
                for name, tensor, value in saved:
                    setattr(self, name, tensor)  # undoes load_state_dict(..., assign=True)
                    tensor.copy_(value)

        return restore

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's ``load_state_dict``, all or nothing: after an error the module is unchanged.

        torch itself copies every entry that fits before it raises for the others (missing or
        unexpected keys, shapes that differ), which leaves a half-loaded module behind.
        """
        restore = self._checkpoint()
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except Exception:
            restore()
            raise

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Checkpoints from torch < 0.4.1 have no num_batches_tracked: keep the current count.
        key = prefix + "num_batches_tracked"
        if self.num_batches_tracked is not None and key not in state_dict:
            state_dict[key] = self.num_batches_tracked.clone()
        # Loaded as part of a larger model, this module stays all or nothing too: an entry
        # that cannot be loaded (always an error) undoes the entries copied before it.
        restore, errors = self._checkpoint(), len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        if len(error_msgs) > errors:
            restore()


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input; the twin of ``torch.nn.BatchNorm1d``.

    Example:
        >>> bn = BatchNorm1d(100)
        >>> y = bn(torch.randn(20, 100))
    """

    _allowed_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) input, per channel over N*H*W values.

    The twin of ``torch.nn.BatchNorm2d``.

    Example:
        >>> bn = BatchNorm2d(16)
        >>> y = bn(torch.randn(8, 16, 32, 32))
    """

    _allowed_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization of (N, C, D, H, W) input; the twin of ``torch.nn.BatchNorm3d``."""

    _allowed_ndims = (5,)
