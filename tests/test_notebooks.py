"""The chapters as CI runs them, read from the Makefile, the CI script, the table of contents
and the notebooks themselves (running the notebooks here would double CI's time):

* every chapter starts with the setup cell that installs bnlib in Colab, for the configured URL;
* CI runs every notebook under nbval (strict) twice: as a reader's machine runs it, and with
  rounding noise after every optimizer step (tests/rounding_noise.py); an edit that drops a
  thread count or a notebook fails these tests.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
from setup_cell import TAG, setup_cell_source  # noqa: E402


def _variable(name):
    match = re.search(rf"^{name}\s*\??:?=\s*(.*)$", MAKEFILE, re.MULTILINE)
    assert match, f"{name} is not set in the Makefile"
    return match.group(1).strip()


def _recipe(target):
    match = re.search(rf"^{target}:([^\n]*)\n((?:\t[^\n]*\n?)*)", MAKEFILE, re.MULTILINE)
    assert match, f"no target {target!r} in the Makefile"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_installs_bnlib_from_the_configured_repository(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert TAG in first_code.metadata.get("tags", []), "run `make execute` (it adds the cell)"
    assert first_code.source == setup_cell_source(), "run `make execute` to update it"
    assert not first_code.outputs


def test_nbval_runs_every_notebook_strictly_twice_the_second_time_with_rounding_noise():
    nbval = re.search(r"^NBVAL := (.*?)(?<!\\)$", MAKEFILE, re.MULTILINE | re.DOTALL)
    assert nbval, "NBVAL is not set in the Makefile"
    command = nbval.group(1).replace("\\\n", " ")
    assert re.search(r"--nbval\s", command) and "--nbval-lax" not in MAKEFILE  # strict
    assert "--dist loadscope" in command  # each notebook whole on one worker
    _, recipe = _recipe("notebooks")
    runs = [line for line in recipe.splitlines() if "$(NBVAL) $(NOTEBOOKS)" in line]
    assert len(runs) == 2, recipe
    assert "BNLIB_ROUNDING_NOISE" not in runs[0]
    assert "BNLIB_ROUNDING_NOISE=1" in runs[1] and "$(IPYTHON_NOISE)" in runs[1]
    assert "cp tests/rounding_noise.py $(IPYTHON_NOISE)/profile_default/startup/" in recipe


def test_every_notebook_is_in_the_nbval_run_and_make_test_runs_it():
    assert _variable("NOTEBOOKS") == "$(sort $(wildcard book/*.ipynb))"
    prerequisites, _ = _recipe("test")
    assert "notebooks" in prerequisites.split()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    toc = (ROOT / "_toc.yml").read_text()
    for chapter in re.findall(r"file:\s*(\S+)", toc):
        if (ROOT / f"{chapter}.ipynb").exists():
            assert (ROOT / f"{chapter}.ipynb").parent == ROOT / "book", chapter
