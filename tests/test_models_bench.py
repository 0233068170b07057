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
