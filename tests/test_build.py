"""build(): scheduled CPU gradients against unscheduled ones and numpy, the module cache, input
checks, symbolic shapes, tuning-record reuse, and CUDA code generation (no GPU needed)."""
from __future__ import annotations

import functools
import re
import time

import numpy as np
import pytest
import tvm
from tvm import te, tirx, topi

import tvm_autodiff as ad
from test_cuda import kernels_fit
from tvm_autodiff.compile import build, compile_ptx, resolve_target

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


def shape_of(t):
    return tuple(int(d) for d in t.shape)


def check(out, wrt, data, ref_fwd=None, tol=1e-4):
    """Forward and gradients (head H) built with the default schedule and unscheduled agree; the
    gradients agree with central differences of Σ H·out along a random direction."""
    head = te.placeholder(out.shape, name="H")
    grads = list(ad.differentiate(out, wrt, head=head))
    inputs = [t for t in data] + [head]
    values = [data[t] for t in data] + [rand(*shape_of(out))]
    fast = build([out, *grads], inputs)
    slow = build([out, *grads], inputs, schedule=None)
    got, ref = fast(*values), slow(*values)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    if ref_fwd is not None:
        np.testing.assert_allclose(got[0], ref_fwd, rtol=tol, atol=tol)
    loss = lambda vals: float(np.sum(fast(*vals)[0].astype("float64") * values[-1]))  # noqa: E731
    eps = 1e-2
    for t, g in zip(wrt, got[1:]):
        i = list(data).index(t)
        d = RNG.standard_normal(values[i].shape).astype("float32")
        plus, minus = list(values), list(values)
        plus[i], minus[i] = values[i] + eps * d, values[i] - eps * d
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(g * d)), numeric, rtol=2e-2, atol=2e-2)
    return got


def test_matmul():
    a, b = te.placeholder((6, 8), name="A"), te.placeholder((8, 5), name="B")
    k = te.reduce_axis((0, 8), name="k")
    c = te.compute((6, 5), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    av, bv = rand(6, 8), rand(8, 5)
    check(c, [a, b], {a: av, b: bv}, ref_fwd=av @ bv)


def test_conv2d_stride2():
    x, w = te.placeholder((2, 3, 9, 9), name="X"), te.placeholder((4, 3, 3, 3), name="W")
    y = topi.nn.conv2d(x, w, strides=2, padding=1, dilation=1)
    check(y, [x, w], {x: rand(2, 3, 9, 9), w: rand(4, 3, 3, 3)})


def test_conv2d_stride2_dilation3():
    """Regression: zero elimination emits floordiv by negative constants here, which TVM's
    simplifier mangles once loops are fused; such blocks must stay unfused."""
    x, w = te.placeholder((1, 2, 7, 7), name="X"), te.placeholder((3, 2, 2, 2), name="W")
    y = topi.nn.conv2d(x, w, strides=2, padding=1, dilation=3)
    check(y, [x, w], {x: rand(1, 2, 7, 7), w: rand(3, 2, 2, 2)})


def test_max_pool():
    x = te.placeholder((2, 3, 6, 6), name="X")
    y = topi.nn.pool2d(x, kernel=(2, 2), stride=(2, 2), dilation=(1, 1), padding=(0, 0, 0, 0),
                       pool_type="max")
    xv = RNG.permutation(216).reshape(2, 3, 6, 6).astype("float32") / 10   # no ties
    check(y, [x], {x: xv}, ref_fwd=xv.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))


def test_padded_max_pool():
    """Regression: vectorizing the argmax block with inlined padding gave wrong gradients."""
    x = te.placeholder((1, 2, 7, 7), name="X")
    y = topi.nn.pool2d(x, kernel=(3, 3), stride=(2, 2), dilation=(1, 1), padding=(1, 1, 1, 1),
                       pool_type="max")
    check(y, [x], {x: RNG.permutation(98).reshape(1, 2, 7, 7).astype("float32") / 10})


def test_softmax():
    x = te.placeholder((4, 7), name="X")
    xv = rand(4, 7)
    e = np.exp(xv - xv.max(1, keepdims=True))
    check(topi.nn.softmax(x), [x], {x: xv}, ref_fwd=e / e.sum(1, keepdims=True))


def test_layer_norm():
    x, g, b = te.placeholder((4, 16), name="X"), te.placeholder((16,), name="G"), te.placeholder((16,), name="B")
    y = topi.nn.layer_norm(x, g, b, axis=[1])
    xv, gv, bv = rand(4, 16), rand(16), rand(16)
    ref = (xv - xv.mean(1, keepdims=True)) / np.sqrt(xv.var(1, keepdims=True) + 1e-5) * gv + bv
    check(y, [x, g, b], {x: xv, g: gv, b: bv}, ref_fwd=ref, tol=1e-3)


def test_where_and_init():
    """create_prim_func drops where= and init=; build must fold them in (forward checked too)."""
    x, i0 = te.placeholder((5, 8), name="X"), te.placeholder((5,), name="I0")
    k = te.reduce_axis((0, 8), name="k")
    y = te.compute((5,), lambda i: te.sum(x[i, k] * x[i, k], axis=k, where=k < 5, init=i0[i]), name="Y")
    xv, iv = rand(5, 8), rand(5)
    check(y, [x, i0], {x: xv, i0: iv}, ref_fwd=iv + (xv[:, :5] ** 2).sum(1))


def test_variable_extent_reduction():
    """A reduction whose extent depends on an outer spatial variable (nested blocks)."""
    x = te.placeholder((6, 4), name="X")

    def prefix(i, j):
        k = te.reduce_axis((0, i + 1), name="k")
        return te.sum(x[k, j] * 2.0, axis=k)

    y = te.compute((6, 4), prefix, name="Y")
    xv = rand(6, 4)
    fast = build(y, [x])
    np.testing.assert_allclose(fast(xv), 2 * np.cumsum(xv, 0), rtol=1e-5, atol=1e-5)


def test_window_reduction_flattened():
    """A stride-1 conv's input gradient with a kernel large for its image (zero-padding the head
    would more than 4-fold it, so zero elimination keeps exact windows): reductions whose extents
    are min/max of the output index (nested blocks).  The default CPU schedule flattens them into
    padded, guarded reductions, split along the last axis into edges and a guard-free interior
    that is vectorized; every region must agree with the unscheduled build."""
    from tvm_autodiff.schedule import block_infos

    x, w = te.placeholder((2, 3, 9, 20), name="X"), te.placeholder((4, 3, 7, 6), name="W")
    y = topi.nn.conv2d(x, w, strides=1, padding=0, dilation=1)
    check(y, [x, w], {x: rand(2, 3, 9, 20), w: rand(4, 3, 7, 6)})
    head = te.placeholder(y.shape, name="H")
    (dx,) = ad.differentiate(y, [x], head=head)
    m = build(dx, [x, w, head])
    assert not any(i.has_children for i in block_infos(m.func))
    assert "T.vectorized" in m.func.script()
    # The interior and the edges were split off, and their loops scheduled by the pass.
    name = "dX_from_pad_temp_l1"   # the crop by 0 is fused into the reduction (passes/crop.py)
    assert {m.rules[name + s] for s in ("", "_lo", "_hi")} == {"prescheduled"}, m.explain()


def test_symbolic_shape_two_sizes():
    n = te.var("n")
    x = te.placeholder((n, 3), name="X")
    y = te.compute((n, 3), lambda i, j: te.exp(x[i, j]) * x[i, j], name="Y")
    dx = ad.differentiate(y, [x], head=te.compute((n, 3), lambda i, j: tirx.const(1.0), name="ones"))[0]
    m = build([y, dx], [x])
    for size in (5, 17):
        xv = rand(size, 3)
        fwd, grad = m(xv)
        np.testing.assert_allclose(fwd, np.exp(xv) * xv, rtol=1e-5)
        np.testing.assert_allclose(grad, np.exp(xv) * (1 + xv), rtol=1e-5)


def test_input_validation():
    x = te.placeholder((3, 4), name="X")
    y = te.compute((3, 4), lambda i, j: x[i, j] * 2.0, name="Y")
    m = build(y, [x])
    with pytest.raises(ValueError, match="expected 1 arrays"):
        m()
    with pytest.raises(ValueError, match="must have shape"):
        m(rand(4, 3))
    with pytest.raises(ValueError, match="must be float32"):
        m(np.zeros((3, 4), "float64"))
    with pytest.raises(ad.DifferentiationError, match="not in inputs"):
        build(y, [])
    with pytest.raises(ad.DifferentiationError, match="must be placeholders"):
        build(y, [y])
    with pytest.raises(ValueError, match="schedule must be"):
        build(te.compute((3, 4), lambda i, j: x[i, j] + 7.0, name="Z"), [x], schedule="fast")


def test_cache_hit():
    def graph():   # fresh tensors each time: the cache keys on structure, not identity
        x = te.placeholder((16, 16), name="X")
        k = te.reduce_axis((0, 16), name="k")
        return x, te.compute((16,), lambda i: te.sum(te.exp(x[i, k]), axis=k), name="S")

    x1, s1 = graph()
    first = build(s1, [x1])
    x2, s2 = graph()
    t0 = time.perf_counter()
    second = build(s2, [x2])
    assert time.perf_counter() - t0 < 0.5
    assert second.executable is first.executable
    xv = rand(16, 16)
    np.testing.assert_allclose(second(xv), np.exp(xv).sum(1), rtol=1e-5)
    assert build(s2, [x2], schedule=None).executable is not first.executable


def test_tune_reuses_database_records(tmp_path, monkeypatch):
    """A record in the work_dir database is used without tuning (tuning itself takes minutes)."""
    ms = pytest.importorskip("tvm.s_tir.meta_schedule")
    from tvm_autodiff import schedule, tuning

    x = te.placeholder((8, 8), name="X")
    y = te.compute((8, 8), lambda i, j: x[i, j] * 3.0, name="Y")
    func = te.create_prim_func([x, y])
    target = resolve_target("llvm")
    sch = tvm.s_tir.Schedule(func)
    sch.parallel(sch.get_loops(sch.get_sblock("Y"))[0])
    db = tuning.database(str(tmp_path))
    workload = db.commit_workload(tvm.IRModule({"main": func}))
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, run_secs=[1e-6], target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(func)))
    monkeypatch.setattr(ms, "tune_tir", lambda *a, **k: pytest.fail("tuned despite a record"))
    # The record is kept only where it measures faster than the default schedule: both ways.
    times = {}
    monkeypatch.setattr(tuning, "measure", lambda f, target: times["tuned" if _is_record(f) else "default"])
    times.update(tuned=1e-6, default=2e-6)
    m = build(y, [x], schedule="tune", trials=8, work_dir=str(tmp_path))
    assert set(m.rules.values()) == {"meta_schedule"}
    xv = rand(8, 8)
    np.testing.assert_allclose(m(xv), 3 * xv, rtol=1e-6)
    times.update(tuned=3e-6)
    monkeypatch.setattr(ad.compile, "_CACHE", {})      # build the same function again
    m = build(y, [x], schedule="tune", trials=8, work_dir=str(tmp_path))
    assert m.rules == {"Y": "vector-rows"}
    assert "not meta_schedule: its record takes 0.003 ms, the default 0.002 ms" in m.explain()
    np.testing.assert_allclose(m(xv), 3 * xv, rtol=1e-6)
    assert schedule.host_cores() >= 1


def _is_record(func) -> bool:
    """The recorded schedule of test_tune_reuses_database_records: its only schedule is a
    parallel outer loop (the default rules also vectorize)."""
    script = func.script()
    return "parallel" in script and "vectorized" not in script


def test_tuning_that_finds_nothing_keeps_the_default(monkeypatch):
    from tvm_autodiff import tuning

    def fail(*args, **kwargs):
        raise RuntimeError("meta_schedule found no valid schedule: every candidate failed")
    monkeypatch.setattr(tuning, "tune", fail)
    x = te.placeholder((8, 8), name="X")
    y = te.compute((8, 8), lambda i, j: x[i, j] * 5.0, name="Y")
    with pytest.warns(UserWarning, match="tuning found no schedule .*keeping the default one"):
        m = build(y, [x], schedule="tune", trials=8)
    assert m.rules == {"Y": "vector-rows"} and "not meta_schedule: meta_schedule found no" in m.explain()
    xv = rand(8, 8)
    np.testing.assert_allclose(m(xv), 5 * xv, rtol=1e-6)


def conv_net_gradient():
    """topi conv2d -> relu -> max pool -> flatten -> dense -> softmax cross-entropy, and its
    gradient w.r.t. the weights."""
    n, c, h, w, k, f = 2, 3, 8, 8, 4, 10
    x, wc = te.placeholder((n, c, h, w), name="x"), te.placeholder((k, c, 3, 3), name="wc")
    fc, b = te.placeholder((f, k * 16), name="fc"), te.placeholder((f,), name="b")
    labels = te.placeholder((n, f), name="labels")
    conv = topi.nn.conv2d(x, wc, strides=1, padding=1, dilation=1)
    pool = topi.nn.pool2d(topi.nn.relu(conv), kernel=(2, 2), stride=(2, 2), dilation=(1, 1),
                          padding=(0, 0, 0, 0), pool_type="max")
    logp = topi.nn.log_softmax(topi.nn.dense(topi.nn.flatten(pool), fc, b))
    r, q = te.reduce_axis((0, n), "r"), te.reduce_axis((0, f), "q")
    loss = te.compute((1,), lambda _: te.sum(-logp[r, q] * labels[r, q] / n, axis=[r, q]), name="loss")
    return [loss, *ad.differentiate(loss, [wc, fc, b])], [x, wc, fc, b, labels]


def test_cuda_source_compiles_and_fits_limits():
    outputs, inputs = conv_net_gradient()
    m = build(outputs, inputs, target="cuda")     # per kernel (CUDA, 24 kernels or more)
    assert str(m.target.attrs["arch"]).startswith("sm_")
    assert re.search(r"__global__ void", m.source)
    assert kernels_fit(m)
    assert len(compile_ptx(m)) > 0
    if not tvm.cuda(0).exist:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            m(*[np.zeros(shape_of(t), "float32") for t in inputs])


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA GPU")
def test_cuda_runs_like_cpu():
    outputs, inputs = conv_net_gradient()
    values = [rand(*shape_of(t)) for t in inputs]
    for a, b in zip(build(outputs, inputs, target="cuda")(*values), build(outputs, inputs)(*values)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_matmul_register_tile():
    """Dense-layer gradients (dX = H·W and dW = Hᵀ·X: the inner output axis is contiguous in the
    output and in one operand) get the register-tiled matmul rule, which accumulates in a local
    tile; values agree with numpy."""
    x, w = te.placeholder((12, 48), name="X"), te.placeholder((40, 48), name="W")
    y = topi.nn.dense(x, w)
    head = te.placeholder(y.shape, name="H")
    dx, dw = ad.differentiate(y, [x, w], head=head)
    m = build([dx, dw], [x, w, head])
    xv, wv, hv = rand(12, 48), rand(40, 48), rand(12, 40)
    gx, gw = m(xv, wv, hv)
    np.testing.assert_allclose(gx, hv @ wv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, hv.T @ xv, rtol=1e-4, atol=1e-4)
    assert m.rules == {"dX_from_T_matmul_NT": "matmul-tile", "dW_from_T_matmul_NT": "matmul-tile"}
    assert 'scope="local"' in m.func.script()


def test_matmul_expensive_factor_computed_once():
    """softmax(X·Wᵀ): the input and weight gradients are matmuls of W or X with the elementwise
    softmax gradient (exp).  That gradient is computed once per element, in a block of its own
    (both matmuls load it, so it is not inlined), and the matmuls get the register tile."""
    x, w = te.placeholder((6, 20), name="X"), te.placeholder((16, 20), name="W")
    y = topi.nn.softmax(topi.nn.dense(x, w))
    got = check(y, [x, w], {x: rand(6, 20), w: rand(16, 20)})
    assert len(got) == 3
    head = te.placeholder(y.shape, name="H")
    m = build(list(ad.differentiate(y, [x, w], head=head)), [x, w, head])
    assert m.rules["dX_from_T_matmul_NT"] == m.rules["dW_from_T_matmul_NT"] == "matmul-tile", m.explain()
    assert m.rules["dT_matmul_NT"] == "vector-rows", m.explain()


def test_matmul_factor_block():
    """A matmul whose body holds a column-invariant exp (as differentiation writes an inlined
    elementwise gradient): the factor-blocks pass computes it once per element in a block of its
    own, and the matmul gets the register tile."""
    a, b = te.placeholder((8, 32), name="A"), te.placeholder((32, 24), name="B")
    k = te.reduce_axis((0, 32), name="k")
    c = te.compute((8, 24), lambda i, j: te.sum(te.exp(a[i, k]) * b[k, j], axis=k), name="C")
    m = build(c, [a, b])
    av, bv = rand(8, 32), rand(32, 24)
    np.testing.assert_allclose(m(av, bv), np.exp(av) @ bv, rtol=1e-4, atol=1e-4)
    assert m.rules == {"C_factor": "vector-rows", "C": "matmul-tile"}, m.explain()


def test_matmul_nt_register_tile():
    """A dense layer's forward pass (both operands contiguous along the reduction) gets the
    dot-product tile rule: machine vectors of partial sums in a local buffer; values agree with
    numpy."""
    for k in (48, 20):   # 20: chunks of 5 lanes (no 8-lane divisor)
        x, w = te.placeholder((12, k), name="X"), te.placeholder((40, k), name="W")
        y = topi.nn.dense(x, w)
        m = build(y, [x, w])
        xv, wv = rand(12, k), rand(40, k)
        np.testing.assert_allclose(m(xv, wv), xv @ wv.T, rtol=1e-4, atol=1e-4)
        assert m.rules == {"T_matmul_NT": "dot-tile"}, m.explain()


def test_matmul_packed_panel():
    """A matmul whose column panel of B (all of k) overflows L1 and is reused by many row tiles:
    the register-tiled plan copies each panel contiguously once per column tile."""
    from tvm_autodiff.schedule import block_infos

    a, b = te.placeholder((32, 600), name="A"), te.placeholder((600, 256), name="B")
    k = te.reduce_axis((0, 600), name="k")
    c = te.compute((32, 256), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    m = build(c, [a, b])
    av, bv = rand(32, 600), rand(600, 256)
    np.testing.assert_allclose(m(av, bv), av @ bv, rtol=1e-4, atol=1e-3)
    assert m.rules == {"C": "matmul-tile"}
    names = [i.name for i in block_infos(m.func)]
    assert "B_global" in names, names


def test_unscheduled_build_of_small_buffers_is_right():
    """The gradient of a weight shared by four 4 x 5 dense steps, unscheduled as one PrimFunc:
    TVM's storage rewrite miscompiled it on znver3 (docs/tvm-0.27.md, "storage rewrite of
    unscheduled small buffers"), so `build` compiles unscheduled functions without it."""
    w = te.placeholder((5, 5), "float64", name="W")
    xs = [te.placeholder((4, 5), "float64", name=f"x{t}") for t in range(4)]
    loss = topi.sum(functools.reduce(topi.add, [topi.tanh(topi.nn.dense(x, w)) for x in xs]))
    (dw,) = ad.differentiate(loss, [w])
    rng = np.random.default_rng(0)
    wv, xv = rng.standard_normal((5, 5)) * 0.3, [rng.standard_normal((4, 5)) for _ in range(4)]
    expected = sum((1 - np.tanh(x @ wv.T) ** 2).T @ x for x in xv)
    np.testing.assert_allclose(build(dw, [w, *xs], schedule=None, kernels="one")(wv, *xv), expected,
                               rtol=1e-12)
