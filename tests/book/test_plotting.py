"""bnlib.book.plotting.plot_spread: the line is the mean, the band the min-max or the std."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnlib.book.plotting import COLORS, plot_spread, subplots  # noqa: E402


def _band_limits(area):
    vertices = area.get_paths()[0].vertices
    return vertices[:, 1].min(), vertices[:, 1].max()


@pytest.mark.parametrize("band", ["minmax", "std"])
def test_the_line_is_the_mean_and_the_band_spans_the_spread(band):
    runs = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0], [1.0, 2.0, 1.0]])
    fig, ax = subplots()
    line, area = plot_spread(ax, [0, 10, 20], runs, COLORS["with_bn"], label="BN", band=band)
    np.testing.assert_allclose(line.get_ydata(), runs.mean(axis=0))
    assert line.get_label() == "BN" and line.get_color() == COLORS["with_bn"]
    low, high = _band_limits(area)
    if band == "minmax":
        assert (low, high) == (runs.min(), runs.max())
    else:
        spread = runs.mean(axis=0) + np.array([[-1], [1]]) * runs.std(axis=0)
        assert low == pytest.approx(spread.min()) and high == pytest.approx(spread.max())
    matplotlib.pyplot.close(fig)


def test_one_run_has_a_flat_band_and_bad_input_is_refused():
    fig, ax = subplots()
    _, area = plot_spread(ax, [0, 1], [[3.0, 4.0]], "k")
    assert _band_limits(area) == (3.0, 4.0)
    with pytest.raises(ValueError, match="shape"):
        plot_spread(ax, [0, 1, 2], [[3.0, 4.0]], "k")
    with pytest.raises(ValueError, match="shape"):
        plot_spread(ax, [0, 1], np.zeros((0, 2)), "k")
    with pytest.raises(ValueError, match="band"):
        plot_spread(ax, [0, 1], [[3.0, 4.0]], "k", band="iqr")
    matplotlib.pyplot.close(fig)
