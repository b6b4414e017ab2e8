"""Model builders shared by the chapters: the same network with and without normalization."""

from collections import OrderedDict

import torch

ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
               "identity": torch.nn.Identity}


def mlp(in_features, hidden, out_features, activation="relu", norm=None,
        norm_position="before", init_std=None):
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

    Returns:
        A ``torch.nn.Sequential``. Hidden layer i is ``model[i]``, itself a Sequential of
        ``linear``, ``norm`` (absent without norm) and ``act``, so hooks can reach each part.
    """
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    layers, width = [], in_features
    for h in hidden:
        parts = OrderedDict(linear=torch.nn.Linear(width, h, bias=norm is None or norm_position == "after"))
        if norm is not None and norm_position == "before":
            parts["norm"] = norm(h)
        parts["act"] = act()
        if norm is not None and norm_position == "after":
            parts["norm"] = norm(h)
        layers.append(torch.nn.Sequential(parts))
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

