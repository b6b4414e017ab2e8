"""Training helpers shared by the chapters: seeding, a plain SGD loop, evaluation, summaries.

Deliberately small: mini-batch SGD (optionally with momentum) on cross-entropy, evaluated on
the validation split (or, without one, the test split) every ``eval_every`` steps, and on the
test split once at the end. The loop stops at the first non-finite loss and
marks the run as diverged, so learning-rate sweeps can count failures.
"""

import numbers
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import DTYPE

__all__ = ["History", "correct", "deterministic", "evaluate", "mean_and_spread", "train"]


def deterministic(seed=0, threads=1):
    """Seed torch, NumPy and Python, fix torch's thread count, and make float64 the default.

    What this makes reproducible, and what not:

    - **The same machine**: the same seed gives bitwise the same run.
    - **Another CPU or core count**: kernels round differently in the last bit (vector units,
      BLAS, how a reduction is split across threads), and SGD amplifies such differences over
      hundreds of steps. ``torch.set_default_dtype(data.DTYPE)`` (float64) makes every model
      built afterwards train in float64, where they start about 1e-16 relative instead of
      1e-7, and stay below the digits the book prints. ``make test`` proves it for every
      stored output: it runs every notebook a second time with a relative perturbation of
      about 2 ulp added to every parameter after every optimizer step, and the outputs must
      not change. A number that is chaotic even so (a run at the edge of divergence) is
      printed as a fraction of seeds or a median.
    - **Not reproduced**: timings, and results on a GPU (other kernels, other summation
      orders): the chapters' assertions still hold there, the printed digits may differ.

    One thread is also the fastest setting for the book's small models.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(threads)
    torch.set_default_dtype(DTYPE)


@dataclass
class History:
    """What one training run recorded.

    ``accuracy`` is measured on the evaluation split (``split``: "validation" when the data
    has one, else "test") at each of ``steps``; every choice is made on it. The test split is
    read once, at the end: ``test_accuracy`` and, per test example, ``test_correct``.
    """

    split: str = "test"  # the split behind ``accuracy``
    steps: list = field(default_factory=list)  # steps at which ``accuracy`` was measured
    accuracy: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)  # loss of every step's mini-batch
    diverged: bool = False  # the loss became NaN or infinite; training stopped there
    test_accuracy: float = float("nan")  # at the end; chance level after a divergence
    test_correct: object = None  # (n_test,) bool tensor at the end; None after a divergence

    def steps_to(self, target):
        """The first evaluated step whose accuracy (on ``split``) is >= target, or None."""
        for step, acc in zip(self.steps, self.accuracy):
            if acc >= target:
                return step
        return None

    @property
    def final_accuracy(self):
        """The last accuracy measured on ``split`` (chance level after a divergence)."""
        return self.accuracy[-1] if self.accuracy else float("nan")


@torch.no_grad()
def correct(model, x, y):
    """Per example, whether ``model`` in eval mode predicts y: a bool tensor of shape (N,).

    Afterwards every submodule gets back its own mode, so a batch-norm layer kept in eval mode
    inside a training model (frozen statistics) stays frozen; ``model.train(was_training)``
    would switch it back to training mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return model(x).argmax(dim=1) == y
    finally:
        for module, training in modes:
            module.training = training


def evaluate(model, x, y):
    """Accuracy of ``model`` on (x, y) in eval mode (see :func:`correct`)."""
    return float(correct(model, x, y).double().mean())


def _evaluation_split(data, split=None):
    """``(split, x, y)`` of the split an accuracy curve is measured on: ``split``, or
    validation when the data has one and test otherwise (None)."""
    if split is None:
        split = "test" if data.x_val is None else "validation"
    if split not in ("validation", "test") or (split == "validation" and data.x_val is None):
        raise ValueError(f"eval_split must be 'validation' (for data with a validation split) "
                         f"or 'test', got {split!r}")
    if split == "validation":
        return split, data.x_val, data.y_val
    return split, data.x_test, data.y_test


def _batch_order(n, batch_size, seed):
    """The indices of every step's mini-batch, without end: a fresh ``randperm`` of the n
    training examples per epoch from a generator seeded with ``seed`` (an epoch's last
    examples that do not fill a batch are skipped)."""
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(n, generator=gen), 0
    while True:
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        yield order[cursor:cursor + batch_size]
        cursor += batch_size


def _mark_diverged(history, step, num_classes):
    """Record a run whose loss became non-finite at ``step``: chance accuracy there (in place
    of a measurement at that step, taken before the blow-up), and no test predictions."""
    history.diverged = True
    if history.steps and history.steps[-1] == step:
        history.steps.pop()
        history.accuracy.pop()
    history.steps.append(step)
    history.accuracy.append(1.0 / num_classes)
    history.test_accuracy = 1.0 / num_classes


def _read_test(history, model, data):
    """The one read of the test split at the end of a run."""
    history.test_correct = correct(model, data.x_test, data.y_test)
    history.test_accuracy = float(history.test_correct.double().mean())


def train(model, data, steps, batch_size=60, lr=0.1, momentum=0.0, weight_decay=0.0,
          eval_every=100, seed=0, on_step=None, eval_steps=None, eval_split=None):
    """Train ``model`` with mini-batch SGD on cross-entropy; return a :class:`History`.

    Args:
        model: a classifier mapping ``data.x_train`` to logits.
        data: a :class:`bnlib.book.data.Dataset`.
        steps: number of SGD steps.
        batch_size: examples per step, drawn without replacement within each epoch.
        lr, momentum, weight_decay: of ``torch.optim.SGD``.
        eval_every: measure the accuracy every this many steps (and at step 0).
        seed: seeds the order of the mini-batches (not the model's initialization).
        on_step: optional ``callback(step, model)`` called after every step, e.g. to record
            activation statistics.
        eval_steps: optional steps at which to measure the accuracy instead of every
            ``eval_every`` steps, e.g. dense early and sparse later; the last step is always
            measured.
        eval_split: the split the accuracy curve is measured on, "validation" or "test";
            None picks validation when the data has one. The test split is measured once
            more at the end in any case (``History.test_accuracy``, ``test_correct``).

    Raises:
        ValueError: an entry of ``eval_steps`` that is not an int in [0, steps]; an unknown
            ``eval_split``, or "validation" for data without one.
        TypeError: the model's floating parameters are not of the data's dtype.
    """
    eval_split, x_eval, y_eval = _evaluation_split(data, eval_split)
    if eval_steps is not None:
        eval_steps = list(eval_steps)
        bad = [s for s in eval_steps if isinstance(s, bool) or not isinstance(s, numbers.Integral)
               or not 0 <= s <= steps]
        if bad:
            raise ValueError(f"eval_steps must be ints in [0, steps={steps}], got {bad[:5]}")
        eval_steps = {int(s) for s in eval_steps}
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {data.x_train.dtype}:
        raise TypeError(f"the model's parameters are {sorted(map(str, dtypes))} but the data is "
                        f"{data.x_train.dtype}: build the model after training.deterministic(), "
                        f"which makes {DTYPE} the default, or convert it with .to(dtype)")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    history = History(split=eval_split)
    batches = _batch_order(len(data.y_train), batch_size, seed)
    model.train()
    for step in range(steps + 1):
        due = step % eval_every == 0 if eval_steps is None else step in eval_steps
        if due or step == steps:
            history.steps.append(step)
            history.accuracy.append(evaluate(model, x_eval, y_eval))
        if step == steps:
            break
        idx = next(batches)
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not torch.isfinite(loss):
            _mark_diverged(history, step, data.num_classes)
            return history
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.train_loss.append(loss.item())
        if on_step is not None:
            on_step(step, model)
    _read_test(history, model, data)
    return history


def mean_and_spread(values):
    """``(mean, std, min, max)`` of a list of numbers over seeds (std with ddof=0)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std()), float(a.min()), float(a.max())
