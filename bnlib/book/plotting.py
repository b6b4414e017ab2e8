"""One look for every figure of the book: colours, size and resolution in one place.

>>> from bnlib.book.plotting import COLORS, subplots
>>> fig, ax = subplots()
>>> ax.plot(x, y, color=COLORS["with_bn"], label="with BN")
"""

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["COLORS", "FEATURE_COLORS", "plot_spread", "subplots"]

#: Colours used across all chapters, so that "with BN" looks the same everywhere.
COLORS = {
    "without_bn": "#7f7f7f",  # grey
    "with_bn": "#1f77b4",  # blue
    "before": "#ff7f0e",  # orange: a quantity before normalization
    "after": "#1f77b4",  # blue: the same quantity after normalization
    "reference": "#2ca02c",  # green: a reference curve (torch, theory)
    "highlight": "#d62728",  # red: what the text points at
}

#: One colour per channel or feature, for plots that show several of them.
FEATURE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]

_STYLE = {
    "figure.dpi": 80,  # modest: keeps notebooks small
    "savefig.dpi": 80,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def subplots(nrows=1, ncols=1, width=4.0, height=3.0, **kwargs):
    """``plt.subplots`` in the book's style, each panel ``width`` x ``height`` inches."""
    plt.rcParams.update(_STYLE)
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kwargs)


def plot_spread(ax, x, runs, color, label=None, band="minmax", **kwargs):
    """Draw the mean of several runs (one per seed) as a line and their spread as a band.

    Args:
        ax: a matplotlib ``Axes``.
        x: (T,) positions, e.g. training steps.
        runs: (S, T) values, one row per run (S >= 1).
        color, label: of the line; the band has the same colour, translucent.
        band: ``"minmax"`` (from the lowest to the highest run at each x) or ``"std"`` (the
            mean plus and minus one standard deviation over the runs, ddof=0).
        **kwargs: passed to ``ax.plot`` for the line (``lw``, ``ls``, ...).

    Returns:
        ``(line, band)``: the ``Line2D`` of the mean and the ``PolyCollection`` of the band.

    Raises:
        ValueError: ``runs`` is not (S, T) with T = len(x) and S >= 1, or ``band`` is unknown.
    """
    x, runs = np.asarray(x, dtype=float), np.asarray(runs, dtype=float)
    if runs.ndim != 2 or runs.shape[0] == 0 or runs.shape[1] != x.shape[0]:
        raise ValueError(f"runs must have shape (runs >= 1, len(x) = {x.shape[0]}), got {runs.shape}")
    mean = runs.mean(axis=0)
    if band == "minmax":
        low, high = runs.min(axis=0), runs.max(axis=0)
    elif band == "std":
        std = runs.std(axis=0)
        low, high = mean - std, mean + std
    else:
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    (line,) = ax.plot(x, mean, color=color, label=label, **kwargs)
    area = ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    return line, area
