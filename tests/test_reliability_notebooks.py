"""CI runs every notebook under nbval (strict) twice: with OMP_NUM_THREADS=1 and with 2.

Running the notebooks here would double CI's time; these tests read the Makefile and the CI
script instead, so that an edit that drops a thread count or a notebook fails the unit tests.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()


def _variable(name):
    match = re.search(rf"^{name}\s*\??:?=\s*(.*)$", MAKEFILE, re.MULTILINE)
    assert match, f"{name} is not set in the Makefile"
    return match.group(1).strip()


def _recipe(target):
    match = re.search(rf"^{target}:([^\n]*)\n((?:\t[^\n]*\n?)*)", MAKEFILE, re.MULTILINE)
    assert match, f"no target {target!r} in the Makefile"
    return match.group(1), match.group(2)


def test_nbval_runs_with_one_and_with_two_threads():
    assert {"1", "2"} <= set(_variable("NBVAL_THREADS").split())
    _, recipe = _recipe("notebooks")
    assert re.search(r"for t in \$\(NBVAL_THREADS\)", recipe)
    assert "OMP_NUM_THREADS=$$t" in recipe
    command = re.search(r"pytest (.*)", recipe.replace("\\\n", " "))
    assert command, "the notebooks target does not run pytest"
    assert re.search(r"--nbval\s", command.group(1)) and "--nbval-lax" not in recipe  # strict
    assert "$(NOTEBOOKS)" in command.group(1)
    assert "|| exit 1" in recipe  # a failure with one thread count stops the loop


def test_every_notebook_is_in_the_nbval_run_and_make_test_runs_it():
    assert _variable("NOTEBOOKS") == "$(sort $(wildcard book/*.ipynb))"
    prerequisites, _ = _recipe("test")
    assert "notebooks" in prerequisites.split()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    toc = (ROOT / "_toc.yml").read_text()
    for chapter in re.findall(r"file:\s*(\S+)", toc):
        if (ROOT / f"{chapter}.ipynb").exists():
            assert (ROOT / f"{chapter}.ipynb").parent == ROOT / "book", chapter
