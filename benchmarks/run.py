"""Forward and gradient times of tvm_autodiff kernels next to PyTorch CPU, op by op.

    python benchmarks/run.py [--quick] [--tune --trials 64] [--timeout 300] [--ops dense,max_pool]

Needs the bench extra (torch==2.13.0, matplotlib).  Prints a table and writes
benchmarks/results/results.json and results.png.  Each op runs in a child process with a time
limit, since an unoptimized gradient can be quadratic in the tensor size: ops that exceed it are
reported as "skipped (too slow)" (with whatever was measured before).  Within a child, PyTorch and
TVM run in the same process with the same number of threads.  Times are medians of repeated runs
after warm-up, of the compiled kernel alone on preallocated tensors (no numpy conversion).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

COLUMNS = [("fwd_ms", "fwd ms"), ("grad_ms", "grad ms"), ("tuned_grad_ms", "tuned ms"),
           ("grad_per_fwd", "grad/fwd"), ("torch_fwd_ms", "torch fwd"), ("torch_bwd_ms", "torch bwd"),
           ("speedup", "torch/ours"), ("tuned_speedup", "torch/tuned")]


def _emit(**values):
    """A result line for the parent, flushed at once so it survives a later timeout."""
    print("RESULT " + json.dumps(values), flush=True)


def _median_ms(fn, self_timed=False, min_samples=7, warmup_s=0.2, sample_s=0.5):
    """Median ms of `fn()` (with `self_timed`, fn returns the seconds of the part to count).
    Warm-up and sampling run for a minimum time: first calls pay lazy initialization, and on a
    shared machine a fixed handful of samples is easily skewed."""
    def once():
        t0 = time.perf_counter()
        inner = fn()
        return inner if self_timed else time.perf_counter() - t0

    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        once()
    samples, start = [], time.perf_counter()
    while len(samples) < min_samples or (time.perf_counter() - start < sample_s and len(samples) < 200):
        samples.append(once())
    samples.sort()
    return samples[len(samples) // 2] * 1e3


def _torch(case, data, threads):
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(a) for a in data]
    labels = {case.inputs.index(t) for t in case.labels}
    with torch.no_grad():
        _emit(torch_fwd_ms=_median_ms(lambda: case.torch_fn(*tensors)))
    leaves = [t.clone().requires_grad_(i not in labels) for i, t in enumerate(tensors)]
    if case.step is not None:
        def step():   # forward + backward + SGD update, like the TE training step
            loss = case.torch_fn(*leaves)
            loss.backward()
            with torch.no_grad():
                for t in leaves:
                    if t.grad is not None:
                        t -= 0.01 * t.grad
                        t.grad = None
        _emit(torch_bwd_ms=_median_ms(step))
        return
    head = torch.randn(case.torch_fn(*leaves).shape)

    def backward():
        out = case.torch_fn(*leaves)
        t0 = time.perf_counter()
        out.backward(head)
        return time.perf_counter() - t0

    _emit(torch_bwd_ms=_median_ms(backward, self_timed=True))


def _ours(case, data, args):
    import numpy as np
    from tvm import te

    import tvm_autodiff as ad

    def timed(outputs, inputs, values, **kw):
        m = ad.build(outputs, inputs, **kw)
        return m.time(*values, number=1, repeat=7, min_repeat_ms=20) * 1e3

    _emit(fwd_ms=timed(case.out, case.inputs, data))
    if case.step is not None:
        outputs, inputs, values = case.step, case.inputs, data
    else:
        head = te.placeholder(case.out.shape, name="H")
        outputs = list(ad.differentiate(case.out, case.wrt, head=head))
        inputs = case.inputs + [head]
        values = data + [np.random.default_rng(1).standard_normal(
            [int(d) for d in case.out.shape]).astype("float32")]
    _emit(grad_ms=timed(outputs, inputs, values))
    if args.tune:
        try:
            _emit(tuned_grad_ms=timed(outputs, inputs, values, schedule="tune", trials=args.trials))
        except RuntimeError as err:   # e.g. meta_schedule finds no valid schedule at all
            _emit(tune_error=str(err).split(":")[0])


def worker(args):
    import numpy as np
    from ops import CASES

    from tvm_autodiff.schedule import host_cores

    case = CASES[args.worker](args.quick)
    rng = np.random.default_rng(0)
    data = []
    for t in case.inputs:
        shape = [int(d) for d in t.shape]
        if t in case.labels:
            data.append(np.eye(shape[1], dtype="float32")[rng.integers(0, shape[1], shape[0])])
        else:
            data.append(rng.standard_normal(shape).astype("float32"))
    _torch(case, data, host_cores())
    _ours(case, data, args)


def run_op(name, args, script=__file__):
    """Op `name` timed in a child process: `script --worker name` (run.py's worker, or another
    benchmark's with the same RESULT lines), given up after args.timeout seconds."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", name, "--trials", str(args.trials)]
    cmd += ["--quick"] * args.quick + ["--tune"] * args.tune
    row, status = {"op": name}, "ok"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        out = proc.stdout
        if proc.returncode != 0:
            status = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = "skipped (too slow)"
    for line in out.splitlines():
        if line.startswith("RESULT "):
            row.update(json.loads(line[7:]))
    if "fwd_ms" in row and "grad_ms" in row:
        row["grad_per_fwd"] = row["grad_ms"] / row["fwd_ms"]
    for ours, key in (("grad_ms", "speedup"), ("tuned_grad_ms", "tuned_speedup")):
        if ours in row and "torch_bwd_ms" in row:
            row[key] = row["torch_bwd_ms"] / row[ours]
    row["status"] = status if "tune_error" not in row else f"{status}; tuning: {row['tune_error']}"
    return row


def _fmt(v):
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def table(rows) -> str:
    head = ["op"] + [c for _, c in COLUMNS] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["op"]] + [_fmt(r.get(k)) for k, _ in COLUMNS] + [r["status"]]) + " |")
    for key, label in (("speedup", "default"), ("tuned_speedup", "tuned")):
        vals = [r[key] for r in rows if key in r]
        if vals:
            geo = math.exp(sum(math.log(v) for v in vals) / len(vals))
            lines.append(f"\ngeometric mean of PyTorch/ours ({label}, {len(vals)} ops): {geo:.3g}")
    return "\n".join(lines)


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("fwd_ms", "ours fwd"), ("grad_ms", "ours grad"), ("tuned_grad_ms", "ours grad (tuned)"),
            ("torch_fwd_ms", "torch fwd"), ("torch_bwd_ms", "torch bwd")]
    keys = [k for k in keys if any(k[0] in r for r in rows)]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.1), 4))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        ax.bar([x + i * width for x in range(len(rows))], [r.get(key, 0) for r in rows], width, label=label)
    _save_bar_chart(fig, ax, [r["op"] for r in rows], width, "ms (median, log scale; missing bar = skipped)",
                    path, rotation=30)


def _save_bar_chart(fig, ax, labels, width, ylabel, path, rotation):
    """Group labels under bars of `width` per series, a log time axis, a legend; save as PNG."""
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=rotation, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--tune", action="store_true", help="also time meta_schedule-tuned gradients")
    p.add_argument("--trials", type=int, default=64, help="tuning trials per op")
    p.add_argument("--timeout", type=float, default=300, help="seconds per op before it is skipped")
    p.add_argument("--ops", help="comma-separated subset of ops")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from ops import CASES

    names = args.ops.split(",") if args.ops else list(CASES)
    rows = []
    for name in names:
        t0 = time.time()
        rows.append(run_op(name, args))
        print(f"{name}: {rows[-1]['status']} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"quick": args.quick, "tune": args.tune, "rows": rows}, f, indent=1)
    chart(rows, os.path.join(args.out, "results.png"))


if __name__ == "__main__":
    main()
