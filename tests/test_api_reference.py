"""The book's API reference (book/api.md) documents exactly bnlib's public surface.

The public surface of a module is its ``__all__``, for every module that
``pkgutil.walk_packages`` finds in bnlib except private ones (a name part starting with ``_``).
An object is documented by an ``.. autofunction::``, ``.. autoclass::`` or ``.. autodata::``
directive, under the path of the module that defines it or of a package that re-exports it
(``bnlib.torch.BatchNorm2d`` for ``bnlib.torch.modules.BatchNorm2d``). The checks:

* every name of every ``__all__`` is documented, once, with the directive of its kind;
* nothing else is documented;
* every documented object has a docstring of its own (for data: the string literal after the
  assignment, which is what autodoc shows);
* every option of ``python -m bnlib.bench`` is in the reference.
"""

import dataclasses
import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import pytest
from sphinx.pycode import ModuleAnalyzer

import bnlib
from bnlib import bench

API = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text()
DIRECTIVES = re.findall(r"^\s*\.\. auto(function|class|data)::\s+([\w.]+)", API, re.MULTILINE)


def public_modules():
    """Every module of bnlib that is not private, imported."""
    for info in pkgutil.walk_packages(bnlib.__path__, "bnlib."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield importlib.import_module(info.name)


def public_names():
    """{path: object} for every name in every public module's ``__all__``."""
    names = {}
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{module.__name__}.__all__ names {name!r}, which it lacks"
            names[f"{module.__name__}.{name}"] = getattr(module, name)
    return names


def public_objects():
    """The public objects, each with every path it is public under (defined or re-exported)."""
    names, paths = public_names(), defaultdict(list)
    for path, obj in names.items():
        paths[(id(obj), path.rsplit(".", 1)[1])].append(path)
    return [(names[group[0]], group) for group in paths.values()]


def kind(obj):
    """The autodoc directive that documents obj."""
    if inspect.isclass(obj):
        return "class"
    return "function" if inspect.isfunction(obj) or inspect.isbuiltin(obj) else "data"


def docstring(obj, paths):
    """The docstring autodoc shows for ``obj``, public under ``paths`` ("" if none)."""
    if kind(obj) == "data":  # the string literal after the assignment, in the defining module
        for path in paths:
            module, name = path.rsplit(".", 1)
            lines = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", name), [])
            if lines:
                return "\n".join(lines).strip()
        return ""
    doc = (obj.__doc__ or "").strip()
    generated = inspect.isclass(obj) and (dataclasses.is_dataclass(obj) or hasattr(obj, "_fields"))
    if generated and doc.startswith(f"{obj.__name__}("):  # written by dataclass / namedtuple
        return ""
    return doc


def test_every_module_declares_its_public_surface_in_all():
    """A module without ``__all__`` may only be a package that defines nothing public itself."""
    for module in public_modules():
        if hasattr(module, "__all__"):
            continue
        own = [name for name, value in vars(module).items()
               if not name.startswith("_") and not inspect.ismodule(value)]
        assert not own, f"{module.__name__} has no __all__ but defines {own}"


def test_every_name_in_every_all_is_documented_once_with_the_directive_of_its_kind():
    documented = defaultdict(list)
    for directive, path in DIRECTIVES:
        documented[path].append(directive)
    missing, twice, wrong_kind = [], [], []
    for obj, paths in public_objects():
        directives = [(p, d) for p in paths for d in documented.get(p, [])]
        if not directives:
            missing.append(paths[0])
        elif len(directives) > 1:
            twice.append([p for p, _ in directives])
        elif directives[0][1] != kind(obj):
            wrong_kind.append(f"{directives[0][0]}: auto{directives[0][1]}, not auto{kind(obj)}")
    assert not missing, f"add these to book/api.md: {missing}"
    assert not twice, f"documented more than once in book/api.md: {twice}"
    assert not wrong_kind, wrong_kind


def test_nothing_outside_the_public_surface_is_documented():
    public = public_names()
    extra = [path for _, path in DIRECTIVES if path not in public]
    assert not extra, f"book/api.md documents names that are in no __all__: {extra}"


def test_every_documented_object_has_a_docstring():
    documented = {path for _, path in DIRECTIVES}
    undocumented = [paths for obj, paths in public_objects()
                    if documented & set(paths) and not docstring(obj, paths)]
    assert not undocumented, f"no docstring: {undocumented}"


def test_every_option_of_the_benchmark_command_is_in_the_api_reference(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out)) - {"--help"}
    assert options, "python -m bnlib.bench --help lists no options"
    missing = sorted(option for option in options if f"`{option}" not in API)
    assert not missing, f"document these options of python -m bnlib.bench in book/api.md: {missing}"
