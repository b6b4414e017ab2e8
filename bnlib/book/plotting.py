"""One look for every figure of the book: colours, size and resolution in one place.

>>> from bnlib.book.plotting import COLORS, subplots
>>> fig, ax = subplots()
>>> ax.plot(x, y, color=COLORS["with_bn"], label="with BN")
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection

__all__ = ["COLORS", "FEATURE_COLORS", "NORMALIZATION_SETS", "normalization_cube", "plot_spread",
           "subplots"]

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


#: What each normalization averages over in an (N, C, H, W) batch, for
#: :func:`normalization_cube`: one set of values that share a mean and a variance.
NORMALIZATION_SETS = {
    "batch": "one channel, every example and position (N x H x W values)",
    "layer": "one example, every channel and position (C x H x W values)",
    "instance": "one example and channel, every position (H x W values)",
    "group": "one example, a group of C / G channels, every position",
}


def normalization_cube(ax, kind, shape=(6, 6, 5), groups=3, color=None):
    """Draw an (N, C, H x W) batch as a cube and shade one set that ``kind`` normalizes together.

    The picture of Wu and He's (2018) Figure 2: N to the right, C into the depth, the
    positions H x W flattened upwards, each value one cell; the shaded cells share a mean and
    a variance (see :data:`NORMALIZATION_SETS`): for "batch" the front channel, for "layer"
    the leftmost example, for "instance" that example's front channel, for "group" that
    example's first group of ``C / groups`` channels. Only the three visible faces are drawn
    (an oblique projection), with the axes named.

    Args:
        ax: a matplotlib ``Axes`` (its aspect is set to equal and its frame hidden).
        kind: "batch", "layer", "instance" or "group".
        shape: cells along (N, C, H x W).
        groups: G, a divisor of C (for "group").
        color: of the shaded cells (default: the "with BN" blue).

    Returns:
        The number of shaded cells drawn (on the visible faces).

    Raises:
        ValueError: an unknown ``kind``, a shape that is not three positive ints, or G that
            does not divide C.
    """
    if kind not in NORMALIZATION_SETS:
        raise ValueError(f"kind must be one of {sorted(NORMALIZATION_SETS)}, got {kind!r}")
    if len(shape) != 3 or any(not isinstance(k, int) or k < 1 for k in shape):
        raise ValueError(f"shape must be three positive ints (N, C, H x W), got {shape!r}")
    n_, c_, h_ = shape
    if not isinstance(groups, int) or groups < 1 or c_ % groups:
        raise ValueError(f"groups must be a positive divisor of C = {c_}, got {groups!r}")
    color = COLORS["with_bn"] if color is None else color
    depth = np.array([0.45, 0.32])  # where one step into C goes on the page

    def inside(n, c):
        return {"batch": c == 0, "layer": n == 0, "instance": n == 0 and c == 0,
                "group": n == 0 and c < c_ // groups}[kind]

    def point(n, c, h):
        return np.array([n, h]) + c * depth

    faces, shaded = [], []
    for n in range(n_):  # front face, c = 0
        for h in range(h_):
            faces.append([point(n, 0, h), point(n + 1, 0, h), point(n + 1, 0, h + 1),
                          point(n, 0, h + 1)])
            shaded.append(inside(n, 0))
    for n in range(n_):  # top face, h = H
        for c in range(c_):
            faces.append([point(n, c, h_), point(n + 1, c, h_), point(n + 1, c + 1, h_),
                          point(n, c + 1, h_)])
            shaded.append(inside(n, c))
    for c in range(c_):  # right face, n = N
        for h in range(h_):
            faces.append([point(n_, c, h), point(n_, c + 1, h), point(n_, c + 1, h + 1),
                          point(n_, c, h + 1)])
            shaded.append(inside(n_ - 1, c))
    colors = [color if s else "white" for s in shaded]
    ax.add_collection(PolyCollection(faces, facecolors=colors, edgecolors="0.35",
                                     linewidths=0.6))
    ax.annotate("", point(n_, 0, 0) + [0, -0.6], point(0, 0, 0) + [0, -0.6],
                arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.text(*(point(n_ / 2, 0, 0) + [0, -1.3]), "N", ha="center", va="center")
    ax.annotate("", point(n_, c_, 0) + [0.5, 0], point(n_, 0, 0) + [0.5, 0],
                arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.text(*(point(n_, c_ / 2, 0) + [1.1, -0.2]), "C", ha="center", va="center")
    ax.annotate("", point(0, 0, h_) + [-0.5, 0], point(0, 0, 0) + [-0.5, 0],
                arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.text(*(point(0, 0, h_ / 2) + [-1.2, 0]), "H, W", ha="center", va="center",
            rotation=90)
    corner = point(n_, c_, h_)
    ax.set_xlim(-2.0, corner[0] + 1.6)
    ax.set_ylim(-2.0, corner[1] + 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    return int(sum(shaded))
