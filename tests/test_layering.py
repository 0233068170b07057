"""The package's layers: the IR layer is a leaf, the passes build on it alone, and importing them
has no side effects on the process environment."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(path: str, package: str) -> set:
    """The tvm_autodiff modules that the file imports (relative imports resolved in `package`)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
    return {m for m in out if m == "tvm_autodiff" or m.startswith("tvm_autodiff.")}


def _files(folder: str):
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]


@pytest.mark.parametrize("folder,package,allowed", [
    ("tvm_autodiff/ir", "tvm_autodiff.ir", ("tvm_autodiff.ir.", "tvm_autodiff.errors")),
    ("passes", "tvm_autodiff.passes", ("tvm_autodiff.ir.", "tvm_autodiff.errors", "tvm_autodiff.passes")),
])
def test_layer_imports(folder, package, allowed):
    for path in _files(os.path.join(ROOT, folder)):
        bad = [m for m in _imports(path, package) if not m.startswith(allowed)]
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


def test_importing_the_passes_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import tvm_autodiff.passes; "
            "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); "
            "print(changed); assert not changed")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"importing tvm_autodiff.passes changed the environment: {proc.stdout}{proc.stderr[-2000:]}"
