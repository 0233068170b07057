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

import tvm_autodiff as ad
from gradcheck import make_values
from op_table import IDS, differentiated
from tvm_autodiff.ir.graph import placeholders
from tvm_autodiff.schedule import gpu_limits_ok

GPU = tvm.cuda(0).exist
# nvcc takes seconds per module, so every NVCC_EVERY-th case is compiled to PTX.
NVCC_EVERY = 12


@pytest.mark.parametrize("cid", IDS)
def test_gradient_builds_for_cuda(cid):
    c = differentiated(cid)
    params = placeholders([c.out]) + [c.head]
    m = ad.build(c.opt, params, target="cuda")
    assert "__global__ void" in m.source, cid
    assert gpu_limits_ok(m.func, m.target, max_threads_per_block=1024)
    if IDS.index(cid) % NVCC_EVERY == 0 and shutil.which("nvcc"):
        assert len(ad.compile_ptx(m)) > 0
    if GPU and IDS.index(cid) % NVCC_EVERY == 0:
        values = make_values(params, np.random.default_rng(0))
        for a, b in zip(m(*values), ad.build(c.opt, params)(*values)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

