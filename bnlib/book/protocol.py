"""The experimental protocol of the book: how a claim is measured, once, for every chapter.

A claim compares arms (with / without batch norm, BN vs GN, one learning rate vs another).
The protocol gives every arm the same chance and lets code, not prose, decide:

1. **Splits.** Train, validation and test (:func:`bnlib.book.data.with_validation`). Every
   choice is made on validation; the test split is read once per arm, for the reported number.
2. **Same budget.** :func:`tune` trains one architecture at every learning rate of a grid,
   over seeds, and picks the rate on validation; :func:`tune_arms` does it for every arm with
   the same grid, steps and optimizer; :func:`tune_then_report` reports fresh seeds at the
   picked rate, so that the pick does not favour the reported runs.
3. **Seeds with intervals.** :func:`interval` is the 95 % t-interval of a mean over seeds;
   :func:`resolution` and :func:`paired_resolution` are the test set's own resolution.
4. **Verdicts by code.** :func:`compare` says whether a difference is detected (its interval
   over seeds excludes 0 and it exceeds the test set's resolution) and what the smallest
   detectable effect was; :func:`verdict` turns that into one of :data:`VERDICTS`.

>>> from bnlib import torch as bnt
>>> from bnlib.book import data, models, protocol
>>> d = data.load_digits(n_val=300)
>>> arms = {"plain": lambda: models.mlp(64, [64], 10),
...         "BN": lambda: models.mlp(64, [64], 10, norm=bnt.BatchNorm1d)}
>>> tuned = protocol.tune_arms(arms, d, lrs=[0.01, 0.03, 0.1, 0.3, 1.0], seeds=range(5), steps=300)
>>> c = protocol.compare(tuned["BN"].runs.test_accuracy, tuned["plain"].runs.test_accuracy,
...                      resolution=protocol.paired_resolution(tuned["BN"].runs.test_correct,
...                                                            tuned["plain"].runs.test_correct))
>>> protocol.verdict(c, threshold=0.01)   # "holds", "not detected", ...
"""

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

from . import experiments, training

__all__ = ["VERDICTS", "Comparison", "Interval", "Tuned", "combine", "compare", "compare_test",
           "interval", "non_inferiority", "paired_mean_resolution", "paired_resolution",
           "pick", "points", "resolution", "tune",
           "tune_arms", "tune_from", "tune_side_by_side", "tune_stacked", "tune_then_report",
           "verdict"]

#: The verdicts of the evidence table, from the strongest to the weakest, and "mixed" for
#: chapters that disagree.
VERDICTS = ("holds", "holds with a caveat", "not detected", "does not hold", "mixed")

#: Two-sided level of every interval.
LEVEL = 0.95


def _values(values, what):
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"{what} is empty: a measurement needs at least one run")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} has non-finite values {a[~np.isfinite(a)][:3]}: map 'never' "
                         f"or a divergence to a number first, or report it as a fraction")
    return a


class Interval(NamedTuple):
    """A mean over seeds with its 95 % t-interval; ``low = high = mean`` for one seed is not
    allowed (a single run has no interval: ``low, high = -inf, inf``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self):
        return (self.high - self.low) / 2

    def format(self, digits=3):
        """``"0.912 ± 0.006"``: the mean and the half-width of its interval."""
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def interval(values):
    """The mean of per-seed values and its 95 % t-interval (n - 1 degrees of freedom).

    Raises:
        ValueError: no values, or a non-finite one.
    """
    a = _values(values, "values")
    mean = float(a.mean())
    if a.size == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return Interval(mean, mean - half, mean + half, int(a.size))


def points(accuracies):
    """Accuracies over seeds (fractions) as ``"96.3 ± 1.2"``: the mean in percentage points and
    the half-width of its 95 % interval, to the 0.1 point such intervals support."""
    return interval(100 * np.asarray(accuracies, dtype=float)).format(1)


def resolution(accuracy, n):
    """Half-width of the 95 % binomial interval of one accuracy measured on n test examples,
    ``1.96 * sqrt(p (1 - p) / n)``: how finely the test set itself resolves it."""
    if not 0.0 <= accuracy <= 1.0 or n < 1:
        raise ValueError(f"need an accuracy in [0, 1] and n >= 1, got {accuracy!r}, {n!r}")
    return float(stats.norm.ppf(0.5 + LEVEL / 2) * math.sqrt(accuracy * (1 - accuracy) / n))


def paired_resolution(correct_a, correct_b):
    """Half-width of the 95 % interval of a difference of two accuracies on the same examples.

    ``correct_a``, ``correct_b``: per-example correctness, shape (n,) or (seeds, n) (rows
    paired by seed). Only the examples where the two disagree carry information (McNemar):
    with d the mean fraction of discordant examples, ``1.96 * sqrt(d / n)``. Two arms on the
    same test images compare more tightly than their separate resolutions suggest.
    """
    a, b = np.atleast_2d(np.asarray(correct_a, bool)), np.atleast_2d(np.asarray(correct_b, bool))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"correct_a and correct_b must have the same non-empty shape, got "
                         f"{a.shape} and {b.shape}")
    discordant = float((a != b).mean())
    return float(stats.norm.ppf(0.5 + LEVEL / 2) * math.sqrt(discordant / a.shape[1]))


def paired_mean_resolution(values_a, values_b):
    """Half-width of the 95 % interval of a difference of two means over the same examples.

    ``values_a``, ``values_b``: a per-example quantity of two arms (e.g. each test example's
    negative log-likelihood), shape (n,) or (seeds, n) (rows paired by seed). With
    ``d = a - b`` per example and s² its variance over the n examples (ddof 1, averaged over
    the rows), ``1.96 * sqrt(s² / n)``: what the test set itself resolves of the mean
    difference. :func:`paired_resolution` is the same for per-example correctness.

    Raises:
        ValueError: different or empty shapes, fewer than two examples, non-finite values.
    """
    a, b = np.atleast_2d(np.asarray(values_a, float)), np.atleast_2d(np.asarray(values_b, float))
    if a.shape != b.shape or a.shape[1] < 2:
        raise ValueError(f"values_a and values_b must have the same shape with at least two "
                         f"examples, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("values_a and values_b must be finite")
    variance = float((a - b).var(axis=1, ddof=1).mean())
    return float(stats.norm.ppf(0.5 + LEVEL / 2) * math.sqrt(variance / a.shape[1]))


class Comparison(NamedTuple):
    """The outcome of :func:`compare`: is ``a`` larger than ``b``?"""

    effect: float  # mean(a) - mean(b)
    low: float  # 95 % interval of the effect over seeds
    high: float
    resolution: float  # what the test set itself resolves (0 if not given)
    smallest_detectable: float  # the smallest |effect| this setup could have detected
    detected: bool  # the interval excludes 0 and |effect| > resolution

    def format(self, digits=3):
        """``"+0.012 (95 % interval +0.004 to +0.020; detectable from 0.008)"``."""
        return (f"{self.effect:+.{digits}f} (95 % interval {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}; detectable from {self.smallest_detectable:.{digits}f})")


def compare(a, b, resolution=0.0):
    """Is ``a`` larger than ``b``? Both are per-seed measurements.

    With as many values on both sides, they are paired by seed (the same seed gives both arms
    the same batches), and the interval is the t-interval of the mean difference; otherwise
    Welch's interval. The effect is **detected** when that interval excludes 0 *and* the
    effect is larger than ``resolution`` (e.g. :func:`paired_resolution` of the two arms'
    test predictions: a difference the test set cannot resolve is not a finding however
    consistent it is over seeds). The smallest detectable effect is the larger of the
    interval's half-width and ``resolution``.

    Measurements on a grid (the largest learning rate of a grid that trains, steps counted
    every k steps) need their grid spacing as ``resolution``: seeds that all land on the same
    grid point give a t-interval of width 0, which would make any difference "detected".

    Raises:
        ValueError: an empty side, a non-finite value, a negative resolution, one value on
            each side (no spread to judge by), or no spread at all and no resolution.
    """
    a, b = _values(a, "a"), _values(b, "b")
    if resolution < 0:
        raise ValueError(f"resolution must be >= 0, got {resolution!r}")
    if a.size == b.size:
        if a.size < 2:
            raise ValueError("compare needs at least two seeds per arm to judge the spread")
        diff = interval(a - b)
        effect, half, dof = diff.mean, diff.half_width, a.size - 1
    else:
        if min(a.size, b.size) < 2:
            raise ValueError("compare needs at least two values on each side")
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se else 1
        effect = float(a.mean() - b.mean())
        half = float(stats.t.ppf(0.5 + LEVEL / 2, dof) * se)
    if half == 0 and resolution == 0:
        raise ValueError("the values do not vary at all, so their t-interval has width 0: pass "
                         "the measurement's resolution (e.g. the grid spacing) as resolution")
    detected = bool(abs(effect) > half and abs(effect) > resolution)
    return Comparison(effect, effect - half, effect + half, float(resolution),
                      max(half, float(resolution)), detected)


def compare_test(a, b):
    """Is the test accuracy of the runs ``a`` larger than that of ``b``? :func:`compare` of
    their per-seed ``test_accuracy``, paired by seed, with the :func:`paired_resolution` of
    their test predictions as the resolution: the comparison of two arms the protocol reports.

    Args:
        a, b: :class:`bnlib.book.experiments.Runs` of two arms with the same seeds (or at
            least as many runs, paired in order) on the same test set.

    Raises:
        ValueError: a run diverged (it has no test predictions: report the fraction of
            diverged seeds instead), or what :func:`compare` raises.
    """
    return compare(a.test_accuracy, b.test_accuracy,
                   resolution=paired_resolution(a.test_correct, b.test_correct))


def verdict(comparison, threshold=0.0, caveat=False):
    """The verdict on the claim "a is larger than b" (see :data:`VERDICTS`).

    - "not detected": the difference is not detected (print the smallest detectable effect);
    - "does not hold": the opposite difference is detected;
    - "holds with a caveat": detected in the claimed direction, but the interval does not
      exclude effects below the practical ``threshold`` the chapter states (its lower end is
      below it), or ``caveat`` (a condition measured by a control that limits the claim, e.g.
      "a careful initialization does as well");
    - "holds": detected, the whole interval above ``threshold``, no caveat.
    """
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be a Comparison, got {type(comparison).__name__}")
    if not isinstance(caveat, (bool, np.bool_)):
        raise TypeError(f"caveat must be a boolean, got {caveat!r}")
    if not comparison.detected:
        return "not detected"
    if comparison.effect < 0:
        return "does not hold"
    if comparison.low < threshold or caveat:
        return "holds with a caveat"
    return "holds"


def non_inferiority(comparison, margin):
    """The verdict on the claim "a is not worse than b by more than ``margin``" (a
    non-inferiority test; see :data:`VERDICTS`).

    A difference that is "not detected" by :func:`compare` does not show that two arms are
    alike: its interval may reach far below 0. Non-inferiority asks instead whether every
    effect the measurement allows is above ``-margin``. With ``e`` the effect and ``s`` the
    smallest detectable effect (the larger of the interval's half-width over seeds and the
    test set's resolution):

    - "holds": ``e - s > -margin``, every effect the measurement allows is above ``-margin``;
    - "does not hold": ``e + s < -margin`` and the difference is detected, ``a`` is worse than
      ``b`` by more than the margin;
    - "not detected": neither, the measurement cannot tell (equivalence not established;
      print the interval and the margin).

    Args:
        comparison: a :class:`Comparison` of ``a`` against ``b`` from :func:`compare`.
        margin: the largest loss that still counts as "not worse", >= 0 (in the units of the
            comparison, e.g. 0.02 for two points of accuracy).

    Raises:
        TypeError: ``comparison`` is not a :class:`Comparison`.
        ValueError: a negative or non-finite ``margin``.
    """
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be a Comparison, got {type(comparison).__name__}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
    if comparison.effect - comparison.smallest_detectable > -margin:
        return "holds"
    if comparison.detected and comparison.effect + comparison.smallest_detectable < -margin:
        return "does not hold"
    return "not detected"


def combine(verdicts):
    """One verdict for a claim measured under several conditions: two optimizers in one
    chapter (as the protocol asks of claims about speed or learning rates), or several
    chapters (the evidence page).

    ``verdicts``: ``{condition: verdict}`` (or a list of verdicts). A claim that holds under
    some conditions and is not detected under the others holds *with a caveat*: only under
    the conditions named (a "not detected" is a lack of evidence, not a disagreement). It is
    "mixed" only when the claimed and the opposite effect are both detected.

    ==========================================================  =======================
    verdicts under the conditions                               combined
    ==========================================================  =======================
    all the same                                                that one
    only "holds" and "holds with a caveat"                      "holds with a caveat"
    "holds" or "holds with a caveat", and "not detected"        "holds with a caveat"
    "does not hold" and "not detected"                          "does not hold"
    the claimed and the opposite effect both detected, "mixed"  "mixed"
    ==========================================================  =======================

    Raises:
        ValueError: no verdicts, or one not in :data:`VERDICTS`.
    """
    verdicts = list(verdicts.values()) if isinstance(verdicts, dict) else list(verdicts)
    unknown = [v for v in verdicts if v not in VERDICTS]
    if not verdicts or unknown:
        raise ValueError(f"need verdicts from {VERDICTS}, got {verdicts}")
    distinct = set(verdicts)
    if len(distinct) == 1:
        return verdicts[0]
    holds = distinct & {"holds", "holds with a caveat"}
    if "mixed" in distinct or (holds and "does not hold" in distinct):
        return "mixed"
    if holds:
        return "holds with a caveat"
    return "does not hold"  # "does not hold" and "not detected"


class Tuned(NamedTuple):
    """What :func:`tune` returns: every setting's runs, the one picked on validation, its runs."""

    grid: dict  # lr -> experiments.Runs
    best: float  # the learning rate picked on validation
    runs: "experiments.Runs"  # grid[best]: report these (their test accuracy)


def _score(select, target):
    if select == "accuracy":
        # Rounded so that equal accuracies tie, and a tie goes to the smaller rate as
        # documented: two grids of exactly as many correct examples can have means one ulp
        # apart, depending on the order of the per-seed values.
        return lambda runs: round(runs.mean_final_accuracy, 12)
    if select == "steps":
        if target is None:
            raise ValueError("select='steps' needs a target accuracy")
        # fewer steps is better; a run that never gets there counts as one step beyond the end
        return lambda runs: -float(np.mean([
            s if s is not None else h.steps[-1] + 1
            for s, h in zip(runs.steps_to(target), runs.histories)]))
    raise ValueError(f"select must be 'accuracy' or 'steps', got {select!r}")


def _require_validation(data):
    if data.x_val is None:
        raise ValueError("tuning needs a validation split: use data.with_validation(...) or "
                         "a loader's n_val, so that the test split is not used for choices")


def _fresh_report(tune_seeds, report_seeds, report_kwargs, fixed, why):
    """``(tune_seeds, report_seeds, report_kwargs)`` as lists and a dict, after checking that
    the report seeds are fresh and that ``report_kwargs`` sets none of ``fixed``."""
    tune_seeds, report_seeds = list(tune_seeds), list(report_seeds)
    if not report_seeds:
        raise ValueError("report_seeds is empty: there is nothing to report")
    shared = sorted(set(tune_seeds) & set(report_seeds))
    if shared:
        raise ValueError(f"report seeds must be fresh, but {shared} also tuned the rate")
    report_kwargs = dict(report_kwargs or {})
    fixed = sorted(set(fixed) & set(report_kwargs))
    if fixed:
        raise ValueError(f"report_kwargs cannot set {fixed}: the report trains at the picked "
                         f"rate with {why}")
    return tune_seeds, report_seeds, report_kwargs


def tune(build, data, lrs, seeds, select="accuracy", target=None, **train_kwargs):
    """Train ``build()`` at every learning rate of ``lrs`` over ``seeds``; pick one on validation.

    Args:
        build: a function of no arguments returning a new model.
        data: a :class:`bnlib.book.data.Dataset` with a validation split.
        lrs: the grid (log-spaced, at least 5 values for a claim about an arm's best).
        seeds: the seeds (at least 5 where a run is cheap, at least 3 otherwise).
        select: "accuracy" (the highest mean final validation accuracy) or "steps" (the
            fewest mean steps to ``target`` validation accuracy; a run that never gets there
            counts as one step beyond the end). Ties go to the smaller rate.
        **train_kwargs: passed to :func:`bnlib.book.experiments.repeat` (``steps`` required).

    Raises:
        ValueError: data without a validation split; an empty grid; what ``repeat`` raises.
    """
    _require_validation(data)
    lrs = sorted(float(lr) for lr in lrs)
    if not lrs:
        raise ValueError("lrs is empty: there is nothing to tune")
    grid = {lr: experiments.repeat(build, data, seeds, lr=lr, **train_kwargs) for lr in lrs}
    best = experiments.best(grid, _score(select, target))
    return Tuned(grid, best, grid[best])


def pick(grid, select="accuracy", target=None):
    """The learning rate :func:`tune` picks from an already trained grid, by either rule.

    ``grid``: ``{lr: Runs}`` (e.g. ``Tuned.grid``); ``select``, ``target``: as for
    :func:`tune` ("accuracy": the highest mean final validation accuracy; "steps": the fewest
    mean steps to ``target``, a run that never gets there counting as one step beyond its
    end). Ties go to the smaller rate. It answers what a grid tuned by one rule would have
    picked by the other, without training it again; for the rule it was tuned with,
    ``pick(tuned.grid, select, target) == tuned.best``.

    Raises:
        ValueError: an empty grid; an unknown ``select``; "steps" without a ``target``.
    """
    if not grid:
        raise ValueError("grid is empty: there is nothing to pick from")
    return experiments.best(dict(sorted(grid.items())), _score(select, target))


def tune_stacked(build, data, lrs, seeds, **train_kwargs):
    """:func:`tune` (``select="accuracy"``) with the whole grid trained side by side.

    The runs are those of :func:`bnlib.book.experiments.repeat_stacked` (the same as
    :func:`tune`'s with ``eval_every=steps``, up to rounding; only networks it can stack,
    the book's recurrent classifiers); the rate with the highest mean final validation
    accuracy is picked, ties going to the smaller rate.

    Args:
        build, data, lrs, seeds: as for :func:`tune`.
        **train_kwargs: ``steps`` (required), ``batch_size``, ``momentum``.

    Raises:
        ValueError: data without a validation split; an empty grid; what ``repeat_stacked``
            raises.
    """
    _require_validation(data)
    if not list(lrs):
        raise ValueError("lrs is empty: there is nothing to tune")
    grid = experiments.repeat_stacked(build, data, seeds, lrs, **train_kwargs)
    best = experiments.best(grid, _score("accuracy", None))
    return Tuned(grid, best, grid[best])


def tune_then_report(build, data, lrs, tune_seeds, report_seeds, select="accuracy",
                     target=None, report_kwargs=None, **train_kwargs):
    """:func:`tune` on ``tune_seeds``, then fresh ``report_seeds`` at the rate it picked.

    Picking the best of several rates on the same runs that are then reported favours
    whichever rate those seeds happened to suit (a winner's bias). Here the runs that choose
    and the runs that report are disjoint: the report is the first time the picked rate meets
    ``report_seeds``. Where a claim needs a whole grid per configuration (every init scale,
    every depth), tuning on one seed and reporting on three fresh ones costs less than tuning
    on three and is not biased by the pick.

    Args:
        build, data, lrs, select, target: as for :func:`tune`.
        tune_seeds: the seeds the grid is trained with (one is enough to pick a rate).
        report_seeds: the seeds of the reported runs, none of them in ``tune_seeds``.
        report_kwargs: optional training arguments for the reported runs only, overriding
            ``train_kwargs`` (e.g. ``eval_split="test"`` or denser ``eval_steps`` for a curve
            that is reported); not ``lr`` (the picked one) or ``steps`` (the same budget).
        **train_kwargs: passed to :func:`bnlib.book.experiments.repeat` for both
            (``steps`` required).

    Returns:
        ``Tuned(grid, best, runs)``: the tuning grid, the picked rate, and ``runs``, the
        report seeds' runs at that rate (not ``grid[best]``).

    Raises:
        ValueError: no report seeds, a report seed among the tuning seeds, ``lr`` or
            ``steps`` in ``report_kwargs``; what :func:`tune` raises.
    """
    tune_seeds, report_seeds, report_kwargs = _fresh_report(
        tune_seeds, report_seeds, report_kwargs, {"lr", "steps"}, "the tuning budget")
    tuned = tune(build, data, lrs, tune_seeds, select, target, **train_kwargs)
    runs = experiments.repeat(build, data, report_seeds, lr=tuned.best,
                              **{**train_kwargs, **report_kwargs})
    return Tuned(tuned.grid, tuned.best, runs)


def tune_from(starts, data, lrs, steps, batch_size=60):
    """:func:`tune` for fine-tuning: every run continues from a trained model.

    ``starts`` maps each seed to its trained model; at every learning rate of ``lrs`` a copy
    of each is trained for ``steps`` steps with the seed's batch order
    (:func:`bnlib.book.experiments.fine_tune`, all runs side by side), and the rate with the
    highest mean final validation accuracy is picked, ties going to the smaller rate. Give
    every arm of a comparison the same ``lrs``, ``steps`` and ``batch_size``.

    Raises:
        ValueError: data without a validation split; what ``fine_tune`` raises.
    """
    _require_validation(data)
    grid = experiments.fine_tune(starts, data, lrs, steps, batch_size)
    best = experiments.best(grid, _score("accuracy", None))
    return Tuned(grid, best, grid[best])


def tune_side_by_side(build, data, lrs, tune_seeds, report_seeds, steps, batch_size=60,
                      report_kwargs=None):
    """:func:`tune_then_report` for plain SGD, the tuning grid trained side by side.

    For every tuning seed a fresh model is built after ``training.deterministic(seed)``, as
    :func:`bnlib.book.experiments.repeat` builds it; the whole grid then trains from these
    starts as :func:`tune_from` trains it (all runs at once, batched with ``torch.func.vmap``:
    several times cheaper than one run after another for the book's small networks, and the
    same runs up to rounding), and the rate with the highest mean final validation accuracy
    is picked, ties going to the smaller rate. Fresh ``report_seeds`` are then trained one by
    one at the picked rate with :func:`bnlib.book.experiments.repeat` (plain SGD, the same
    ``steps`` and ``batch_size``; the accuracy on the evaluation split at step 0 and at the
    end unless ``report_kwargs`` says otherwise), so that the pick does not favour them.

    Args:
        build: a function of no arguments returning a new model.
        data: a :class:`bnlib.book.data.Dataset` with a validation split.
        lrs: the grid; tune_seeds, report_seeds: disjoint, non-empty.
        steps, batch_size: the budget of every run, tuning and report alike.
        report_kwargs: optional training arguments for the reported runs only (e.g.
            ``eval_every``, ``on_step``); not ``lr``, ``steps``, ``batch_size``, ``momentum``
            or ``weight_decay`` (the tuning budget and optimizer).

    Returns:
        ``Tuned(grid, best, runs)``: the tuning grid, the picked rate, and the report seeds'
        runs at that rate.

    Raises:
        ValueError: no tuning or report seeds, a report seed among the tuning seeds, a fixed
            argument in ``report_kwargs``, data without a validation split; what
            :func:`tune_from` raises.
    """
    tune_seeds, report_seeds, report_kwargs = _fresh_report(
        tune_seeds, report_seeds, report_kwargs,
        {"lr", "steps", "batch_size", "momentum", "weight_decay"},
        "the tuning budget and plain SGD")
    if not tune_seeds:
        raise ValueError("tune_seeds is empty: there is nothing to tune with")
    starts = {}
    for seed in tune_seeds:
        training.deterministic(seed)
        starts[seed] = build()
    tuned = tune_from(starts, data, lrs, steps, batch_size)
    runs = experiments.repeat(build, data, report_seeds, lr=tuned.best, steps=steps,
                              batch_size=batch_size, **{"eval_every": steps, **report_kwargs})
    return Tuned(tuned.grid, tuned.best, runs)


def tune_arms(arms, data, lrs, seeds, select="accuracy", target=None, **train_kwargs):
    """:func:`tune` for every arm ``{name: build}`` with the same grid, seeds and budget."""
    return {name: tune(build, data, lrs, seeds, select, target, **train_kwargs)
            for name, build in arms.items()}
