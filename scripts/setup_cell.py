"""Give every chapter notebook the same first code cell: install bnlib outside the repository.

In the repository (``make test``, ``make book``) bnlib is installed and the cell does nothing;
in Colab or a bare Jupyter it pip-installs bnlib and what the chapters import from the
repository named in ``_config.yml`` (``repository.url``).

Usage: python scripts/setup_cell.py book/*.ipynb   (then re-execute the notebooks)
"""

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "bnlib-setup"


def setup_cell_source():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return (
        "# Outside the book's repository (e.g. in Colab) this installs bnlib; here it does nothing.\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec(\"bnlib\") is None:\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", "
        f"\"bnlib[book] @ git+{url}\"], check=True)"
    )


def ensure_setup_cell(path):
    """Insert or update the setup cell; return True if the notebook changed."""
    nb = nbformat.read(path, as_version=4)
    source = setup_cell_source()
    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is not None and TAG in first_code.metadata.get("tags", []):
        if first_code.source == source:
            return False
        first_code.source = source
    else:
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [TAG, "hide-cell"]})
        position = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(position, cell)
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    for name in sys.argv[1:]:
        if ensure_setup_cell(name):
            print(f"{name}: setup cell written (re-execute the notebook)")
