"""Layers that exist to test a claim, not to be used in a model.

- :class:`NoisyBatchNorm1d`: batch normalization followed by random noise that moves every
  unit's distribution at every step, the "noisy BatchNorm" with which Santurkar et al. (2018)
  put internal covariate shift back into a normalized network.
- :class:`DetachedBatchNorm1d`: batch normalization whose batch mean and variance are
  constants for backpropagation, the "normalization outside the gradient step" of Ioffe and
  Szegedy (2015, Section 2), which the paper says makes the model blow up.
- :class:`InjectedNoise`: noise drawn independently for every example from a distribution that
  changes at every step, the noise of Santurkar et al.'s "noisy BatchNorm" as their text
  describes it; placed after a batch norm, ``Sequential(BatchNorm1d(C), InjectedNoise(C))``.
- :class:`RandomDomain`: a second input "domain" ``x -> gain * x + offset`` applied to random
  examples or whole batches in training, to make batches i.i.d. or sorted by domain. It sits
  in front of a model, so :func:`bnlib.book.training.train` runs unchanged; in eval mode it
  does nothing.
- :class:`WSConv2d`: a convolution with Weight Standardization (Qiao et al., 2019), each
  output channel's weights standardized before every use; with group norm after it, the
  "WS + GN" of micro-batch training. :meth:`WSConv2d.convert` swaps it into a model.
- :class:`TorchGhostBatchNorm`: :class:`bnlib.torch.GhostBatchNorm` computed with torch's own
  batch-norm kernel: the same numbers in float64 (tested), faster on the tiny inputs of a
  training sweep.

>>> net = models.mlp(784, [100] * 3, 10, "sigmoid",
...                  norm=functools.partial(NoisyBatchNorm1d, shift=1.0, scale=2.0))
>>> model = torch.nn.Sequential(RandomDomain(3.0, 2.0, per="batch"), net)
"""

import math

import torch

from ..torch import BatchNorm1d, GhostBatchNorm
from ..torch.ghost import per_group
from ..torch._formulas import batch_statistics, update_running_stats

__all__ = ["DetachedBatchNorm1d", "InjectedNoise", "NoisyBatchNorm1d", "RandomDomain",
           "TorchGhostBatchNorm", "WSConv2d"]


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


class DetachedBatchNorm1d(BatchNorm1d):
    """:class:`bnlib.torch.BatchNorm1d` whose batch statistics are constants for the gradient.

    The forward pass is batch normalization's, in both modes, running statistics included:

    .. math:: y = \\gamma \\frac{x - \\mu_B}{\\sqrt{\\sigma_B^2 + \\epsilon}} + \\beta

    but in training, ``mu_B`` and ``sigma_B^2`` are detached, so backpropagation treats them
    as numbers that do not depend on x: ``dL/dx = gamma * dL/dy / sqrt(sigma_B^2 + eps)``,
    the first of the three terms of the full gradient (the eval-mode gradient, evaluated at
    the batch statistics). Its sum over the batch is not zero and it is not orthogonal to
    ``xhat``, so a gradient step moves the layer's input in directions that the normalization
    then undoes: the weights before the layer drift while the loss does not change. This is
    the situation of Section 2 of Ioffe and Szegedy (2015), kept to test that argument; it is
    not a layer to train models with.

    Args: those of :class:`bnlib.torch.BatchNorm1d`.

    Raises: what :class:`bnlib.torch.BatchNorm1d` raises (wrong rank or channel count, one
    value per channel in training), before anything is updated.
    """

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        if not use_batch_stats:
            return super()._normalize(input, running_mean, running_var, use_batch_stats, momentum)
        with torch.no_grad():
            mean, var, _ = batch_statistics(input)
            update_running_stats(running_mean, running_var, mean, var,
                                 input.numel() // input.shape[1], momentum)
        # torch's kernel with the statistics passed in as fixed numbers: its backward is the
        # eval-mode one, gamma * invstd * dy (the fastest route for the book's small models).
        return torch.nn.functional.batch_norm(input, mean.to(input.dtype), var.to(input.dtype),
                                              self.weight, self.bias, training=False,
                                              eps=self.eps)


class InjectedNoise(torch.nn.Module):
    """Noise that is i.i.d. over the examples of a batch and changes its distribution at every
    step: Santurkar et al.'s (2018) "noisy BatchNorm" when placed after a batch norm.

    Their description: "we perturb each activation for each sample in the batch using i.i.d.
    noise sampled from a non-zero mean and non-unit variance distribution", and "this noise
    distribution changes at each time step". At every training forward pass, for each
    channel j, the distribution is drawn,

    .. math:: \\mu_j \\sim U(-M, M), \\qquad \\sigma_j \\sim U(0, S),

    and every entry of channel j gets its own draw from it:
    ``y = x + mu_j + sigma_j * eps`` with ``eps ~ N(0, 1)`` independent per entry (per example
    and, for (N, C, ...) inputs, per position). So within a step the examples receive
    different noise (unlike :class:`NoisyBatchNorm1d`, whose one scale and shift per channel
    a following batch norm can partly undo), and from step to step the channel's
    distribution moves by up to M in mean and changes its spread. Eval mode adds nothing.
    The distributions and magnitudes are this module's choice; the quoted text does not fix
    them. Draws from torch's global generator. The gradient with respect to x is the identity.

    Args:
        num_features: C, the number of channels (dim 1 of the input).
        mean: M >= 0, the largest absolute mean of a channel's noise.
        std: S >= 0, the largest standard deviation of a channel's noise.

    Raises:
        ValueError: ``mean`` or ``std`` negative or not finite (checked when built); in
            ``forward``, an input whose dim 1 is not C.
    """

    def __init__(self, num_features, mean=1.0, std=1.0):
        for name, value in (("mean", mean), ("std", std)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        super().__init__()
        self.num_features, self.mean, self.std = int(num_features), float(mean), float(std)

    def extra_repr(self):
        return f"{self.num_features}, mean={self.mean}, std={self.std}"

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected an input of shape (N, {self.num_features}, ...), got "
                             f"{tuple(x.shape)}")
        if not self.training:
            return x
        shape = [1, -1] + [1] * (x.dim() - 2)
        options = {"dtype": x.dtype, "device": x.device}
        mu = (2 * torch.rand(self.num_features, **options) - 1) * self.mean
        sigma = torch.rand(self.num_features, **options) * self.std
        return x + mu.view(shape) + sigma.view(shape) * torch.randn(x.shape, **options)


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


class WSConv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` with Weight Standardization (Qiao et al., 2019).

    Before every use, the weights of each output channel o are standardized over their
    fan-in (the ``in_channels / groups * kh * kw`` weights that make output o):

    .. math:: \\hat W_o = \\frac{W_o - \\mathrm{mean}(W_o)}{\\sqrt{\\mathrm{var}(W_o) + \\epsilon}}

    with the biased variance, as in the paper's equation (its released code adds eps to the
    unbiased standard deviation instead; the difference is a factor
    ``sqrt(fan_in / (fan_in - 1))`` per channel, which a following normalization removes).
    The convolution runs with ``W_hat``; gradients flow through the standardization to the
    stored ``weight``, which keeps its own scale. Each output channel's weights thus always
    have mean 0 and variance 1 (up to eps): the layer's output does not depend on the scale
    or offset of the stored weights. Qiao et al. pair it with group norm after every
    convolution for training with one or two images per device.

    Args:
        \\*args, \\*\\*kwargs: those of ``torch.nn.Conv2d``.
        eps: added to the variance, > 0.

    Raises:
        ValueError: ``eps`` <= 0, or a fan-in of one weight (nothing to standardize).

    Example:
        >>> conv = WSConv2d(16, 32, 3, padding=1, bias=False)
        >>> y = conv(torch.randn(2, 16, 8, 8))
        >>> model = WSConv2d.convert(models.cnn(1, [8, 16], 10, norm=gn))  # every Conv2d
    """

    def __init__(self, *args, eps=1e-5, **kwargs):
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool)
                and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        super().__init__(*args, **kwargs)
        if self.weight[0].numel() < 2:
            raise ValueError("every output channel has a single weight: standardizing it "
                             "would leave 0; Weight Standardization needs a fan-in >= 2")
        self.eps = float(eps)

    def standardized_weight(self):
        """``W_hat`` of the class docstring, shape ``weight.shape``, differentiable."""
        flat = self.weight.flatten(1)
        mean = flat.mean(1, keepdim=True)
        var = (flat - mean).pow(2).mean(1, keepdim=True)
        return ((flat - mean) / torch.sqrt(var + self.eps)).view_as(self.weight)

    def forward(self, input):
        return self._conv_forward(input, self.standardized_weight(), self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, eps={self.eps}"

    @classmethod
    def convert(cls, module, eps=1e-5):
        """Replace every plain ``torch.nn.Conv2d`` in ``module`` by a :class:`WSConv2d` with the
        same settings, weight and bias (the same tensors' values, copied); return the module.

        ``module`` itself is replaced when it is a ``Conv2d`` (use the return value).
        Subclasses of ``Conv2d`` (a WSConv2d among them) are left as they are. The new
        layers are on the old ones' device and dtype and keep their ``requires_grad``.
        """
        if type(module) is torch.nn.Conv2d:
            new = cls(module.in_channels, module.out_channels, module.kernel_size,
                      stride=module.stride, padding=module.padding, dilation=module.dilation,
                      groups=module.groups, bias=module.bias is not None,
                      padding_mode=module.padding_mode, device=module.weight.device,
                      dtype=module.weight.dtype, eps=eps)
            with torch.no_grad():
                new.weight.copy_(module.weight)
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            new.weight.requires_grad_(module.weight.requires_grad)
            if module.bias is not None:
                new.bias.requires_grad_(module.bias.requires_grad)
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, eps))
        return module


class TorchGhostBatchNorm(GhostBatchNorm):
    """:class:`bnlib.torch.GhostBatchNorm` computed with ``torch.nn.functional.batch_norm``.

    The same layer (arguments, running statistics, eval mode, errors), with every group's
    normalization done by torch's kernel through :func:`bnlib.torch.ghost.per_group`, which
    rearranges the ``G * B`` examples into ``G * C`` channels of one call. In float64 the
    outputs, gradients and running statistics equal GhostBatchNorm's to rounding (tested);
    on the tiny inputs of the book's training sweeps torch's kernel has less overhead per
    call than bnlib's. ``momentum=None`` (a cumulative average) is passed to torch as a number.
    """

    def _normalize(self, input, running_mean, running_var, use_batch_stats, momentum):
        momentum = float(momentum)
        if not use_batch_stats:
            return torch.nn.functional.batch_norm(input, running_mean, running_var, self.weight,
                                                  self.bias, False, momentum, self.eps)
        return per_group(torch.nn.functional.batch_norm, input, self.group_size, running_mean,
                         running_var, self.weight, self.bias, momentum=momentum, eps=self.eps)
