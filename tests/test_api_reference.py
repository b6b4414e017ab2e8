"""The book's API reference (book/api.md) documents every public function and class of bnlib."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import bnlib

API = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text()
DOCUMENTED = set(re.findall(r"\.\. auto(?:function|class|data)::\s+([\w.]+)", API))


def public_objects():
    """(qualified name, defining module) of every public function/class of every bnlib module."""
    for info in pkgutil.walk_packages(bnlib.__path__, "bnlib."):
        if info.name.split(".")[-1].startswith("_") or info.name == "bnlib.bench":
            continue  # private modules; the benchmark is a command, documented in the README
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) == module.__name__:
                yield f"{module.__name__}.{name}", obj


def test_every_public_function_and_class_is_in_the_api_reference():
    missing = []
    for qualified, obj in public_objects():
        package = qualified.rsplit(".", 2)[0]  # e.g. bnlib.numpy for bnlib.numpy.layer.BatchNorm
        short = f"{package}.{obj.__name__}"
        if qualified not in DOCUMENTED and short not in DOCUMENTED:
            missing.append(qualified)
    assert not missing, f"add these to book/api.md: {missing}"


def test_every_documented_public_object_has_a_docstring():
    undocumented = [q for q, obj in public_objects() if not (obj.__doc__ or "").strip()]
    assert not undocumented, undocumented
