"""Work of gradients with and without zero elimination, against the forward pass.

    python benchmarks/work_ratios.py            # prints a Markdown table, writes results/work_ratios.json

Work is `tvm_autodiff.work`: loop-body executions of the generated kernels, deterministic (no
timing).  Forward work counts the op and the head `full_like(out, 1)`; gradient work counts every
gradient tensor with respect to the listed inputs, and whatever they compute.  The time column is
how long `differentiate` (front end plus passes) takes.  The "symbolic batch" rows differentiate
the graph of the row above them with the batch a `te.var` and count the work with the batch bound
to the same size (`ad.work(..., bindings=...)`): zero elimination does not depend on it.
"""
from __future__ import annotations

import json
import pathlib
import time

from tvm import te, topi

import tvm_autodiff as ad


def _ph(shape, name):
    return te.placeholder(shape, "float32", name=name)


def cases():
    """(name, output, inputs, bindings of the symbolic dimensions)."""
    X, W = _ph((1, 2, 10, 10), "X"), _ph((3, 2, 3, 3), "W")
    for s, d in ((1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 3)):
        yield f"conv2d stride {s} dilation {d}", topi.nn.conv2d(X, W, s, 1, d), [X, W], {}
    Xb = _ph((te.var("b"), 2, 10, 10), "X")
    yield "conv2d stride 1 dilation 1, symbolic batch b (b = 1)", topi.nn.conv2d(Xb, W, 1, 1, 1), [Xb, W], {"b": 1}
    for s in (1, 2, 3):
        k = max(2, s)
        for kind in ("max", "avg"):
            yield f"{kind}-pool {k}x{k}/{s}", topi.nn.pool2d(X, (k, k), (s, s), (1, 1), (0, 0, 0, 0), kind), [X], {}
    Y, Wd = _ph((8, 10), "Y"), _ph((6, 10), "Wd")
    yield "softmax", topi.nn.softmax(Y), [Y], {}
    yield "log_softmax", topi.nn.log_softmax(Y), [Y], {}
    yield "dense", topi.nn.dense(Y, Wd), [Y, Wd], {}
    Yb = _ph((te.var("b"), 10), "Y")
    yield "dense, symbolic batch b (b = 8)", topi.nn.dense(Yb, Wd), [Yb, Wd], {"b": 8}
    yield "flatten", topi.nn.flatten(X), [X], {}
    yield "reshape (1,2,10,10)->(4,50)", topi.reshape(X, (4, 50)), [X], {}
    A = _ph((10, 10), "A")
    yield "A + A^T (10x10)", te.compute((10, 10), lambda i, j: A[i, j] + A[j, i], name="S"), [A], {}
    E, I = _ph((50, 8), "E"), te.placeholder((30,), "int32", name="I")
    yield "take (embedding 50x8, 30 ids)", topi.take(E, I, axis=0, mode="clip"), [E], {}
    G, B = _ph((10,), "G"), _ph((10,), "B")
    yield "layer_norm", topi.nn.layer_norm(Y, G, B, axis=[1]), [Y, G, B], {}


def measure(name, out, inputs, bindings) -> dict:
    head = te.placeholder(out.shape, str(out.dtype), name="head")
    naive = ad.differentiate(out, inputs, head=head, optimize=False)
    start = time.perf_counter()
    opt = ad.differentiate(out, inputs, head=head)
    seconds = time.perf_counter() - start
    fwd = ad.work([out, topi.full_like(out, 1.0)], bindings).iterations
    return {"op": name, "forward": fwd, "naive": ad.work(naive, bindings).iterations,
            "eliminated": ad.work(opt, bindings).iterations, "differentiate_s": seconds}


def main():
    rows = [measure(*case) for case in cases()]
    print("| op | forward work | naive gradient | eliminated gradient | eliminated / forward | naive / forward | differentiate (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['op']} | {r['forward']} | {r['naive']} | {r['eliminated']} | "
              f"{r['eliminated'] / r['forward']:.2f} | {r['naive'] / r['forward']:.0f} | {r['differentiate_s']:.2f} |")
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "work_ratios.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
