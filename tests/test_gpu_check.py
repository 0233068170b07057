"""The run half of benchmarks/gpu_check.py works with nothing but its bundle installed.

The GPU machine has no TVM and no registry, so a file the bundle lacks would only show there.
This builds a few CPU modules with the build half (`--device cpu`; one of them a model step,
which runs on the Relax VM of the runtime), makes a clean venv without apache-tvm, and runs the
bundle's own copy of the run half in it: it must pip-install tvm_ffi from the bundle with no
index, load the modules with the runtime only, and find every result equal to the CPU build's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
CASES = ["op/binary-add", "op/take-clip", "bench/dense", "model/lstm_T4"]


def test_run_half_in_a_clean_venv(tmp_path):
    try:
        import venv  # noqa: F401
    except ImportError:
        pytest.skip("this Python has no venv module, so no clean environment can be made")
    bundle, out, env_dir = tmp_path / "bundle", tmp_path / "out", tmp_path / "venv"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([sys.executable, SCRIPT, "build", "--device", "cpu", "--quick",
                    "--bundle", str(bundle), "--python", py, "--with-numpy", "--only", *CASES],
                   check=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    venv_py = str(env_dir / "bin" / "python")
    # The venv must not see the apache-tvm install this test runs under.
    probe = subprocess.run([venv_py, "-c", "import tvm"], capture_output=True)
    assert probe.returncode != 0
    done = subprocess.run([venv_py, str(bundle / "gpu_check.py"), "run", "--bundle", str(bundle),
                           "--out", str(out), "--reps", "2"],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["id"] for r in results] == CASES
    assert all(r["status"] == "match" for r in results), results
    assert "4 match" in (out / "results.md").read_text()
