"""Smoke test of benchmarks/models.py: the quick-mode correctness check (our loss and gradients
against PyTorch's, before any timing) of two small models.  Nothing is timed."""
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import models  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("name", ["lstm_T4", "mobilenet"])
def test_quick_model_gradients_match_torch(name):
    torch_step = models.check(name, quick=True, threads=1)   # raises on a wrong gradient
    assert len(torch_step()) > 1


def test_kernel_profile_counts_every_call():
    """benchmarks/kernel_profile.py sees each kernel as often per step as the module calls it,
    except the pure reshapes, which Relax runs as views (vm.builtin.reshape)."""
    import tvm_autodiff as ad
    from kernel_profile import profile

    rows, _ = profile("lstm_T4", quick=True, runs=2)
    model, outputs, _ = models.prepare("lstm_T4", quick=True)
    calls = ad.build(outputs, model.inputs, kernels="many").calls
    seen = {kernel: n for _, n, kernel, _ in rows}
    assert all(seen[k] == n for k, n in calls.items() if k in seen)
    assert sum(n for k, n in calls.items() if k not in seen) == seen.get("vm.builtin.reshape", 0)
    assert len([k for k in calls if k in seen]) > len(calls) // 2
    assert all(ms >= 0 for ms, *_ in rows)
