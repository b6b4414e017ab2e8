"""bnlib.book.notebook: glue outside the book's toolchain, and values read back from another
chapter's stored outputs."""

import nbformat
import pytest

from bnlib.book.notebook import glue, stored_glue


def _notebook_with(tmp_path, outputs):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("glue(...)")
    prefix = "application/papermill.record/"  # how myst_nb.glue stores a hidden value
    cell.outputs = [nbformat.v4.new_output("display_data", data={prefix + "text/plain": text},
                                           metadata={"scrapbook": {"name": name,
                                                                   "mime_prefix": prefix}})
                    for name, text in outputs]
    nb.cells.append(cell)
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    return path


def test_stored_glue_reads_numbers_and_strings_back(tmp_path):
    path = _notebook_with(tmp_path, [("ratio", "2.5"), ("verdict", "'holds with a caveat'"),
                                     ("count", "7")])
    assert stored_glue(path, "ratio") == 2.5
    assert stored_glue(path, "verdict") == "holds with a caveat"
    assert stored_glue(path, "count") == 7


def test_stored_glue_names_what_is_missing(tmp_path):
    path = _notebook_with(tmp_path, [("ratio", "2.5")])
    with pytest.raises(KeyError, match="no value named 'other'"):
        stored_glue(path, "other")
    with pytest.raises(FileNotFoundError):
        stored_glue(tmp_path / "none.ipynb", "ratio")


def test_glue_outside_the_book_s_toolchain_does_nothing_silently(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as in Colab without myst-nb
    glue("x", 1.0)
    assert capsys.readouterr().out == ""
