"""A guard against TVM 0.27 miscompiling some integer-division load indices.

FlattenBuffer runs iter-map simplification (`tvm.sym.iter_map_simplify`) on every buffer index.
In TVM 0.27 it is wrong for divisions whose numerator carries a constant offset or another
division, for example (i in [0, 12)):

    (i % 3 + 2) // 3                  ->  (i + 2) % 3 // 3          (always 0)
    i // 3 + (i % 3 + 2) // 3 - 1     ->  (i + 2) // 3 - 2          (off by one)
    i // 2 * 2 + (i + 1) // 2         ->  (i + 1) // 2 * 3 - 2

The adjoint of a strided read with an offset, `Y[i] = X[3i + 1]`, is exactly such an index
(X̄[j] = Ȳ[(j - 1) // 3] where (j - 1) % 3 == 0), so gradients would come out silently wrong.
The rewrite is skipped for indices the iter-map detector does not understand, such as an opaque
bit cast, so a risky index gets one:

    B[..., e, ...]  ->  B[..., reinterpret<int32>(e), ...]      (e risky, in the sense of `risky`)

The cast is free in LLVM and leaves every other index to TVM's simplifier.  (A `let` would hide
the index too, but TVM's later passes duplicate subexpressions, e.g. when lowering tanh, and then
bind the same let variable twice.)
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from ..ir.expr import is_float

_DIVISIONS = (tirx.FloorDiv, tirx.FloorMod)


def _addends(e) -> list:
    """The top-level terms of a sum (a - b counts b as a term)."""
    if isinstance(e, (tirx.Add, tirx.Sub)):
        return _addends(e.a) + _addends(e.b)
    return [e]


def _has_division(e) -> bool:
    hit = tvm_ffi.structural_walk(e, [(t, lambda _: tvm_ffi.VisitInterrupt(True)) for t in _DIVISIONS])
    return hit is not None


def risky(index) -> bool:
    """Whether some integer a // d or a % d in index has a nonzero constant term in a, or a
    division inside a: the shapes iter-map simplification gets wrong."""
    def visit(e):
        if is_float(e):
            return None
        offset = any(isinstance(t, tirx.IntImm) and t.value != 0 for t in _addends(e.a))
        return tvm_ffi.VisitInterrupt(True) if offset or _has_division(e.a) else None

    return tvm_ffi.structural_walk(index, [(t, visit) for t in _DIVISIONS]) is not None


def guard_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """func with every risky load index behind an opaque cast (see the module docstring).  `build`
    applies it; apply it yourself before `tvm.compile` on a gradient you scheduled by hand."""
    def guard(load):
        flags = [risky(i) for i in load.indices]
        if not any(flags):
            return load
        return tirx.BufferLoad(load.source, [
            tirx.call_intrin(str(i.ty.dtype), "tirx.reinterpret", i) if flag else i
            for i, flag in zip(load.indices, flags)])

    return tvm_ffi.structural_map(func, (tvm.ir.TensorLoad, guard))
