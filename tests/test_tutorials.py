"""Run every tutorial in fast mode (TVM_AUTODIFF_FAST=1) as a subprocess and check its results.

Each tutorial prints "OK ..." lines after its own assertions, and the training tutorial prints
one "RESULT ..." line per model.  Compilation dominates the run time, so the fast modes keep the
number of builds small.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")


def run_tutorial(name: str, tmp_path, timeout: int = 300) -> str:
    env = dict(os.environ, TVM_AUTODIFF_FAST="1", TVM_AUTODIFF_TUTORIAL_OUT=str(tmp_path),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, os.path.join(TUTORIALS, name)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def test_01_basics(tmp_path):
    out = run_tutorial("01_basics.py", tmp_path)
    assert "OK zero elimination reduced the work of dw" in out
    for line in ("OK gradients dw, db match finite differences",
                 "OK raw and zero-eliminated gradients agree",
                 "OK adjoint of intermediate h matches finite differences and the chain rule",
                 "OK Jacobian matches finite differences"):
        assert line in out
    assert "Jacobian shape: [2, 3, 2, 4]" in out


def test_02_manual_jacobian(tmp_path):
    out = run_tutorial("02_manual_jacobian.py", tmp_path)
    assert "OK manual flatten derivative gives the same gradients" in out
    assert "OK gradient through the extern op matches finite differences" in out
    assert "without a manual entry: cannot differentiate ExternOp 'softplus'" in out
    assert "OK manual flatten derivative does less work than the raw automatic one" in out


def test_03_train_digits(tmp_path):
    for module in ("sklearn", "matplotlib", "tqdm"):
        pytest.importorskip(module)
    out = run_tutorial("03_train_digits.py", tmp_path)
    results = {m.group(1): {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(2))}
               for m in re.finditer(r"^RESULT (\w+) (.*)$", out, re.M)}
    assert set(results) == {"mlp", "cnn"}, out
    for name, r in results.items():
        assert r["last_loss"] < r["first_loss"], (name, r)
        assert r["test_acc"] > 0.5, (name, r)
        assert r["step_ms"] > 0
    png = tmp_path / "03_train_digits.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_05_cuda(tmp_path):
    import tvm
    out = run_tutorial("05_cuda.py", tmp_path)
    assert "OK CUDA source generated" in out
    if shutil.which("nvcc"):
        assert "OK nvcc compiled the kernels to PTX" in out
    if tvm.cuda(0).exist:
        assert "OK GPU training steps match the CPU" in out


def test_04_hessian_newton(tmp_path):
    pytest.importorskip("sklearn")
    out = run_tutorial("04_hessian_newton.py", tmp_path)
    losses = [float(v) for v in re.findall(r"^iteration \d+: loss ([\d.]+)", out, re.M)]
    assert len(losses) >= 3 and losses == sorted(losses, reverse=True), out
    for line in ("OK the Hessian is compact", "OK Hessian matches the closed form",
                 "OK Newton's method converged"):
        assert line in out
