"""Data-dependent gathers: a sum over a bracket on tensor data becomes a scatter-add.

The adjoint of a gather Y[r, q] = X[g(r, q), q] (topi.take, embedding lookups) is

    dX[o, q] = Σ_r [o == g(r, q)] · v(r, o, q)

No index equation can be solved for r (g reads tensor data), so as a reduction it costs
|X| · |r|.  As a scatter it costs |X| + |r| · |q|:

    dX = 0;   for q, r:  dX[g(r, q), q] += v(r, g(r, q), q)

TE has no scatter, so the loop nest is a te.extern op with a hand-built TIR body.  Iterations
over q are independent (each writes its own slice of dX), which keeps it parallelizable.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var

from tvm_autodiff.graph import TensorMap, is_load, unique_tensors
from tvm_autodiff.reductions import substitute


def reads(e) -> list:
    found = []
    tvm_ffi.structural_walk(e, (Call, lambda c: found.append(c.args[0]) if is_load(c) else None))
    return found


def loads_only(e) -> bool:
    """Whether every call in e is a tensor read: loads and arithmetic, nothing like exp."""
    hit = tvm_ffi.structural_walk(e, (Call, lambda c: None if is_load(c) else tvm_ffi.VisitInterrupt(True)))
    return hit is None


def free_vars(e) -> set:
    found = set()
    tvm_ffi.structural_walk(e, (Var, lambda v: found.add(v)))
    return found


# The tag of scatter-add extern ops, so that differentiate() can say where one came from.
SCATTER_TAG = "tvm_autodiff.scatter_add"


def scatter_atom(atoms: Sequence, outer_vars: Sequence[Var], red_vars: Sequence[Var]) -> Optional[tuple]:
    """(n, o, g) for the first atom atoms[n] of the form o == g with o an outer variable and g an
    index that reads tensor data and does not mention o; None if there is none."""
    outer = set(outer_vars)
    for n, a in enumerate(atoms):
        if not isinstance(a, tirx.EQ):
            continue
        for o, g in ((a.a, a.b), (a.b, a.a)):
            if isinstance(o, Var) and o in outer and reads(g) and o not in free_vars(g):
                return n, o, g
    return None


def scatter_add(name: str, axes: Sequence[tirx.IterVar], o: Var, g, red: Sequence[tuple], value,
                dtype: str) -> te.Tensor:
    """The tensor T over `axes` with T[o, q] = Σ_{k ∈ red} [o == g(k, q)] value(k, o, q).

    red: ((k, extent), ...) with extents in the q variables only."""
    shape = [iv.dom.extent for iv in axes]
    value = substitute(value, {o: tirx.Cast(str(o.ty.dtype), g) if str(g.ty.dtype) != str(o.ty.dtype) else g})
    inputs = unique_tensors(reads(value) + reads(g))

    def fcompute(ins, outs):
        out, buffers = outs[0], TensorMap(zip(inputs, ins))
        as_buffer = lambda e: tvm_ffi.structural_map(
            e, (Call, lambda c: tirx.BufferLoad(buffers[c.args[0]], list(c.args[1:])) if is_load(c) else c))
        # Zero the output, then add every term at its data-dependent position.
        zvars = [Var(iv.var.name + "_z", str(iv.var.ty.dtype)) for iv in axes]
        zero = tirx.BufferStore(out, tirx.const(0, dtype), zvars)
        for v, iv in reversed(list(zip(zvars, axes))):
            zero = tirx.For(v, 0, iv.dom.extent, tirx.ForKind.SERIAL, zero)
        index = [as_buffer(g) if iv.var.same_as(o) else iv.var for iv in axes]
        index = [tirx.Cast(str(iv.var.ty.dtype), i) if str(i.ty.dtype) != str(iv.var.ty.dtype) else i
                 for i, iv in zip(index, axes)]
        add = tirx.BufferStore(out, tirx.BufferLoad(out, index) + as_buffer(value), index)
        for k, extent in reversed(list(red)):
            add = tirx.For(k, 0, extent, tirx.ForKind.SERIAL, add)
        for iv in reversed([iv for iv in axes if not iv.var.same_as(o)]):
            add = tirx.For(iv.var, 0, iv.dom.extent, tirx.ForKind.SERIAL, add)
        return tirx.SeqStmt([zero, add])

    return te.extern(shape, inputs, fcompute, name=name, dtype=dtype, tag=SCATTER_TAG)
