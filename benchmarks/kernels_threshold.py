"""Where a per-kernel build starts to pay: build time and step time of one PrimFunc
(`build(kernels="one")`) against one kernel per op (`kernels="many"`), for MLP training graphs of
growing depth (ReLU dense layers, sum-of-squares loss, all weight gradients; batch 32, width 128)
and the LeNet step of benchmarks/ops.py.  With the kernel counts it prints (all and distinct),
these chose `AUTO_KERNELS` and the distinct-kernel rule in tvm_autodiff/compile.py.

    python benchmarks/kernels_threshold.py [mlp1 mlp2 mlp4 mlp6 mlp8 mlp12 lenet]

Prints one line per graph: kernels (distinct), then build s and best-of-3 step ms for each mode.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from tvm import te, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.reductions import fold_where_init
from tvm_autodiff.kernels import distinct, partition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops import lenet_step  # noqa: E402  (benchmarks/ is not a package)


def mlp(depth: int, n: int = 32, d: int = 128):
    x = te.placeholder((n, d), name="x")
    ws = [te.placeholder((d, d), name=f"w{i}") for i in range(depth)]
    h = x
    for w in ws:
        h = topi.nn.relu(topi.nn.dense(h, w))
    loss = topi.sum(topi.multiply(h, h))
    return [loss, *ad.differentiate(loss, ws)], [x, *ws]


def graph(name: str):
    if name == "lenet":
        case = lenet_step(False)
        return case.step, case.inputs
    return mlp(int(name[len("mlp"):]))


def main(names):
    rng = np.random.default_rng(0)
    for name in names:
        outputs, inputs = graph(name)
        parts = partition(fold_where_init(outputs)[0])
        row = [name, f"{len(parts)} kernels, {distinct(parts)} distinct"]
        for mode in ("one", "many"):
            start = time.perf_counter()
            m = ad.build(outputs, inputs, kernels=mode)
            built = time.perf_counter() - start
            values = [(rng.random([int(d) for d in t.shape]) * 0.1).astype("float32") for t in inputs]
            step = min(m.time(*values) for _ in range(3))
            row += [f"{mode}: build {built:.2f} s, step {step * 1e3:.3f} ms"]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["mlp1", "mlp2", "mlp4", "mlp6", "mlp8", "mlp12", "lenet"])
