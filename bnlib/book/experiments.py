"""Runs over seeds: repeat a training run, pick the best setting, and measurements after training.

>>> from bnlib.book import data, experiments, models
>>> d = data.load_digits(n_val=300)
>>> runs = {lr: experiments.repeat(lambda: models.mlp(64, [64], 10), d, seeds=range(5),
...                                steps=300, lr=lr) for lr in (0.01, 0.1, 1.0)}
>>> best_lr = experiments.best(runs, lambda r: r.mean_final_accuracy)  # on validation

The experimental protocol (tuning every arm alike, intervals, verdicts) is built on these in
:mod:`bnlib.book.protocol`. Two helpers measure the train/test "variance shift" of dropout placed before
batch normalization (Li et al., 2018): :func:`variance_shift` and :func:`without_dropout`.
:func:`weight_gradient_norms` shows how gradients grow or shrink from layer to layer.
"""

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import training
from .activations import layer_inputs
from ..torch.inference import is_batch_norm

__all__ = ["Runs", "best", "repeat", "variance_shift", "weight_gradient_norms", "without_dropout"]

@dataclass
class Runs:
    """One configuration trained once per seed: what :func:`repeat` returns.

    Attributes:
        seeds: the seeds, in order.
        histories: one :class:`bnlib.book.training.History` per seed.
        models: the trained models, one per seed (for measurements after training).
        seconds: CPU seconds each run took (``time.process_time``; training is
            single-threaded, so this is what the run costs on an idle core).
    """

    seeds: list
    histories: list = field(default_factory=list)
    models: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    @property
    def final_accuracy(self):
        """The last accuracy of each run on its evaluation split (validation when the data
        has one; chance level after a divergence)."""
        return [h.final_accuracy for h in self.histories]

    @property
    def test_accuracy(self):
        """Each run's test accuracy, measured once at the end (chance level after a divergence)."""
        return [h.test_accuracy for h in self.histories]

    @property
    def test_correct(self):
        """A (runs, n_test) bool array, true where a run classified a test example correctly.

        Raises:
            ValueError: a run diverged (it has no predictions to compare).
        """
        if any(h.test_correct is None for h in self.histories):
            raise ValueError(f"{self.diverged} run(s) diverged: they have no test predictions")
        return torch.stack([h.test_correct for h in self.histories]).numpy()

    @property
    def mean_final_accuracy(self):
        return float(np.mean(self.final_accuracy))

    @property
    def diverged(self):
        """How many runs diverged (their loss became NaN or infinite)."""
        return sum(h.diverged for h in self.histories)

    def steps_to(self, target):
        """Per run, the first evaluated step with accuracy >= target (None: never)."""
        return [h.steps_to(target) for h in self.histories]

    def mean_steps_to(self, target):
        """The mean of :meth:`steps_to` over the runs; ``inf`` if any run never gets there."""
        steps = self.steps_to(target)
        return math.inf if None in steps else float(np.mean(steps))

    def seconds_per_step(self):
        """Mean CPU seconds per training step over the runs (steps actually taken)."""
        taken = [max(len(h.train_loss), 1) for h in self.histories]
        return float(np.mean([s / n for s, n in zip(self.seconds, taken)]))

    def accuracy_curves(self):
        """``(steps, accuracy)``: the evaluated steps (T,) and the accuracy (seeds, T) on the
        runs' evaluation split.

        A run that diverged stops early; its last value (chance level) is carried to the end,
        so every row has the same length and a diverged run counts as a failure at every
        later step.
        """
        longest = max(self.histories, key=lambda h: len(h.steps))
        steps = np.asarray(longest.steps)
        rows = []
        for h in self.histories:
            acc = list(h.accuracy)
            rows.append(acc + [acc[-1]] * (len(steps) - len(acc)))
        return steps, np.asarray(rows, dtype=float)


def repeat(build, data, seeds, **train_kwargs):
    """Train a fresh model once per seed; return the :class:`Runs`.

    For every seed: ``training.deterministic(seed)``, ``model = build()``, then
    ``training.train(model, data, seed=seed, **train_kwargs)``. The seed thus fixes both the
    initialization and the order of the mini-batches, and two configurations run with the
    same seeds see the same batches.

    Args:
        build: a function of no arguments returning a new model.
        data: a :class:`bnlib.book.data.Dataset`.
        seeds: a non-empty list of distinct ints.
        **train_kwargs: passed to :func:`bnlib.book.training.train` (``steps`` is required).

    Raises:
        TypeError: ``build`` is not a function (a model is refused: every seed needs a new one).
        ValueError: no seeds, repeated seeds, ``seed`` among ``train_kwargs``, or no ``steps``.
    """
    if not callable(build) or isinstance(build, torch.nn.Module):
        raise TypeError(f"build must be a function returning a new model (each seed trains "
                        f"its own), got {type(build).__name__}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: a claim needs at least one run (the book uses >= 3)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if "seed" in train_kwargs:
        raise ValueError("pass the seeds as `seeds`, not `seed`: each run uses its own seed")
    if "steps" not in train_kwargs:
        raise ValueError("train_kwargs must include steps (the number of SGD steps)")
    runs = Runs(seeds=seeds)
    for seed in seeds:
        training.deterministic(seed)
        model = build()
        start = time.process_time()
        history = training.train(model, data, seed=seed, **train_kwargs)
        runs.seconds.append(time.process_time() - start)
        runs.histories.append(history)
        runs.models.append(model)
    return runs


def best(results, score):
    """The key of ``results`` whose value has the highest ``score(value)``.

    Ties go to the first such key in the order of ``results``. Typical use: the best learning
    rate of a sweep, ``best(runs_by_lr, lambda r: -r.mean_steps_to(0.9))``.

    Raises:
        ValueError: ``results`` is empty, or a score is NaN.
    """
    if not results:
        raise ValueError("results is empty: there is no best setting")
    scores = {key: float(score(value)) for key, value in results.items()}
    nan = [key for key, s in scores.items() if math.isnan(s)]
    if nan:
        raise ValueError(f"score is NaN for {nan}: cannot rank the settings")
    return max(scores, key=scores.get)


def without_dropout(model):
    """A view of ``model`` with every dropout layer replaced by ``torch.nn.Identity``.

    The view shares every other module, parameter and buffer with ``model`` (nothing is
    copied), so running the view in training mode updates the model's batch-norm statistics
    as if dropout were switched off: the remedy for the variance shift of Li et al. (2018),
    with :func:`bnlib.torch.recompute_statistics`. ``model`` itself is not changed.
    Modules without dropout inside are returned as they are.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.nn.modules.dropout._DropoutNd):
        return torch.nn.Identity()
    children = dict(model.named_children())
    replaced = {name: without_dropout(child) for name, child in children.items()}
    if all(replaced[name] is child for name, child in children.items()):
        return model
    view = copy.copy(model)  # shares the parameter and buffer tables ...
    view._modules = replaced  # ... but not the table of children
    return view


def variance_shift(model, x, names):
    """How far each named batch-norm layer's test-time input variance is from its statistics.

    For each layer, in eval mode on ``x`` (dropout off, running statistics in use):

    .. math::

        \\text{shift} = \\frac{1}{C} \\sum_c \\frac{\\mathrm{Var}_{\\text{eval}}[x_c]}
                                               {\\text{running\\_var}_c},

    the variance over ``x`` (biased; over every dimension except dim 1) divided by the
    variance the layer normalizes with. 1 means the layer's statistics fit its test-time
    input; < 1 means it divides by too large a variance, which is what dropout before it
    causes: in training, dropout with rate p scales the kept units by 1 / (1 - p) and so
    inflates the variance the layer learns (Li et al., 2018).

    Args:
        model: a ``torch.nn.Module``; it is not changed (see
            :func:`bnlib.book.activations.layer_inputs`).
        x: a batch of inputs, e.g. the test set.
        names: names of batch-norm submodules, e.g. ``["0.norm", "1.norm"]`` in a
            :func:`bnlib.book.models.mlp`.

    Returns:
        ``{name: shift}``, plain floats.

    Raises:
        ValueError: a name that is not a submodule, or a module that is not a batch norm with
            running statistics.
    """
    names = list(names)
    inputs = layer_inputs(model, x, names, mode="eval")
    shifts = {}
    for name in names:
        layer = model.get_submodule(name)
        if not is_batch_norm(layer) or getattr(layer, "running_var", None) is None:
            raise ValueError(f"{name!r} is not a batch-norm layer with running statistics")
        z = inputs[name].double().transpose(0, 1).reshape(inputs[name].shape[1], -1)
        ratio = z.var(dim=1, unbiased=False) / torch.as_tensor(layer.running_var).double()
        shifts[name] = float(ratio.mean())
    return shifts


def weight_gradient_norms(model, x, y, loss_fn=torch.nn.functional.cross_entropy):
    """The norm of the loss gradient with respect to each Linear or convolution weight.

    ``||dL/dW_l||`` (Frobenius norm) for every ``torch.nn.Linear`` and ``torch.nn.Conv*d``
    layer of ``model``, in the order of ``model.modules()`` (input to output), for one batch
    ``(x, y)`` and the loss ``loss_fn(model(x), y)``. The model runs in the mode it is in
    (training mode: batch statistics); the gradients are returned, not accumulated into
    ``.grad``. The ratio first/last shows whether gradients explode or vanish with depth:
    at initialization, deep fully connected networks with batch norm have exploding
    gradients (Yang et al., 2019).

    Returns:
        A list of floats, one per weight.

    Raises:
        ValueError: the model has no Linear or convolution layer.
    """
    weights = [m.weight for m in model.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    if not weights:
        raise ValueError("model has no Linear or convolution layer: no weight gradients to measure")
    grads = torch.autograd.grad(loss_fn(model(x), y), weights)
    return [g.norm().item() for g in grads]
