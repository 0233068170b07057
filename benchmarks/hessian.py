"""Full Hessians: tvm_autodiff (`ad.hessian`, compiled with `ad.build`) next to PyTorch CPU, the
comparison of docs/prior-art.md, "Hessians of tensor expressions".

    python benchmarks/hessian.py [--quick] [--timeout 300] [--mem-gb 12] [--problems lr,mf,mlp]

Needs the bench extra (torch==2.13.0, matplotlib).  Problems (float32 throughout):

- lr:  logistic regression L(w) = Σ softplus(X w) − y·(X w), X (2000, 1000): Hessian 1000 × 1000;
- mf:  matrix factorization L(U) = ‖T − U Vᵀ‖², T (1000, 1000), rank 10: Hessian w.r.t. U of shape
       (1000, 10, 1000, 10), 1e8 elements = 400 MB in float32.  PyTorch's vectorized variants
       would batch 10^4 copies of a 1000 × 1000 intermediate (40 GB), so smaller sizes run too
       (200 and 400), and each variant's time at 1000 is extrapolated from them where it could not
       be measured (the exponent is fitted from the two smaller sizes, and the row says so);
- mlp: the first layer W1 (32, 64) of L = Σ softplus(W2 tanh(W1 x + b1)) − y·z2, x (128, 64),
       10 outputs: Hessian (32, 64, 32, 64).

Variants: "ours" (forward + Hessian in one `ad.build` module, default schedule, timed by TVM's
time_evaluator on prepared tensors, like benchmarks/run.py), "ours_tuned" (the same with
`schedule="tune"` and `--trials`; only when asked for with --variants), and PyTorch's
`torch.autograd.functional.hessian` with defaults ("torch"), with `vectorize=True`
("torch_vec"), and `torch.func.hessian` ("torch_func").  Every (problem, size, variant) runs in
its own child process with a time limit (`--timeout`) and an address-space limit (`--mem-gb`), so a
variant that is too slow or runs out of memory is reported as such.  PyTorch uses as many threads
as TVM (`host_cores()`).  Times are medians after a warm-up call (variants slower than 2 s per call:
the median of 3 calls after the warm-up, or the one call that fit).  A "check" child compares our
Hessian with torch's at the smallest size of each problem.

Writes benchmarks/results/hessian.json and hessian.png and prints a table.
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

from run import _emit, _fmt, _median_ms, _save_bar_chart  # noqa: E402  (shared with the op benchmark)

VARIANTS = ["ours", "ours_tuned", "torch", "torch_vec", "torch_func"]
TORCH = ["torch", "torch_vec", "torch_func"]
LABELS = {"ours": "ours", "ours_tuned": "ours tuned", "torch": "torch default",
          "torch_vec": "torch vectorize=True", "torch_func": "torch.func.hessian"}

# problem -> list of sizes (full run), first one also used for the correctness check
SIZES = {
    "lr": [(2000, 1000)],
    "mf": [(200, 200, 10), (400, 400, 10), (1000, 1000, 10)],
    "mlp": [(128, 64, 32, 10)],
}
QUICK_SIZES = {
    "lr": [(200, 100)],
    "mf": [(50, 50, 4), (100, 100, 4)],
    "mlp": [(16, 8, 8, 4)],
}
# The size whose time is extrapolated when a variant cannot run it (problem -> size).
EXTRAPOLATE = {"mf": (1000, 1000, 10)}


# -- the problems, in TE and in PyTorch ---------------------------------------------------------------


def te_problem(name, size, dtype="float32"):
    """(loss L, placeholders in call order, the Hessian's input)."""
    from tvm import te, tirx

    def ph(shape, n):
        return te.placeholder(shape, dtype, name=n)

    one = tirx.const(1.0, dtype)
    if name == "lr":
        n, d = size
        X, y, w = ph((n, d), "X"), ph((n,), "y"), ph((d,), "w")
        k = te.reduce_axis((0, d), name="k")
        z = te.compute((n,), lambda i: te.sum(X[i, k] * w[k], axis=k), name="z")
        loss = te.compute((n,), lambda i: te.log(one + te.exp(z[i])) - y[i] * z[i], name="loss")
        r = te.reduce_axis((0, n), name="r")
        return te.compute((), lambda: te.sum(loss[r], axis=r), name="L"), [X, y, w], w
    if name == "mf":
        m, n, rank = size
        T, U, V = ph((m, n), "T"), ph((m, rank), "U"), ph((n, rank), "V")
        k = te.reduce_axis((0, rank), name="k")
        P = te.compute((m, n), lambda i, j: te.sum(U[i, k] * V[j, k], axis=k), name="P")
        E = te.compute((m, n), lambda i, j: T[i, j] - P[i, j], name="E")
        a, b = te.reduce_axis((0, m), name="a"), te.reduce_axis((0, n), name="b")
        return te.compute((), lambda: te.sum(E[a, b] * E[a, b], axis=[a, b]), name="L"), [T, U, V], U
    if name == "mlp":
        n, d, h, c = size
        x, W1, b1, W2, y = ph((n, d), "x"), ph((h, d), "W1"), ph((h,), "b1"), ph((c, h), "W2"), ph((n, c), "y")
        kd = te.reduce_axis((0, d), name="kd")
        xw = te.compute((n, h), lambda i, j: te.sum(x[i, kd] * W1[j, kd], axis=kd), name="xw")
        a1 = te.compute((n, h), lambda i, j: te.tanh(xw[i, j] + b1[j]), name="a1")
        kh = te.reduce_axis((0, h), name="kh")
        z2 = te.compute((n, c), lambda i, j: te.sum(a1[i, kh] * W2[j, kh], axis=kh), name="z2")
        loss = te.compute((n, c), lambda i, j: te.log(one + te.exp(z2[i, j])) - y[i, j] * z2[i, j], name="loss")
        ri, rj = te.reduce_axis((0, n), name="ri"), te.reduce_axis((0, c), name="rj")
        return te.compute((), lambda: te.sum(loss[ri, rj], axis=[ri, rj]), name="L"), [x, W1, b1, W2, y], W1
    raise KeyError(name)


def torch_problem(name, data):
    """(f(x) -> scalar loss, x) with the other inputs bound, for torch's hessian functions."""
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(a) for a in data]
    if name == "lr":
        X, y, w = t
        return (lambda w: (F.softplus(X @ w) - y * (X @ w)).sum()), w
    if name == "mf":
        T, U, V = t
        return (lambda U: ((T - U @ V.T) ** 2).sum()), U
    if name == "mlp":
        x, W1, b1, W2, y = t

        def f(W1):
            z2 = torch.tanh(x @ W1.T + b1) @ W2.T
            return (F.softplus(z2) - y * z2).sum()
        return f, W1
    raise KeyError(name)


def make_data(name, size, dtype="float32"):
    import numpy as np

    _, inputs, _ = te_problem(name, size, dtype)
    rng = np.random.default_rng(0)
    data = []
    for p in inputs:
        shape = [int(s) for s in p.shape]
        if p.name == "y":
            data.append(rng.integers(0, 2, shape).astype(dtype))
        elif name == "lr" and p.name == "X":
            data.append((rng.standard_normal(shape) / math.sqrt(shape[1])).astype(dtype))
        else:
            data.append((rng.standard_normal(shape) * 0.5).astype(dtype))
    return data


# -- one child process per measurement ---------------------------------------------------------------


def _cores() -> int:
    """tvm_autodiff.schedule.host_cores() (TVM's num-cores), without importing the package in the
    PyTorch children."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _timed_torch(fn):
    """Median ms of fn(): a warm-up call first; slow calls (> 2 s) get 3 samples at most."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    _emit(first_call_ms=first * 1e3)
    if first > 2.0:
        return _median_ms(fn, min_samples=3 if first < 20 else 1, warmup_s=0, sample_s=0)
    return _median_ms(fn)


def worker(args):
    import resource

    limit = int(args.mem_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    name, size, variant = args.worker, tuple(json.loads(args.size)), args.variant
    threads = _cores()
    data = make_data(name, size)
    if variant in ("ours", "ours_tuned", "check"):
        import tvm_autodiff as ad

        L, inputs, x = te_problem(name, size)
        t0 = time.perf_counter()
        H = ad.hessian(L, x)
        _emit(diff_s=time.perf_counter() - t0)
        t0 = time.perf_counter()
        tuned = variant == "ours_tuned"
        mod = ad.build([L, H], inputs, schedule="tune" if tuned else "default", trials=args.trials)
        _emit(build_s=time.perf_counter() - t0, work=ad.work([L, H]).iterations)
        if variant != "check":
            _emit(ms=mod.time(*data, number=1, repeat=7, min_repeat_ms=20) * 1e3)
            return
        import numpy as np
        import torch

        torch.set_num_threads(threads)
        ours = mod(*data)[1]
        f, xt = torch_problem(name, [a.astype("float64") for a in data])
        ref = torch.autograd.functional.hessian(f, xt).numpy()
        err = float(np.max(np.abs(ours - ref)) / max(1e-30, float(np.max(np.abs(ref)))))
        _emit(max_rel_err=err)
        return
    import torch

    torch.set_num_threads(threads)
    f, xt = torch_problem(name, data)
    if variant == "torch":
        fn = lambda: torch.autograd.functional.hessian(f, xt)  # noqa: E731
    elif variant == "torch_vec":
        fn = lambda: torch.autograd.functional.hessian(f, xt, vectorize=True)  # noqa: E731
    elif variant == "torch_func":
        hf = torch.func.hessian(f)
        fn = lambda: hf(xt)  # noqa: E731
    else:
        raise KeyError(variant)
    _emit(ms=_timed_torch(fn))


def run_one(name, size, variant, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--size", json.dumps(list(size)),
           "--variant", variant, "--mem-gb", str(args.mem_gb), "--trials", str(args.trials)]
    row, status = {"problem": name, "size": list(size), "variant": variant}, "ok"
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        out = proc.stdout
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines() or ["?"]
            oom = any(s in proc.stderr for s in ("out of memory", "MemoryError", "std::bad_alloc",
                                                 "DefaultCPUAllocator", "Cannot allocate"))
            status = f"out of memory (> {args.mem_gb:g} GB)" if oom else "failed"
            row["error"] = err[-1][:300]
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"timeout ({args.timeout:.0f} s)"
    for line in out.splitlines():
        if line.startswith("RESULT "):
            row.update(json.loads(line[7:]))
    row["status"], row["wall_s"] = status, round(time.time() - t0, 1)
    return row


def extrapolate(rows):
    """For EXTRAPOLATE sizes a variant did not finish: fit t ∝ m^p on its two largest measured
    sizes of that problem and predict."""
    out = []
    for name, target in EXTRAPOLATE.items():
        for v in VARIANTS:
            got = [r for r in rows if r["problem"] == name and r["variant"] == v]
            if any(tuple(r["size"]) == target and "ms" in r for r in got):
                continue
            pts = sorted((r["size"][0], r["ms"]) for r in got if "ms" in r and tuple(r["size"]) != target)
            if len(pts) < 2:
                continue
            (m1, t1), (m2, t2) = pts[-2:]
            p = math.log(t2 / t1) / math.log(m2 / m1)
            out.append({"problem": name, "size": list(target), "variant": v, "ms": t2 * (target[0] / m2) ** p,
                        "status": f"extrapolated (t ∝ m^{p:.2f} from m={m1},{m2})", "extrapolated": True})
    return out


# -- report ------------------------------------------------------------------------------------------


def _keys(rows) -> list:
    """The (problem, size) pairs of rows, in first-seen order."""
    return list(dict.fromkeys((r["problem"], tuple(r["size"])) for r in rows))


def table(rows, checks) -> str:
    keys = _keys(rows)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    ours = [v for v in ("ours", "ours_tuned") if v in variants]
    head = ["problem", "size", "H elements"] + [LABELS[v] + " ms" for v in variants] + \
        [f"torch default/{LABELS[o]}" for o in ours] + [f"fastest torch/{LABELS[o]}" for o in ours]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for name, size in keys:
        cells, ms = [], {}
        for v in variants:
            rs = [r for r in rows if r["problem"] == name and tuple(r["size"]) == size and r["variant"] == v]
            run = next((r for r in rs if not r.get("extrapolated")), None)
            extra = next((r for r in rs if r.get("extrapolated")), None)
            if run and "ms" in run:
                ms[v] = run["ms"]
                cells.append(f"{run['ms']:.4g}")
            elif extra:
                ms[v] = extra["ms"]
                cells.append(f"~{extra['ms']:.4g}*")
                notes.append(f"* {name} {list(size)} {LABELS[v]}: {run['status'] if run else ''}; {extra['status']}")
            else:
                cells.append(run["status"] if run else "-")
        torch_ms = [ms[v] for v in TORCH if v in ms]
        sp = lambda a, o: _fmt(a / ms[o]) + "×" if o in ms else "-"  # noqa: E731
        cells += [sp(ms["torch"], o) if "torch" in ms else "-" for o in ours]
        cells += [sp(min(torch_ms), o) if torch_ms else "-" for o in ours]
        hsize = _hsize(name, size)
        lines.append("| " + " | ".join([name, "×".join(map(str, size)), f"{hsize:.3g}"] + cells) + " |")
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(notes)
    for c in checks:
        text += (f"\ncheck {c['problem']} {c['size']}: max |ours − torch (float64)| / max |H| = "
                 f"{_fmt(c.get('max_rel_err'))} ({c['status']})")
    return text


def _hsize(name, size):
    if name == "lr":
        return size[1] ** 2
    if name == "mf":
        return (size[0] * size[2]) ** 2
    return (size[1] * size[2]) ** 2


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _keys(rows)
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 1.4), 4))
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        vals, hatch = [], []
        for name, size in keys:
            r = next((r for r in rows if r["problem"] == name and tuple(r["size"]) == size
                      and r["variant"] == v and "ms" in r), None)
            vals.append(r["ms"] if r else 0)
            hatch.append(bool(r and r.get("extrapolated")))
        bars = ax.bar([x + i * width for x in range(len(keys))], vals, width, label=LABELS[v])
        for b, h in zip(bars, hatch):
            if h:
                b.set_hatch("//")
                b.set_alpha(0.5)
    _save_bar_chart(fig, ax, [f"{n} {'×'.join(map(str, s))}" for n, s in keys], width,
                    "ms per full Hessian (median; hatched = extrapolated)", path, rotation=20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--timeout", type=float, default=300, help="seconds per (problem, size, variant)")
    p.add_argument("--mem-gb", type=float, default=12, help="address-space limit per child, GiB")
    p.add_argument("--problems", default="lr,mf,mlp", help="comma-separated subset of lr,mf,mlp")
    p.add_argument("--variants", default="ours,torch,torch_vec,torch_func",
                   help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--trials", type=int, default=64, help="meta_schedule trials for ours_tuned")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    sizes = QUICK_SIZES if args.quick else SIZES
    variants = args.variants.split(",")
    rows, checks = [], []
    for name in args.problems.split(","):
        checks.append(run_one(name, sizes[name][0], "check", args))
        print(f"{name} check: {checks[-1].get('max_rel_err')} {checks[-1]['status']}", file=sys.stderr, flush=True)
        for size in sizes[name]:
            for v in variants:
                rows.append(run_one(name, size, v, args))
                r = rows[-1]
                print(f"{name} {list(size)} {v}: {_fmt(r.get('ms'))} ms, {r['status']} ({r['wall_s']} s)",
                      file=sys.stderr, flush=True)
    if not args.quick:
        rows += extrapolate(rows)
    text = table(rows, checks)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hessian.json"), "w") as f:
        json.dump({"quick": args.quick, "threads": _cores(), "timeout_s": args.timeout,
                   "mem_gb": args.mem_gb, "rows": rows, "checks": checks, "table": text}, f, indent=1)
    try:
        chart(rows, os.path.join(args.out, "hessian.png"))
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)


if __name__ == "__main__":
    main()
