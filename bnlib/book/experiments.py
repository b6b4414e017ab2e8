"""Runs over seeds: repeat a training run, pick the best setting, and measurements after training.

>>> from bnlib.book import data, experiments, models
>>> d = data.load_digits(n_val=300)
>>> runs = {lr: experiments.repeat(lambda: models.mlp(64, [64], 10), d, seeds=range(5),
...                                steps=300, lr=lr) for lr in (0.01, 0.1, 1.0)}
>>> best_lr = experiments.best(runs, lambda r: r.mean_final_accuracy)  # on validation

:func:`repeat_stacked` gives the same runs for a whole learning-rate grid of the book's
recurrent classifiers, trained side by side as one stacked network.

The experimental protocol (tuning every arm alike, intervals, verdicts) is built on these in
:mod:`bnlib.book.protocol`. Two helpers measure the train/test "variance shift" of dropout placed before
batch normalization (Li et al., 2018): :func:`variance_shift` and :func:`without_dropout`.
:func:`weight_gradient_norms` shows how gradients grow or shrink from layer to layer.
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import training
from .activations import layer_inputs
from ..torch.inference import is_batch_norm

__all__ = ["Runs", "Snapshots", "best", "fine_tune", "repeat", "repeat_stacked", "variance_shift",
           "weight_gradient_norms", "without_dropout"]

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

    @classmethod
    def join(cls, *parts):
        """One ``Runs`` for runs of one setting trained in several parts (e.g. the tuning
        seed's run and more seeds at the picked rate): the parts' seeds, histories, models and
        seconds, in order.

        Raises:
            ValueError: no parts, or a seed in more than one part.
        """
        if not parts:
            raise ValueError("join needs at least one Runs")
        seeds = [s for p in parts for s in p.seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"a seed appears in more than one part: {seeds}")
        return cls(seeds=seeds, histories=[h for p in parts for h in p.histories],
                   models=[m for p in parts for m in p.models],
                   seconds=[s for p in parts for s in p.seconds])

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


def _side_by_side_batches(n, seeds, batch_size, steps):
    """For each of ``steps`` steps, the (K, batch_size) indices of the runs' mini-batches:
    run k draws the batches :func:`bnlib.book.training.train` draws with seed ``seeds[k]``."""
    orders = [training._batch_order(n, batch_size, seed) for seed in seeds]
    for _ in range(steps):
        yield torch.stack([next(order) for order in orders])


def repeat_stacked(build, data, seeds, lrs, steps, batch_size=60, momentum=0.0):
    """:func:`repeat` at every learning rate of ``lrs``, all runs trained side by side.

    Returns ``{lr: Runs}`` (the learning rates sorted), the same runs up to rounding (tested)
    as ``{lr: repeat(build, data, seeds, steps=steps, batch_size=batch_size, lr=lr,
    momentum=momentum, eval_every=steps)}``: every run builds its model after
    ``training.deterministic(seed)``, draws its seed's batches in :func:`bnlib.book.training.train`'s
    order and has its own SGD state. The K = len(lrs) * len(seeds) models are run as one
    :class:`bnlib.book.models.StackedRecurrentClassifier`, several times faster for the
    small recurrent networks of the book. A run whose loss becomes non-finite stops there as
    in :func:`bnlib.book.training.train` (diverged, chance accuracy, no test predictions) while the others
    go on. The accuracy is measured on the evaluation split at step 0 and at the end, the
    test split once at the end. ``Runs.seconds``: the CPU seconds of the whole pass, shared
    equally by its runs.

    Raises:
        TypeError: ``build`` is not a function, or builds a model that cannot be stacked.
        ValueError: no seeds or no learning rates, repeated ones, or models of different
            configurations.
    """
    from .models import StackedRecurrentClassifier  # models imports the library, not this

    if not callable(build) or isinstance(build, torch.nn.Module):
        raise TypeError(f"build must be a function returning a new model, got "
                        f"{type(build).__name__}")
    seeds, lrs = list(seeds), sorted(float(lr) for lr in lrs)
    if not seeds or not lrs:
        raise ValueError("seeds and lrs must be non-empty")
    if len(set(seeds)) != len(seeds) or len(set(lrs)) != len(lrs):
        raise ValueError(f"seeds and lrs must be distinct, got {seeds} and {lrs}")
    start = time.process_time()
    runs = {lr: Runs(seeds=seeds) for lr in lrs}
    keys = [(lr, seed) for lr in lrs for seed in seeds]
    models = []
    for lr, seed in keys:
        training.deterministic(seed)
        models.append(build())
    stacked = StackedRecurrentClassifier(models)
    split, x_eval, y_eval = training._evaluation_split(data)
    histories = [training.History(split=split, steps=[0],
                                  accuracy=[training.evaluate(m, x_eval, y_eval)])
                 for m in models]
    optimizer = torch.optim.SGD([{"params": list(m.parameters()), "lr": lr}
                                 for m, (lr, _) in zip(models, keys)], momentum=momentum)
    n = len(data.y_train)
    alive, losses_seen = torch.ones(len(models), dtype=torch.bool), []
    stacked.train()
    for step, index in enumerate(_side_by_side_batches(n, [s for _, s in keys], batch_size, steps)):
        logits = stacked(data.x_train[index])
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), data.y_train[index].flatten(), reduction="none"
        ).reshape(len(models), batch_size).mean(1)
        finite = torch.isfinite(losses.detach())
        for k in torch.nonzero(alive & ~finite).flatten().tolist():
            alive[k] = False
            training._mark_diverged(histories[k], step, data.num_classes)
        if not alive.any():
            break
        optimizer.zero_grad()
        losses[alive].sum().backward()
        for k in torch.nonzero(~alive).flatten().tolist():
            for p in models[k].parameters():
                p.grad = None  # SGD skips it: a diverged run stays where it stopped
        optimizer.step()
        losses_seen.append((losses.detach(), alive.clone()))
    stacked.sync()
    for k, (model, history) in enumerate(zip(models, histories)):
        history.train_loss = [float(loss[k]) for loss, live in losses_seen if live[k]]
        if not history.diverged:
            history.steps.append(steps)
            history.accuracy.append(training.evaluate(model, x_eval, y_eval))
            training._read_test(history, model, data)
    seconds = (time.process_time() - start) / len(models)
    for (lr, _), model, history in zip(keys, models, histories):
        runs[lr].histories.append(history)
        runs[lr].models.append(model)
        runs[lr].seconds.append(seconds)
    return runs


def fine_tune(starts, data, lrs, steps, batch_size=60):
    """Continue training a copy of every model of ``starts`` at every learning rate of ``lrs``.

    ``starts`` maps a seed to a trained model (e.g. the same architecture trained with that
    seed). For every ``lr`` and seed, a copy of ``starts[seed]`` is trained as
    ``training.train(copy, data, steps, batch_size, lr=lr, seed=seed)`` would train it (the
    seed's batch order, plain SGD, every module in training mode, parameters with
    ``requires_grad=False`` left as they are), and the starts are not modified. All K =
    len(lrs) * len(starts) runs are trained side by side, as one model batched with
    ``torch.func.vmap`` over stacked parameters and buffers (``functional_call`` of the start's
    own modules, so batch-norm layers in training mode update their own running statistics):
    several times faster than K separate runs for the book's small models, and the same runs
    up to rounding (tested). The optimizer is one ``torch.optim.SGD`` whose gradients are
    scaled by each run's learning rate. A run whose loss becomes non-finite stops there as in
    :func:`bnlib.book.training.train` (diverged, chance accuracy, no test predictions) while the others
    go on. Accuracy is measured on the evaluation split at the end only, the test split once.

    Args:
        starts: ``{seed: model}``, models of one architecture (same parameter and buffer names
            and shapes, same ``requires_grad``), at least one.
        data: a :class:`bnlib.book.data.Dataset`.
        lrs: the learning rates (distinct, at least one).
        steps: SGD steps per run; batch_size: examples per step.

    Returns:
        ``{lr: Runs}`` with the learning rates sorted and, in each, the seeds in the order of
        ``starts``; ``Runs.seconds``: the CPU seconds of the whole pass, shared equally.

    Raises:
        ValueError: no starts or no learning rates, repeated learning rates, starts that
            differ in their parameters or buffers, or no trainable parameter.
    """
    from torch.func import functional_call, stack_module_state, vmap

    seeds, lrs = list(starts), sorted(float(lr) for lr in lrs)
    if not seeds or not lrs:
        raise ValueError("starts and lrs must be non-empty")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct, got {lrs}")
    signature = {name: (tuple(p.shape), p.requires_grad)
                 for name, p in starts[seeds[0]].named_parameters()}
    for seed in seeds:
        other = {name: (tuple(p.shape), p.requires_grad)
                 for name, p in starts[seed].named_parameters()}
        if other != signature:
            raise ValueError(f"the start of seed {seed} differs from the others' parameters")
    if not any(trainable for _, trainable in signature.values()):
        raise ValueError("no parameter of the starts requires a gradient: nothing to train")
    start = time.process_time()
    keys = [(lr, seed) for lr in lrs for seed in seeds]
    models = [copy.deepcopy(starts[seed]).train() for _, seed in keys]
    params, buffers = stack_module_state(models)
    for name, p in params.items():
        p.requires_grad_(signature[name][1])
    trainable = [p for p in params.values() if p.requires_grad]
    base = copy.deepcopy(models[0]).to("meta").train()
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    scale = torch.tensor([lr for lr, _ in keys], dtype=trainable[0].dtype)
    n, k = len(data.y_train), len(keys)
    alive, losses_seen = torch.ones(k, dtype=torch.bool), []
    diverged_at = {}
    for step, index in enumerate(_side_by_side_batches(n, [s for _, s in keys], batch_size, steps)):
        with warnings.catch_warnings():
            # bnlib's update of running statistics (lerp_) has no vmap batching rule: torch
            # warns that it falls back to a slower loop, whose results are the same.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            logits = forward(params, buffers, data.x_train[index])
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), data.y_train[index].flatten(), reduction="none"
        ).reshape(k, batch_size).mean(1)
        finite = torch.isfinite(losses.detach())
        for j in torch.nonzero(alive & ~finite).flatten().tolist():
            alive[j] = False
            diverged_at[j] = step
        if not alive.any():
            break
        optimizer.zero_grad()
        losses[alive].sum().backward()
        with torch.no_grad():
            for p in trainable:  # SGD with lr 1 on lr-scaled gradients; a diverged run stays
                p.grad.mul_((scale * alive).view(-1, *([1] * (p.dim() - 1))))
        optimizer.step()
        losses_seen.append((losses.detach(), alive.clone()))
    with torch.no_grad():
        for j, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][j])
            for name, b in model.named_buffers():
                b.copy_(buffers[name][j])
    split, x_eval, y_eval = training._evaluation_split(data)
    seconds = (time.process_time() - start) / k
    runs = {lr: Runs(seeds=seeds) for lr in lrs}
    for j, ((lr, _), model) in enumerate(zip(keys, models)):
        history = training.History(split=split)
        history.train_loss = [float(loss[j]) for loss, live in losses_seen if live[j]]
        if j in diverged_at:
            training._mark_diverged(history, diverged_at[j], data.num_classes)
        else:
            history.steps, history.accuracy = [steps], [training.evaluate(model, x_eval, y_eval)]
            training._read_test(history, model, data)
        runs[lr].histories.append(history)
        runs[lr].models.append(model)
        runs[lr].seconds.append(seconds)
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


class Snapshots:
    """Copies of every run's parameters and buffers every ``every`` steps, to measure later.

    A measurement that costs more than a training step (statistics of a large probe batch,
    gradients after a hypothetical update) need not run while a sweep trains: keep each
    model's state every few steps, and measure afterwards only the runs that turn out to
    matter, e.g. those at the learning rate the sweep picked. Give :func:`repeat` (or
    :func:`bnlib.book.protocol.tune`) ``snapshots.watch(build)`` as the build function, which
    keeps the state at step 0, and ``snapshots`` itself as ``on_step``, which keeps the
    state after every ``every``-th update. Copying does not change the runs (tested).

    ``snapshots[model]`` is the list of ``(step, state)``, ``state`` a ``state_dict`` copy
    after ``step`` updates (0, every, 2 every, ...); ``snapshots.replay(model)`` yields
    ``(step, copy)``, one copy of the model put into each state in turn (the model itself is
    not changed). Each state costs the model's size in memory (about 0.8 MB for the book's
    784-100-100-100-10 network).

    >>> snapshots = experiments.Snapshots(every=50)
    >>> runs = experiments.repeat(snapshots.watch(build), data, [0, 1], steps=500,
    ...                           on_step=snapshots)
    >>> for step, model in snapshots.replay(runs.models[0]): ...

    Raises:
        ValueError: ``every`` is not a positive int.
        TypeError: ``watch`` of something that is not a function (a model is refused).
        KeyError: a model that was not built by a watched build function.
    """

    def __init__(self, every):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every = every
        self._runs = {}  # id(model) -> (model, [(step, state)]); the model keeps its id unique

    @staticmethod
    def _copy(model):
        return {name: value.detach().clone() for name, value in model.state_dict().items()}

    def watch(self, build):
        """``build``, keeping the state of every model it returns (step 0)."""
        if not callable(build) or isinstance(build, torch.nn.Module):
            raise TypeError(f"build must be a function returning a new model, got "
                            f"{type(build).__name__}")

        def build_and_watch():
            model = build()
            self._runs[id(model)] = (model, [(0, self._copy(model))])
            return model

        return build_and_watch

    def _states(self, model):
        entry = self._runs.get(id(model))
        if entry is None or entry[0] is not model:
            raise KeyError(f"this {type(model).__name__} was not built by a watched build "
                           f"function: pass snapshots.watch(build) to repeat or tune")
        return entry[1]

    def __call__(self, step, model):
        """The ``on_step`` callback: keep the state after update ``step + 1`` if it is due."""
        if (step + 1) % self.every == 0:
            self._states(model).append((step + 1, self._copy(model)))

    def __getitem__(self, model):
        return list(self._states(model))

    def replay(self, model):
        """Yield ``(step, copy)``: one copy of ``model`` in each kept state, oldest first."""
        states = self._states(model)
        work = copy.deepcopy(model)
        for step, state in states:
            work.load_state_dict(state)
            yield step, work


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
