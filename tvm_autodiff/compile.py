"""Compile forward and gradient tensors into one callable.

`build(outputs, inputs)` makes one PrimFunc over every output, so tensors that several outputs
share (forward values that the gradient reads) are computed once.  The PrimFunc is scheduled
(the rules of `tvm_autodiff.schedule`, or meta_schedule in `tuning.py`), its risky load indices
are guarded (`tir.index_guard`), and it is compiled for CPU (llvm) or CUDA; compiled modules are
cached per (PrimFunc structure, target, schedule) within the process.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import sym, te, tirx

from . import schedule as _schedule
from .errors import DifferentiationError
from .ir.expr import substitute
from .ir.graph import TensorMap, placeholders, unique_tensors
from .ir.reductions import fold_where_init
from .schedule import Choice, Scheduled, block_infos
from .tir import guard_indices

_CACHE: dict = {}


class Compiled:
    """A compiled module: call it with numpy (or DLPack) arrays for `inputs`, get numpy outputs.

    `executable` is the tvm.runtime.Executable; `func` the scheduled PrimFunc; `target` the
    target it was compiled for; `source` the generated CUDA C (GPU targets) or LLVM IR;
    `rules` the schedule rule chosen for each block ({block name: rule}), and `explain()` why.
    """

    def __init__(self, executable, inputs, outputs, target, scheduled: Scheduled, single):
        # The kernel writes each distinct computed tensor once; outputs that repeat, or that are
        # inputs themselves (a head passed straight through), are filled in from those.
        self.executable, self.inputs, self.requested = executable, inputs, outputs
        given = TensorMap((t, None) for t in inputs)
        self.outputs = [t for t in unique_tensors(outputs) if t not in given]
        self.target, self.scheduled, self.single = target, scheduled, single
        self.func = scheduled.func
        self.is_cuda = target.kind.name == "cuda"

    @property
    def rules(self) -> dict:
        """{block name: the schedule rule that scheduled it} (inlined blocks say "inline")."""
        return self.scheduled.rules

    def explain(self) -> str:
        """The schedule rule of each block, and why each rule before it did not apply."""
        return self.scheduled.report()

    @property
    def device(self):
        return tvm.cuda(0) if self.is_cuda else tvm.cpu(0)

    @property
    def source(self) -> str:
        """The device code: CUDA C for CUDA targets, LLVM IR otherwise."""
        if self.is_cuda:
            return next(m for m in self.executable.mod.imports if m.kind == "cuda").inspect_source()
        return self.executable.mod.inspect_source("ll")

    def _bind(self, arrays) -> dict:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} arrays for inputs "
                             f"{[t.name for t in self.inputs]}, got {len(arrays)}")
        env = {}
        for t, a in zip(self.inputs, arrays):
            if str(a.dtype) != str(t.dtype) or len(a.shape) != len(t.shape):
                raise ValueError(f"input {t.name!r} must be {t.dtype} with {len(t.shape)} dims, "
                                 f"got {a.dtype} with shape {tuple(a.shape)}")
            for dim, n in zip(t.shape, a.shape):
                if isinstance(dim, tirx.Var):
                    if env.setdefault(dim, n) != n:
                        raise ValueError(f"input {t.name!r}: dimension {dim.name} is bound to "
                                         f"{env[dim]} but this array has {n}")
                elif int(dim) != n:
                    raise ValueError(f"input {t.name!r} must have shape {[str(d) for d in t.shape]}, "
                                     f"got {tuple(a.shape)}")
        return env

    def _check_device(self):
        if self.is_cuda and not tvm.cuda(0).exist:
            raise RuntimeError("this module was compiled for CUDA but no CUDA device is present; "
                               "its kernels are in `.source` (compile them with compile_ptx)")

    def prepare(self, *arrays) -> list:
        """Device tensors for one call: the inputs (64-byte aligned copies, which the compiled
        code assumes) followed by freshly allocated outputs.  `self.executable(*args)` then runs
        the kernel alone, with no conversion, e.g. for timing."""
        self._check_device()
        arrays = [np.asarray(a) if not hasattr(a, "__dlpack__") or isinstance(a, np.ndarray)
                  else np.from_dlpack(a) for a in arrays]
        env = self._bind(arrays)
        ana = sym.Analyzer()
        dev = self.device
        args = [tvm.runtime.tensor(np.array(a, order="C", copy=None), dev) for a in arrays]  # keeps 0-d arrays 0-d
        for t in self.outputs:
            shape = [int(ana.simplify(substitute(d, {v: tirx.const(n, str(v.ty.dtype))
                                                     for v, n in env.items()}))) for d in t.shape]
            args.append(tvm.runtime.empty(shape, str(t.dtype), dev))
        return args

    def __call__(self, *arrays):
        args = self.prepare(*arrays)
        self.executable(*args)
        n = len(self.inputs)
        values = TensorMap([*zip(self.inputs, (a.numpy() for a in args[:n])),
                            *((t, o.numpy()) for t, o in zip(self.outputs, args[n:]))])
        result = [np.array(values[t]) for t in self.requested]
        return result[0] if self.single else result

    def time(self, *arrays, number: int = 10, repeat: int = 5, min_repeat_ms: int = 0) -> float:
        """Median seconds of one kernel call, measured by TVM's time_evaluator on prepared
        tensors (`repeat` samples of `number` calls each, after one warm-up call)."""
        args = self.prepare(*arrays)
        timer = self.executable.mod.time_evaluator("main", self.device, number=number,
                                                   repeat=repeat, min_repeat_ms=min_repeat_ms)
        self.executable(*args)
        return float(timer(*args).median)


def resolve_target(target) -> tvm.target.Target:
    """A Target from "llvm", "cuda", a dict or a Target.  llvm gets this host's CPU name and core
    count when not given; cuda gets the device's arch, or sm_80 when there is no GPU."""
    if isinstance(target, tvm.target.Target):
        return target
    spec = {"kind": target} if isinstance(target, str) else dict(target)
    if spec.get("kind") == "llvm":
        return _schedule.cpu_target(**{k: v for k, v in spec.items() if k != "kind"})
    if spec.get("kind") == "cuda":
        spec.setdefault("arch", _schedule.cuda_arch())
    return tvm.target.Target(spec)


def compile_ptx(source, arch: Optional[str] = None) -> bytes:
    """PTX for CUDA C `source` (a string or a CUDA `Compiled`), compiled with nvcc.  TVM compiles
    CUDA C only when a module is loaded on a GPU, so this is how to check it without one."""
    from tvm.support import nvcc

    if isinstance(source, Compiled):
        arch = arch or str(source.target.attrs.get("arch", "sm_80"))
        source = source.source
    arch = arch or _schedule.cuda_arch()
    with tvm.target.Target({"kind": "cuda", "arch": arch}):   # compile_cuda reads Target.current()
        return nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc")


def _lower(func, target, schedule, trials, work_dir, runner) -> Scheduled:
    if target.kind.name == "cuda":
        if schedule == "tune":
            raise NotImplementedError("schedule='tune' is implemented for llvm targets")
        # Unscheduled code compiled for CUDA silently becomes a host loop (docs/tvm-0.27.md,
        # "unscheduled CUDA becomes a host loop"), so CUDA always gets the GPU schedule.
        return _schedule.schedule_gpu(func, target)
    if schedule is None:
        return Scheduled(func, tuple(Choice(i.name, None) for i in block_infos(func)))
    if schedule == "default":
        return _schedule.schedule_cpu(func, target)
    if schedule == "tune":
        from .tuning import tune
        tuned = tune(func, target, trials=trials, work_dir=work_dir, runner=runner)
        return Scheduled(tuned, tuple(Choice(i.name, "meta_schedule") for i in block_infos(tuned)))
    raise ValueError(f"schedule must be 'default', 'tune' or None, not {schedule!r}")


def _fallbacks(func, target, schedule) -> list:
    """(what, how to schedule it) to try, in order, when the schedule does not compile: a default
    CPU schedule falls back to scalar loops (LLVM has no vector form of some intrinsics, e.g.
    sinh), then to the unscheduled function; a GPU schedule whose cross-thread reductions TVM
    cannot lower (tuple reducers) to one without them.  Other schedules must compile as they are."""
    if target.kind.name == "cuda":
        return [("a GPU schedule without cross-thread reductions",
                 lambda: _schedule.schedule_gpu(func, target, cross_thread=False))]
    if schedule == "default":
        return [("scalar loops", lambda: _schedule.schedule_cpu(func, target, vectorize=False)),
                ("the unscheduled function",
                 lambda: Scheduled(func, tuple(Choice(i.name, None) for i in block_infos(func))))]
    return []


def _reason(err: Exception) -> str:
    """The line of a TVM error that says what went wrong (its message ends a long traceback)."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    said = [l for l in lines if "Error" in l or "Check failed" in l or "error:" in l]
    return (said or lines or [type(err).__name__])[-1][:300]


def _compile(func, scheduled: Scheduled, target, schedule) -> tuple:
    """(executable, Scheduled) with the load indices that TVM 0.27 miscompiles guarded
    (`guard_indices`), falling back as `_fallbacks` says, with a warning, when compiling fails."""
    fallbacks = _fallbacks(func, target, schedule)
    while True:
        try:
            guarded = Scheduled(guard_indices(scheduled.func), scheduled.choices)
            return tvm.compile(guarded.func, target=target), guarded
        except (RuntimeError, ValueError) as err:
            if not fallbacks:
                raise
            what, fallback = fallbacks.pop(0)
            warnings.warn(f"build: the {schedule} schedule for {target.kind.name} does not compile "
                          f"({_reason(err)}); falling back to {what}", stacklevel=3)
            scheduled = fallback()


def build(outputs, inputs: Sequence[te.Tensor] | None = None, target="llvm",
          schedule: str | None = "default", *, trials: int = 64, work_dir: str | None = None,
          runner=None) -> Compiled:
    """Compile `outputs` (a tensor or a list) as one kernel taking the placeholders `inputs`
    (default: every placeholder they read, in first-use order).

    target: "llvm" (this CPU, all cores), "cuda" (the device's arch, or sm_80 without a GPU), a
        dict such as {"kind": "cuda", "arch": "sm_86"}, or a tvm.target.Target.
    schedule: "default" (a schedule for every block: inlining, parallel and vector loops),
        None (unscheduled serial loops; CPU only), or "tune" (meta_schedule with `trials`
        measured candidates; records persist in `work_dir`, default ~/.cache/tvm_autodiff/tune,
        and a later build of the same graph reuses them).  `runner` measures elsewhere, e.g.
        `meta_schedule.runner.RPCRunner(RPCConfig(tracker_host, tracker_port, tracker_key))`.
    """
    single = isinstance(outputs, te.Tensor)
    outputs = [outputs] if single else list(outputs)
    inputs = placeholders(outputs) if inputs is None else list(inputs)
    for t in inputs:
        if not isinstance(t.op, te.PlaceholderOp):
            raise DifferentiationError(f"build() inputs must be placeholders; {t.name!r} is computed "
                                       f"by {type(t.op).__name__} {t.op.name!r}.")
    given = TensorMap((t, None) for t in inputs)
    missing = [t.name for t in placeholders(outputs) if t not in given]
    if missing:
        raise DifferentiationError(f"the outputs read placeholders {missing} that are not in inputs")
    target = resolve_target(target)
    _schedule.use_all_cores()
    # TVM's create_prim_func drops where= and init=, so they are folded into the bodies first.
    lowered, _ = fold_where_init(outputs)
    computed = [t for t in unique_tensors(lowered) if t not in given]
    func = te.create_prim_func(inputs + computed)
    # A PrimFunc holds no te.Tensor, so it hashes and compares structurally.
    key = (tvm_ffi.StructuralKey(func), str(target), schedule)
    if key not in _CACHE:
        scheduled = _lower(func, target, schedule, trials, work_dir, runner)
        executable, scheduled = _compile(func, scheduled, target, schedule)
        if target.kind.name == "cuda" and not any(m.kind == "cuda" for m in executable.mod.imports):
            raise RuntimeError("CUDA compilation produced no kernel (the function was not scheduled "
                               "for the GPU)")
        _CACHE[key] = (executable, scheduled)
    executable, scheduled = _CACHE[key]
    return Compiled(executable, inputs, lowered, target, scheduled, single)
