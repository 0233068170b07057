"""The vector forms of float32 exp, erf, tanh and sigmoid on CPU (tvm_autodiff/tir/fast_math.py):
their error against float64, their limits and special values, and that the compiled code has no
scalar libm call left (a count in the LLVM IR, not a time)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tvm import te, topi

import tvm_autodiff as ad

REFERENCE = {
    "exp": (te.exp, np.exp),
    "erf": (te.erf, np.vectorize(math.erf)),
    "tanh": (te.tanh, np.tanh),
    "sigmoid": (te.sigmoid, lambda v: 1 / (1 + np.exp(-v))),
}
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-8, 30.0, -30.0, 80.0, -80.0]
ULPS = 8


def _samples() -> np.ndarray:
    rng = np.random.default_rng(0)
    spread = np.concatenate([rng.standard_normal(8192) * s for s in (1e-3, 1.0, 4.0, 30.0)])
    return np.concatenate([spread, SPECIAL]).astype("float32")


def _build(name, dtype, n):
    x = te.placeholder((n,), dtype, name="x")
    return ad.build([te.compute(x.shape, lambda i: REFERENCE[name][0](x[i]), name=name)], [x])


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_float32_form_is_within_a_few_ulp_of_float64(name):
    a = _samples()
    got = _build(name, "float32", a.size)(a)[0].astype("float64")
    with np.errstate(over="ignore"):
        want = REFERENCE[name][1](a.astype("float64"))
    normal = np.isfinite(want) & (np.abs(want) >= np.finfo("float32").tiny) & (np.abs(want) < 1e38)
    ulp = np.spacing(np.abs(want[normal]).astype("float32")).astype("float64")
    assert np.max(np.abs(got[normal] - want[normal]) / ulp) <= ULPS
    special = slice(a.size - len(SPECIAL), None)
    np.testing.assert_array_equal(np.isnan(got[special]), np.isnan(want[special]))   # NaN stays NaN
    # Beyond float32's normal range: inf where float64 overflows too, a result under the smallest
    # normal (0: no subnormals), and above 1e38 either that value or inf (exp overflows at 88.4).
    big, small = np.isinf(want), np.isfinite(want) & (np.abs(want) < np.finfo("float32").tiny)
    assert np.all(got[big] == want[big])
    assert np.all(np.abs(got[small]) < np.finfo("float32").tiny)
    assert np.all(got[np.abs(want) >= 1e38] >= 1e38)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_float32_calls_vectorize_and_float64_keeps_libm(name):
    source32 = _build(name, "float32", 4096).source
    assert "@erff" not in source32 and "llvm.exp." not in source32 and "tanhf" not in source32
    assert "fmuladd.v" in source32   # the polynomial, in vector registers
    source64 = _build(name, "float64", 4096).source
    assert "@erf(" in source64 or "llvm.exp." in source64 or "tanh" in source64


def test_gelu_gradient_in_float32_matches_float64():
    """d/dx mean(gelu(x)) with the erf form, against the float64 build (libm's erf)."""
    a = np.random.default_rng(1).standard_normal((64, 96))
    results = []
    for dtype in ("float32", "float64"):
        x = te.placeholder(a.shape, dtype, name="x")
        y = topi.sum(topi.multiply(x, topi.add(topi.erf(topi.multiply(x, 0.7071067811865476)), 1.0)))
        results.append(ad.build(list(ad.differentiate(y, [x])), [x])(a.astype(dtype))[0])
    np.testing.assert_allclose(results[0], results[1], rtol=2e-6, atol=2e-6)
