"""The schedule rules (`tvm_autodiff.schedule`): the hardware model read off the target, rules that
decline with a reason before they transform anything, the driver's fallbacks (a warning for
TVM's refusal, an exception for a bug in a rule), and the rule recorded for each block.  Every
build also checks its numbers against numpy."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te, topi

import tvm_autodiff as ad
from tvm_autodiff.schedule import (CPU_RULES, CpuConfig, Decline, GpuConfig, ScheduleRule, block_infos,
                                   cpu_target)
from tvm_autodiff.schedule.cpu_matmul import DotTile, MatmulTile
from tvm_autodiff.schedule.cpu_rows import ParallelOuter
from tvm_autodiff.schedule.rule import schedule_block

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


def llvm(mcpu, **attrs):
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 3, **attrs})


@pytest.mark.parametrize("target, vector_bytes", [
    (llvm("x86-64"), 16),             # SSE2 only
    (llvm("haswell"), 32),            # AVX2
    (llvm("skylake-avx512"), 32),     # AVX-512, capped at the measured 256-bit tiles
    (llvm("cortex-a72", mtriple="aarch64-linux-gnu"), 16),   # NEON
])
def test_cpu_config_from_target(target, vector_bytes):
    config = CpuConfig.of(target)
    assert (config.vector_bytes, config.cores) == (vector_bytes, 3)
    assert config.lanes("float32") == vector_bytes // 4
    assert config.row_lanes("float64") == 2 * vector_bytes // 8
    assert CpuConfig.of(target, vectorize=False).lanes("float32") == 0
    wide = 64 if "avx512" in str(target) else vector_bytes   # the uncapped vector
    assert config.wide_lanes("float32") == wide // 4


def test_gpu_config_from_target():
    config = GpuConfig.of(tvm.target.Target({"kind": "cuda", "arch": "sm_80", "max_num_threads": 128}))
    assert (config.threads, config.max_threads) == (128, 128)


def test_narrow_target_gets_narrow_vectors():
    """The same matmul on an SSE2-only target gets 4-lane float32 vectors in its register tile
    (and a 12-lane write-back of the 3-vector tile row), 8 lanes on this AVX host; values agree."""
    a, b = te.placeholder((16, 32), name="A"), te.placeholder((32, 24), name="B")
    k = te.reduce_axis((0, 32), name="k")
    c = te.compute((16, 24), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    av, bv = rand(16, 32), rand(32, 24)
    host = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    if not tvm.target.codegen.target_has_features("avx", llvm(host)):
        pytest.skip("the host has no AVX")
    for mcpu, lanes in (("x86-64", 4), (host, 8)):
        m = ad.build(c, [a, b], target={"kind": "llvm", "mcpu": mcpu})
        np.testing.assert_allclose(m(av, bv), av @ bv, rtol=1e-4, atol=1e-4)
        assert m.rules == {"C": "matmul-tile"}
        assert set(re.findall(r"T\.vectorized\((\d+)\)", m.func.script())) == {str(lanes), str(3 * lanes)}


def _schedule_of(tensors, inputs):
    func = te.create_prim_func(inputs + tensors)
    return s_tir.Schedule(func), {i.name: i for i in block_infos(func)}


def test_rule_declines_with_reason_before_transforming():
    """A matmul whose body has an exp: the matmul rule declines ("heavy body") and the schedule
    is untouched; a plain matmul gets a plan."""
    a, b = te.placeholder((8, 16), name="A"), te.placeholder((16, 8), name="B")
    k = te.reduce_axis((0, 16), name="k")
    heavy = te.compute((8, 8), lambda i, j: te.sum(te.exp(a[i, k]) * b[k, j], axis=k), name="C")
    sch, infos = _schedule_of([heavy], [a, b])
    before = sch.mod["main"]
    config = CpuConfig.of(cpu_target())
    verdict = MatmulTile().plan(sch, infos["C"], config)
    assert isinstance(verdict, Decline) and "heavy body" in verdict.reason
    assert tvm_ffi.structural_equal(sch.mod["main"], before)
    plain = te.compute((8, 8), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    sch, infos = _schedule_of([plain], [a, b])
    assert not isinstance(MatmulTile().plan(sch, infos["C"], config), Decline)


class _Refused(ScheduleRule):
    """Plans, then asks TVM for something it refuses (inlining an output block)."""
    name = "refused"

    def plan(self, sch, info, config):
        return True

    def apply(self, sch, info, plan, config):
        sch.compute_inline(sch.get_sblock(info.name))


class _Buggy(ScheduleRule):
    name = "buggy"

    def plan(self, sch, info, config):
        return {}["missing"]

    def apply(self, sch, info, plan, config):
        raise AssertionError("never planned")


def test_tvm_refusal_warns_and_falls_back():
    x = te.placeholder((8192,), name="X")
    y = te.compute((8192,), lambda i: x[i] * 2.0, name="Y")
    sch, infos = _schedule_of([y], [x])
    config = CpuConfig.of(cpu_target())
    with pytest.warns(UserWarning, match="block 'Y': rule refused planned but TVM refused it"):
        sch, choice = schedule_block(sch, infos["Y"], [_Refused(), ParallelOuter(fuse=True)], config)
    assert choice.rule == "parallel-outer"
    assert choice.declined[0][0] == "refused" and choice.declined[0][1].startswith("ScheduleError")
    assert "T.parallel" in sch.mod["main"].script()
    m = tvm.compile(sch.mod["main"], target="llvm")
    xv = rand(8192)
    out = tvm.runtime.tensor(np.zeros(8192, "float32"))
    m(tvm.runtime.tensor(xv), out)
    np.testing.assert_allclose(out.numpy(), 2 * xv)


def test_bug_in_a_rule_propagates():
    x = te.placeholder((8,), name="X")
    y = te.compute((8,), lambda i: x[i] + 1.0, name="Y")
    sch, infos = _schedule_of([y], [x])
    with pytest.raises(KeyError, match="missing"):
        schedule_block(sch, infos["Y"], [_Buggy(), *CPU_RULES], CpuConfig.of(cpu_target()))


def test_compile_fallback_warns():
    """LLVM has no vector form of sinh: the vectorized default schedule does not compile, and
    build() says so and falls back to scalar loops, with the right values."""
    x = te.placeholder((4, 16), name="X")
    y = te.compute((4, 16), lambda i, j: te.sinh(x[i, j]), name="Y")
    with pytest.warns(UserWarning, match="falling back to scalar loops"):
        m = ad.build(y, [x])
    xv = rand(4, 16)
    np.testing.assert_allclose(m(xv), np.sinh(xv), rtol=1e-5)
    assert "T.vectorized" not in m.func.script()


def test_explain_names_each_block_and_reasons():
    x, w = te.placeholder((6, 20), name="X"), te.placeholder((16, 20), name="W")
    y = topi.nn.softmax(topi.nn.dense(x, w))
    m = ad.build(y, [x, w])
    xv, wv = rand(6, 20), rand(16, 20)
    z = xv @ wv.T
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(m(xv, wv), ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)
    text = m.explain()
    assert ad.explain(m) == text + "\n"
    for block, rule in m.rules.items():
        assert f"{block}: {rule}" in text
    assert m.rules["T_matmul_NT"] == "dot-tile"
    assert "not matmul-tile: the inner spatial loop is not contiguous" in text
    assert ad.build(y, [x, w], schedule=None).rules["T_matmul_NT"] is None


def test_cuda_rules_bind_every_block():
    """On CUDA every top-level block is scheduled by a dlight rule or the thread-binding rule."""
    x, w = te.placeholder((8, 32), name="X"), te.placeholder((16, 32), name="W")
    y = topi.nn.relu(topi.nn.dense(x, w))
    head = te.placeholder(y.shape, name="H")
    m = ad.build(list(ad.differentiate(y, [x, w], head=head)), [x, w, head], target="cuda")
    assert m.rules and all(r == "inline" or r.startswith(("dlight.", "thread-bind")) for r in m.rules.values()), m.explain()
    assert "__global__" in m.source
    if tvm.cuda(0).exist:
        xv, wv, hv = rand(8, 32), rand(16, 32), rand(8, 16)
        ref = ad.build(list(ad.differentiate(y, [x, w], head=head)), [x, w, head])(xv, wv, hv)
        for a, b in zip(m(xv, wv, hv), ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim, vectorized", [(128, True), (130, False)])
def test_scatter_add_runs_parallel_chunks(dim, vectorized):
    """The embedding gradient's scatter-add (passes/scatter.py, scheduled by
    tir/annotated_loops.py): chunks of 64 columns in parallel, each walking contiguous elements
    of a row (vector lanes when the width is a multiple of 64; guarded otherwise); against numpy's
    add.at, with repeated ids."""
    table = te.placeholder((20, dim), name="table")
    ids = te.placeholder((3, 5), "int32", name="ids")
    E = topi.take(table, ids, axis=0)
    H = te.placeholder(E.shape, name="H")
    (dt,) = ad.differentiate(E, [table], head=H)
    m = ad.build(dt, [ids, H])
    script = m.func.script()
    assert "T.parallel(2)" in script or "T.parallel(3)" in script, script
    assert ("T.vectorized(64)" in script) == vectorized, script
    rng = np.random.default_rng(0)
    i = rng.integers(0, 20, (3, 5)).astype("int32")
    i[0, :2] = 7
    h = rng.standard_normal((3, 5, dim)).astype("float32")
    want = np.zeros((20, dim), "float32")
    np.add.at(want, i, h)
    np.testing.assert_allclose(m(i, h), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n, parallel", [(16, False), (256, True)])
def test_small_blocks_run_serially(n, parallel):
    """A parallel loop costs more than it saves below MIN_PARALLEL_VOLUME iterations
    (schedule/target.py): a 16x16 elementwise block stays serial, a 256x256 one is parallel."""
    from tvm_autodiff.schedule.target import MIN_PARALLEL_VOLUME
    assert 16 * 16 < MIN_PARALLEL_VOLUME <= 256 * 256
    x = te.placeholder((n, n), name="X")
    m = ad.build(te.compute((n, n), lambda i, j: te.exp(x[i, j]), name="E"), [x])
    assert ("T.parallel" in m.func.script()) == parallel
    xv = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    np.testing.assert_allclose(m(xv), np.exp(xv), rtol=1e-6)


def test_vectorized_select_of_a_stack_buffer():
    """docs/tvm-0.27.md, "vectorized selects of stack buffers": TVM miscompiles the repro; the
    row rule leaves such a serial block scalar, and the build is right."""
    A0 = te.placeholder((3, 3), "float64", name="A0")
    A = te.compute((3, 3), lambda i, j: te.exp(A0[i, j]), name="A")
    A2 = te.compute((3, 3), lambda i, j: A[i, j] * A[i, j], name="A2")     # A is read twice: kept
    C = te.compute((3, 4), lambda i, j: tvm.tirx.Select(2 <= j, A2[i, tvm.tirx.max(j - 2, 0)] + A[i, 0],
                                                        tvm.tirx.const(0.0, "float64")), name="C")
    sch = s_tir.Schedule(te.create_prim_func([A0, C]))
    sch.vectorize(sch.get_loops(sch.get_sblock("C"))[1])
    raw = tvm.compile(sch.mod["main"], ad.compile.resolve_target("llvm"))
    a0 = np.arange(9.0).reshape(3, 3) / 9
    a = np.exp(a0)
    want = np.zeros((3, 4))
    want[:, 2:] = a[:, :2] ** 2 + a[:, :1]
    got = tvm.runtime.tensor(np.zeros((3, 4)))
    raw(tvm.runtime.tensor(a0), got)
    assert not np.allclose(got.numpy(), want)          # TVM's behaviour, as documented
    m = ad.build(C, [A0])
    assert "T.vectorized" not in m.func.script() or "T.parallel" in m.func.script()
    np.testing.assert_allclose(m(a0), want, rtol=1e-13)


def test_strided_window_is_padded_to_its_largest_extent():
    """A stride-2 3x3 conv's input gradient has windows of 1 or 2 taps per axis; the flattened
    window (tir/flatten_windows.py) takes the exact largest extent, 2 (the analyzer's bound, 4,
    made 16 taps of 4 real ones): 2 x 2 x 2 channels x 162 outputs, against 576 unscheduled.
    (`differentiate` splits such a window by phase, passes/phase.py; the unsplit elimination is
    built here.)"""
    from tvm_autodiff.ir.graph import rebuild
    from tvm_autodiff.passes.eliminate import eliminate_reduction

    X = te.placeholder((1, 2, 9, 9), name="X")
    W = te.placeholder((2, 2, 3, 3), name="W")
    Y = topi.nn.conv2d(X, W, 2, 0, 1)
    H = te.placeholder(Y.shape, name="H")
    (naive,) = ad.differentiate(Y, [X], head=H, optimize=False)
    (dX,), _ = rebuild([naive], lambda op, bodies: eliminate_reduction(op, bodies, phases=False))
    m = ad.build(dX, [W, H])
    work = ad.scheduled_work(m)
    update = next(v for k, v in work.per_block.items() if k.endswith("_update"))
    assert update[0] == 2 * 2 * 2 * 162
    rng = np.random.default_rng(0)
    w, h = rng.standard_normal((2, 2, 3, 3)).astype("float32"), rng.standard_normal((1, 2, 4, 4)).astype("float32")
    np.testing.assert_allclose(m(w, h), ad.build(dX, [W, H], schedule=None)(w, h), rtol=1e-5, atol=1e-6)


def test_convolution_gets_register_tiles():
    """A 3x3 convolution and both its gradients: the forward and the input gradient get the matmul
    tile with the output channels as its rows (the image rows index the input, as the columns
    do), and the weight gradient, whose columns would be the kernel width (3), the dot-product
    tile over the two channel axes.  16 columns are whole vectors, so the rows stay unflattened
    (passes/pitch.py).  Values against numpy."""
    x, w = te.placeholder((2, 8, 16, 16), name="x"), te.placeholder((16, 8, 3, 3), name="w")
    y = topi.nn.conv2d(x, w, 1, 1, 1)
    head = te.placeholder(y.shape, name="head")
    dx, dw = ad.differentiate(y, [x, w], head)
    m = ad.build([y, dx, dw], [x, w, head])
    xv, wv, hv = rand(2, 8, 16, 16), rand(16, 8, 3, 3), rand(2, 16, 16, 16)
    xp = np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.stack([np.stack([xp[:, :, a:a + 16, b:b + 16] for b in range(3)], -1) for a in range(3)], -2)
    want_y = np.einsum("ncyxab,fcab->nfyx", windows, wv)
    want_dw = np.einsum("ncyxab,nfyx->fcab", windows, hv)
    hp = np.pad(hv, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want_dx = sum(np.einsum("nfyx,fc->ncyx", hp[:, :, 2 - a:18 - a, 2 - b:18 - b], wv[:, :, a, b])
                  for a in range(3) for b in range(3))
    for got, want in zip(m(xv, wv, hv), (want_y, want_dx, want_dw)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    rules = m.rules
    assert rules["conv2d_nchw"] == "matmul-tile", m.explain()
    assert rules["dx_from_pad_temp"] == "matmul-tile", m.explain()   # the crop is fused (passes/crop.py)
    assert rules["dw_from_conv2d_nchw"] == "dot-tile", m.explain()


def test_dot_tile_blocks_columns_that_overflow_l2():
    """A dense layer whose weights (1024 x 128 floats, 512 KB) exceed the L2 block: the dot
    tile's 256 column tiles of 4 go in blocks of 128 (4 x 128 x 4 bytes per tile, 256 KB in
    all), outside the row tiles; weights of 64 KB take one block.  Values against numpy."""
    config = CpuConfig.of(cpu_target())
    for n, block in ((1024, 128), (128, 32)):
        x, w = te.placeholder((16, 128), name="X"), te.placeholder((n, 128), name="W")
        y = topi.nn.dense(x, w)
        sch, infos = _schedule_of([y], [x, w])
        plan = DotTile().plan(sch, infos["T_matmul_NT"], config)
        assert (plan.cols, plan.block) == (4, block), plan
        m = ad.build(y, [x, w])
        assert m.rules["T_matmul_NT"] == "dot-tile", m.explain()
        xv, wv = rand(16, 128), rand(n, 128)
        np.testing.assert_allclose(m(xv, wv), xv @ wv.T, rtol=1e-4, atol=1e-4)


def test_matmul_tile_takes_the_widest_vector_where_it_divides_the_columns():
    """On an AVX-512 target a GEMM with 256 columns gets 16-lane (512-bit) vectors, and a 3x3
    convolution over 28-wide rows keeps 256-bit ones (lanes of at most two machine vectors, 14);
    packed B panels start at MIN_PACKED_TILES = 4 column tiles (the GEMM's 256 / 64).  Values
    against numpy, built for this host."""
    config = CpuConfig.of(llvm("skylake-avx512"))
    a, b = te.placeholder((64, 512), name="A"), te.placeholder((512, 256), name="B")
    c = topi.matmul(a, b)
    sch, infos = _schedule_of([c], [a, b])
    plan = MatmulTile().plan(sch, infos["T_matmul"], config)
    assert (plan.lanes, plan.cols, plan.packed is not None) == (16, 64, True), plan
    x, w = te.placeholder((2, 8, 28, 28), name="x"), te.placeholder((16, 8, 3, 3), name="w")
    y = topi.nn.conv2d(x, w, 1, 1, 1)
    sch, infos = _schedule_of([y], [x, w])
    plan = MatmulTile().plan(sch, infos["conv2d_nchw"], config)
    assert (plan.lanes, plan.cols) == (14, 28), plan
    m = ad.build(c, [a, b])
    assert m.rules["T_matmul"] == "matmul-tile", m.explain()
    av, bv = rand(64, 512), rand(512, 256)
    np.testing.assert_allclose(m(av, bv), av @ bv, rtol=1e-4, atol=1e-4)


def test_dot_tile_chunks_are_whole_vectors_where_one_divides_the_reduction():
    """The dot tile's chunk of the reduction: the machine vector (8 float32 lanes on 256-bit
    tiles) where it divides, else a power of two (28 -> 4, not 7, which LLVM loads in pieces),
    else the widest divisor of at least 4 (10 -> 5).  The weight gradient of a 3x3 convolution
    over 28-wide rows takes chunks of 4; values against numpy."""
    from tvm_autodiff.schedule.cpu_matmul import _dot_chunk
    assert [_dot_chunk(d, 8) for d in (32, 28, 12, 10, 14, 6, 3)] == [8, 4, 4, 5, 7, 6, None]
    x, w = te.placeholder((2, 4, 28, 28), name="x"), te.placeholder((8, 4, 3, 3), name="w")
    y = topi.nn.conv2d(x, w, 1, 1, 1)
    head = te.placeholder(y.shape, name="head")
    (dw,) = ad.differentiate(y, [w], head)
    sch, infos = _schedule_of([dw], [x, head])
    plan = DotTile().plan(sch, infos["dw_from_conv2d_nchw"], CpuConfig.of(cpu_target()))
    assert plan.chunk == 4, plan
    m = ad.build(dw, [x, head])
    assert m.rules["dw_from_conv2d_nchw"] == "dot-tile", m.explain()
    xv, hv = rand(2, 4, 28, 28), rand(2, 8, 28, 28)
    xp = np.pad(xv, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.stack([np.stack([np.einsum("ncyx,nfyx->fc", xp[:, :, a:a + 28, b:b + 28], hv)
                               for b in range(3)], -1) for a in range(3)], -2)
    np.testing.assert_allclose(m(xv, hv), want, rtol=1e-4, atol=1e-3)
