"""Helpers for the book's notebooks that must also run outside the book's toolchain.

- :func:`glue`: a value computed in a notebook, for ``{glue:text}`name``` in its prose.
- :func:`stored_glue`: a value another chapter glued, read from that notebook's stored outputs
  (the evidence table combines the verdicts of several chapters).
"""

import json
from ast import literal_eval
from pathlib import Path

__all__ = ["glue", "stored_glue"]


def glue(name, value, display=False):
    """Store ``value`` under ``name`` for ``{glue:text}`name``` in the book's prose.

    Uses ``myst_nb.glue`` when it is installed (the book's environment). Elsewhere (Colab, a
    bare Jupyter) there is nothing to glue into, so the value is only shown if
    ``display=True``. Glue rounded values: nbval compares the stored text of every output.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show
            show(value)
        return
    myst_glue(name, value, display=display)


def stored_glue(notebook, name):
    """The value glued under ``name`` in the stored outputs of ``notebook`` (a path).

    What the site shows for ``{glue:text}`notebook.ipynb::name```, as a Python value (its
    ``text/plain`` form read back with ``ast.literal_eval``: numbers and strings). The other
    notebook is not run: its stored outputs are what ``make test`` checks against its code.

    Raises:
        FileNotFoundError: no such notebook.
        KeyError: the notebook glues no value under ``name``.
    """
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook", {})
            key = scrap.get("mime_prefix", "") + "text/plain"
            if scrap.get("name") == name and key in output.get("data", {}):
                text = "".join(output["data"][key])
                try:
                    return literal_eval(text)
                except (SyntaxError, ValueError):
                    return text
    raise KeyError(f"{notebook} glues no value named {name!r}")
