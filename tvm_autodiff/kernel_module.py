"""A partitioned graph as a Relax module of `call_tir` kernels, run on the Relax VM.

    main(inputs) = (o_1, ..., o_m)   with one binding  t_K = call_tir(kernel_K, reads_K)  per kernel
                                     K of `kernels.partition`, in topological order

Each distinct kernel PrimFunc (structurally: the identical steps of an unrolled recurrence are
one) is scheduled once (`lower_kernels`, by the caller's rule) and compiled once.  TVM's Relax
pipeline then plans the intermediate tensors' memory (StaticPlanBlockMemory) and frees each after
its last use; it fuses nothing, because the kernels are already fused (kernels.py).
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

import tvm
from tvm import relax, te, tirx

from .ir.expr import free_vars, simplify, substitute
from .ir.graph import TensorMap
from .kernels import Kernel


def _relax_shape(shape, shape_vars: dict) -> list:
    """`shape` in Relax's int64 shape variables (`shape_vars`: {TE variable: int64 variable},
    extended here): Relax shapes are int64, TE's variables usually int32."""
    def var64(v):
        return shape_vars.setdefault(v, tirx.Var(v.name, "int64"))

    def dim(d):
        if isinstance(d, tirx.IntImm):
            return int(d)
        if isinstance(d, tirx.Var):     # a plain variable, so that Relax binds it from the input
            return var64(d)
        narrowed = {v: tirx.Cast(str(v.ty.dtype), var64(v)) for v in free_vars(d)}
        return simplify(tirx.Cast("int64", substitute(d, narrowed)))
    return [dim(d) for d in shape]


def kernel_module(kernels: list[Kernel], inputs: list, outputs: list) -> tuple[tvm.IRModule, Counter]:
    """(the Relax module with unscheduled kernels, {kernel name: calls per run}) computing
    `outputs` from the placeholders `inputs`.  The BlockBuilder keeps one PrimFunc for kernels
    that are structurally equal."""
    bb = relax.BlockBuilder()
    shape_vars: dict = {}

    def _tensor_type(t: te.Tensor):
        return relax.TensorType(_relax_shape(t.shape, shape_vars), str(t.dtype))

    values = TensorMap((t, relax.Var(t.op.name, _tensor_type(t))) for t in inputs)
    calls: Counter = Counter()
    with bb.function("main", [values[t] for t in inputs]):
        with bb.dataflow():
            for kernel in kernels:
                gv = bb.add_func(kernel.prim_func.without_attr("global_symbol"), kernel.root.name)
                calls[gv.name_hint] += 1
                outs = kernel.outputs
                types = [_tensor_type(t) for t in outs]
                value = bb.emit(relax.call_tir(gv, [values[t] for t in kernel.inputs],
                                               types if len(types) > 1 else types[0]))
                if len(outs) == 1:
                    values[outs[0]] = value
                else:
                    values.update((t, bb.emit(relax.TupleGetItem(value, i))) for i, t in enumerate(outs))
            result = bb.emit_output(relax.Tuple([values[t] for t in outputs]))
        bb.emit_func_output(result)
    return bb.get(), calls


def lower_kernels(mod: tvm.IRModule, lower: Callable) -> dict:
    """{kernel name: lower(its PrimFunc)} for every kernel of `mod`."""
    return {gv.name_hint: lower(f) for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def replace_kernels(mod: tvm.IRModule, scheduled: dict) -> tvm.IRModule:
    """mod with the kernels named in `scheduled` replaced by their scheduled PrimFuncs."""
    mod = mod.clone()
    for gv in list(mod.functions):
        if gv.name_hint in scheduled:
            mod[gv] = scheduled[gv.name_hint].func
    return mod


class VMProgram:
    """The compiled module's `main` on the Relax VM, called as a one-PrimFunc executable is:
    `program(*inputs, *outputs)` computes into the output tensors.  A VM keeps its registers and
    memory pool in itself, so calls from several threads take turns (a lock); a one-PrimFunc
    executable has no such state.  A CUDA build made where no GPU is present has no VM: it can
    only be inspected or exported (`Compiled` refuses to run it)."""

    def __init__(self, executable, device, n_inputs: int):
        self.executable, self.device, self.n_inputs = executable, device, n_inputs
        self.vm = relax.VirtualMachine(executable, device) if device.exist else None
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            results = self.vm["main"](*args[:self.n_inputs])
            for out, value in zip(args[self.n_inputs:], results):
                out.copyfrom(value)

    def time(self, args, device, **timer) -> float:
        """Median seconds of one `main` call on the VM (the outputs' copies excluded)."""
        timer = self.vm.time_evaluator("main", device, **timer)
        with self.lock:
            return float(timer(*args[:self.n_inputs]).median)

    def source(self, cuda: bool) -> str:
        return device_source(self.executable.mod.imports[0], cuda)


def device_source(library, cuda: bool) -> str:
    """The kernels' code in a compiled `library` module: the CUDA C of its CUDA import, or its
    LLVM IR."""
    return next(m for m in library.imports if m.kind == "cuda").inspect_source() if cuda \
        else library.inspect_source("ll")
