"""One look for every figure of the book: colours, size and resolution in one place.

>>> from bnlib.plotting import COLORS, subplots
>>> fig, ax = subplots()
>>> ax.plot(x, y, color=COLORS["with_bn"], label="with BN")
"""

import matplotlib.pyplot as plt

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
