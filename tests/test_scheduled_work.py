"""Scheduled work: what the kernel runs after scheduling (`ad.scheduled_work`), not only what the
graph asks for before it (`ad.work`).  A schedule that inlines a producer into a consumer reading
it several times recomputes it; `work` cannot see that, the scheduled count can.

- exact counts on small kernels, against formulas written out here;
- an LSTM cell unrolled T = 1, 2, 4, 8 steps, loss and gradients with respect to the weights,
  built as one PrimFunc and as kernels: the default schedule's work stays within 1.5x of the
  unscheduled work, and grows linearly in T (no step's values are recomputed in a later step),
  with the gradients checked against finite differences of a numpy forward;
- a wide graph, one tensor with 25 to 200 consumers summed into one loss: its gradient builds
  with the default schedule in a worker process under the memory limit of tests/test_robustness.py
  and a time limit, its blocks and scheduled work grow linearly in the width, and the gradient
  matches numpy.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tvm import s_tir, te, topi

import tvm_autodiff as ad
from test_robustness import WORKER_ENV, _died, _limit_memory

# -- exact counts -----------------------------------------------------------------------------------


def test_elementwise_chain_inlined_keeps_its_ops():
    """B = 2A, C = B + 1 on (4, 16): unscheduled, two loop nests of 64 iterations with one op
    each; scheduled, B is inlined into C: one nest of 64 iterations doing both ops."""
    A = te.placeholder((4, 16), "float32", name="A")
    B = te.compute(A.shape, lambda i, j: A[i, j] * 2.0, name="B")
    C = te.compute(A.shape, lambda i, j: B[i, j] + 1.0, name="C")
    before = ad.scheduled_work(te.create_prim_func([A, C]))
    assert (before.iterations, before.ops) == (2 * 64, 2 * 64)
    assert before.per_block == {"B": (64, 64), "C": (64, 64)}
    m = ad.build(C, [A])
    assert m.rules["B"] == "inline"
    after = ad.scheduled_work(m)
    assert (after.iterations, after.ops) == (64, 2 * 64)
    assert ad.work(C).iterations == before.iterations


def test_recomputation_shows_in_ops():
    """P = A·A + 1 (2 ops) read twice by Q = P·P (1 op): materialized, 64·(2 + 1) ops; inlined by
    hand, Q evaluates P's expression at both loads, 64·(2·2 + 1).  The default schedule keeps P."""
    A = te.placeholder((4, 16), "float32", name="A")
    P = te.compute(A.shape, lambda i, j: A[i, j] * A[i, j] + 1.0, name="P")
    Q = te.compute(A.shape, lambda i, j: P[i, j] * P[i, j], name="Q")
    func = te.create_prim_func([A, Q])
    assert ad.scheduled_work(func).ops == 64 * 3
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("P"))
    inlined = ad.scheduled_work(sch.mod["main"])
    assert (inlined.iterations, inlined.ops) == (64, 64 * 5)
    m = ad.build(Q, [A])
    assert m.rules["P"] != "inline"
    assert ad.scheduled_work(m).ops == 64 * 3


def test_broadcast_producer_is_not_recomputed():
    """P = 2A + 1 over (4,) read by C = P[i]·B[i, j] over (4, 16): inlined, C would evaluate P's
    2 ops in each of its 64 iterations (64·3 ops); materialized, 4·2 + 64·1.  A copy
    (R = A[i]) is still inlined into a broadcast: repeating a load computes nothing."""
    A = te.placeholder((4,), "float32", name="A")
    B = te.placeholder((4, 16), "float32", name="B")
    P = te.compute((4,), lambda i: A[i] * 2.0 + 1.0, name="P")
    R = te.compute((4,), lambda i: A[i], name="R")
    C = te.compute((4, 16), lambda i, j: P[i] * B[i, j] + R[i], name="C")
    m = ad.build(C, [A, B])
    assert m.rules["P"] != "inline" and m.rules["R"] == "inline", m.explain()
    assert ad.scheduled_work(m).ops == 4 * 2 + 64 * 2
    assert ad.scheduled_work(te.create_prim_func([A, B, C])).ops == 4 * 2 + 64 * 2


def test_avg_pool_gradient_is_not_recomputed():
    """The adjoint of an average pool divides by the window size of each output; that divisor
    tensor is read under every window position of the input's adjoint.  Inlined, the default
    schedule evaluated it once per read: 21,792 ops against 3,440 unscheduled."""
    X = te.placeholder((1, 2, 9, 9), "float64", name="X")
    Y = topi.nn.pool2d(X, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "avg")
    head = te.placeholder(Y.shape, "float64", name="H")
    outputs = [Y, *ad.differentiate(Y, [X], head=head)]
    m = ad.build(outputs, [X, head])
    assert ad.scheduled_work(m).ops <= ad.scheduled_work(unscheduled(outputs, [X, head])).ops
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((1, 2, 9, 9)), rng.standard_normal((1, 2, 5, 5))
    y, dx = m(x, h)
    # topi counts the padding in the divisor (count_include_pad): every window divides by 9.
    padded, expect = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), np.zeros((1, 2, 11, 11))
    for r, c in np.ndindex(5, 5):
        np.testing.assert_allclose(y[..., r, c], padded[..., 2 * r:2 * r + 3, 2 * c:2 * c + 3].sum((2, 3)) / 9)
        expect[..., 2 * r:2 * r + 3, 2 * c:2 * c + 3] += h[..., r, c, None, None] / 9
    np.testing.assert_allclose(dx, expect[..., 1:-1, 1:-1], rtol=1e-12)


def test_triangular_reduction_and_separate_init():
    """S[i] = Σ_{k <= i} x[k], n = 10: Σ_i (i + 1) = n(n + 1)/2 additions.  The default schedule
    writes the init as its own block (n iterations, no op), which the unscheduled count (like
    `work`) leaves out."""
    n = 10
    x = te.placeholder((n,), "float32", name="x")

    def prefix(i):
        k = te.reduce_axis((0, i + 1), name="k")
        return te.sum(x[k], axis=k)

    S = te.compute((n,), prefix, name="S")
    before = ad.scheduled_work(te.create_prim_func([x, S]))
    assert (before.iterations, before.ops) == (n * (n + 1) // 2, n * (n + 1) // 2)
    assert ad.work(S).iterations == before.iterations
    after = ad.scheduled_work(ad.build(S, [x]))
    assert after.per_block["S_update"] == (n * (n + 1) // 2, n * (n + 1) // 2)
    assert after.per_block["S_init"] == (n, 0)


def test_symbolic_extents_need_bindings():
    """z = 3y + 1 over a symbolic n: the count is refused with the binding to pass; with it, n
    iterations of 2 ops."""
    n = te.var("n")
    y = te.placeholder((n,), "float32", name="y")
    z = te.compute((n,), lambda i: y[i] * 3.0 + 1.0, name="z")
    m = ad.build(z, [y], schedule=None)
    with pytest.raises(ad.DifferentiationError, match=r"symbolic dimensions n; pass bindings=\{'n': <int>\}"):
        ad.scheduled_work(m)
    got = ad.scheduled_work(m, bindings={"n": 10})
    assert (got.iterations, got.ops) == (10, 20)
    assert ad.scheduled_work(m, bindings={n: 7}).ops == 14
    with pytest.raises(TypeError, match=r"scheduled_work\(\) kernel must be a Compiled"):
        ad.scheduled_work(z)


# -- an unrolled recurrence ---------------------------------------------------------------------------

BATCH, INPUT, HIDDEN = 4, 8, 8


def lstm(steps: int, dtype: str = "float64"):
    """An LSTM cell (topi dense, sigmoid and tanh gates, gate order i, f, o, g) unrolled `steps`
    times from zero state; loss = Σ h_T².  Returns ([loss, dWx, dWh, db], [x_1..x_T, Wx, Wh, b])."""
    xs = [te.placeholder((BATCH, INPUT), dtype, name=f"x{t}") for t in range(steps)]
    wx = te.placeholder((4 * HIDDEN, INPUT), dtype, name="Wx")
    wh = te.placeholder((4 * HIDDEN, HIDDEN), dtype, name="Wh")
    b = te.placeholder((4 * HIDDEN,), dtype, name="b")
    h = te.compute((BATCH, HIDDEN), lambda i, j: te.const(0, dtype), name="h0")
    c = te.compute((BATCH, HIDDEN), lambda i, j: te.const(0, dtype), name="c0")

    def gate(g, n):
        return topi.strided_slice(g, [0, n * HIDDEN], [BATCH, (n + 1) * HIDDEN])

    for x in xs:
        g = topi.add(topi.nn.dense(x, wx, b), topi.nn.dense(h, wh))
        c = topi.add(topi.multiply(topi.sigmoid(gate(g, 1)), c),
                     topi.multiply(topi.sigmoid(gate(g, 0)), topi.tanh(gate(g, 3))))
        h = topi.multiply(topi.sigmoid(gate(g, 2)), topi.tanh(c))
    loss = topi.sum(topi.multiply(h, h))
    return [loss, *ad.differentiate(loss, [wx, wh, b])], [*xs, wx, wh, b]


def lstm_numpy(xs, wx, wh, b):
    """The loss of `lstm` in numpy."""
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))   # noqa: E731
    h = c = np.zeros((BATCH, HIDDEN))
    for x in xs:
        g = x @ wx.T + b + h @ wh.T
        i, f, o, u = (g[:, n * HIDDEN:(n + 1) * HIDDEN] for n in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(u)
        h = sigmoid(o) * np.tanh(c)
    return np.sum(h * h)


def finite_differences(f, arrays: list, index: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of f(*arrays) with respect to arrays[index]."""
    grad = np.zeros_like(arrays[index])
    for pos in np.ndindex(grad.shape):
        up, down = [a.copy() for a in arrays], [a.copy() for a in arrays]
        up[index][pos] += eps
        down[index][pos] -= eps
        grad[pos] = (f(*up) - f(*down)) / (2 * eps)
    return grad


def unscheduled(outputs, inputs):
    """The PrimFunc that `build` schedules (create_prim_func of the graph), for its counts."""
    return te.create_prim_func(inputs + [t for t in outputs if t not in inputs])


@pytest.mark.parametrize("kernels", ["one", "auto"])
def test_unrolled_lstm_scheduled_work_is_linear_and_not_recomputed(kernels):
    """As one PrimFunc, the inline rule sees every step at once: it must not inline a step's values
    into later steps.  As kernels (the default build of T >= 2), each kernel is scheduled alone and
    run once per call; the total must stay the same."""
    rng = np.random.default_rng(0)
    counts = {}
    for steps in (1, 2, 4, 8):
        outputs, inputs = lstm(steps)
        m = ad.build(outputs, inputs, kernels=kernels)
        got = ad.scheduled_work(m)
        before = ad.scheduled_work(unscheduled(outputs, inputs))
        # Inlining removes loop nests but must not evaluate any value twice.
        assert got.iterations <= 1.5 * ad.work(outputs).iterations, (steps, got, m.explain())
        assert got.ops <= 1.5 * before.ops, (steps, got.ops, before.ops, m.explain())
        counts[steps] = got
        if steps == 2:
            values = [0.5 * rng.standard_normal([int(d) for d in t.shape]) for t in inputs]
            loss, *grads = m(*values)
            np.testing.assert_allclose(loss, lstm_numpy(values[:steps], *values[steps:]), rtol=1e-12)
            forward = lambda *a: lstm_numpy(a[:steps], *a[steps:])   # noqa: E731
            for n, grad in enumerate(grads):
                np.testing.assert_allclose(grad, finite_differences(forward, values, steps + n),
                                           rtol=1e-6, atol=1e-8)
    # Linear in T: each step adds the same work (a quadratic schedule would double the increment
    # per doubling of T).  From T = 2 on, each weight gradient is one merged sum over the steps
    # (passes/merge_sums.py), whose loop iterations stay the same as T grows (its ops grow), so
    # the iterations are compared from T = 2.
    for field, steps in (("iterations", (2, 4)), ("ops", (1, 2, 4))):
        per_step = {t: (getattr(counts[2 * t], field) - getattr(counts[t], field)) / t for t in steps}
        assert max(per_step.values()) <= 1.1 * min(per_step.values()), (field, per_step)


def test_unrolled_lstm_on_cuda_is_built_per_kernel_and_linear():
    """On CUDA, dlight schedules a whole function at once and inlines every injective block, so
    one PrimFunc of an unrolled recurrence recomputed each step's chain in every later step (at
    T = 4 with batch 4, hidden 8: a 1.8 MB CUDA source, built in 275 s).  Per kernel, as "auto"
    builds it from T = 4, each kernel is scheduled alone: each step adds the same work and the
    same kernels, and every kernel binds threads.  (dlight pads small matmuls to its tiles, so the
    work is not compared with the unscheduled work here.  The values run only on a GPU:
    tests/test_cuda.py, benchmarks/gpu_check.py.)"""
    from test_cuda import single_threaded_loops
    counts, distinct = {}, {}
    for steps in (1, 2, 4, 8):
        outputs, inputs = lstm(steps, "float32")
        m = ad.build(outputs, inputs, target="cuda", kernels="many" if steps < 4 else "auto")
        assert m.calls is not None, steps
        assert not single_threaded_loops(m.source), steps
        counts[steps], distinct[steps] = ad.scheduled_work(m), len(m.kernels)
    assert distinct[4] == distinct[8], distinct
    for field in ("iterations", "ops"):
        per_step = {t: (getattr(counts[2 * t], field) - getattr(counts[t], field)) / t for t in (1, 2, 4)}
        assert max(per_step.values()) <= 1.1 * min(per_step.values()), (field, per_step)


# -- a wide graph -------------------------------------------------------------------------------------

WIDTHS = (25, 50, 100, 200)
WIDE_TIMEOUT = 300   # seconds for all widths in the worker; they take about 10 s together


def wide(width: int):
    """X (16, 16) with `width` consumers y_i = sin(c_i X) (i even) or exp(c_i X) (i odd),
    c_i = 1 + i/100, summed by a chain of adds into loss = Σ Σ_i y_i; returns (X, loss, dX/dloss
    as a function of x in numpy)."""
    X = te.placeholder((16, 16), "float64", name="X")
    scales = [1.0 + i / 100 for i in range(width)]
    terms = [_term(X, i, c) for i, c in enumerate(scales)]
    loss = topi.sum(functools.reduce(topi.add, terms))

    def reference(x):
        return sum(c * (np.cos(c * x) if i % 2 == 0 else np.exp(c * x)) for i, c in enumerate(scales))

    return X, loss, reference


def _term(X, i: int, c: float):
    """y_i of `wide`: one consumer of X."""
    f = te.sin if i % 2 == 0 else te.exp
    return te.compute(X.shape, lambda a, b: f(X[a, b] * c), name=f"y{i}")


def wide_measures() -> dict:
    """Per width: the scheduled kernel's blocks (loop-body leaves), its scheduled work
    (iterations and ops) and the unscheduled ops; raises if the gradient differs from numpy.
    One PrimFunc, where the inline rules see all the consumers at once (a per-kernel build
    materializes the tensors between kernels whatever the rules do)."""
    x = np.random.default_rng(1).uniform(-1, 1, (16, 16))
    out = {}
    for width in WIDTHS:
        X, loss, reference = wide(width)
        grad = ad.differentiate(loss, [X])
        m = ad.build(grad, [X], kernels="one")
        np.testing.assert_allclose(m(x)[0], reference(x), rtol=1e-12)
        got = ad.scheduled_work(m)
        out[width] = {"blocks": len(got.per_block), "iterations": got.iterations, "ops": got.ops,
                      "unscheduled_ops": ad.scheduled_work(unscheduled(grad, [X])).ops}
    return out


def test_wide_graph_builds_linearly():
    """The gradient of a tensor with 200 consumers once exceeded Python's recursion limit in zero
    elimination (after time quadratic in the width); it must build, in a worker process under
    a memory and time limit, to blocks and work linear in the width, without recomputation."""
    proc = subprocess.run([sys.executable, __file__, "wide"], capture_output=True, text=True,
                          timeout=WIDE_TIMEOUT, preexec_fn=_limit_memory, env={**os.environ, **WORKER_ENV})
    assert proc.returncode == 0, _died(proc.returncode, proc.stderr)
    measures = {int(w): m for w, m in json.loads(proc.stdout.splitlines()[-1]).items()}
    first, second = WIDTHS[:2]
    for key in ("blocks", "iterations", "ops"):
        # At most linear: no width above the straight line through the first two, extended.
        slope = (measures[second][key] - measures[first][key]) / (second - first)
        for width in WIDTHS[2:]:
            line = measures[first][key] + slope * (width - first)
            assert measures[width][key] <= 1.25 * line, (key, measures)
    for width, m in measures.items():
        assert m["ops"] <= 1.5 * m["unscheduled_ops"], (width, m)


if __name__ == "__main__":
    if sys.argv[1:] == ["wide"]:
        print(json.dumps(wide_measures()))
