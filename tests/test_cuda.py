"""CUDA code for every gradient of the op table (tests/op_table.py), on machines without a GPU too.

Each case's optimized gradients (`op_table.differentiated`, shared with tests/test_passes.py) are
built for target="cuda": every block must get a GPU schedule (a host loop over device memory
raises in `build`), the kernels must fit the thread limits, and a sample of them goes through
nvcc.  Where a GPU is present, that sample also runs and matches the CPU build.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from tvm import te, topi

import tvm_autodiff as ad
from gradcheck import make_values
from op_table import IDS, differentiated
from tvm_autodiff.ir.graph import placeholders
from tvm_autodiff.schedule import gpu_limits_ok

GPU = tvm.cuda(0).exist
# nvcc takes seconds per module, so every NVCC_EVERY-th case is compiled to PTX.
NVCC_EVERY = 12


def single_threaded_loops(source: str) -> list:
    """The kernels of CUDA C `source` that loop without using threadIdx: each of their blocks
    runs its loops in one thread."""
    kernels = source.split('extern "C" __global__')[1:]
    return [k.split("(")[0] for k in kernels if "{" in k and "threadIdx" not in k
            and "for (" in k[k.index("{"):]]


def kernels_fit(m) -> bool:
    """Whether every kernel of build `m` (its one PrimFunc, or each kernel of a per-kernel build)
    fits the GPU's launch limits."""
    return all(gpu_limits_ok(k.func, m.target, max_threads_per_block=1024) for k in m.kernels.values())


@pytest.mark.parametrize("cid", IDS)
def test_gradient_builds_for_cuda(cid):
    c = differentiated(cid)
    params = placeholders([c.out]) + [c.head]
    m = ad.build(c.opt, params, target="cuda")
    assert "__global__ void" in m.source, cid
    assert not single_threaded_loops(m.source), cid
    assert kernels_fit(m)
    if IDS.index(cid) % NVCC_EVERY == 0 and shutil.which("nvcc"):
        assert len(ad.compile_ptx(m)) > 0
    if GPU and IDS.index(cid) % NVCC_EVERY == 0:
        values = make_values(params, np.random.default_rng(0))
        for a, b in zip(m(*values), ad.build(c.opt, params)(*values)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)



def test_scatter_add_runs_in_parallel_on_cuda():
    """The embedding gradient's scatter-add on CUDA: chunks of 64 columns on blocks, a column per
    thread, each adding over the ids in turn (no two threads write one element, so no atomics;
    tir/annotated_loops.py).  The source shows the binding; the PTX compiles; on a GPU the values
    are numpy's add.at."""
    table = te.placeholder((20, 130), name="table")
    ids = te.placeholder((3, 5), "int32", name="ids")
    E = topi.take(table, ids, axis=0)
    H = te.placeholder(E.shape, name="H")
    (dt,) = ad.differentiate(E, [table], head=H)
    m = ad.build(dt, [ids, H], target="cuda")
    assert m.rules == {"dtable_from_T_take": "annotated-loops"}
    assert "__launch_bounds__(64)" in m.source and "threadIdx.x" in m.source
    assert kernels_fit(m)
    if shutil.which("nvcc"):
        assert len(ad.compile_ptx(m)) > 0
    if tvm.cuda(0).exist:
        rng = np.random.default_rng(0)
        i = rng.integers(0, 20, (3, 5)).astype("int32")
        h = rng.standard_normal((3, 5, 130)).astype("float32")
        want = np.zeros((20, 130), "float32")
        np.add.at(want, i, h)
        np.testing.assert_allclose(m(i, h), want, rtol=1e-5, atol=1e-5)


def test_dlight_assertion_on_two_reads_of_one_buffer_is_a_decline():
    """A sum over a product of two slices of one tensor: dlight's Reduction rule fails an
    assertion in its read analysis (docs/tvm-0.27.md, "dlight asserts on two reads of one
    buffer"); the schedule records that as the rule's decline and the next rule schedules the
    function with threads."""
    x, y = te.placeholder((4, 32), name="X"), te.placeholder((4, 8), name="Y")
    a = topi.sigmoid(topi.strided_slice(x, [0, 24], [4, 32]))
    b = topi.sigmoid(topi.strided_slice(x, [0, 8], [4, 16]))
    m = ad.build(topi.sum(topi.multiply(topi.multiply(a, b), y)), [x, y], target="cuda")
    assert "not dlight.Reduction: dlight's read analysis failed an assertion" in m.explain()
    assert not single_threaded_loops(m.source)
    if GPU:
        xv, yv = np.random.default_rng(0).standard_normal((2, 4, 32)).astype("float32")
        want = (1 / (1 + np.exp(-xv[:, 24:])) / (1 + np.exp(-xv[:, 8:16])) * yv[:, :8]).sum()
        np.testing.assert_allclose(m(xv, yv[:, :8].copy()), want, rtol=1e-5)
