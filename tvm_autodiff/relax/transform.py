"""The one-call pass, and what the emitted gradient kernels need before tvm.compile.

    Gradient(func, require_grads, target_index, target)   (mod) -> register_gradients() +
                                                          relax.transform.Gradient +
                                                          prepare_gradients(·, target)
    prepare_gradients(mod, target=None, kernels="ours")   each PrimFunc that rule.py emitted
                                                          (marked GRADIENT_ATTR; "all": every
                                                          PrimFunc not prepared yet): the default
                                                          schedule of `target` where it is
                                                          measured faster (none when target is
                                                          None), then guard_indices

Scheduling every kernel made a small transformer's training step 1.4x slower (the parallel loops
of tiny kernels cost more than they save), so on CPU each kernel keeps the schedule only if it
runs faster than the plain loops, timed on random inputs; a kernel with symbolic shapes cannot be
timed and keeps its plain loops, and one whose schedule does not compile as well.  CUDA kernels
always get the GPU schedule (unscheduled CUDA code runs on the host).

guard_indices hides the load indices that TVM 0.27 miscompiles (README, "Building, scheduling,
tuning, CUDA"); other kernels (TVM's gradients, the legalized forward) are left as they are unless
kernels="all".  After SetupTrainer (which runs
relax.transform.Gradient itself) call prepare_gradients on the train module.
"""
from __future__ import annotations

import warnings

import tvm
from tvm import relax, tirx

from ..compile import resolve_target
from ..schedule import schedule_cpu, schedule_gpu
from ..tir import guard_indices
from ..tuning import measure
from .register import register_gradients
from .rule import FAILURES, GRADIENT_ATTR


# Each prepared kernel says which it runs: "default" (the schedule) or "plain" (the loops).
SCHEDULE_ATTR = "tvm_autodiff.schedule"
# The schedule must win clearly: timing microsecond kernels on a busy machine is noisy.
_MARGIN = 0.9


def _static(func: tirx.PrimFunc) -> bool:
    """Whether every buffer of func has a constant shape (only such kernels can be timed)."""
    return all(isinstance(d, tirx.IntImm) for p in func.params for d in p.shape)


def _schedule(func: tirx.PrimFunc, target, name: str) -> tirx.PrimFunc:
    """The kernel the train step runs (module docstring): GPU schedule for CUDA; on CPU the
    default schedule if measured faster than the plain loops."""
    if target.kind.name == "cuda":
        return guard_indices(schedule_gpu(func, target).func).with_attr(SCHEDULE_ATTR, "default")
    plain = guard_indices(func).with_attr(SCHEDULE_ATTR, "plain")
    if not _static(func):
        return plain
    scheduled = guard_indices(schedule_cpu(func, target).func).with_attr(SCHEDULE_ATTR, "default")
    try:
        fast = measure(scheduled, target, repeat=3)
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"prepare_gradients: the default schedule of kernel {name!r} does not compile "
                      f"({str(err).splitlines()[-1][:200]}); it keeps plain loops")
        return plain
    return scheduled if fast < _MARGIN * measure(plain, target, repeat=3) else plain


def prepare_gradients(mod: tvm.IRModule, target=None, kernels: str = "ours") -> tvm.IRModule:
    """`mod` with its tvm_autodiff gradient kernels (kernels="all": every PrimFunc, e.g. the
    legalized forward and TVM's own gradients of a SetupTrainer module) scheduled for `target`
    (if given) and their indices guarded (module docstring)."""
    if kernels not in ("ours", "all"):
        raise ValueError(f"prepare_gradients: kernels must be 'ours' or 'all', not {kernels!r}")
    target = None if target is None else resolve_target(target)
    mod = mod.clone()
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and SCHEDULE_ATTR in func.attrs:
            continue
        if kernels == "all" or func.attrs is not None and GRADIENT_ATTR in func.attrs:
            mod[gv] = guard_indices(func) if target is None else _schedule(func, target, gv.name_hint)
    return mod


class Gradient:
    """relax.transform.Gradient with every op's gradient registered and the kernels prepared, called
    as a pass is: `Gradient(func, require_grads)(mod)`.  It is a plain callable, not a
    tvm.transform.Pass, because TVM's FFI turns any exception that leaves a pass into a
    RuntimeError; this way a DifferentiationError from an op's rule comes out as itself."""

    def __init__(self, func_name: str = "main", require_grads=None, target_index: int = 0, target=None):
        self.func_name, self.require_grads, self.target_index = func_name, require_grads, target_index
        self.target = target

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        register_gradients()
        FAILURES.last = None
        try:
            mod = relax.transform.Gradient(self.func_name, self.require_grads, self.target_index)(mod)
        except RuntimeError as err:
            if FAILURES.last is not None:
                raise FAILURES.last from err
            raise
        return prepare_gradients(mod, self.target)
