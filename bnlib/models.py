"""Model builders shared by the chapters: the same network with and without normalization."""

from collections import OrderedDict

import torch

ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
               "identity": torch.nn.Identity}


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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
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
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be None or a positive int, got {image_size!r}")
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
