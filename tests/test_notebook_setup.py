"""Every chapter starts with the setup cell that installs bnlib in Colab, for the configured URL."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from setup_cell import TAG, setup_cell_source  # noqa: E402

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_installs_bnlib_from_the_configured_repository(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert TAG in first_code.metadata.get("tags", []), "run `make execute` (it adds the cell)"
    assert first_code.source == setup_cell_source(), "run `make execute` to update it"
    assert not first_code.outputs
