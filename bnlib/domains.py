"""Two input domains, and batches that mix them or not: a model-side input transform for experiments.

A second "sensor" sees the same signals with another gain and offset, ``x -> gain * x +
offset``. :class:`RandomDomain` puts training inputs into one of the two domains, either
each example independently (mixed batches, i.i.d.) or a whole batch at once (batches
sorted by domain, as when data arrive source by source). It sits in front of a model, so
:func:`bnlib.training.train` can be used unchanged; in eval mode it does nothing.
"""

import torch


class RandomDomain(torch.nn.Module):
    """In training, map a random part of the batch to the second domain ``gain * x + offset``.

    Args:
        gain, offset: the second domain's transform.
        per: "example" (each example is in domain 2 with probability 1/2: mixed batches) or
            "batch" (the whole batch is, with probability 1/2: batches sorted by domain).
        seed: seeds the module's own random generator; None draws that seed from torch's
            global generator (so :func:`bnlib.training.deterministic` fixes it).

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
