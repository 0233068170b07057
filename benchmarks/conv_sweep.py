"""Conv2d sweep (issue 11): our forward and gradient times next to PyTorch CPU, and the gradient's
cost in forwards, over stride {1, 2, 3} x kernel {1, 3, 5} x even and odd image sizes.

    python benchmarks/conv_sweep.py [--quick] [--points s2_k3_odd,...] [--timeout 300]

A point `s{stride}_k{kernel}_{even|odd}` is an NCHW float32 conv2d of X (8, 16, H, H), H = 32 or 33,
by W (16, 16, k, k) with padding k // 2 (--quick: X (1, 2, 8 or 9, 8 or 9), W (3, 2, k, k)).  The
gradient is that of X and W given a head H.  Each point runs in a child process with a time limit
and is timed as benchmarks/run.py times its ops (its `_torch` and `_ours`; PyTorch on
`host_cores()` threads).  In quick mode each child first checks our forward and gradients against
PyTorch's float64 autograd.  Prints a markdown table, the number of points whose grad/fwd exceeds
the target of 3 and the largest grad/fwd, and writes benchmarks/results/conv_sweep.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ops  # noqa: E402  (benchmarks/ is not a package)
import run  # noqa: E402

TARGET = 3.0   # issue 11: wall-clock grad/fwd at most this on every point
COLUMNS = [("fwd_ms", "fwd ms"), ("grad_ms", "grad ms"), ("grad_per_fwd", "grad/fwd"),
           ("torch_fwd_ms", "torch fwd"), ("torch_bwd_ms", "torch bwd"),
           ("speedup", "torch_bwd/ours_grad")]


def _point(stride, kernel, odd):
    def case(quick):
        size = (8 if quick else 32) + odd
        xs, ws = ((1, 2, size, size), (3, 2, kernel, kernel)) if quick else \
            ((8, 16, size, size), (16, 16, kernel, kernel))
        # quick=False: ops._conv's own quick mode would replace these shapes by its (2, 3, 12, 12).
        return ops._conv(False, xs, ws, stride, kernel // 2)
    return case


POINTS = {f"s{s}_k{k}_{'odd' if odd else 'even'}": _point(s, k, odd)
          for s in (1, 2, 3) for k in (1, 3, 5) for odd in (0, 1)}


def inputs(case, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in case.inputs]


def check(case, data, rtol=1e-4, atol=1e-4):
    """Our conv output and gradients of X and W for a random head against PyTorch's float64
    autograd on the same data; raises AssertionError on a mismatch."""
    import numpy as np
    import torch
    from tvm import te

    import tvm_autodiff as ad

    head = te.placeholder(case.out.shape, name="H")
    h = np.random.default_rng(1).standard_normal([int(d) for d in case.out.shape]).astype("float32")
    grads = list(ad.differentiate(case.out, case.wrt, head=head))
    out, *ours = ad.build([case.out, *grads], case.inputs + [head])(*data, h)
    leaves = [torch.from_numpy(a).double().requires_grad_() for a in data]
    ref = case.torch_fn(*leaves)
    ref.backward(torch.from_numpy(h).double())
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")
    for t, got, leaf in zip(case.wrt, ours, leaves):
        np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=rtol, atol=atol, err_msg="d" + t.name)


def worker(args):
    from tvm_autodiff.schedule import host_cores

    case = POINTS[args.worker](args.quick)
    data = inputs(case)
    if args.quick:   # tiny shapes: the check costs one more build, no more
        check(case, data)
    run._torch(case, data, host_cores())
    run._ours(case, data, args)


def table(rows) -> str:
    head = ["point"] + [c for _, c in COLUMNS] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["op"]] + [run._fmt(r.get(k)) for k, _ in COLUMNS] + [r["status"]]) + " |")
    return "\n".join(lines)


def summary(rows) -> dict:
    ratios = {r["op"]: r["grad_per_fwd"] for r in rows if "grad_per_fwd" in r}
    return {"target": TARGET, "measured": len(ratios),
            "over_target": {n: v for n, v in ratios.items() if v > TARGET},
            "max_grad_per_fwd": max(ratios.values(), default=None)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, and a correctness check first")
    p.add_argument("--points", help="comma-separated subset of the points, e.g. s2_k3_odd,s1_k1_even")
    p.add_argument("--timeout", type=float, default=300, help="seconds per point before it is skipped")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--trials", type=int, default=0, help=argparse.SUPPRESS)   # run.run_op passes it
    args = p.parse_args()
    args.tune = False   # read by run.run_op and run._ours; the sweep times the default schedule
    if args.worker:
        return worker(args)
    names = args.points.split(",") if args.points else list(POINTS)
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        p.error(f"unknown points {unknown}; the points are {', '.join(POINTS)}")
    rows = []
    for name in names:
        t0 = time.time()
        rows.append(run.run_op(name, args, script=__file__))
        print(f"{name}: {rows[-1]['status']} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    result = summary(rows)
    print(table(rows))
    worst = result["max_grad_per_fwd"]
    print(f"\npoints with grad/fwd > {TARGET:g}: {len(result['over_target'])} of {result['measured']}; "
          f"max grad/fwd: {run._fmt(worst)}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "conv_sweep.json"), "w") as f:
        json.dump({"quick": args.quick, **result, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
