"""Data-dependent gathers: a sum over a bracket on tensor data becomes a scatter-add.

The adjoint of a gather Y[r, q] = X[g(r, q), q] (topi.take, embedding lookups) is

    dX[o, q] = Σ_r [o == g(r, q)] · v(r, o, q)

No index equation can be solved for r (g reads tensor data), so as a reduction it costs
|X| · |r|.  As a scatter it costs |X| + |r| · |q|:

    dX = 0;   for q, r:  dX[g(r, q), q] += v(r, g(r, q), q)

with the innermost q in contiguous chunks inside r (`_add_nest`).
TE has no scatter, so the loop nest is a te.extern op with a hand-built TIR body (tagged
`SCATTER_TAG`).  Iterations over q are independent (each writes its own slice of dX), which keeps
it parallelizable.  Writing the adjoint of a gather as a scatter follows Li et al.,
"Differentiable programming for image processing and deep learning in Halide" (SIGGRAPH 2018).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var

from tvm_autodiff.ir.expr import cast, free_vars, reads, substitute
from tvm_autodiff.ir.graph import (INDEPENDENT_LOOP, LANES_LOOP, SCATTER_TAG, TensorMap, is_load,
                                  unique_tensors)


@dataclass(frozen=True)
class ScatterAtom:
    """atoms[index] is the bracket [var == gather]: an outer variable equal to an index that reads
    tensor data and does not mention it."""
    index: int
    var: Var
    gather: object


def scatter_atom(atoms: Sequence, outer_vars: Sequence[Var]) -> Optional[ScatterAtom]:
    """The first atom of `atoms` of the form o == g (or g == o) with o in `outer_vars` and g an
    index that reads tensor data and does not mention o; None if there is none."""
    outer = set(outer_vars)
    for n, a in enumerate(atoms):
        if not isinstance(a, tirx.EQ):
            continue
        for o, g in ((a.a, a.b), (a.b, a.a)):
            if isinstance(o, Var) and o in outer and reads(g) and o not in free_vars(g):
                return ScatterAtom(n, o, g)
    return None


def scatter_add(name: str, axes: Sequence[tirx.IterVar], o: Var, g, red: Sequence[tuple], value,
                dtype: str) -> te.Tensor:
    """The tensor T over `axes` with T[o, q] = Σ_{k ∈ red} [o == g(k, q)] value(k, o, q).

    red: ((k, extent), ...) with extents in the q variables only."""
    shape = [iv.dom.extent for iv in axes]
    value = substitute(value, {o: cast(g, str(o.ty.dtype))})
    inputs = unique_tensors(reads(value) + reads(g))

    def fcompute(ins, outs):
        out, buffers = outs[0], TensorMap(zip(inputs, ins))
        as_buffer = lambda e: tvm_ffi.structural_map(
            e, (Call, lambda c: tirx.BufferLoad(buffers[c.args[0]], list(c.args[1:])) if is_load(c) else c))
        # Zero the output, then add every term at its data-dependent position.
        zero = _zero_nest(out, axes, dtype)
        index = [as_buffer(g) if iv.var.same_as(o) else iv.var for iv in axes]
        index = [cast(i, str(iv.var.ty.dtype)) for i, iv in zip(index, axes)]
        add = tirx.BufferStore(out, tirx.BufferLoad(out, index) + as_buffer(value), index)
        return tirx.SeqStmt([zero, _add_nest(add, [iv for iv in axes if not iv.var.same_as(o)], red)])

    return te.extern(shape, inputs, fcompute, name=name, dtype=dtype, tag=SCATTER_TAG)


# Elements of the innermost output axis that one iteration of the independent loop adds: a
# multiple of every machine vector, and 256 bytes of float32 (four cache lines).
CHUNK = 64


def _loop(var, extent, body, annotation=None):
    return tirx.For(var, 0, extent, tirx.ForKind.SERIAL, body,
                    annotations=None if annotation is None else {annotation: 1})


def _chunked(store, var: Var, extent):
    """The chunk loops of `var` in [0, extent), C = CHUNK elements each: (qo, its extent, the
    lanes loop `for qi: store[var := qo·C + qi]` (guarded past the extent), and qo·C + qi)."""
    chunk = min(CHUNK, extent.value) if isinstance(extent, tirx.IntImm) else CHUNK
    exact = isinstance(extent, tirx.IntImm) and extent.value % chunk == 0
    qo, qi = (Var(var.name + s, str(var.ty.dtype)) for s in ("_o", "_i"))
    q = qo * chunk + qi
    body = substitute(store, {var: q}) if exact else \
        tirx.IfThenElse(q < extent, substitute(store, {var: q}), None)
    return qo, (extent + chunk - 1) // chunk, _loop(qi, chunk, body, LANES_LOOP), q


def _zero_nest(out, axes: Sequence[tirx.IterVar], dtype: str):
    """out = 0, as: for the first axis (independent): for the middle axes: for chunks of the last
    axis: for its lanes."""
    zvars = [Var(iv.var.name + "_z", str(iv.var.ty.dtype)) for iv in axes]
    zero = tirx.BufferStore(out, tirx.const(0, dtype), zvars)
    if len(axes) < 2:
        return _loop(zvars[0], axes[0].dom.extent, zero, INDEPENDENT_LOOP) if axes else zero
    qo, chunks, nest, _ = _chunked(zero, zvars[-1], axes[-1].dom.extent)
    nest = _loop(qo, chunks, nest)
    for n, (v, iv) in reversed(list(enumerate(zip(zvars[:-1], axes[:-1])))):
        nest = _loop(v, iv.dom.extent, nest, INDEPENDENT_LOOP if n == 0 else None)
    return nest


def _add_nest(add, qs: Sequence[tirx.IterVar], red: Sequence[tuple]):
    """The loops of the adds.  With q_last = qo·C + qi split in chunks of C = CHUNK elements:

        for q_1..q_{n-1}:  for qo (independent):  for k:  for qi (lanes):  dX[g, q] += v

    Chunks of q write disjoint columns of dX, so qo can run in parallel (the reductions k must
    stay serial: two k may hit the same row), and qi walks contiguous elements of one row.  A
    last chunk that runs past the extent is guarded.  Where a reduction's extent depends on
    q_last, the plain order: for q: for k: add.  Every loop gets a fresh variable: two scatters of
    one graph share the adjoint's axis variables, and one PrimFunc may define a variable once."""
    fresh = {v: Var(v.name, str(v.ty.dtype)) for v in [iv.var for iv in qs] + [k for k, _ in red]}
    add = substitute(add, fresh)
    qs = [(fresh[iv.var], iv.dom.extent) for iv in qs]
    red = [(fresh[k], substitute(e, fresh)) for k, e in red]
    if not qs or any(qs[-1][0] in free_vars(e) for _, e in red):    # k's extent needs q_last
        for k, extent in reversed(red):
            add = _loop(k, extent, add)
        for v, extent in reversed(qs):
            add = _loop(v, extent, add)
        return add
    last, last_extent = qs[-1]
    qo, chunks, nest, q = _chunked(add, last, last_extent)
    for k, k_extent in reversed(red):
        nest = _loop(k, substitute(k_extent, {last: q}), nest)
    nest = _loop(qo, chunks, nest, INDEPENDENT_LOOP)
    for v, extent in reversed(qs[:-1]):
        nest = _loop(v, extent, nest)
    return nest
