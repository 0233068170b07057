"""Compile forward and gradient tensors into one callable.

`build(outputs, inputs)` makes one PrimFunc over every output, so tensors that several outputs
share (forward values that the gradient reads) are computed once.  Its parameters are the
placeholders and the free scalar variables (te.var) of the graph; variables in placeholder shapes
are bound from the arrays instead (one that occurs only inside a dimension such as n + 3 is solved
from the arrays and passed as a trailing hidden parameter, since TVM binds only plain ones).
Every argument is checked before anything is built.  The PrimFunc is scheduled (the rules of
`tvm_autodiff.schedule`, or meta_schedule in `tuning.py`), its risky load indices are guarded
(`tir.index_guard`), and it is compiled for CPU (llvm) or CUDA; compiled modules are cached per
(PrimFunc structure, target, schedule) within the process.
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Optional

import numpy as np
import tvm
import tvm_ffi
from tvm import sym, te, tirx

from tvm_autodiff.passes.merge_sums import merge_sums
from tvm_autodiff.passes.pitch import flatten_rows
from tvm_autodiff.passes.transpose import transpose_columns
from tvm_autodiff.passes.views import compose_views

from . import schedule as _schedule
from .errors import ArgumentTypeError, DifferentiationError, as_list, describe
from .ir.expr import free_vars, is_float, substitute
from .ir.graph import TensorMap, ops_post_order, outputs_of, placeholders, unique_tensors
from .ir.reductions import fold_where_init
from .kernel_module import VMProgram, device_source, kernel_module, lower_kernels, replace_kernels
from .kernels import distinct, partition, partitionable
from .schedule import Choice, Scheduled, block_infos
from .tir import guard_indices, vector_transcendentals

_CACHE: dict = {}


def _scalar_value(v: tirx.Var, value):
    """The Python number passed for scalar parameter `v`: an int for an integer variable (a float
    would be truncated silently), an int or a float for a float one."""
    value = value.item() if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 \
        else value
    integer = isinstance(value, int) and not isinstance(value, bool)
    if integer or (is_float(v) and isinstance(value, float)):
        return float(value) if is_float(v) else value
    need = "a Python or numpy float or int" if is_float(v) else "a Python or numpy int"
    raise TypeError(f"scalar parameter {v.name!r} ({v.ty.dtype}) needs {need}, got {describe(value)}")


def _evaluate(dim, env: dict):
    """Dimension `dim` with the integer variables of `env` substituted, simplified."""
    return sym.Analyzer().simplify(substitute(dim, {v: tirx.const(k, str(v.ty.dtype))
                                                    for v, k in env.items() if isinstance(k, int)}))


def _dimension_value(dim, n: int, env: dict):
    """The value of dimension `dim` (an expression of te.vars) under `env`, after binding its one
    unbound variable v to n's solution when dim = a·v + b (v = (n - b) // a); None while it has
    several unbound variables, or one it is not linear in (the caller retries once other
    dimensions have bound more)."""
    dim = _evaluate(dim, env)
    unbound = free_vars(dim)
    if len(unbound) == 1:
        (v,) = unbound
        coefficients = [int(c) for c in sym.detect_linear_equation(dim, [v])]
        if coefficients and coefficients[0] != 0:
            env[v] = (n - coefficients[1]) // coefficients[0]
            dim = _evaluate(dim, env)
    return dim.value if isinstance(dim, tirx.IntImm) else None


class PrimFuncProgram:
    """A compiled one-PrimFunc module: `program(*inputs, *outputs)` runs it."""

    def __init__(self, executable):
        self.executable = executable

    def __call__(self, *args):
        self.executable(*args)

    def time(self, args, device, **timer) -> float:
        return float(self.executable.mod.time_evaluator("main", device, **timer)(*args).median)

    def source(self, cuda: bool) -> str:
        return device_source(self.executable.mod, cuda)


class Compiled:
    """A compiled module: call it with numpy (or DLPack) arrays for `inputs` (a number for each
    scalar parameter), get numpy outputs.

    `executable` runs it on prepared tensors (`prepare`); `kernels` maps each kernel's name to its
    `Scheduled` PrimFunc ("main" for a one-PrimFunc build) and `calls` to the calls of it per run;
    `func` is the scheduled PrimFunc of a one-PrimFunc build; `module` the Relax module of a
    per-kernel build; `target` the target it was compiled for; `source` the generated CUDA C (GPU
    targets) or LLVM IR; `rules` the schedule rule chosen for each block ({block name: rule}; in a
    per-kernel build {"kernel/block": rule}), and `explain()` why.
    """

    def __init__(self, program, inputs, outputs, target, kernels: dict, single, module=None,
                 calls=None):
        # The kernel writes each distinct computed tensor once; outputs that repeat, or that are
        # inputs themselves (a head passed straight through), are filled in from those.
        self.executable, self.inputs, self.requested = program, inputs, outputs
        given = TensorMap((t, None) for t in inputs if isinstance(t, te.Tensor))
        self.outputs = [t for t in unique_tensors(outputs) if t not in given]
        self.dimensions = _unbound_dimensions(inputs, self.outputs)
        self.target, self.kernels, self.single, self.module = target, kernels, single, module
        self.calls = calls if calls is not None else Counter(dict.fromkeys(kernels, 1))
        self.is_cuda = target.kind.name == "cuda"

    @property
    def func(self):
        """The scheduled PrimFunc of a one-PrimFunc build."""
        if self.module is not None:
            raise AttributeError(f"this build has {len(self.kernels)} distinct kernels, not one "
                                 f"PrimFunc: see .kernels ({{name: Scheduled}}) and .module; "
                                 f"build(..., kernels='one') makes one PrimFunc")
        return self.kernels["main"].func

    @property
    def rules(self) -> dict:
        """{block name: the schedule rule that scheduled it} (inlined blocks say "inline");
        {"kernel/block": rule} for a per-kernel build."""
        if self.module is None:
            return self.kernels["main"].rules
        return {f"{k}/{b}": r for k, s in self.kernels.items() for b, r in s.rules.items()}

    def explain(self) -> str:
        """The schedule rule of each block, and why each rule before it did not apply."""
        if self.module is None:
            return self.kernels["main"].report()
        return "\n".join(f"kernel {k} ({self.calls[k]} calls per run):\n{s.report()}"
                         for k, s in self.kernels.items())

    @property
    def device(self):
        return tvm.cuda(0) if self.is_cuda else tvm.cpu(0)

    @property
    def source(self) -> str:
        """The device code: CUDA C for CUDA targets, LLVM IR otherwise."""
        return self.executable.source(self.is_cuda)

    @staticmethod
    def _check_arrays(pairs) -> dict:
        """Check each (input tensor, array) pair's dtype and rank, and bind the symbolic dimensions
        of the inputs from the arrays' shapes: {te.var: int}.  A dimension that is a variable binds
        it; one that is an expression (n + 3, 2n + 4) is solved for its one unbound variable when it
        is linear in it, and is otherwise checked once the others have bound its variables."""
        env, pending = {}, []
        for t, a in pairs:
            if str(a.dtype) != str(t.dtype) or len(a.shape) != len(t.shape):
                raise ValueError(f"input {t.name!r} must be {t.dtype} with {len(t.shape)} dims, "
                                 f"got {a.dtype} with shape {tuple(a.shape)}")
            for dim, n in zip(t.shape, a.shape):
                if isinstance(dim, tirx.Var):
                    if env.setdefault(dim, n) != n:
                        raise ValueError(f"input {t.name!r}: dimension {dim.name} is bound to "
                                         f"{env[dim]} but this array has {n}")
                elif isinstance(dim, tirx.IntImm):
                    if dim.value != n:
                        raise ValueError(f"input {t.name!r} must have shape "
                                         f"{[str(d) for d in t.shape]}, got {tuple(a.shape)}")
                else:
                    pending.append((t, dim, n, a.shape))
        while pending:
            unsolved = []
            for t, dim, n, shape in pending:
                got = _dimension_value(dim, n, env)
                if got is None:
                    unsolved.append((t, dim, n, shape))
                elif got != n:
                    bound = ", ".join(f"{v.name} = {k}" for v, k in env.items() if v in free_vars(dim))
                    raise ValueError(f"input {t.name!r}: its dimension {dim} is {got} with {bound}, "
                                     f"but the array has shape {tuple(shape)}")
            if len(unsolved) == len(pending):
                t, dim, _, shape = unsolved[0]
                raise ValueError(f"input {t.name!r}: its dimension {dim} cannot be bound from its "
                                 f"shape {tuple(shape)}, as it is not linear in one unbound "
                                 f"variable; pass an input that has the variable itself as a "
                                 f"dimension, or make it a scalar input")
            pending = unsolved
        return env

    def _check_device(self):
        if self.is_cuda and not tvm.cuda(0).exist:
            raise RuntimeError("this module was compiled for CUDA but no CUDA device is present; "
                               "its kernels are in `.source` (compile them with compile_ptx)")

    def prepare(self, *arrays) -> list:
        """Device tensors for one call: the inputs (64-byte aligned copies, which the compiled
        code assumes; scalar parameters as Python numbers) followed by freshly allocated outputs.
        `self.executable(*args)` then runs the kernel alone, with no conversion, e.g. for timing."""
        self._check_device()
        if len(arrays) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} arrays for inputs "
                             f"{[t.name for t in self.inputs]}, got {len(arrays)}")
        arrays = [a if isinstance(t, tirx.Var) else
                  np.asarray(a) if not hasattr(a, "__dlpack__") or isinstance(a, np.ndarray)
                  else np.from_dlpack(a) for t, a in zip(self.inputs, arrays)]
        env = self._check_arrays([(t, a) for t, a in zip(self.inputs, arrays)
                                  if isinstance(t, te.Tensor)])
        args, dev = [], self.device
        for t, a in zip(self.inputs, arrays):
            if isinstance(t, tirx.Var):     # an integer one may size an output
                value = _scalar_value(t, a)
                if env.setdefault(t, value) != value:
                    raise ValueError(f"scalar parameter {t.name!r} is {value}, but the arrays' "
                                     f"shapes bind it to {env[t]}")
                args.append(value)
            else:
                args.append(tvm.runtime.tensor(np.array(a, order="C", copy=None), dev))  # keeps 0-d arrays 0-d
        for t in self.outputs:
            shape = [_evaluate(d, env) for d in t.shape]
            if not all(isinstance(d, tirx.IntImm) for d in shape):
                raise ValueError(f"output {t.name!r} has shape {shape}, which the inputs' shapes do "
                                 f"not bind; pass its variables as scalar inputs")
            args.append(tvm.runtime.empty([d.value for d in shape], str(t.dtype), dev))
        return args + [env[v] for v in self.dimensions]

    def __call__(self, *arrays):
        args = self.prepare(*arrays)
        self.executable(*args)
        n = len(self.inputs)
        given = [(t, a.numpy()) for t, a in zip(self.inputs, args[:n]) if isinstance(t, te.Tensor)]
        values = TensorMap([*given, *((t, o.numpy()) for t, o in zip(self.outputs, args[n:]))])
        result = [np.array(values[t]) for t in self.requested]
        return result[0] if self.single else result

    def time(self, *arrays, number: int = 10, repeat: int = 5, min_repeat_ms: int = 0) -> float:
        """Median seconds of one run, measured by TVM's time_evaluator on prepared tensors
        (`repeat` samples of `number` runs each, after one warm-up run)."""
        args = self.prepare(*arrays)
        self.executable(*args)
        return self.executable.time(args, self.device, number=number, repeat=repeat,
                                    min_repeat_ms=min_repeat_ms)


_TARGET_FORMS = ('"llvm" (this CPU), "cuda", a dict such as {"kind": "llvm", "mcpu": "znver4"} '
                 'or {"kind": "cuda", "arch": "sm_86"}, or a tvm.target.Target')


def _target_spec(target) -> dict:
    """The dict form of a target string or dict.  TVM 0.27 parses dicts only: a string with
    options ("llvm -mcpu=x") is refused with the dict to write instead (docs/tvm-0.27.md, "mcpu=native
    is not resolved")."""
    if isinstance(target, str):
        kind, *options = target.split()
        if options:
            pairs = [o.lstrip("-").partition("=") for o in options]
            spec = {"kind": kind, **{k: int(v) if v.isdigit() else v for k, _, v in pairs}}
            raise DifferentiationError(
                f"target {target!r}: TVM 0.27 no longer parses target strings with options; pass "
                f"a dict instead, e.g. target={spec!r}.")
        return {"kind": kind}
    if isinstance(target, Mapping):
        if not isinstance(target.get("kind"), str):
            raise DifferentiationError(f"target {target!r} has no \"kind\" string; "
                                       f"target must be {_TARGET_FORMS}.")
        return dict(target)
    raise ArgumentTypeError(f"target must be {_TARGET_FORMS}; got {describe(target)}.")


def _check_mcpu(kind: str, attrs) -> None:
    """LLVM compiles for a generic CPU, with no more than a logged line, when it does not know
    `mcpu` (docs/tvm-0.27.md, "mcpu=native is not resolved"), so an unknown name is refused.
    `attrs` is a target dict or a Target's attrs."""
    mcpu = attrs.get("mcpu") if kind == "llvm" else None
    if mcpu is None:
        return
    triple = str(attrs.get("mtriple") or tvm.target.codegen.llvm_get_system_triple())
    if not tvm.target.codegen.llvm_is_valid_cpu(str(mcpu), triple):
        raise DifferentiationError(
            f"target mcpu {str(mcpu)!r} is not a CPU that LLVM knows for {triple}, so TVM would "
            f"compile for a generic CPU. tvm.target.codegen.llvm_get_cpu_archlist("
            f"tvm.target.Target({{'kind': 'llvm'}})) lists the valid names; leave mcpu out for "
            f"this host's CPU ({tvm.get_global_func('tvm.codegen.llvm.GetHostCPUName')()}).")


def resolve_target(target) -> tvm.target.Target:
    """A Target from "llvm", "cuda", a dict or a Target.  llvm gets this host's CPU name and core
    count when not given; cuda gets the device's arch, or sm_80 when there is no GPU.  An unknown
    kind, attribute or LLVM CPU name is a DifferentiationError naming the target."""
    if isinstance(target, tvm.target.Target):
        _check_mcpu(target.kind.name, target.attrs)
        return target
    spec = _target_spec(target)
    _check_mcpu(spec["kind"], spec)
    try:
        if spec["kind"] == "llvm":
            resolved = _schedule.cpu_target(**{k: v for k, v in spec.items() if k != "kind"})
        else:
            if spec["kind"] == "cuda":
                spec.setdefault("arch", _schedule.cuda_arch())
            resolved = tvm.target.Target(spec)
    except (ValueError, TypeError) as err:
        raise DifferentiationError(f"target {target!r} is not a TVM target ({_reason(err)}); "
                                   f"target must be {_TARGET_FORMS}.") from None
    return resolved


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
    # schedule == "tune" (build checked the value up front)
    from .tuning import tune_or_default
    return tune_or_default(func, target, _schedule.schedule_cpu(func, target), trials=trials,
                           work_dir=work_dir, runner=runner)


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


def _guarded(scheduled: Scheduled, target) -> Scheduled:
    """The scheduled function as it is compiled: load indices that TVM 0.27 miscompiles guarded
    and, on CPU, the float32 transcendentals in vector form (tir/fast_math.py)."""
    func = guard_indices(scheduled.func)
    if target.kind.name == "llvm":
        func = vector_transcendentals(func)
    return Scheduled(func, scheduled.choices)


def _pass_config(scheduled: Scheduled) -> dict:
    """TVM's StorageRewrite, which lets intermediate buffers share memory, miscompiles some
    unscheduled functions of small buffers on znver3 (docs/tvm-0.27.md, "storage rewrite of
    unscheduled small buffers"); an unscheduled function (no block with a rule) goes without it."""
    unscheduled = all(c.rule is None for c in scheduled.choices)
    return {"tirx.disable_storage_rewrite": True} if unscheduled else {}


def _compile(func, scheduled: Scheduled, target, schedule) -> tuple:
    """(executable, Scheduled) with the load indices that TVM 0.27 miscompiles guarded
    (`guard_indices`), falling back as `_fallbacks` says, with a warning, when compiling fails."""
    fallbacks = _fallbacks(func, target, schedule)
    while True:
        try:
            guarded = _guarded(scheduled, target)
            with tvm.transform.PassContext(config=_pass_config(guarded)):
                return tvm.compile(guarded.func, target=target), guarded
        except (RuntimeError, ValueError) as err:
            if not fallbacks:
                raise
            what, fallback = fallbacks.pop(0)
            warnings.warn(f"build: the {schedule} schedule for {target.kind.name} does not compile "
                          f"({_reason(err)}); falling back to {what}", stacklevel=3)
            scheduled = fallback()


_INPUTS = "a list of placeholders and scalar variables (te.var), or one of them"
_SCHEDULES = ("default", "tune")     # and None
# build()'s keyword arguments: name -> (test, what the value must be).
_KEYWORDS = {
    "trials": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0,
               "a positive int (the measured candidates of schedule='tune')"),
    "work_dir": (lambda v: v is None or isinstance(v, (str, os.PathLike)),
                 "None or a folder (str or os.PathLike) for the tuning records"),
    "kernels": (lambda v: isinstance(v, str) and v in _KERNELS,
                "'auto', 'one' or 'many' (one PrimFunc, or a Relax module of kernels)"),
}


def _check_options(schedule, **keywords) -> None:
    if not (schedule is None or (isinstance(schedule, str) and schedule in _SCHEDULES)):
        close = difflib.get_close_matches(schedule, _SCHEDULES, 1) \
            if isinstance(schedule, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DifferentiationError(f"schedule must be 'default', 'tune' or None, not "
                                   f"{schedule!r}{hint}")
    for name, value in keywords.items():
        test, what = _KEYWORDS[name]
        if not test(value):
            raise ArgumentTypeError(f"build() {name} must be {what}, got {describe(value)}.")


def _outputs(outputs) -> list:
    outputs = as_list(outputs, "build() outputs", "a te.Tensor or a list of them")
    if not outputs:
        raise DifferentiationError("build() needs at least one output tensor, got an empty list.")
    for n, t in enumerate(outputs):
        if not isinstance(t, te.Tensor):
            raise ArgumentTypeError(f"build() outputs[{n}] is {describe(t)}, not a te.Tensor; "
                                    f"outputs are the tensors (te.compute, topi, gradients) to compute.")
    return outputs


def _op_vars(op) -> list:
    """The variables that op's shape, extents and bodies use but do not bind (axis, reduce-axis
    and combiner variables are bound), in order of use."""
    if isinstance(op, te.ComputeOp):
        axes = [*op.axis, *op.reduce_axis]
        exprs = [e for iv in axes for e in (iv.dom.min, iv.dom.extent)] + list(op.body)
        bound = {iv.var for iv in axes} | {v for b in op.body if isinstance(b, tirx.Reduce)
                                           for v in [*b.combiner.lhs, *b.combiner.rhs]}
    else:
        exprs, bound = [d for t in outputs_of(op) for d in t.shape], set()
    return [v for e in exprs for v in tvm.tirx.analysis.undefined_vars(e) if v not in bound]


def _graph_vars(outputs) -> list:
    """The free variables of the graph of `outputs`, in first-use order (producers first)."""
    found: dict = {}
    for op in ops_post_order(outputs):
        found.update((v, None) for v in _op_vars(op))
    return list(found)


def _dimension_vars(tensors) -> set:
    """Variables in the tensors' shapes: the kernel binds them from the arrays' shapes."""
    return {v for t in tensors for d in t.shape for v in tvm.tirx.analysis.undefined_vars(d)}


def _unbound_dimensions(inputs: list, outputs: list) -> list:
    """The variables of the parameters' shapes that TVM cannot bind from the arrays, since they
    occur only inside expressions (X of shape (n + 3,)): the kernel takes them as trailing scalar
    parameters, after the outputs, which `Compiled.prepare` solves from the arrays' shapes."""
    tensors = [t for t in inputs if isinstance(t, te.Tensor)] + list(outputs)
    plain = {d for t in tensors for d in t.shape if isinstance(d, tirx.Var)}
    given = {x for x in inputs if isinstance(x, tirx.Var)}
    return sorted((v for v in _dimension_vars(tensors) if v not in plain and v not in given),
                  key=lambda v: v.name)


def _check_input(x, n: int, dims: set) -> None:
    """inputs[n] is a placeholder or a scalar variable that is not one of the dimensions `dims`."""
    if isinstance(x, tirx.Var):
        if x in dims:
            raise DifferentiationError(
                f"build() inputs[{n}] is the dimension variable {x.name!r}: it is bound from the "
                f"arrays' shapes; leave it out of inputs.")
        return
    if not isinstance(x, te.Tensor):
        raise ArgumentTypeError(
            f"build() inputs[{n}] is {describe(x)}; inputs lists the placeholders (te.placeholder) "
            f"and scalar variables (te.var) that the kernel takes, in call order. Pass the arrays "
            f"to the compiled function instead: build(outputs, [X, W])(x, w).")
    if not isinstance(x.op, te.PlaceholderOp):
        raise DifferentiationError(f"build() inputs must be placeholders; {x.name!r} is computed "
                                   f"by {type(x.op).__name__} {x.op.name!r}.")


def _inputs(outputs: list, inputs) -> list:
    """The kernel's parameters in call order, checked.  inputs=None: every placeholder that the
    outputs read, then every free scalar variable that is not a dimension of one, each in
    first-use order."""
    scalars = _graph_vars(outputs)
    if inputs is None:
        tensors = placeholders(outputs)
        dims = _dimension_vars(tensors)
        return tensors + [v for v in scalars if v not in dims]
    inputs = as_list(inputs, "build() inputs", _INPUTS, single=(te.Tensor, tirx.Var))
    tensors = [x for x in inputs if isinstance(x, te.Tensor)]
    dims = _dimension_vars(tensors)
    for n, x in enumerate(inputs):
        _check_input(x, n, dims)
    given = TensorMap((t, None) for t in tensors)
    missing = [t.name for t in placeholders(outputs) if t not in given]
    if missing:
        raise DifferentiationError(f"the outputs read placeholders {missing} that are not in inputs")
    vars_given = {x for x in inputs if isinstance(x, tirx.Var)}
    missing = [v.name for v in scalars if v not in dims and v not in vars_given]
    if missing:
        raise DifferentiationError(
            f"the outputs read scalar variables {missing} that are not in inputs; add them to "
            f"inputs (the compiled function then takes a number at their positions).")
    return inputs


# kernels="auto" builds per kernel a graph of at least AUTO_KERNELS kernels that repeat (at most a
# third distinct) or that write at least AUTO_ELEMENTS tensor elements, and on CUDA every graph of
# at least AUTO_KERNELS kernels.  LLVM compiles each
# distinct kernel as a function of its own (about 0.1 s each here), so per kernel pays at build
# time where kernels repeat (unrolled steps, layers of one shape), and one PrimFunc, whose compile
# time grows superlinearly, is large; at run time it pays on every large graph measured (a GPT
# block's training step 1.7 s as one PrimFunc, 0.17 s per kernel).  A graph of many small
# distinct kernels stays one PrimFunc, which compiles faster (README, "Building, scheduling,
# tuning, CUDA").
AUTO_KERNELS = 24
AUTO_ELEMENTS = 1 << 20
_KERNELS = ("auto", "one", "many")


def _kernel_plan(kernels: str, lowered: list, inputs: list, hidden: list, target):
    """The kernels of a per-kernel build (kernels.partition), or None for one PrimFunc.  "many"
    refuses what the per-kernel build does not take: scalar
    parameters (call_tir passes tensors), variables that only occur inside dimensions (Relax binds
    plain ones only), and ops other than compute and extern ops."""
    if kernels == "one":
        return None
    why = ("it has scalar parameters (te.var inputs)" if any(isinstance(x, tirx.Var) for x in inputs)
           else f"variables {[v.name for v in hidden]} occur only inside dimensions" if hidden
           else "it has ops other than compute and extern ops" if not partitionable(lowered)
           else None)
    if why is not None:
        if kernels == "many":
            raise DifferentiationError(f"build(kernels='many'): this graph builds as one PrimFunc "
                                       f"only, as {why}; use kernels='one' or 'auto'")
        return None
    parts = partition(lowered)
    if kernels == "many":
        return parts
    if len(parts) < AUTO_KERNELS:
        return None
    if target.kind.name == "cuda":
        # dlight schedules a whole PrimFunc at once and inlines every injective block, across
        # what would be kernels: one PrimFunc of an unrolled recurrence recomputes each step's
        # chain in every later step (tests/test_scheduled_work.py).
        return parts
    return parts if 3 * distinct(parts) <= len(parts) or _elements(parts) >= AUTO_ELEMENTS else None


def _elements(parts) -> int:
    """The elements the kernels write (dimensions that are not constants count as 1)."""
    return sum(math.prod(int(d) if isinstance(d, tirx.IntImm) else 1 for d in t.shape)
               for k in parts for t in k.outputs)


def build(outputs, inputs=None, target="llvm", schedule: str | None = "default", *,
          kernels: str = "auto", trials: int = 64, work_dir: str | None = None,
          runner=None) -> Compiled:
    """Compile `outputs` (a tensor or a list) taking `inputs`: placeholders and scalar variables
    (te.var), in call order (default: every placeholder they read, then every free scalar
    variable that is not a placeholder dimension, each in first-use order).  The compiled
    function takes an array per placeholder and a number per scalar variable.

    target: "llvm" (this CPU, all cores), "cuda" (the device's arch, or sm_80 without a GPU), a
        dict such as {"kind": "cuda", "arch": "sm_86"}, or a tvm.target.Target.
    schedule: "default" (a schedule for every block: inlining, parallel and vector loops),
        None (unscheduled serial loops; CPU only), or "tune" (meta_schedule with `trials`
        measured candidates; records persist in `work_dir`, default ~/.cache/tvm_autodiff/tune,
        and a later build of the same graph reuses them).  `runner` measures elsewhere, e.g.
        `meta_schedule.runner.RPCRunner(RPCConfig(tracker_host, tracker_port, tracker_key))`.
    kernels: "one" (one PrimFunc for everything), "many" (a Relax module of one kernel per op
        with its single-use injective producers, `tvm_autodiff.kernels`; run on the Relax VM), or
        "auto" (many for graphs of at least AUTO_KERNELS kernels that repeat or are large, see
        AUTO_KERNELS; else one).  On CUDA each kernel gets dlight's rules alone, so that dlight's inlining
        cannot copy one kernel's work into another.
    """
    single = isinstance(outputs, te.Tensor)
    outputs = _outputs(outputs)
    inputs = _inputs(outputs, inputs)
    _check_options(schedule, trials=trials, work_dir=work_dir, kernels=kernels)
    target = resolve_target(target)
    _schedule.use_all_cores()
    # TVM's create_prim_func drops where= and init=, so they are folded into the bodies first.
    lowered, _ = fold_where_init(outputs)
    # Chains of views read their sources, so that the per-kernel build repeats each view at most
    # once per kernel (passes/views.py).
    lowered = compose_views(lowered)
    if target.kind.name == "llvm" and schedule is not None:
        # For the CPU tiles: sums of same-domain reductions are one reduction (passes/merge_sums.py),
        # window sums over rows that are not whole vectors run over one flat row (passes/pitch.py),
        # A·Bᵀ sums read a stored Bᵀ (passes/transpose.py).  The unscheduled build stays the plain
        # reference.
        lowered = transpose_columns(flatten_rows(merge_sums(lowered)))
    given = TensorMap((t, None) for t in inputs if isinstance(t, te.Tensor))
    computed = [t for t in unique_tensors(lowered) if t not in given]
    hidden = _unbound_dimensions(inputs, computed)
    parts = _kernel_plan(kernels, computed, inputs, hidden, target)
    if parts is not None:
        return _build_kernels(parts, inputs, lowered, computed, target, single,
                              lambda f: _lower(f, target, schedule, trials, work_dir, runner), schedule)
    func = te.create_prim_func(inputs + computed + hidden)
    # A PrimFunc holds no te.Tensor, so it hashes and compares structurally.
    key = (tvm_ffi.StructuralKey(func), str(target), schedule)
    if key not in _CACHE:
        scheduled = _lower(func, target, schedule, trials, work_dir, runner)
        executable, scheduled = _compile(func, scheduled, target, schedule)
        if target.kind.name == "cuda" and not any(m.kind == "cuda" for m in executable.mod.imports):
            raise RuntimeError("CUDA compilation produced no kernel (the function was not scheduled "
                               "for the GPU)")
        _CACHE[key] = (PrimFuncProgram(executable), scheduled)
    program, scheduled = _CACHE[key]
    return Compiled(program, inputs, lowered, target, {"main": scheduled}, single)


def _compile_kernel(func, scheduled: Scheduled, name: str, target, schedule) -> Scheduled:
    """`_compile` for one kernel of a Relax module, as a public function of its own (TVM compiles
    a PrimFunc without a global symbol only inside a module that calls it)."""
    def public(f):
        return f.with_attr("global_symbol", name)
    _, compiled = _compile(public(func), Scheduled(public(scheduled.func), scheduled.choices),
                           target, schedule)
    return Scheduled(compiled.func.without_attr("global_symbol"), compiled.choices)


def _build_kernels(parts, inputs, lowered, computed, target, single, lower, schedule) -> Compiled:
    """A per-kernel build: the Relax module of `parts` (kernel_module.py), each distinct kernel
    lowered by `lower` and, where it does not compile, by `_fallbacks`; run on the Relax VM."""
    tensors = [t for t in inputs if isinstance(t, te.Tensor)]
    mod, calls = kernel_module(parts, tensors, computed)
    key = (tvm_ffi.StructuralKey(mod), str(target), schedule)
    if key not in _CACHE:
        lowered_kernels = lower_kernels(mod, lower)
        scheduled = {name: _guarded(s, target) for name, s in lowered_kernels.items()}
        try:
            executable = tvm.compile(replace_kernels(mod, scheduled), target=target)
        except (RuntimeError, ValueError):
            # Compile each kernel alone, so that the ones that fail get their fallbacks (warned).
            scheduled = {name: _compile_kernel(mod[name], s, name, target, schedule)
                         for name, s in lowered_kernels.items()}
            executable = tvm.compile(replace_kernels(mod, scheduled), target=target)
        device = tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)
        _CACHE[key] = (VMProgram(executable, device, len(tensors)), scheduled,
                       replace_kernels(mod, scheduled))
    program, scheduled, scheduled_mod = _CACHE[key]
    return Compiled(program, inputs, lowered, target, scheduled, single, module=scheduled_mod,
                    calls=calls)
