"""Helpers for the book's notebooks that must also run outside the book's toolchain."""

__all__ = ["glue"]


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
