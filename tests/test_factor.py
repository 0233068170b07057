"""Factor hoisting (`tvm_autodiff.passes.hoist_factors`): the product decomposition, the rewrite
of elementwise ops and sums, and values before and after on random data (float64).  The pass also
runs inside `differentiate`, so the op-table and hypothesis differential tests cover it too."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import te, tirx

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import ops_post_order, placeholders
from tvm_autodiff.passes import hoist_factors
from tvm_autodiff.passes.factor import product
from tvm_autodiff.ir.expr import substitute

F64 = "float64"


def _ph(shape, name):
    return te.placeholder(shape, F64, name=name)


def _shapes(t: te.Tensor) -> dict:
    """name -> shape of every compute tensor in t's graph."""
    return {op.name: tuple(int(s) for s in op.output(0).shape) for op in ops_post_order([t])
            if isinstance(op, te.ComputeOp)}


def _same_values(before: te.Tensor, after: te.Tensor, seed=0):
    params = placeholders([before])
    assert {p.name for p in placeholders([after])} <= {p.name for p in params}
    f = ad.build([before, after], params, schedule=None)
    rng = np.random.default_rng(seed)
    out = f(*[rng.standard_normal([int(s) for s in p.shape]) for p in params])
    np.testing.assert_allclose(out[1], out[0], rtol=1e-12, atol=1e-12)
    assert np.any(out[0] != 0)


def _value(e, env: dict) -> float:
    from tvm import sym
    folded = sym.Analyzer().simplify(substitute(e, {v: tirx.const(x, F64) for v, x in env.items()}))
    assert isinstance(folded, tirx.FloatImm), folded
    return folded.value


@pytest.mark.parametrize("make,n_common", [
    (lambda x, y, z, i: x * y + x * z, 1),                                   # x·(y + z)
    (lambda x, y, z, i: x * y * 2.0 - x * 2.0, 2),                           # x·2·(y − 1)
    (lambda x, y, z, i: tirx.Select(i < 2, x * y, tirx.const(0.0, F64)) + tirx.Select(i < 2, x * z, tirx.const(0.0, F64)), 1),
    (lambda x, y, z, i: x + y, 0),
    (lambda x, y, z, i: (x * y) * (z + x * z), 1),                           # x·y·z·(1 + x): z common to the sum
])
def test_product_keeps_the_value_and_finds_common_factors(make, n_common):
    x, y, z = (tirx.Var(n, F64) for n in "xyz")
    i = tirx.Var("i", "int32")
    e = make(x, y, z, i)
    p = product(e)
    sums = [v for v in p.values if isinstance(v, (tirx.Add, tirx.Sub))]
    assert len(p.values) - len(sums) >= n_common
    rng = np.random.default_rng(1)
    for iv in (0, 3):
        env = dict(zip((x, y, z), rng.standard_normal(3)))
        e_i, p_i = (substitute(t, {i: tirx.const(iv, "int32")}) for t in (e, p.expr(F64)))
        assert _value(p_i, env) == pytest.approx(_value(e_i, env), rel=1e-12)


def test_elementwise_core_drops_the_axes_of_cheap_factors():
    """T[i, j] = X[i, j]·exp(b[j])  ->  T'[j] = exp(b[j]), T = X[i, j]·T'[j]: exp once per j."""
    X, b = _ph((6, 5), "X"), _ph((5,), "b")
    T = te.compute((6, 5), lambda i, j: X[i, j] * te.exp(b[j]), name="T")
    H = hoist_factors(T)
    assert _shapes(H) == {"T_core": (5,), "T": (6, 5)}
    _same_values(T, H)
    assert ad.work(H).iterations == 5 + 30


def test_sum_pulls_out_factors_that_no_reduce_axis_reads():
    """Y[i, j] = Σ_k c[i]·A[j, k]·e[k]  ->  c[i]·Y'[j] with Y'[j] = Σ_k A[j, k]·e[k]."""
    c, A, e = _ph((7,), "c"), _ph((4, 9), "A"), _ph((9,), "e")
    k = te.reduce_axis((0, 9), name="k")
    Y = te.compute((7, 4), lambda i, j: te.sum(c[i] * A[j, k] * e[k], axis=k), name="Y")
    H = hoist_factors(Y)
    assert _shapes(H) == {"Y_core": (4,), "Y": (7, 4)}
    _same_values(Y, H)
    assert ad.work(H).iterations == 4 * 9 + 7 * 4


def test_a_chain_carries_the_factor_until_a_sum_reads_it():
    """The MLP Hessian's pattern: x[n, b] rides along T1 -> T2 -> T3 (elementwise and a sum over
    another axis) and meets a sum over n only at the end; no intermediate has the b axis."""
    n, d, h = 5, 3, 4
    x, A, W = _ph((n, d), "x"), _ph((h, n), "A"), _ph((h, h), "W")
    T1 = te.compute((h, d, n), lambda a, b, m: x[m, b] * te.tanh(A[a, m]), name="T1")
    r = te.reduce_axis((0, h), name="r")
    T2 = te.compute((h, d, n, h), lambda a, b, m, l: te.sum(T1[a, b, m] * W[r, l] * A[r, m], axis=r), name="T2")
    T3 = te.compute((h, d, n, h), lambda a, b, m, l: T2[a, b, m, l] + T2[a, b, m, l] * te.exp(A[l, m]), name="T3")
    s = te.reduce_axis((0, n), name="s")
    Hs = te.compute((h, d, h, d), lambda a, b, l, e: te.sum(T3[a, b, s, l] * x[s, e], axis=s), name="Hs")
    out = hoist_factors(Hs)
    shapes = _shapes(out)
    assert all(len(shp) <= 3 for name, shp in shapes.items() if name != "Hs"), shapes
    # T1's a axis only rides along too (T1' is cheap to read): the sum and T3 need only (m, l).
    assert shapes["T2_core"] == shapes["T3_core"] == (n, h) and shapes["T1_core"] == (h, n), shapes
    _same_values(Hs, out)


def test_nothing_to_hoist_keeps_the_graph():
    """Every factor reads the reduce axis or an expensive call reads every axis: same objects."""
    A, c = _ph((4, 6), "A"), _ph((6,), "c")
    k = te.reduce_axis((0, 6), name="k")
    Y = te.compute((4,), lambda i: te.sum(c[k] * A[i, k], axis=k), name="Y")
    E = te.compute((4, 6), lambda i, j: te.exp(A[i, j]) * c[j], name="E")
    assert hoist_factors(Y).same_as(Y)
    assert hoist_factors(E).same_as(E)
