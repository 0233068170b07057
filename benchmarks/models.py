"""One training step of real models (issue 11): tvm_autodiff next to PyTorch CPU.

    python benchmarks/models.py [--quick] [--models gpt,resnet,lstm,mobilenet,lenet,bilateral]
                                [--tune --trials 64] [--timeout 900] [--kernels one|many|auto]

Needs the bench extra (torch==2.13.0, matplotlib).  The models are in benchmarks/models_defs.py
(GPT-style decoder block, two ResNet basic blocks, an LSTM at T = 4, 16, 32, a MobileNet-v2
inverted residual block, the LeNet step of benchmarks/ops.py, HDRNet's bilateral-grid slicing).
A step is the loss and the gradient of every weight: ours is `ad.build([loss, *grads])` with the
default schedule (and `schedule="tune"` with --tune), PyTorch's is the forward and
`torch.autograd.grad`.  Each model runs in a child process with a time limit, PyTorch and TVM in
the same process with the same number of threads.  Before anything is timed the child compares our
loss and gradients with PyTorch's (float32; max |ours - torch| <= rtol max |torch| + 1e-5 per
tensor, rtol = 1e-3 unless the model says why not, benchmarks/models_defs.py), and a model that
fails the check is not timed, so a wrong gradient cannot give a fast number.  Times are medians (benchmarks/run.py's conventions); "build s" is `ad.build` alone (the
gradient graph is made before it); "peak MB" is how far the resident set rose above what it was
before the first call of the step (Linux VmHWM, reset through /proc/self/clear_refs), for ours and
for PyTorch: an upper bound, since the first call also pays one-time initialization (thread pools,
library state; about 20-40 MB on the quick shapes), but later calls reuse the first one's pools.  Writes benchmarks/results/models.json and models.png and prints a table.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import _emit, _fmt, _median_ms, _save_bar_chart  # noqa: E402  (shared with the op benchmark)

ATOL = 1e-5
COLUMNS = [("ms", "ours ms"), ("torch_ms", "torch ms"), ("speedup", "torch/ours"),
           ("tuned_ms", "tuned ms"), ("tuned_speedup", "torch/tuned"), ("build_s", "build s"),
           ("diff_s", "diff s"), ("kernels", "kernels (distinct)"), ("peak_mb", "peak MB"),
           ("torch_peak_mb", "torch peak MB"), ("max_err", "max rel err"), ("rtol", "rtol")]


def _peak_mb(fn) -> float | None:
    """MB by which the resident set peaks above its level before fn() (None off Linux).  Freed
    heap is trimmed first, so that memory an earlier call left resident is not reused unseen."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        return None


def _status_kb(key) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _check(ours, ref, names, rtol) -> float:
    """The largest max |ours - ref| / (max |ref| + ATOL / rtol) over the tensors (at most rtol
    when the check passes); raises naming the first tensor outside the tolerance."""
    import numpy as np
    worst = 0.0
    for name, a, b in zip(names, ours, ref):
        a, b = np.asarray(a, "float64").reshape(b.shape), np.asarray(b, "float64")
        err, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
        if not err <= rtol * scale + ATOL:
            raise AssertionError(f"gradient of {name} differs from PyTorch's: max |ours - torch| = {err:.3g}, "
                                 f"max |torch| = {scale:.3g}")
        worst = max(worst, err / (scale + ATOL / rtol))
    return worst


def prepare(name, quick):
    """(model, [loss, *gradients]) and the seconds differentiate took."""
    from tvm import topi

    import tvm_autodiff as ad
    from models_defs import MODELS

    model = MODELS[name](quick)
    t0 = time.perf_counter()
    grads = ad.differentiate(model.loss, model.wrt, head=topi.full_like(model.loss, 1.0))
    return model, [model.loss, *grads], time.perf_counter() - t0


def setup(name, quick, threads, kernels=None):
    """Differentiate and build the model's step (emitting the times), and make PyTorch's step;
    returns (model, outputs, compiled, torch step).  Nothing of ours has run yet."""
    import torch

    import tvm_autodiff as ad

    torch.set_num_threads(threads)
    model, outputs, diff_s = prepare(name, quick)
    _emit(diff_s=diff_s, shape=model.shape, threads=threads, rtol=model.rtol)
    t0 = time.perf_counter()
    kernels = kernels or model.kernels
    compiled = ad.build(outputs, model.inputs, kernels=kernels)
    _emit(build_s=time.perf_counter() - t0)
    calls = getattr(compiled, "calls", None)
    if calls is not None:
        _emit(kernels=f"{sum(calls.values())} ({len(calls)})")
    tensors = [torch.from_numpy(a) for a in model.data]
    leaves = [t.clone().requires_grad_(p in model.wrt) for p, t in zip(model.inputs, tensors)]
    wrt = [leaves[model.inputs.index(p)] for p in model.wrt]

    def torch_step():
        loss = model.torch_loss(*leaves)
        return [loss, *torch.autograd.grad(loss, wrt)]

    return model, outputs, compiled, torch_step


def compare(model, ours, ref):
    """Check our step's results `ours` against PyTorch's `ref` (raises if they differ)."""
    err = _check(ours, [t.detach().numpy() for t in ref],
                 ["loss"] + [p.name for p in model.wrt], model.rtol)
    _emit(max_err=err)


def check(name, quick, threads):
    """The correctness check alone (tests/test_models_bench.py); returns PyTorch's step."""
    model, _, compiled, torch_step = setup(name, quick, threads)
    compare(model, compiled(*model.data), torch_step())
    return torch_step


def worker(args):
    import tvm_autodiff as ad
    from tvm_autodiff.schedule import host_cores

    model, outputs, compiled, torch_step = setup(args.worker, args.quick, host_cores(), args.kernels)
    # PyTorch is measured before any kernel of ours runs, as in benchmarks/run.py, so that TVM's
    # thread pool is not started (and spinning) while PyTorch's threads run.  Peak memory is that
    # of the first call: later calls reuse the memory pools of the first.
    ref, ours = [], []
    _emit(torch_peak_mb=_peak_mb(lambda: ref.extend(torch_step())))
    _emit(torch_ms=_median_ms(torch_step))
    _emit(peak_mb=_peak_mb(lambda: ours.extend(compiled(*model.data))))
    compare(model, ours, ref)   # before ours is timed: a wrong step gets no time
    _emit(ms=compiled.time(*model.data, number=1, repeat=7, min_repeat_ms=20) * 1e3)
    if args.tune:
        try:
            tuned = ad.build(outputs, model.inputs, schedule="tune", trials=args.trials,
                             kernels=args.kernels or model.kernels)
            _emit(tuned_ms=tuned.time(*model.data, number=1, repeat=7, min_repeat_ms=20) * 1e3)
        except RuntimeError as err:   # e.g. meta_schedule finds no valid schedule at all
            _emit(tune_error=str(err).split(":")[0])


def run_model(name, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--trials", str(args.trials)]
    cmd += ["--quick"] * args.quick + ["--tune"] * args.tune + ["--kernels", args.kernels] * bool(args.kernels)
    row, status = {"model": name}, "ok"
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        out = proc.stdout
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["?"]
            status = "failed: " + lines[-1][:200]
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"timeout ({args.timeout:.0f} s)"
    for line in out.splitlines():
        if line.startswith("RESULT "):
            row.update(json.loads(line[7:]))
    for ours, key in (("ms", "speedup"), ("tuned_ms", "tuned_speedup")):
        if ours in row and "torch_ms" in row:
            row[key] = row["torch_ms"] / row[ours]
    row["status"] = status if "tune_error" not in row else f"{status}; tuning: {row['tune_error']}"
    row["wall_s"] = round(time.time() - t0, 1)
    return row


def table(rows) -> str:
    cols = [(k, c) for k, c in COLUMNS if any(k in r for r in rows)]
    head = ["model", "shape"] + [c for _, c in cols] + ["status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r.get("shape", "-")] + [_fmt(r.get(k)) for k, _ in cols]
                                       + [r["status"]]) + " |")
    for key, label in (("speedup", "default"), ("tuned_speedup", "tuned")):
        vals = [r[key] for r in rows if key in r]
        if vals:
            geo = math.exp(sum(math.log(v) for v in vals) / len(vals))
            lines.append(f"\ngeometric mean of PyTorch/ours ({label}, {len(vals)} models): {geo:.3g}")
    lstm = {int(r["model"][len("lstm_T"):]): r for r in rows if r["model"].startswith("lstm_T")}
    if len(lstm) > 1:
        lo, hi = min(lstm), max(lstm)
        for key, label in (("ms", "step time"), ("build_s", "build time")):
            if key in lstm[lo] and key in lstm[hi]:
                lines.append(f"LSTM {label}: T={hi} over T={lo} = {lstm[hi][key] / lstm[lo][key]:.3g}x "
                             f"(T grew {hi / lo:g}x; " + ", ".join(
                                 f"T={t}: {_fmt(lstm[t].get(key))}" for t in sorted(lstm)) + ")")
    return "\n".join(lines)


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (("ms", "ours"), ("tuned_ms", "ours tuned"), ("torch_ms", "PyTorch"))
            if any(k[0] in r for r in rows)]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.1), 4))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        ax.bar([x + i * width for x in range(len(rows))], [r.get(key, 0) for r in rows], width, label=label)
    _save_bar_chart(fig, ax, [r["model"] for r in rows], width,
                    "ms per training step (median, log scale; missing bar = failed)", path, rotation=30)


def selected(spec):
    """Model names from a comma-separated list; "lstm" means every LSTM length."""
    from models_defs import MODELS
    if not spec:
        return list(MODELS)
    names = []
    for s in spec.split(","):
        match = [m for m in MODELS if m == s or (s == "lstm" and m.startswith("lstm_T"))]
        if not match:
            raise SystemExit(f"unknown model {s!r}; choose from {', '.join(MODELS)} or lstm")
        names += match
    return names


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--tune", action="store_true", help="also time meta_schedule-tuned steps")
    p.add_argument("--trials", type=int, default=64, help="tuning trials per model")
    p.add_argument("--kernels", choices=("auto", "one", "many"), help="build(kernels=...) for every model (default: each model's)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per model before it is given up")
    p.add_argument("--models", help="comma-separated subset (gpt,resnet,lstm,mobilenet,lenet,bilateral)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for name in selected(args.models):
        rows.append(run_model(name, args))
        r = rows[-1]
        print(f"{name}: {_fmt(r.get('ms'))} ms, torch {_fmt(r.get('torch_ms'))} ms, {r['status']} "
              f"({r['wall_s']} s)", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "models.json"), "w") as f:
        json.dump({"quick": args.quick, "tune": args.tune, "rows": rows, "table": text}, f, indent=1)
    try:
        chart(rows, os.path.join(args.out, "models.png"))
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)


if __name__ == "__main__":
    main()
