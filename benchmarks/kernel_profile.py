"""Where a model's training step spends its time: each kernel's share, measured on the Relax VM.

    python benchmarks/kernel_profile.py resnet [--quick] [--runs 5] [--top 25]

Builds the step of benchmarks/models.py's model per kernel (`kernels="many"`), runs it a few times,
then times every call through the VM's instrument hook (wall-clock around each packed call, so
the VM's own builtins, such as its allocations, show up too) and prints, per kernel, the
milliseconds per step, the calls per step and the schedule rule of each of its blocks.  The hook
adds a few microseconds per call, so the total is somewhat above the step's own time.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import prepare  # noqa: E402  (benchmarks/ is not a package)


def profile(name: str, quick: bool, runs: int) -> tuple[list, float]:
    """([(ms per step, calls per step, kernel name, {block: rule})], build seconds), slowest first."""
    import tvm_autodiff as ad

    model, outputs, _ = prepare(name, quick)
    t0 = time.perf_counter()
    compiled = ad.build(outputs, model.inputs, kernels="many")
    build_s = time.perf_counter() - t0
    args = compiled.prepare(*model.data)[:compiled.executable.n_inputs]
    vm = compiled.executable.vm
    for _ in range(2):
        vm["main"](*args)    # warm-up: thread pool, memory pool
    spent, started = collections.defaultdict(list), {}

    def instrument(func, symbol, before, ret, *call_args):
        if before:
            started[symbol] = time.perf_counter()
        else:
            spent[symbol].append(time.perf_counter() - started[symbol])
        return 0   # VMInstrumentReturnKind.kNoOp: run the call as usual

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](*args)
    rows = [(sum(t) / runs * 1e3, len(t) // runs, k, compiled.kernels[k].rules if k in compiled.kernels else {})
            for k, t in spent.items()]
    return sorted(rows, key=lambda r: -r[0]), build_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model of benchmarks/models_defs.py (gpt, resnet, lstm_T4, ...)")
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--runs", type=int, default=5, help="timed steps")
    p.add_argument("--top", type=int, default=25, help="kernels to print")
    args = p.parse_args()
    rows, build_s = profile(args.model, args.quick, args.runs)
    print(f"{args.model}: {sum(r[0] for r in rows):.1f} ms per step in {len(rows)} kernels and VM "
          f"builtins (build {build_s:.1f} s)")
    print("| ms | calls | kernel | rules |\n|---|---|---|---|")
    for ms, calls, kernel, rules in rows[:args.top]:
        print(f"| {ms:.2f} | {calls} | {kernel} | {', '.join(f'{b}: {r}' for b, r in rules.items())} |")


if __name__ == "__main__":
    main()
