"""Smoke test of benchmarks/conv_sweep.py in quick mode: our conv2d forward and gradients of X and W
(for a random head) against PyTorch's float64 autograd on three points, and one point through the
child-process path that the sweep times.  Nothing is timed or compared in time."""
import argparse
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import conv_sweep  # noqa: E402  (benchmarks/ is not a package)


def test_sweep_has_every_stride_kernel_and_parity():
    assert len(conv_sweep.POINTS) == 18
    assert {"s1_k1_even", "s2_k3_odd", "s3_k5_even", "s3_k5_odd"} <= set(conv_sweep.POINTS)


@pytest.mark.parametrize("name", ["s2_k3_odd", "s3_k5_even", "s1_k1_odd"])
def test_quick_point_gradients_match_torch_float64(name):
    case = conv_sweep.POINTS[name](True)
    conv_sweep.check(case, conv_sweep.inputs(case))   # raises on a wrong number


def test_quick_point_runs_in_a_child():
    # The child checks the gradients first (quick mode), so "ok" also means the numbers matched.
    args = argparse.Namespace(quick=True, tune=False, trials=0, timeout=120)
    row = conv_sweep.run.run_op("s2_k3_even", args, script=conv_sweep.__file__)
    assert row["status"] == "ok", row
    assert {"fwd_ms", "grad_ms", "torch_fwd_ms", "torch_bwd_ms", "grad_per_fwd", "speedup"} <= set(row)
