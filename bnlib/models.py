"""Model builders shared by the chapters: the same network with and without normalization."""

from collections import OrderedDict

import torch

ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
               "identity": torch.nn.Identity}


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
        parts = OrderedDict(linear=torch.nn.Linear(width, h, bias=norm is None or norm_position == "after"))
        if norm is not None and norm_position == "before":
            parts["norm"] = norm(h)
        parts["act"] = act()
        if norm is not None and norm_position == "after":
            parts["norm"] = norm(h)
        if dropout > 0:
            parts["dropout"] = torch.nn.Dropout(dropout)
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

