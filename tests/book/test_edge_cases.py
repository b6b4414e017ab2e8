"""bnlib.book.edge_cases: every row of the table is a test: bad input gets its documented error
and changes nothing; edge input gets its documented result. The table itself is checked for
coverage."""

import re
from collections import Counter

import pytest

from bnlib.book import edge_cases
from bnlib.book.edge_cases import CASES, ENTRY_POINTS, NP_LAYER, T_FUNCTION, T_MODULES

CONSTRUCTOR = re.compile(r"BatchNorm(1d|2d|3d)?\([^)]*\)")  # an input that is only a constructor call


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_edge_case_behaves_as_documented(case):
    outcome = edge_cases.run(case)  # raises AssertionError with the reason otherwise
    assert outcome.actual
    assert (outcome.error is not None) == (case.raises is not None)


def test_every_entry_point_has_at_least_20_rows_with_errors_and_defined_results():
    counts = Counter(c.entry for c in CASES)
    assert set(counts) == set(ENTRY_POINTS)
    for entry in ENTRY_POINTS:
        rows = edge_cases.cases_for(entry)
        assert len(rows) >= 20, (entry, len(rows))
        assert any(c.raises for c in rows) and any(c.raises is None for c in rows), entry


def test_rows_are_unique_and_documented():
    assert len({c.id for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.given and c.expected, c.id
        assert (c.raises is None) == (c.match == ""), f"{c.id}: an error row needs a pattern"


@pytest.mark.parametrize("entry", [NP_LAYER, T_MODULES])
def test_every_error_row_of_a_layer_watches_its_running_statistics(entry):
    """run() compares the watched state before and after the error; here: it is the right state."""
    for case in edge_cases.cases_for(entry):
        if case.raises is None:
            continue
        state = case.setup().state()
        if CONSTRUCTOR.fullmatch(case.given):
            assert state == {}, case.id  # no layer exists yet
            continue
        no_buffers = "track_running_stats=False" in case.given
        assert no_buffers or {"running_mean", "num_batches_tracked"} <= set(state), case.id


def test_every_error_row_of_the_function_watches_the_tensors_passed_in():
    for case in edge_cases.cases_for(T_FUNCTION):
        if case.raises is not None:
            assert "input" in case.setup().state(), case.id


def test_a_broken_promise_fails_the_row():
    """The runner is not vacuous: a row promising the wrong error or result fails."""
    wrong_error = edge_cases.EdgeCase("x", "y", "", "", CASES[0].setup, KeyError, "anything")
    with pytest.raises(AssertionError, match="expected KeyError"):
        edge_cases.run(wrong_error)
    result_row = next(c for c in CASES if c.raises is None)
    as_error = edge_cases.EdgeCase("x", "y", "", "", result_row.setup, ValueError, ".")
    with pytest.raises(AssertionError, match="nothing was raised"):
        edge_cases.run(as_error)
    warning_row = next(c for c in CASES if c.warns is not None)
    silent = edge_cases.EdgeCase("x", "y", "", "", warning_row.setup)
    with pytest.raises(AssertionError, match="unexpected warnings"):
        edge_cases.run(silent)


def test_float32_offset_errors_true_measures_against_the_data_before_rounding():
    keys = {"input", "torch", "bnt", "bnp", "torch_eval", "bnt_eval", "torch_statistics",
            "torch_formula"}
    e = edge_cases.float32_offset_errors_true(1e4, shape=(16, 2, 4, 4))
    assert set(e) == keys and all(v >= 0 for v in e.values())
    # rounding 1e4 + N(0, 1) to float32 moves values by up to 2**-11 (half a spacing)
    assert 1e-4 < e["input"] < 2**-10
    # bnlib adds almost nothing to the input's own error; torch's parts add up to its error
    assert e["bnt"] <= 1.05 * e["input"] and e["bnp"] <= 1.05 * e["input"]
    old = edge_cases.float32_offset_errors(1e4, shape=(16, 2, 4, 4))
    assert e["torch"] <= e["input"] + old["torch"] + 1e-12
    assert old["torch"] <= e["torch_statistics"] + e["torch_formula"] + 1e-12
    whole = edge_cases.float32_offset_errors_true(1e4, shape=(16, 2, 4), std=10, integers=True)
    assert whole["input"] == 0 and whole["bnt"] < 1e-5
