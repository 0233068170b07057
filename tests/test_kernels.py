"""The per-kernel build (tvm_autodiff/kernels.py, kernel_module.py): the partition rule, and
`build(kernels="many")` against the one-PrimFunc build and finite differences.

* partition: an injective op with one consumer joins its consumer's kernel; a reduction, an op
  with several consumers, or a graph output roots its own kernel.
* an unrolled LSTM (float64): gradients against central finite differences, and the number of
  distinct kernels is the same at T = 4 and 8 while the calls grow linearly in T.
* softmax's gradient (a multi-output reduction in the forward), and a symbolic batch at two
  sizes from one module: values equal to the one-PrimFunc build's.
* the interface: rules per "kernel/block", explain, `func` and `kernels="many"` refusals.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from tvm import te, topi

import tvm_autodiff as ad
from gradcheck import check_grad
from tvm_autodiff import compile as compile_module
from tvm_autodiff.compile import AUTO_KERNELS
from tvm_autodiff.kernels import MAX_KERNEL_OPS, distinct, partition

F64 = "float64"


def test_partition_fuses_single_use_injective_producers():
    A = te.placeholder((4, 8), F64, name="A")
    E = te.compute(A.shape, lambda i, j: te.exp(A[i, j]), name="E")        # one consumer: joins S
    k = te.reduce_axis((0, 8), name="k")
    S = te.compute((4,), lambda i: te.sum(E[i, k], axis=k), name="S")      # a reduction: a root
    N = te.compute((4,), lambda i: S[i] * 2.0, name="N")                   # read by P and Q
    P = te.compute((4,), lambda i: N[i] + 1.0, name="P")
    Q = te.compute((4,), lambda i: N[i] * N[i], name="Q")
    R = te.compute((4,), lambda i: P[i] - Q[i], name="R")
    kernels = partition([R, P])                                           # P is an output too
    assert [[op.name for op in k.ops] for k in kernels] == [["E", "S"], ["N"], ["P"], ["Q", "R"]]
    assert [[t.name for t in k.inputs] for k in kernels] == [["A"], ["S"], ["N"], ["N", "P"]]


def test_partition_cuts_long_fused_chains():
    """A chain of 100 single-use elementwise ops would be one fused kernel; it is cut into kernels
    of at most MAX_KERNEL_OPS ops (their machine code would otherwise grow without bound)."""
    t = te.placeholder((8,), F64, name="A")
    for i in range(100):
        t = te.compute((8,), (lambda u: lambda j: te.sin(u[j]) + 1.0)(t), name=f"s{i}")
    sizes = [len(k.ops) for k in partition([t])]
    assert sizes == [100 - 3 * MAX_KERNEL_OPS] + [MAX_KERNEL_OPS] * 3, sizes


def lstm(T: int, B: int = 3, I: int = 4, H: int = 3, dtype: str = F64):
    """An LSTM unrolled T steps with a sum-of-squares loss of the last state; its weights.  Smaller
    than tests/test_scheduled_work.py's (3 x 3 states): its blocks run serially, where TVM
    miscompiled vectorized selects of stack buffers (docs/tvm-0.27.md), which this test caught."""
    xs = [te.placeholder((B, I), dtype, name=f"x{t}") for t in range(T)]
    Wx, Wh = te.placeholder((4 * H, I), dtype, name="Wx"), te.placeholder((4 * H, H), dtype, name="Wh")
    h = c = topi.full((B, H), dtype, 0.0)
    for t in range(T):
        g = topi.add(topi.nn.dense(xs[t], Wx), topi.nn.dense(h, Wh))
        i_, f_, o_, u_ = (topi.strided_slice(g, [0, q * H], [B, (q + 1) * H]) for q in range(4))
        c = topi.add(topi.multiply(topi.sigmoid(f_), c), topi.multiply(topi.sigmoid(i_), topi.tanh(u_)))
        h = topi.multiply(topi.sigmoid(o_), topi.tanh(c))
    return topi.sum(topi.multiply(h, h)), [Wx, Wh], xs


def test_lstm_gradients_match_finite_differences():
    loss, weights, _ = lstm(3)
    check_grad(loss, weights, kernels="many")


def test_lstm_distinct_kernels_do_not_grow_with_steps():
    distinct, calls = {}, {}
    for T in (2, 4, 8):
        loss, weights, xs = lstm(T)
        m = ad.build([loss, *ad.differentiate(loss, weights)], xs + weights, kernels="many")
        distinct[T], calls[T] = len(m.kernels), sum(m.calls.values())
    assert distinct[2] <= distinct[4] == distinct[8], distinct     # T = 2 has no middle step
    assert calls[8] - calls[4] == 2 * (calls[4] - calls[2]), calls      # linear in T


def _both(outputs, inputs, *arrays):
    one = ad.build(outputs, inputs, kernels="one")(*arrays)
    many = ad.build(outputs, inputs, kernels="many")
    return one, many, many(*arrays)


def test_softmax_gradient_equals_one_primfunc_build():
    X = te.placeholder((5, 7), F64, name="X")
    Y = topi.nn.softmax(X)
    H = te.placeholder(Y.shape, F64, name="H")
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    one, many, got = _both([Y, *ad.differentiate(Y, [X], head=H)], [X, H], x, h)
    assert len(many.kernels) > 1
    for a, b in zip(got, one):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_symbolic_batch_runs_at_several_sizes():
    b = te.var("b")
    X, W = te.placeholder((b, 6), F64, name="X"), te.placeholder((4, 6), F64, name="W")
    Y = topi.nn.relu(topi.nn.dense(X, W))
    L = topi.sum(topi.multiply(Y, Y))
    m = ad.build([L, *ad.differentiate(L, [X, W])], [X, W], kernels="many")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6))
    for batch in (1, 5):
        x = rng.standard_normal((batch, 6))
        y = np.maximum(x @ w.T, 0)
        loss, dx, dw = m(x, w)
        np.testing.assert_allclose(loss, (y * y).sum(), rtol=1e-13)
        np.testing.assert_allclose(dx, (2 * y) @ w, rtol=1e-12)
        np.testing.assert_allclose(dw, (2 * y).T @ x, rtol=1e-12)


def test_interface_of_a_per_kernel_build():
    loss, weights, xs = lstm(2)
    m = ad.build([loss, *ad.differentiate(loss, weights)], xs + weights, kernels="many")
    assert all("/" in key for key in m.rules) and set(m.rules.values()) - {None}
    assert "calls per run" in m.explain() and "kernel " in ad.explain(m)
    with pytest.raises(AttributeError, match="distinct kernels, not one PrimFunc"):
        m.func
    assert "define" in m.source                       # LLVM IR of the kernels
    assert m.time(*[np.zeros([int(d) for d in t.shape]) for t in xs + weights]) > 0


def test_auto_builds_small_graphs_as_one_primfunc():
    X = te.placeholder((5, 7), F64, name="X")
    Y = topi.nn.softmax(X)
    assert len(partition([Y])) < AUTO_KERNELS
    one = ad.build(Y, [X])
    assert one.module is None and one.calls == {"main": 1} and set(one.kernels) == {"main"}
    # Six steps: at four, its first and last steps' kernels (which read the zero state, or feed
    # the loss) are a third of the kernels or more.
    loss, weights, xs = lstm(6)
    grads = ad.differentiate(loss, weights)
    parts = partition(list(grads))
    assert len(parts) >= AUTO_KERNELS and 3 * distinct(parts) <= len(parts)
    assert ad.build([loss, *grads], xs + weights).module is not None


def _scaled_consumers(n=40):
    """n row sums of sin(c·X) at n constants c, their squares summed: a gradient whose n forward
    row sums are distinct kernels; (X, dX, the expected dX at x)."""
    X = te.placeholder((4, 4), F64, name="X")
    scales = [1 + i / 100 for i in range(n)]
    sums = [topi.sum(te.compute(X.shape, (lambda c: lambda a, b: te.sin(X[a, b] * c))(c), name=f"y{i}"),
                     axis=1) for i, c in enumerate(scales)]
    (dX,) = ad.differentiate(topi.sum(functools.reduce(topi.add, [topi.multiply(s, s) for s in sums])), [X])

    def expected(x):
        return sum(2 * c * np.sin(c * x).sum(axis=1, keepdims=True) * np.cos(c * x) for c in scales)

    return X, dX, expected


def test_auto_keeps_small_distinct_kernels_in_one_primfunc():
    """Small distinct kernels: one PrimFunc compiles faster (README, the kernels table)."""
    X, dX, expected = _scaled_consumers()
    parts = partition([dX])
    assert len(parts) >= AUTO_KERNELS and 3 * distinct(parts) > len(parts)
    m = ad.build(dX, [X])
    assert m.module is None
    x = np.random.default_rng(4).uniform(-1, 1, (4, 4))
    np.testing.assert_allclose(m(x), expected(x), rtol=1e-12)


def test_auto_builds_large_graphs_per_kernel(monkeypatch):
    """The same graph counted as large (AUTO_ELEMENTS lowered to its size): per kernel, as the
    large model steps run faster (README, the kernels table)."""
    X, dX, expected = _scaled_consumers(30)
    monkeypatch.setattr(compile_module, "AUTO_ELEMENTS", 16)
    m = ad.build(dX, [X])
    assert m.module is not None and sum(m.calls.values()) >= AUTO_KERNELS
    x = np.random.default_rng(5).uniform(-1, 1, (4, 4))
    np.testing.assert_allclose(m(x), expected(x), rtol=1e-12)


def test_many_is_refused_where_the_vm_cannot_take_the_graph():
    A = te.placeholder((4,), F64, name="A")
    alpha = te.var("alpha", F64)
    Y = te.compute((4,), lambda i: A[i] * alpha, name="Y")
    with pytest.raises(ad.DifferentiationError, match="scalar parameters .* use kernels='one'"):
        ad.build(Y, [A, alpha], kernels="many")
    with pytest.raises(TypeError, match="kernels must be 'auto', 'one' or 'many'"):
        ad.build(Y, [A, alpha], kernels="per-op")


def test_a_kernel_that_does_not_compile_falls_back_alone():
    """sinh has no LLVM vector form: that kernel falls back to scalar loops, with a warning, and
    the others keep their schedules."""
    X = te.placeholder((4, 16), F64, name="X")
    S = te.compute(X.shape, lambda i, j: te.sinh(X[i, j]), name="S")
    k = te.reduce_axis((0, 16), name="k")
    R = te.compute((4,), lambda i: te.sum(S[i, k] * X[i, k], axis=k), name="R")
    H = te.placeholder((4,), F64, name="H")
    with pytest.warns(UserWarning, match="falling back to scalar loops"):
        m = ad.build([R, *ad.differentiate(R, [X], head=H)], [X, H], kernels="many")
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((4, 16)), rng.standard_normal(4)
    r, dx = m(x, h)
    np.testing.assert_allclose(r, (np.sinh(x) * x).sum(1), rtol=1e-13)
    np.testing.assert_allclose(dx, h[:, None] * (np.cosh(x) * x + np.sinh(x)), rtol=1e-13)
    assert any(rule == "vector-rows" for rule in m.rules.values()), m.explain()


def test_scatter_add_is_a_kernel_of_its_own():
    """The embedding gradient's scatter-add (an extern op, passes/scatter.py) in a per-kernel build,
    against numpy's add.at."""
    table = te.placeholder((10, 4), F64, name="table")
    ids = te.placeholder((6,), "int32", name="ids")
    E = topi.take(table, ids, axis=0)
    L = topi.sum(topi.multiply(E, E))
    (dtable,) = ad.differentiate(L, [table])
    assert isinstance(dtable.op, te.ExternOp)
    m = ad.build([L, dtable], [table, ids], kernels="many")
    assert dtable.op.name in m.kernels, list(m.kernels)
    rng = np.random.default_rng(3)
    t, i = rng.standard_normal((10, 4)), np.array([1, 3, 1, 0, 9, 3], "int32")
    loss, dt = m(t, i)
    want = np.zeros_like(t)
    np.add.at(want, i, 2 * t[i])
    np.testing.assert_allclose(loss, (t[i] ** 2).sum(), rtol=1e-13)
    np.testing.assert_allclose(dt, want, rtol=1e-13)
