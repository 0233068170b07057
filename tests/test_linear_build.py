"""Build size is linear in graph size: the inline rules never copy a producer into several loads,
so chains (`t = t·t/2 + t`, each op loading the previous one three times) and their gradients
schedule to TIR whose size grows linearly with the chain length (before the rule it grew 3x per
op: 13,959 characters at 6 ops, 364,608 at 9).  A deterministic measure, not a timer: the length
of the scheduled TIR.  Values are checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import te

import tvm_autodiff as ad

N = 16


def chain(k: int):
    x = te.placeholder((N,), "float64", name="x")

    def step(t, i):
        return te.compute((N,), lambda j: t[j] * t[j] * 0.5 + t[j], name=f"t{i}")

    t = x
    for i in range(k):
        t = step(t, i)
    return x, t


def reference(k: int, x):
    """The chain and its derivative by the chain rule, in numpy."""
    value, slope = x, np.ones_like(x)
    for _ in range(k):
        slope = slope * (value + 1.0)
        value = value * value * 0.5 + value
    return value, slope


@pytest.mark.parametrize("gradient", [False, True], ids=["forward", "gradient"])
def test_scheduled_tir_grows_linearly(gradient):
    x0 = np.random.default_rng(0).uniform(-1.5, -0.2, N)   # t -> t(1 + t/2) contracts there
    sizes = {}
    for k in (4, 8, 16, 32):
        x, y = chain(k)
        head = te.placeholder(y.shape, "float64", name="H")
        outputs = [y, *ad.differentiate(y, [x], head=head)] if gradient else [y]
        # One PrimFunc, so that the inline rules see the whole chain (a per-kernel build splits it).
        m = ad.build(outputs, [x, head] if gradient else [x], kernels="one")
        got = m(x0, np.ones(N)) if gradient else m(x0)
        for a, b in zip(got, reference(k, x0)):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        sizes[k] = len(m.func.script())
        assert all(rule != "inline" for block, rule in m.rules.items() if block.startswith("t")), m.explain()
    for k in (4, 8, 16):
        assert sizes[2 * k] <= 2.2 * sizes[k], sizes
