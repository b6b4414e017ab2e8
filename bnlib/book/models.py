"""Model builders shared by the chapters: the same network with and without normalization.

- :func:`mlp`: ``[Linear -> norm -> activation] * depth -> Linear``.
- :func:`cnn`: ``[Conv2d -> norm -> activation -> MaxPool2d] * depth -> head``.
- :class:`RecurrentClassifier`: an Elman RNN whose pre-activation is normalized at every step,
  ``h_t = tanh(norm_t(W_x x_t + W_h h_{t-1}))``, classifying from the last state.
"""

from collections import OrderedDict

import torch

from .. import _checks
from ..torch import LayerNorm, RecurrentBatchNorm

__all__ = ["ACTIVATIONS", "RecurrentClassifier", "cnn", "mlp"]

ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
               "identity": torch.nn.Identity}
"""The activations that mlp and cnn accept by name (name -> torch.nn module class)."""


def _block(name, layer, width, norm, norm_position, act, tail_name, tail):
    """``layer -> norm -> act`` (or ``layer -> act -> norm``), then ``tail`` unless None.

    A Sequential whose children keep their names, so hooks can reach each part.
    """
    parts = OrderedDict([(name, layer)])
    if norm is not None and norm_position == "before":
        parts["norm"] = norm(width)
    parts["act"] = act()
    if norm is not None and norm_position == "after":
        parts["norm"] = norm(width)
    if tail is not None:
        parts[tail_name] = tail
    return torch.nn.Sequential(parts)


def mlp(in_features, hidden, out_features, activation="relu", norm=None,
        norm_position="before", init_std=None, dropout=0.0):
    """A fully connected network: ``[Linear -> norm -> activation] * len(hidden) -> Linear``.

    Args:
        in_features: input width.
        hidden: widths of the hidden layers, e.g. ``[100, 100, 100]`` (the paper's MNIST net).
        out_features: output width (number of classes).
        activation: "relu", "sigmoid", "tanh", "identity", or a module class.
        norm: None, or a factory ``width -> module`` such as ``bnlib.torch.BatchNorm1d``,
            ``torch.nn.BatchNorm1d`` or ``lambda w: torch.nn.LayerNorm(w)``.
        norm_position: "before" the activation (as in the paper; the Linear layer then has no
            bias, which the normalization would cancel) or "after" it.
        init_std: None for torch's default initialization, or the standard deviation of a
            normal initialization of every Linear weight (biases 0).
        dropout: probability of a ``torch.nn.Dropout`` at the end of every hidden block (after
            the activation, and after the norm when it comes after). With norm "before", the
            dropout then feeds the next block's normalization: the order whose train/test
            "variance shift" Li et al. (2018) describe.

    Returns:
        A ``torch.nn.Sequential``. Hidden layer i is ``model[i]``, itself a Sequential of
        ``linear``, ``norm`` (absent without norm), ``act`` and ``dropout`` (absent when 0),
        so hooks can reach each part.

    Raises:
        ValueError: unknown ``norm_position``, or ``dropout`` outside [0, 1).
    """
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    layers, width = [], in_features
    for h in hidden:
        linear = torch.nn.Linear(width, h, bias=norm is None or norm_position == "after")
        layers.append(_block("linear", linear, h, norm, norm_position, act,
                             "dropout", torch.nn.Dropout(dropout) if dropout > 0 else None))
        width = h
    layers.append(torch.nn.Linear(width, out_features))
    model = torch.nn.Sequential(*layers)
    if init_std is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
    return model


def cnn(in_channels, channels, num_classes, activation="relu", norm=None,
        norm_position="before", kernel_size=3, pool=2, image_size=None):
    """A small CNN: ``[Conv2d -> norm -> activation -> MaxPool2d] * len(channels) -> head``.

    Every convolution is ``kernel_size`` x ``kernel_size`` with stride 1 and "same" padding,
    so only the pooling shrinks the feature maps (by ``pool`` per block, rounding down).

    Args:
        in_channels: channels of the input images, e.g. 1 for MNIST.
        channels: output channels of the convolutional blocks, e.g. ``[8, 16]``.
        num_classes: number of outputs (logits).
        activation: "relu", "sigmoid", "tanh", "identity", or a module class.
        norm: None, or a factory ``channels -> module`` such as ``bnlib.torch.BatchNorm2d``
            or ``torch.nn.BatchNorm2d``: statistics per channel, over N * H * W values.
        norm_position: "before" the activation (the convolution then has no bias, which the
            normalization would cancel) or "after" it (the convolution keeps its bias).
        kernel_size: odd side of the square kernels.
        pool: side of the max-pooling window after each block (1: no pooling).
        image_size: None for a global-average-pooling head
            (``AdaptiveAvgPool2d(1) -> Flatten -> Linear(channels[-1], num_classes)``), which
            works for any input size; or the side H = W of the input images for a flattening
            head (``Flatten -> Linear(channels[-1] * s * s, num_classes)``, s the side after
            pooling), which keeps where features are.

    Returns:
        A ``torch.nn.Sequential``. Block i is ``model[i]``, itself a Sequential of ``conv``,
        ``norm`` (absent without norm), ``act`` and ``pool`` (absent when ``pool`` is 1), so
        hooks can reach each part; the head is ``model[-1]``, a Sequential ending in ``linear``.

    Raises:
        ValueError: ``in_channels`` or ``num_classes`` not a positive int, an unknown
            ``activation`` name, empty ``channels`` or a non-positive entry, an unknown
            ``norm_position``, an even or non-positive ``kernel_size``, ``pool`` < 1, or an
            ``image_size`` that is not a positive int or that the pooling reduces to nothing.
    """
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        _checks.check_positive_int(name, value)
    if isinstance(activation, str) and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a module class, "
                         f"got {activation!r}")
    channels = list(channels)
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                           for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    if image_size is not None:
        _checks.check_positive_int("image_size", image_size)
        side = image_size // pool ** len(channels)  # = rounding down after every block
        if side < 1:
            raise ValueError(f"image_size {image_size!r} is pooled to nothing by {len(channels)} "
                             f"blocks with pool={pool}")
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    blocks, width = [], in_channels
    for c in channels:
        has_bias = norm is None or norm_position == "after"
        conv = torch.nn.Conv2d(width, c, kernel_size, padding=kernel_size // 2, bias=has_bias)
        blocks.append(_block("conv", conv, c, norm, norm_position, act,
                             "pool", torch.nn.MaxPool2d(pool) if pool > 1 else None))
        width = c
    if image_size is None:
        head = OrderedDict(gap=torch.nn.AdaptiveAvgPool2d(1), flatten=torch.nn.Flatten(),
                           linear=torch.nn.Linear(width, num_classes))
    else:
        head = OrderedDict(flatten=torch.nn.Flatten(),
                           linear=torch.nn.Linear(width * side * side, num_classes))
    blocks.append(torch.nn.Sequential(head))
    return torch.nn.Sequential(*blocks)


class RecurrentClassifier(torch.nn.Module):
    """An Elman RNN with a normalized pre-activation, classifying a sequence from its last state.

    The input ``(N, L)`` (or ``(N, L, F)``) is read ``chunk`` values at a time: a signal of
    length L becomes T = L / chunk steps of ``chunk * F`` inputs each.

    Args:
        input_size: F, features per time point (1 for a plain signal).
        hidden_size: H.
        num_classes: outputs.
        norm: None, "layer" (:class:`bnlib.torch.LayerNorm`) or "batch"
            (:class:`bnlib.torch.RecurrentBatchNorm`).
        max_steps: T_max for "batch" (per-step statistics kept).
        chunk: time points per step.

    ``W_h`` starts orthogonal; with a norm, ``W_x`` and ``W_h`` have no bias (beta is it).

    Raises:
        ValueError: unknown norm; "batch" without max_steps; an input whose length is not
            a multiple of ``chunk``.
    """

    def __init__(self, input_size, hidden_size, num_classes, norm=None, max_steps=None, chunk=1):
        super().__init__()
        if norm not in (None, "layer", "batch"):
            raise ValueError(f"norm must be None, 'layer' or 'batch', got {norm!r}")
        if norm == "batch" and max_steps is None:
            raise ValueError("norm='batch' needs max_steps (the number of per-step statistics)")
        self.chunk, self.hidden_size, self.norm_kind = chunk, hidden_size, norm
        self.input = torch.nn.Linear(input_size * chunk, hidden_size, bias=norm is None)
        self.recurrent = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        torch.nn.init.orthogonal_(self.recurrent.weight)
        if norm == "layer":
            self.norm = LayerNorm(hidden_size)
        elif norm == "batch":
            self.norm = RecurrentBatchNorm(hidden_size, max_steps)
        self.output = torch.nn.Linear(hidden_size, num_classes)

    def steps(self, x):
        """The input as (N, T, chunk * F) steps."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        n, length, features = x.shape
        if length % self.chunk:
            raise ValueError(f"a sequence of length {length} does not split into steps of "
                             f"{self.chunk}")
        return x.reshape(n, length // self.chunk, self.chunk * features)

    def forward(self, x, return_states=False):
        """Logits ``(N, num_classes)``; with ``return_states`` also the pre-activations (N, T, H)."""
        inputs = self.input(self.steps(x))
        h = inputs.new_zeros(inputs.shape[0], self.hidden_size)
        states = []
        for t in range(inputs.shape[1]):
            a = inputs[:, t] + self.recurrent(h)
            if return_states:
                states.append(a.detach())
            if self.norm_kind == "layer":
                a = self.norm(a)
            elif self.norm_kind == "batch":
                a = self.norm(a, t)
            h = torch.tanh(a)
        logits = self.output(h)
        return (logits, torch.stack(states, 1)) if return_states else logits
