"""bnlib.book.protocol: intervals, resolutions, comparisons and verdicts computed as the
protocol says, and tuning that picks on validation with the same budget for every arm."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bnlib import torch as bnt
from bnlib.book import data, experiments, models, protocol, training


def test_interval_is_the_t_interval_of_the_mean():
    values = [0.90, 0.92, 0.91, 0.95, 0.93]
    iv = protocol.interval(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert iv.mean == pytest.approx(np.mean(values))
    assert (iv.low, iv.high) == pytest.approx((iv.mean - half, iv.mean + half))
    assert iv.half_width == pytest.approx(half) and iv.n == 5
    assert iv.format(3) == f"{np.mean(values):.3f} ± {half:.3f}"


def test_points_formats_accuracies_in_percentage_points():
    values = [0.90, 0.92, 0.91, 0.95, 0.93]
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert protocol.points(values) == f"{100 * np.mean(values):.1f} ± {100 * half:.1f}"
    assert protocol.points(np.array([0.5, 0.5])) == "50.0 ± 0.0"


def test_one_value_has_no_interval_and_bad_values_are_refused():
    assert protocol.interval([0.5])[1:3] == (-math.inf, math.inf)
    for bad in ([], [0.1, float("nan")], [float("inf"), 0.2]):
        with pytest.raises(ValueError):
            protocol.interval(bad)


def test_resolution_of_one_accuracy_is_the_binomial_half_width():
    assert protocol.resolution(0.95, 1000) == pytest.approx(1.96 * math.sqrt(0.95 * 0.05 / 1000),
                                                            rel=1e-3)
    assert protocol.resolution(0.95, 1000) == pytest.approx(0.0135, abs=1e-4)  # the note's ±1.4
    with pytest.raises(ValueError):
        protocol.resolution(1.5, 10)


def test_paired_resolution_counts_only_the_examples_where_the_arms_disagree():
    a = np.zeros(1000, bool)
    b = a.copy()
    assert protocol.paired_resolution(a, b) == 0.0
    b[:40] = True  # 40 discordant of 1000
    assert protocol.paired_resolution(a, b) == pytest.approx(1.96 * math.sqrt(0.04 / 1000),
                                                             rel=1e-3)
    # rows are seeds: the mean discordance is used
    two = protocol.paired_resolution(np.stack([a, a]), np.stack([b, a]))
    assert two == pytest.approx(1.96 * math.sqrt(0.02 / 1000), rel=1e-3)
    with pytest.raises(ValueError):
        protocol.paired_resolution(a, b[:10])


def test_a_consistent_difference_is_detected_and_noise_is_not():
    a = [0.95, 0.96, 0.94, 0.95, 0.96]
    c = protocol.compare(a, [x - d for x, d in zip(a, [0.02, 0.021, 0.019, 0.02, 0.02])])
    assert c.detected and c.effect == pytest.approx(0.02) and c.low > 0.018
    noisy = protocol.compare([0.95, 0.91, 0.97, 0.93, 0.94], [0.94, 0.95, 0.92, 0.96, 0.93])
    assert not noisy.detected and noisy.low < 0 < noisy.high
    assert noisy.smallest_detectable == pytest.approx((noisy.high - noisy.low) / 2)


def test_no_spread_at_all_needs_a_resolution_to_judge_by():
    """Three seeds on the same grid point: a t-interval of width 0 is no evidence."""
    with pytest.raises(ValueError, match="resolution"):
        protocol.compare([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    c = protocol.compare([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], resolution=1.0)
    assert not c.detected and c.smallest_detectable == 1.0


def test_holds_needs_the_whole_interval_above_the_threshold():
    c = protocol.compare([1.9, 2.4, 1.4, 2.0], [0.0, 0.0, 0.0, 0.0])  # about 1.9 (1.3 to 2.5)
    assert c.detected and c.low < 1.5 < c.effect
    assert protocol.verdict(c, threshold=1.5) == "holds with a caveat"
    assert protocol.verdict(c, threshold=1.0) == "holds"


def test_an_effect_below_the_test_resolution_is_not_detected_however_consistent():
    a = [0.950, 0.951, 0.952, 0.950, 0.951]
    c = protocol.compare(a, [x - 0.005 for x in a], resolution=0.01)
    assert not c.detected and c.smallest_detectable == 0.01
    assert protocol.verdict(c) == "not detected"


def test_unpaired_arms_use_welch_s_interval():
    c = protocol.compare([1.0, 1.1, 0.9], [0.0, 0.1, -0.1, 0.05])
    welch = stats.ttest_ind([1.0, 1.1, 0.9], [0.0, 0.1, -0.1, 0.05], equal_var=False)
    assert c.detected and welch.pvalue < 0.05
    with pytest.raises(ValueError, match="two"):
        protocol.compare([1.0], [0.5])


@pytest.mark.parametrize("a,b,threshold,caveat,expected", [
    ([1.0, 1.1, 1.2], [0.0, 0.12, 0.19], 0.5, False, "holds"),
    ([1.0, 1.1, 1.2], [0.0, 0.12, 0.19], 2.0, False, "holds with a caveat"),
    ([1.0, 1.1, 1.2], [0.0, 0.12, 0.19], 0.5, True, "holds with a caveat"),
    ([0.0, 0.12, 0.19], [1.0, 1.1, 1.2], 0.5, False, "does not hold"),
    ([0.0, 0.3, -0.2], [0.1, 0.0, 0.0], 0.0, False, "not detected"),
])
def test_verdicts_follow_the_protocol_table(a, b, threshold, caveat, expected):
    assert protocol.verdict(protocol.compare(a, b), threshold, caveat) == expected
    assert expected in protocol.VERDICTS


def test_verdict_refuses_what_is_not_a_comparison():
    with pytest.raises(TypeError):
        protocol.verdict(True)
    with pytest.raises(TypeError):
        protocol.verdict(protocol.compare([1, 2], [0, 1.5]), caveat="yes")


def _digits():
    return data.load_digits(n_val=300)


def test_tune_picks_on_validation_and_reads_test_once_per_run():
    d = _digits()
    tuned = protocol.tune(lambda: models.mlp(64, [16], 10), d, lrs=[1e-4, 0.3], seeds=[0, 1],
                          steps=60, batch_size=32, eval_every=30)
    assert tuned.best == 0.3 and tuned.runs is tuned.grid[0.3]
    for h in tuned.runs.histories:
        assert h.split == "validation" and h.steps == [0, 30, 60]
        assert h.test_correct.shape == (len(d.y_test),)
        assert h.test_accuracy == pytest.approx(float(h.test_correct.double().mean()))
    assert tuned.runs.test_correct.shape == (2, len(d.y_test))


def test_tune_by_steps_to_a_target_prefers_the_faster_rate():
    d = _digits()
    tuned = protocol.tune(lambda: models.mlp(64, [16], 10, norm=bnt.BatchNorm1d), d,
                          lrs=[0.003, 0.3], seeds=[0, 1], select="steps", target=0.8,
                          steps=60, batch_size=32, eval_every=10)
    assert tuned.best == 0.3


def test_tune_refuses_data_without_validation_and_bad_choices():
    build = lambda: models.mlp(64, [8], 10)  # noqa: E731
    with pytest.raises(ValueError, match="validation"):
        protocol.tune(build, data.load_digits(), lrs=[0.1], seeds=[0], steps=5)
    with pytest.raises(ValueError, match="empty"):
        protocol.tune(build, _digits(), lrs=[], seeds=[0], steps=5)
    with pytest.raises(ValueError, match="target"):
        protocol.tune(build, _digits(), lrs=[0.1], seeds=[0], select="steps", steps=5)


def test_tune_arms_gives_every_arm_the_same_grid_and_seeds():
    arms = {"plain": lambda: models.mlp(64, [8], 10),
            "BN": lambda: models.mlp(64, [8], 10, norm=bnt.BatchNorm1d)}
    tuned = protocol.tune_arms(arms, _digits(), lrs=[0.3, 0.03], seeds=[0, 1], steps=20,
                               batch_size=32, eval_every=20)
    assert set(tuned) == {"plain", "BN"}
    for t in tuned.values():
        assert sorted(t.grid) == [0.03, 0.3] and t.runs.seeds == [0, 1]


def test_a_diverged_run_has_chance_test_accuracy_and_no_predictions():
    training.deterministic(0)
    net = models.mlp(64, [8], 10)
    with torch.no_grad():
        net[0].linear.weight.mul_(1e150)
    d = _digits()
    h = training.train(net, d, steps=20, lr=1e300, eval_every=5)
    assert h.diverged and h.test_accuracy == pytest.approx(0.1) and h.test_correct is None


def test_tune_then_report_picks_like_tune_and_reports_fresh_seeds_at_that_rate():
    d = _digits()
    build = lambda: models.mlp(64, [16], 10)  # noqa: E731
    kwargs = dict(lrs=[1e-4, 0.3], steps=40, batch_size=32, eval_every=20)
    tuned = protocol.tune(build, d, seeds=[0], **kwargs)
    reported = protocol.tune_then_report(build, d, tune_seeds=[0], report_seeds=[5, 6],
                                         report_kwargs={"eval_split": "test"}, **kwargs)
    assert reported.best == tuned.best == 0.3
    assert reported.grid[0.3].final_accuracy == tuned.grid[0.3].final_accuracy
    assert reported.runs.seeds == [5, 6] and reported.runs is not reported.grid[0.3]
    alone = experiments.repeat(build, d, [5, 6], lr=0.3, steps=40, batch_size=32, eval_every=20,
                               eval_split="test")
    assert reported.runs.test_accuracy == alone.test_accuracy
    assert [h.split for h in reported.runs.histories] == ["test", "test"]
    assert reported.runs.histories[0].accuracy == alone.histories[0].accuracy


def test_tune_then_report_refuses_reused_seeds_and_a_different_budget():
    build = lambda: models.mlp(64, [8], 10)  # noqa: E731
    d = _digits()
    with pytest.raises(ValueError, match="fresh"):
        protocol.tune_then_report(build, d, [0.1], tune_seeds=[0, 1], report_seeds=[1, 2],
                                  steps=5)
    with pytest.raises(ValueError, match="empty"):
        protocol.tune_then_report(build, d, [0.1], tune_seeds=[0], report_seeds=[], steps=5)
    for bad in ({"lr": 1.0}, {"steps": 10}):
        with pytest.raises(ValueError, match="report_kwargs"):
            protocol.tune_then_report(build, d, [0.1], tune_seeds=[0], report_seeds=[1],
                                      report_kwargs=bad, steps=5)


def test_compare_test_pairs_two_arms_by_seed_with_their_paired_resolution():
    d = _digits()
    kwargs = dict(steps=30, batch_size=32, eval_every=30)
    a = experiments.repeat(lambda: models.mlp(64, [16], 10), d, [0, 1, 2], lr=0.3, **kwargs)
    b = experiments.repeat(lambda: models.mlp(64, [16], 10), d, [0, 1, 2], lr=0.01, **kwargs)
    c = protocol.compare_test(a, b)
    expected = protocol.compare(a.test_accuracy, b.test_accuracy,
                                resolution=protocol.paired_resolution(a.test_correct,
                                                                      b.test_correct))
    assert c == expected and c.effect > 0
    diverged = experiments.repeat(lambda: models.mlp(64, [16], 10, init_std=1e150), d, [0, 1, 2],
                                  lr=1e300, **kwargs)
    assert diverged.diverged == 3
    with pytest.raises(ValueError, match="diverged"):
        protocol.compare_test(a, diverged)


def test_paired_mean_resolution_is_the_interval_of_a_mean_paired_difference():
    gen = np.random.default_rng(0)
    a = gen.normal(size=400)
    b = a + gen.normal(0.1, 0.5, size=400)
    expected = stats.norm.ppf(0.975) * np.std(a - b, ddof=1) / math.sqrt(400)
    assert protocol.paired_mean_resolution(a, b) == pytest.approx(expected)
    assert protocol.paired_mean_resolution(a, a + 0.3) < 1e-15  # a constant shift is exact
    two = protocol.paired_mean_resolution(np.stack([a, a]), np.stack([b, a]))
    assert two == pytest.approx(stats.norm.ppf(0.975) * math.sqrt(np.var(a - b, ddof=1) / 2 / 400))
    for bad in ((a, b[:10]), (a[:1], b[:1]), (a, np.full(400, np.nan))):
        with pytest.raises(ValueError):
            protocol.paired_mean_resolution(*bad)


def test_tune_from_continues_each_seed_s_model_and_picks_on_validation():
    d = _digits()
    starts = {}
    for seed in (0, 1):
        training.deterministic(seed)
        starts[seed] = models.mlp(64, [16], 10, norm=bnt.BatchNorm1d)
        training.train(starts[seed], d, steps=20, batch_size=20, lr=0.1, eval_every=20, seed=seed)
    tuned = protocol.tune_from(starts, d, [0.001, 0.1], steps=20, batch_size=8)
    assert sorted(tuned.grid) == [0.001, 0.1] and tuned.runs is tuned.grid[tuned.best]
    means = {lr: runs.mean_final_accuracy for lr, runs in tuned.grid.items()}
    assert means[tuned.best] == max(means.values())
    assert all(h.split == "validation" for h in tuned.runs.histories)
    with pytest.raises(ValueError, match="validation"):
        protocol.tune_from(starts, data.load_digits(), [0.1], steps=2)


@pytest.mark.parametrize("verdicts,expected", [
    ({"SGD": "holds", "momentum": "holds"}, "holds"),
    ({"SGD": "not detected", "momentum": "not detected"}, "not detected"),
    ({"SGD": "holds", "momentum": "holds with a caveat"}, "holds with a caveat"),
    ({"SGD": "holds", "momentum": "not detected"}, "holds with a caveat"),
    (["not detected", "holds with a caveat"], "holds with a caveat"),
    ({"SGD": "does not hold", "momentum": "not detected"}, "does not hold"),
    ({"SGD": "holds", "momentum": "does not hold"}, "mixed"),
    (["mixed", "holds"], "mixed"),
])
def test_combine_holds_with_a_caveat_where_only_some_conditions_show_it(verdicts,
                                                                                   expected):
    assert protocol.combine(verdicts) == expected


@pytest.mark.parametrize("differences,resolution,expected", [
    ([-0.005, 0.005, 0.005], 0.0, "holds"),  # not detected as a difference, yet not worse
    ([-0.05, 0.0, 0.03], 0.0, "not detected"),  # the interval reaches below the margin
    ([-0.10, -0.11, -0.12], 0.0, "does not hold"),  # worse by more than the margin
    ([-0.001, 0.0, 0.001], 0.05, "not detected"),  # tight over seeds, the test set cannot tell
])
def test_non_inferiority_needs_every_allowed_effect_above_minus_the_margin(differences,
                                                                           resolution,
                                                                           expected):
    b = np.array([0.9, 0.8, 0.85])
    c = protocol.compare(b + np.array(differences), b, resolution=resolution)
    assert protocol.non_inferiority(c, margin=0.02) == expected
    assert expected in protocol.VERDICTS
    if expected == "holds":
        assert not c.detected and c.effect - c.smallest_detectable > -0.02


def test_non_inferiority_refuses_a_bad_margin_or_what_is_not_a_comparison():
    c = protocol.compare([0.9, 0.91, 0.92], [0.9, 0.9, 0.9])
    for margin in (-0.01, math.inf, math.nan):
        with pytest.raises(ValueError, match="margin"):
            protocol.non_inferiority(c, margin)
    with pytest.raises(TypeError):
        protocol.non_inferiority((0.0, -1.0, 1.0), 0.02)


def test_combine_refuses_unknown_or_missing_verdicts():
    for bad in ([], {"SGD": "probably"}, ["holds", "yes"]):
        with pytest.raises(ValueError, match="verdicts"):
            protocol.combine(bad)


def test_equal_accuracies_tie_and_the_tie_goes_to_the_smaller_rate():
    from bnlib.book import experiments

    def runs(counts, n=500):  # runs whose final validation accuracies are counts / n
        return experiments.Runs(seeds=list(range(len(counts))), histories=[
            training.History(split="validation", steps=[100], accuracy=[c / n])
            for c in counts])

    # the same 1233 correct answers in all: the float means differ by one ulp
    grid = {0.316: runs([379, 436, 418]), 1.0: runs([390, 428, 415])}
    assert grid[1.0].mean_final_accuracy > grid[0.316].mean_final_accuracy
    assert experiments.best(grid, protocol._score("accuracy", None)) == 0.316


def test_tune_stacked_picks_what_tune_picks_from_the_same_runs():
    signals = data.load_mnist1d(n_val=200)

    def build():
        return models.RecurrentClassifier(1, 8, 10, norm="batch", max_steps=4, chunk=10)

    kwargs = dict(steps=20, batch_size=16, momentum=0.9)
    stacked = protocol.tune_stacked(build, signals, [0.01, 0.3, 0.1], [0, 1], **kwargs)
    tuned = protocol.tune(build, signals, [0.01, 0.3, 0.1], [0, 1], eval_every=20, **kwargs)
    assert stacked.best == tuned.best and list(stacked.grid) == list(tuned.grid)
    assert stacked.runs.final_accuracy == tuned.runs.final_accuracy
    with pytest.raises(ValueError, match="validation split"):
        protocol.tune_stacked(build, data.load_mnist1d(), [0.1], [0], **kwargs)


def test_pick_on_a_trained_grid_is_what_tune_picks_by_either_rule():
    digits = data.load_digits(n_val=300)

    def build():
        return models.mlp(64, [16], 10)

    kwargs = dict(steps=30, batch_size=64, eval_every=5)
    by_accuracy = protocol.tune(build, digits, [0.3, 0.01, 0.1], [0, 1], **kwargs)
    by_steps = protocol.tune(build, digits, [0.3, 0.01, 0.1], [0, 1], select="steps",
                             target=0.5, **kwargs)
    assert protocol.pick(by_accuracy.grid) == by_accuracy.best
    assert protocol.pick(by_steps.grid, "steps", target=0.5) == by_steps.best
    # the same runs, read by the other rule, without training again
    assert protocol.pick(by_steps.grid) == by_accuracy.best
    with pytest.raises(ValueError, match="empty"):
        protocol.pick({})
    with pytest.raises(ValueError, match="target"):
        protocol.pick(by_steps.grid, "steps")


def test_tune_side_by_side_picks_what_tune_then_report_picks_and_reports_fresh_seeds():
    digits = data.load_digits(n_val=300)

    def build():
        return models.mlp(64, [16], 10, norm=torch.nn.BatchNorm1d)

    lrs, budget = [0.01, 0.3, 0.1], dict(steps=20, batch_size=32)
    fast = protocol.tune_side_by_side(build, digits, lrs, [0, 1], [5, 6], **budget)
    slow = protocol.tune_then_report(build, digits, lrs, [0, 1], [5, 6], eval_every=20, **budget)
    assert fast.best == slow.best and list(fast.grid) == sorted(lrs)
    for lr in lrs:  # the same runs up to rounding
        assert fast.grid[lr].final_accuracy == pytest.approx(slow.grid[lr].final_accuracy,
                                                             abs=0.02)
    assert fast.runs.seeds == [5, 6]
    assert fast.runs.test_accuracy == slow.runs.test_accuracy  # trained alike, one by one
    with pytest.raises(ValueError, match="fresh"):
        protocol.tune_side_by_side(build, digits, lrs, [0, 1], [1, 2], **budget)
    with pytest.raises(ValueError, match="momentum"):
        protocol.tune_side_by_side(build, digits, lrs, [0], [1], report_kwargs={"momentum": 0.9},
                                   **budget)
    with pytest.raises(ValueError, match="validation split"):
        protocol.tune_side_by_side(build, data.load_digits(), lrs, [0], [1], **budget)
