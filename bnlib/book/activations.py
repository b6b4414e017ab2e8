"""What a layer's units receive: percentiles, saturation, and a trace of both over training.

>>> from bnlib.book.activations import ActivationTrace, layer_inputs
>>> z = layer_inputs(model, x, ["2.act"])["2.act"]          # the input of a sigmoid, (N, D)
>>> trace = ActivationTrace(model, x, ["0.act", "2.act"], every=50)
>>> training.train(model, data, steps=3000, on_step=trace)  # records every 50 steps

Layers are named as in ``model.named_modules()``: in a ``bnlib.book.models.mlp``, ``"2.act"`` is
the activation of hidden layer 2, so its input is the pre-activation (after the norm, if any).
"""

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .covariate_shift import as_numpy, wasserstein_1d

__all__ = ["ActivationTrace", "LayerTrace", "layer_inputs", "percentiles",
           "saturated_fraction", "sigmoid_saturation_threshold"]


def sigmoid_saturation_threshold(ratio=0.1):
    """The ``|z|`` beyond which the sigmoid's slope is below ``ratio`` times its maximum.

    ``sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) = 1 / (4 cosh^2(z / 2))``, largest (1/4) at 0, so
    ``sigmoid'(z) / sigmoid'(0) = 1 / cosh^2(z / 2) < ratio`` exactly when
    ``|z| > 2 arccosh(1 / sqrt(ratio))``. For ratio 0.1 that is ``|z| > 3.64``: a unit there
    passes back less than a tenth of the gradient it would pass at z = 0.

    Raises:
        ValueError: ``ratio`` not in (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    return 2.0 * math.acosh(1.0 / math.sqrt(ratio))


def saturated_fraction(z, threshold):
    """The fraction of the entries of ``z`` (array or tensor) with ``|z| > threshold``, a float."""
    z = as_numpy(z)
    if z.size == 0:
        raise ValueError("z is empty: the fraction of saturated entries is undefined")
    return float((np.abs(z) > threshold).mean())


def percentiles(z, q=(15, 50, 85)):
    """Percentiles of each column of ``z`` (N, D) over its N rows: a NumPy array (len(q), D).

    Linear interpolation between order statistics (``numpy.percentile``'s default).

    Raises:
        ValueError: a percentile outside [0, 100], or ``z`` not a non-empty 2-D array/tensor.
    """
    z = as_numpy(z)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) array, got shape {z.shape}")
    if any(not 0 <= p <= 100 for p in q):
        raise ValueError(f"percentiles must be in [0, 100], got {tuple(q)}")
    return np.percentile(z, q, axis=0)


def layer_inputs(model, x, names, mode="train"):
    """The inputs that the named submodules receive when ``model`` runs on ``x``.

    The forward pass runs without gradients on a copy of the model, so the model's running
    statistics do not move, and inside ``torch.random.fork_rng`` so that random layers do not
    change the random numbers training draws next. ``mode="train"`` normalizes with the
    statistics of ``x`` itself (and injects training-time noise); ``"eval"`` uses the running
    statistics.

    Returns:
        ``{name: tensor}``, each the (detached) first positional input of that submodule.

    Raises:
        ValueError: unknown ``mode``, or a name that is not a submodule of ``model``.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    known = dict(model.named_modules())
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"no submodule named {missing} in the model; "
                         f"names look like {list(known)[1:4]}")
    work = copy.deepcopy(model).train(mode == "train")
    seen = {}

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].detach()
        return hook

    for name in names:  # hooks on the copy only: it is thrown away afterwards
        work.get_submodule(name).register_forward_pre_hook(keep(name))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        work(x)
    return seen


@dataclass
class LayerTrace:
    """One layer's statistics at each recorded step of an :class:`ActivationTrace`."""

    percentiles: list = field(default_factory=list)  # (len(q), D) arrays, one per record
    saturation: list = field(default_factory=list)  # fraction of |z| > threshold, per record
    shift: list = field(default_factory=list)  # (D,) W1 distance to the previous record

    def percentile_curves(self, unit):
        """Percentiles of one unit over the records: an array (records, len(q))."""
        return np.stack([p[:, unit] for p in self.percentiles])


class ActivationTrace:
    """Statistics of the inputs of named layers on a fixed probe batch, over training.

    Records at step 0 when created, then every ``every`` steps when called as the
    ``on_step(step, model)`` callback of :func:`bnlib.book.training.train` (which calls it after
    step ``step``, i.e. after ``step + 1`` updates). Each record runs the probe batch through
    :func:`layer_inputs` (a copy of the model, random state untouched), so recording does
    not change the training run. For each layer it keeps:

    - the percentiles ``q`` of every unit's input over the probe batch;
    - the fraction of saturated inputs, ``|z| > threshold`` (default: where the sigmoid's
      slope is below a tenth of its maximum, :func:`sigmoid_saturation_threshold`);
    - per unit, the Wasserstein-1 distance between its inputs at this record and at the
      previous one (:func:`bnlib.book.covariate_shift.wasserstein_1d`): how far the distribution
      moved in ``every`` steps.

    Inputs with more than two dimensions are flattened to (N, features): every entry of a
    feature map counts as a unit.

    Attributes:
        steps: the steps recorded (number of updates done).
        layers: ``{name: LayerTrace}``.

    Raises:
        ValueError: ``every`` < 1, or what :func:`layer_inputs` raises.
    """

    def __init__(self, model, x, names, every=50, mode="train", q=(15, 50, 85), threshold=None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.x, self.names, self.every, self.mode, self.q = x, list(names), every, mode, tuple(q)
        self.threshold = sigmoid_saturation_threshold() if threshold is None else threshold
        self.steps = []
        self.layers = {name: LayerTrace() for name in self.names}
        self._previous = {}
        self.record(0, model)

    def __call__(self, step, model):
        if (step + 1) % self.every == 0:
            self.record(step + 1, model)

    def record(self, step, model):
        """Record the statistics of ``model`` after ``step`` updates."""
        inputs = layer_inputs(model, self.x, self.names, self.mode)
        self.steps.append(step)
        for name, z in inputs.items():
            z = as_numpy(z.reshape(z.shape[0], -1))
            layer = self.layers[name]
            layer.percentiles.append(percentiles(z, self.q))
            layer.saturation.append(saturated_fraction(z, self.threshold))
            if name in self._previous:
                layer.shift.append(wasserstein_1d(self._previous[name], z))
            self._previous[name] = z
