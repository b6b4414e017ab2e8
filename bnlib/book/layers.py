"""Layers that exist to test a claim, not to be used in a model.

- :class:`NoisyBatchNorm1d`: batch normalization followed by random noise that moves every
  unit's distribution at every step, the "noisy BatchNorm" with which Santurkar et al. (2018)
  put internal covariate shift back into a normalized network.
- :class:`RandomDomain`: a second input "domain" ``x -> gain * x + offset`` applied to random
  examples or whole batches in training, to make batches i.i.d. or sorted by domain. It sits
  in front of a model, so :func:`bnlib.book.training.train` runs unchanged; in eval mode it
  does nothing.

>>> net = models.mlp(784, [100] * 3, 10, "sigmoid",
...                  norm=functools.partial(NoisyBatchNorm1d, shift=1.0, scale=2.0))
>>> model = torch.nn.Sequential(RandomDomain(3.0, 2.0, per="batch"), net)
"""

import math

import torch

from ..torch import BatchNorm1d

__all__ = ["NoisyBatchNorm1d", "RandomDomain"]


class NoisyBatchNorm1d(BatchNorm1d):
    """:class:`bnlib.torch.BatchNorm1d`, then a random per-unit scale and shift in training.

    At every training forward pass, for each channel j, draw

    .. math:: \\log s_j \\sim U(-\\log S, \\log S), \\qquad m_j \\sim U(-M, M)

    and return ``y_j = s_j * BN(x)_j + m_j``: the channel's distribution gets a new mean and
    a new standard deviation at every step (up to M and a factor S away from what BN and
    its gamma, beta produced), one draw per channel shared by the batch. The next layer's
    input thus keeps moving, whatever BN does. Eval mode is plain batch normalization.

    This is a simplified version of Santurkar et al.'s noise (theirs also varies from example
    to example); what it keeps is a distribution that changes at every step.

    Args:
        num_features: C, the number of channels.
        **kwargs: the other arguments of :class:`bnlib.torch.BatchNorm1d` (eps, momentum, ...).
        shift: M >= 0, the largest shift of a channel's mean.
        scale: S >= 1, the largest factor by which a channel's spread is multiplied or divided.

    Raises:
        ValueError: ``shift`` < 0 or ``scale`` < 1 (checked before the layer is built).
    """

    def __init__(self, num_features, shift=1.0, scale=2.0, **kwargs):
        if not (math.isfinite(shift) and shift >= 0):
            raise ValueError(f"shift must be a finite number >= 0, got {shift!r}")
        if not (math.isfinite(scale) and scale >= 1):
            raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
        super().__init__(num_features, **kwargs)
        self.shift, self.scale = float(shift), float(scale)

    def extra_repr(self):
        return f"{super().extra_repr()}, shift={self.shift}, scale={self.scale}"

    def forward(self, input):
        y = super().forward(input)
        if not self.training:
            return y
        shape = [1, -1] + [1] * (y.dim() - 2)
        options = {"dtype": y.dtype, "device": y.device}
        log_s = (2 * torch.rand(self.num_features, **options) - 1) * math.log(self.scale)
        m = (2 * torch.rand(self.num_features, **options) - 1) * self.shift
        return y * log_s.exp().view(shape) + m.view(shape)


class RandomDomain(torch.nn.Module):
    """In training, map a random part of the batch to the second domain ``gain * x + offset``.

    Args:
        gain, offset: the second domain's transform.
        per: "example" (each example is in domain 2 with probability 1/2: mixed batches) or
            "batch" (the whole batch is, with probability 1/2: batches sorted by domain).
        seed: seeds the module's own random generator; None draws that seed from torch's
            global generator (so :func:`bnlib.book.training.deterministic` fixes it).

    Raises:
        ValueError: ``per`` is neither "example" nor "batch".

    Example:
        >>> model = torch.nn.Sequential(RandomDomain(3.0, 2.0, per="batch"), mlp)
        >>> y2 = model(RandomDomain.shift(x_test, 3.0, 2.0))  # eval mode: domain 2 by hand
    """

    def __init__(self, gain, offset, per="example", seed=None):
        super().__init__()
        if per not in ("example", "batch"):
            raise ValueError(f"per must be 'example' or 'batch', got {per!r}")
        self.gain, self.offset, self.per = float(gain), float(offset), per
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def shift(x, gain, offset):
        """The second domain: ``gain * x + offset``."""
        return x * gain + offset

    def forward(self, x):
        if not self.training:
            return x
        n = x.shape[0] if self.per == "example" else 1
        second = torch.rand(n, generator=self.generator) < 0.5
        second = second.view(-1, *([1] * (x.dim() - 1))).to(x.device)
        return torch.where(second, self.shift(x, self.gain, self.offset), x)

    def extra_repr(self):
        return f"gain={self.gain}, offset={self.offset}, per={self.per!r}"
