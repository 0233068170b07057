"""`schedule="tune"`: meta_schedule tuning with a persistent record database.

Records live in one JSON database under `work_dir` (default ~/.cache/tvm_autodiff/tune), keyed by
the structure of the PrimFunc and the target, so building the same graph again, in this process
or a later one, reuses the best record without tuning.

A tuned schedule replaces the default one only where it runs faster (`tune_or_default`): with
a small budget and no cost model meta_schedule can end worse than the default rules, and a kernel
it cannot schedule at all (see `tune`) keeps the default too.

Measuring on another machine (e.g. a board, or a GPU host) goes through TVM's RPC runner: start a
tracker (`python -m tvm.exec.rpc_tracker --port 9190`), register the device to it
(`python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY`), and pass
`runner=tvm.s_tir.meta_schedule.runner.RPCRunner(
    tvm.s_tir.meta_schedule.runner.RPCConfig(tracker_host=HOST, tracker_port=9190, tracker_key=KEY))`
to `build(..., schedule="tune")`.  The default is the local runner on this machine.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
import tvm
from tvm import tirx

from .schedule import Choice, Scheduled, block_infos

DEFAULT_WORK_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tvm_autodiff", "tune")


def _ms():
    # Imported lazily: meta_schedule (with its tensor intrinsics) takes tens of seconds to import.
    from tvm.s_tir import meta_schedule
    return meta_schedule


def database(work_dir: Optional[str] = None):
    """The JSON record database in `work_dir` (created when missing)."""
    work_dir = work_dir or DEFAULT_WORK_DIR
    os.makedirs(work_dir, exist_ok=True)
    return _ms().database.JSONDatabase(work_dir=work_dir, module_equality="structural")


def lookup(func: tirx.PrimFunc, target: tvm.target.Target, work_dir: Optional[str] = None):
    """The best recorded schedule of `func` for `target` as a PrimFunc, or None."""
    sch = _ms().tir_integration.compile_tir(database(work_dir), func, target)
    return None if sch is None else sch.mod["main"]


def _progress_callback(total: int):
    """A measure callback that advances a progress bar (tqdm when installed) per measured trial."""
    from tvm.ir.utils import derived_object

    ms = _ms()
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="tuning", unit="trial")
    except ImportError:
        bar = None

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if bar is not None:
                bar.update(len(measure_candidates))
            else:
                Progress.done += len(measure_candidates)
                print(f"tuning: {Progress.done}/{total} trials measured", flush=True)

    return Progress(), bar


def tune(func: tirx.PrimFunc, target: tvm.target.Target, trials: int = 64,
         work_dir: Optional[str] = None, runner=None, retune: bool = False) -> tirx.PrimFunc:
    """The best schedule of `func` found by meta_schedule within `trials` measured candidates.

    A record already in the database is reused without tuning unless `retune`.  `runner` is a
    meta_schedule runner (default: local; see the module docstring for RPC).  Tuning measures on
    `target`, which must carry `num-cores`.
    """
    if not retune:
        found = lookup(func, target, work_dir)
        if found is not None:
            return found
    ms = _ms()
    work_dir = work_dir or DEFAULT_WORK_DIR
    try:
        import xgboost  # noqa: F401  (the default cost model needs it)
        cost_model = "xgb"
    except ImportError:
        cost_model = "random"
    progress, bar = _progress_callback(trials)
    try:
        ms.tune_tir(func, target, work_dir=work_dir, max_trials_global=trials,
                    num_trials_per_iter=min(trials, 64), cost_model=cost_model,
                    database=database(work_dir),
                    num_tuning_cores=int(target.attrs["num-cores"]),
                    # The default 30 s build timeout fails whole batches on small machines.
                    builder=ms.builder.LocalBuilder(timeout_sec=120,
                                                    max_workers=int(target.attrs["num-cores"])),
                    runner=runner or "local",
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress])
    finally:
        if bar is not None:
            bar.close()
    found = lookup(func, target, work_dir)
    if found is None:
        raise RuntimeError(
            "meta_schedule found no valid schedule: every candidate failed a postprocessor, the "
            "build or the run (known case: reductions whose extent depends on outer loops, such as "
            "the windows of a conv's input gradient, which its DisallowDynamicLoop and "
            "RewriteParallelVectorizeUnroll reject); use schedule='default'. Logs: " + work_dir)
    return found


def measure(func: tirx.PrimFunc, target: tvm.target.Target, repeat: int = 5) -> float:
    """Median seconds of one call of `func` (static shapes) on this machine, on random inputs."""
    rng = np.random.default_rng(0)
    executable = tvm.compile(func.with_attr("global_symbol", "main"), target=target)
    args = [tvm.runtime.tensor(rng.random([int(d) for d in p.shape]).astype(str(p.dtype)))
            for p in func.params]
    timer = executable.mod.time_evaluator("main", tvm.cpu(0), number=3, repeat=repeat)
    return float(timer(*args).median)


def _static(func: tirx.PrimFunc) -> bool:
    return all(isinstance(d, tirx.IntImm) for p in func.params for d in p.shape)


def tune_or_default(func: tirx.PrimFunc, target: tvm.target.Target, default: Scheduled, *,
                    trials: int, work_dir: Optional[str] = None, runner=None) -> Scheduled:
    """The tuned schedule of `func` if it measures faster than `default` (the default rules'),
    else `default`, whose choices then say why (`explain`).  Where meta_schedule finds no schedule
    at all, `default`, with a warning naming the reason."""
    try:
        tuned = tune(func, target, trials=trials, work_dir=work_dir, runner=runner)
    except RuntimeError as err:   # no valid candidate, or a ScheduleError in its postprocessors
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        warnings.warn(f"build: tuning found no schedule ({reason}); keeping the default one",
                      stacklevel=4)
        return _declined(default, f"meta_schedule found no schedule ({reason})")
    if _static(func):
        theirs = measure(tuned, target)
        try:
            ours = measure(default.func, target)
        except (RuntimeError, ValueError):   # e.g. no vector form of an intrinsic: `build` falls
            ours = float("inf")             # back from such a default, so the record wins
        if theirs > ours:
            return _declined(default, f"its record takes {theirs * 1e3:.3f} ms, the default "
                                      f"{ours * 1e3:.3f} ms")
    return Scheduled(tuned, tuple(Choice(i.name, "meta_schedule") for i in block_infos(tuned)))


def _declined(default: Scheduled, why: str) -> Scheduled:
    return Scheduled(default.func, tuple(Choice(c.block, c.rule, c.declined + (("meta_schedule", why),))
                                         for c in default.choices))
