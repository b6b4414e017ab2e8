"""The base of the batch-norm variants (ghost, renormalized, synchronized).

They keep BatchNorm's parameters, buffers and bookkeeping and replace only the normalization.
"""

import torch

from .. import _checks
from .modules import _BatchNorm


class BatchNormVariant(_BatchNorm):
    """A :class:`~bnlib.torch.modules._BatchNorm` whose normalization function is replaced.

    Parameters, buffers, ``state_dict`` keys, the momentum convention (``None`` = cumulative
    average) and ``num_batches_tracked`` are BatchNorm's, so a variant's state loads into
    ``BatchNorm1d/2d/3d`` and back. Subclasses implement :meth:`_normalize`. Any input of
    shape ``(N, C, *)`` is accepted.
    """

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        """Return the normalized input; update the running statistics when given and training."""
        raise NotImplementedError

    def _check_input(self, input, use_batch_stats):
        """Rank, channels, and more than one value per channel when batch statistics are used."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        _checks.check_input_shape(tuple(input.shape), use_batch_stats, None, self.num_features)

    def forward(self, input):
        """Normalize ``(N, C, *)`` input with batch (training) or running statistics (eval).

        Raises:
            TypeError: input that is not a floating-point tensor.
            ValueError: rank < 2, C different from ``num_features``, one value per channel in
                training. Nothing is updated when an error is raised.
        """
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        self._check_input(input, use_batch_stats)
        counting = self.training and self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if counting and self.momentum is None:
            momentum = 1.0 / (int(self.num_batches_tracked) + 1)
        keep_stats = not self.training or self.track_running_stats
        y = self._normalize(input,
                            self.running_mean if keep_stats else None,
                            self.running_var if keep_stats else None,
                            use_batch_stats, momentum)
        if counting:  # only after a successful forward: an error leaves the count unchanged
            self.num_batches_tracked.add_(1)
        return y
