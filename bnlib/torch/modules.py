"""``BatchNorm1d/2d/3d``: ``torch.nn.BatchNorm1d/2d/3d`` whose forward is computed by bnlib.

Each class subclasses its ``torch.nn`` counterpart and overrides only :meth:`forward`: the
constructor (with torch 2.13's keyword-only ``bias=``), parameters, buffers,
``reset_parameters``, ``extra_repr`` and state-dict versioning are torch's. So every torch
utility that looks for batch norms by ``isinstance`` finds them:
``torch.optim.swa_utils.update_bn``, ``torch.func.replace_all_batch_norm_modules_``,
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (which replaces them by torch's own
``SyncBatchNorm``; use :meth:`bnlib.torch.SyncBatchNorm.convert_sync_batchnorm` to get
bnlib's), and ``isinstance(m, torch.nn.BatchNorm2d)`` filters for weight decay or init.

What bnlib adds to torch's modules: arguments are checked when the module is built
(``eps`` > 0, ``momentum`` in [0, 1] or None, ``num_features`` a positive int), every
error is raised before anything changes (``num_batches_tracked`` included), and
``load_state_dict`` is all or nothing.
"""

import torch

from .. import _checks
from .functional import batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _batch_norm_forward(module, input):
    """The forward of every bnlib batch norm: torch's ``_BatchNorm`` bookkeeping, then
    ``module._normalize``.

    Training updates the running statistics with ``momentum`` (the weight of the new batch)
    or, for ``momentum=None``, with ``1 / num_batches_tracked`` (a cumulative average),
    passed as a 0-d tensor so that neither ``torch.compile`` nor a CUDA device has to read
    the count back. ``num_batches_tracked`` counts every training forward and is only
    incremented after a successful normalization. Without running statistics
    (``track_running_stats=False``) batch statistics are used in eval mode too.

    Wrapped for ``torch.fx`` (see the end of this module): a symbolic trace records one call
    of this function with the module as an argument, so the traced graph reads the module's
    mode and buffers when it runs, as it would call a leaf ``torch.nn.BatchNorm2d``.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    use_batch_stats = module.training or (module.running_mean is None
                                          and module.running_var is None)
    module._check_input(input, use_batch_stats)
    keep_stats = not module.training or module.track_running_stats
    counting = (module.training and module.track_running_stats
                and module.num_batches_tracked is not None)
    momentum = 0.0 if module.momentum is None else module.momentum
    if counting and module.momentum is None:
        count = module.num_batches_tracked + 1
        momentum = count.to(module.running_mean.dtype).reciprocal()
    y = module._normalize(input,
                          module.running_mean if keep_stats else None,
                          module.running_var if keep_stats else None,
                          use_batch_stats, momentum)
    if counting:  # only after the normalization succeeded: an error leaves the count as it was
        module.num_batches_tracked.add_(1)
    return y


class _BatchNormForward:
    """bnlib's forward and checks, mixed into a subclass of torch's ``_BatchNorm``.

    Subclasses choose what normalizes (:meth:`_normalize`; default
    :func:`bnlib.torch.batch_norm`) and which inputs are accepted (``_allowed_ndims``).
    """

    _allowed_ndims = None  # any rank >= 2

    def __init__(self, num_features, *args, **kwargs):
        _checks.check_num_features(num_features)
        super().__init__(num_features, *args, **kwargs)
        _checks.check_eps(self.eps)
        _checks.check_momentum(self.momentum)

    def _check_input(self, input, use_batch_stats):
        """Rank, channel count, and more than one value per channel for batch statistics."""
        _checks.check_input_shape(tuple(input.shape), use_batch_stats, self._allowed_ndims,
                                  self.num_features)

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        """Normalize; update the running statistics when they are given and batch statistics
        are used."""
        return batch_norm(input, running_mean, running_var, self.weight, self.bias,
                          use_batch_stats, momentum, self.eps)

    def forward(self, input):
        """Normalize ``(N, C, *)`` input with batch statistics (training) or running ones (eval).

        Raises:
            TypeError: input that is not a floating-point tensor, or parameters of another dtype.
            ValueError: wrong rank for this module, C different from ``num_features``, one
                value per channel in training. Nothing is updated when an error is raised.
        """
        return _batch_norm_forward(self, input)

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
        # torch's own loader (it fills a missing num_batches_tracked for checkpoints older
        # than version 2 only). Loaded as part of a larger model, this module stays all or
        # nothing too: an entry that cannot be loaded undoes the entries copied before it.
        restore, errors = self._checkpoint(), len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        if len(error_msgs) > errors:
            restore()


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by bnlib: (N, C) or (N, C, L) input.

    Same constructor, parameters, buffers and semantics as torch's (see
    :func:`bnlib.torch.batch_norm` for the conventions); see the module docstring for what
    bnlib adds.

    Example:
        >>> bn = BatchNorm1d(100)
        >>> y = bn(torch.randn(20, 100))
    """

    _allowed_ndims = (2, 3)


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by bnlib: (N, C, H, W) input, statistics per channel
    over N * H * W values.

    Example:
        >>> bn = BatchNorm2d(16)
        >>> y = bn(torch.randn(8, 16, 32, 32))
    """

    _allowed_ndims = (4,)


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by bnlib: (N, C, D, H, W) input."""

    _allowed_ndims = (5,)


torch.fx.wrap("_batch_norm_forward")
