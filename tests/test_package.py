"""The package's shape: the library needs only NumPy (torch only for bnlib.torch), and the
chapters' toolkit stays apart from it."""

import subprocess
import sys
from pathlib import Path

import pytest


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bnlib_and_bnlib_numpy_import_and_work_without_torch():
    # A None entry in sys.modules makes "import torch" fail, as on a machine without torch.
    out = _run("import sys; sys.modules['torch'] = None\n"
               "import numpy as np, bnlib\n"
               "from bnlib import numpy as bnp\n"
               "y, _ = bnp.batch_norm_forward(np.arange(12.0).reshape(4, 3))\n"
               "print(round(float(abs(y.mean(0)).max()), 12), 'torch' in sys.modules and "
               "sys.modules['torch'] is not None)")
    assert out.split() == ["0.0", "False"]


def test_importing_the_library_does_not_import_the_toolkit():
    out = _run("import sys\nfrom bnlib import numpy, torch\n"
               "print(sorted(m for m in sys.modules if m.startswith('bnlib.book')))")
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["bnlib.numpy", "bnlib.torch"])
def test_the_library_never_imports_the_toolkit(module):
    import ast
    import importlib
    import pkgutil

    package = importlib.import_module(module)
    for info in pkgutil.walk_packages(package.__path__, module + "."):
        path = Path(importlib.import_module(info.name).__file__)
        if path.suffix != ".py":  # the compiled loops (bnlib/torch/_fused.cpp import no module)
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert "book" not in target.split("."), (info.name, target)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("bnlib.book") for a in node.names), info.name
