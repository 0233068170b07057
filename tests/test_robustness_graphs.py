"""Robustness of differentiate + build on unusual graphs and inputs: dtypes (float16, bfloat16,
float64), 0-sized and size-1 dimensions (deep graphs: tests/test_linear_build.py),
data-dependent conditions, and a compiled function called from several threads at once.  Every
case checks numbers (a float64 reference, numpy or finite differences).
"""
from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest
from tvm import te

import tvm_autodiff as ad
from gradcheck import check_grad

RNG = np.random.default_rng(0)


def softplus_sum(shape, dtype):
    """S = Σ log(1 + exp(X·c)) with c[i, j] = X[i, 0]: dS/dX has a closed form."""
    x = te.placeholder(shape, dtype, name="X")
    y = te.compute(shape, lambda i, j: te.log(1.0 + te.exp(x[i, j] * x[i, 0])), name="Y")
    r, k = te.reduce_axis((0, shape[0]), "r"), te.reduce_axis((0, shape[1]), "k")
    return x, te.compute((), lambda: te.sum(y[r, k], axis=[r, k]), name="S")


def softplus_reference(x):
    z = x * x[:, :1]
    sig = 1.0 / (1.0 + np.exp(-z))
    grad = sig * x[:, :1]
    grad[:, 0] += (sig * x).sum(1)
    return np.log1p(np.exp(z)).sum(), grad


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5), ("float16", 3e-2),
                                        ("bfloat16", 6e-2)])
def test_dtypes(dtype, tol):
    x, s = softplus_sum((3, 10), dtype)
    m = ad.build([s, *ad.differentiate(s, [x])], [x])
    npdt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    xv = RNG.uniform(-1, 1, (3, 10))
    value, grad = m(xv.astype(npdt))
    ref_value, ref_grad = softplus_reference(xv.astype(npdt).astype("float64"))
    np.testing.assert_allclose(np.float64(value), ref_value, rtol=tol)
    np.testing.assert_allclose(grad.astype("float64"), ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (3, 1), (1, 5)])
def test_empty_and_unit_dimensions(shape):
    x, s = softplus_sum(shape, "float64")
    m = ad.build([s, *ad.differentiate(s, [x])], [x])
    xv = RNG.uniform(-1, 1, shape)
    value, grad = m(xv)
    assert grad.shape == shape
    if xv.size:
        ref_value, ref_grad = softplus_reference(xv)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12)
    else:
        assert value == 0.0


def test_data_dependent_conditions():
    """Selects on tensor data (a leaky branch and a clamp) against finite differences."""
    x = te.placeholder((4, 6), "float64", name="X")
    w = te.placeholder((6,), "float64", name="W")
    y = te.compute((4, 6), lambda i, j: te.if_then_else(
        x[i, j] * w[j] > 0.1, x[i, j] * w[j], te.min(te.max(x[i, j], -0.5), 0.5) * 0.01), name="Y")
    check_grad(y, [x, w])


@pytest.mark.parametrize("kernels", ["one", "many"])
def test_threads_share_a_compiled_function(kernels):
    """8 threads call one compiled function at once (a per-kernel build's Relax VM takes them in
    turn), each with its own data."""
    x, s = softplus_sum((6, 16), "float64")
    m = ad.build([s, *ad.differentiate(s, [x])], [x], kernels=kernels)
    inputs = [RNG.uniform(-1, 1, (6, 16)) for _ in range(8)]
    results = [None] * len(inputs)

    def run(n):
        for _ in range(5):
            results[n] = m(inputs[n])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for xv, (value, grad) in zip(inputs, results):
        ref_value, ref_grad = softplus_reference(xv)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12)


@pytest.mark.parametrize("kernels", ["one", "many"])
def test_two_gathers_from_one_table(kernels):
    """Two data-dependent reads of a 3-d table make two scatter-adds in the gradient; as one
    PrimFunc they once defined the same loop variable twice (ill-formed TIR).  Against numpy."""
    from tvm import topi
    W = te.placeholder((2, 4, 3), "float64", name="W")
    I = te.placeholder((2, 5), "int32", name="I")
    out = te.compute((2, 5), lambda n, p: W[n, I[n, p], p // 2] + W[n, I[n, p] + 1, p // 2] * 2.0,
                     name="out")
    loss = topi.sum(out)
    m = ad.build([loss, *ad.differentiate(loss, [W])], [W, I], kernels=kernels)
    w, i = RNG.standard_normal((2, 4, 3)), RNG.integers(0, 3, (2, 5)).astype("int32")
    value, grad = m(w, i)
    want = np.zeros_like(w)
    for n in range(2):
        for p in range(5):
            want[n, i[n, p], p // 2] += 1.0
            want[n, i[n, p] + 1, p // 2] += 2.0
    np.testing.assert_allclose(grad, want, rtol=1e-13)
    np.testing.assert_allclose(value, sum(w[n, i[n, p], p // 2] + 2 * w[n, i[n, p] + 1, p // 2]
                                          for n in range(2) for p in range(5)), rtol=1e-13)


def test_gather_with_float_coordinate_scatters_both_indices():
    """W[n, c, I[n, y], floor((y + .5) / 4)] (a bilateral grid's read, benchmarks/models_defs.py):
    the data-dependent index and the floor of a float coordinate, which the index solver cannot
    invert, are both scattered, so the adjoint's adds run once per (n, c, y) and not once per
    (n, c, y, column of W).  Against numpy, and the adds counted as scheduled."""
    from tvm import tirx, topi
    W = te.placeholder((2, 3, 4, 5), "float64", name="W")
    I = te.placeholder((2, 16), "int32", name="I")

    def column(y):
        return te.floor((y.astype("float64") + 0.5) * 0.25).astype("int32")

    out = te.compute((2, 3, 16), lambda n, c, y: W[n, c, I[n, y], column(y)] * tirx.const(1.5, "float64"),
                     name="out")
    loss = topi.sum(out * out)
    (dW,) = ad.differentiate(loss, [W])
    m = ad.build(dW, [W, I])
    w, i = RNG.standard_normal((2, 3, 4, 5)), RNG.integers(0, 4, (2, 16)).astype("int32")
    want = np.zeros_like(w)
    for n in range(2):
        for c in range(3):
            for y in range(16):
                col = int(np.floor((y + 0.5) * 0.25))
                want[n, c, i[n, y], col] += 2 * 1.5 * 1.5 * w[n, c, i[n, y], col]
    np.testing.assert_allclose(m(w, i), want, rtol=1e-13)
    # out (2·3·16), zeroing dW (2·3·4·5) and one add per (n, c, y); scattering I alone would loop
    # over the 5 columns of W for every (n, c, y): 2·3·16·5 adds.
    assert ad.scheduled_work(m).iterations <= 2 * 3 * 16 + 2 * 3 * 4 * 5 + 2 * 3 * 16
