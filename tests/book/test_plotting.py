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


@pytest.mark.parametrize("kind,expected", [
    # shape (N, C, HW) = (3, 4, 2): faces front N*HW = 6, top N*C = 12, right C*HW = 8
    ("batch", 3 * 2 + 3 + 2),        # the front channel: front face, a row on top and right
    ("layer", 2 + 4),                # the leftmost example: a column in front, a row on top
    ("instance", 2 + 1),             # that example's front channel
    ("group", 2 + 2),                # that example's first group of 4 / 2 channels
])
def test_normalization_cube_shades_the_set_each_normalization_averages_over(kind, expected):
    from bnlib.book.plotting import normalization_cube, subplots

    fig, ax = subplots()
    assert normalization_cube(ax, kind, shape=(3, 4, 2), groups=2) == expected
    assert len(ax.collections) == 1 and len(ax.collections[0].get_paths()) == 6 + 12 + 8
    matplotlib.pyplot.close(fig)


def test_normalization_cube_refuses_what_it_cannot_draw():
    from bnlib.book.plotting import normalization_cube, subplots

    fig, ax = subplots()
    with pytest.raises(ValueError, match="kind"):
        normalization_cube(ax, "weight")
    with pytest.raises(ValueError, match="divisor"):
        normalization_cube(ax, "group", shape=(3, 4, 2), groups=3)
    with pytest.raises(ValueError, match="three positive"):
        normalization_cube(ax, "batch", shape=(3, 4))
    matplotlib.pyplot.close(fig)
