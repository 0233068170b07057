"""Data-dependent gathers: a sum over a bracket on tensor data becomes a scatter-add.

The adjoint of a gather Y[r, q] = X[g(r, q), q] (topi.take, embedding lookups) is

    dX[o, q] = Σ_r [o == g(r, q)] · v(r, o, q)

No index equation can be solved for r (g reads tensor data), so as a reduction it costs
|X| · |r|.  As a scatter it costs |X| + |r| · |q|:

    dX = 0;   for q, r:  dX[g(r, q), q] += v(r, g(r, q), q)

with the innermost q in contiguous chunks inside r (`_add_nest`).  Once one bracket is on data,
every other bracket [o' == h(r, q)] that the index solver left (h not affine in r, such as the
floor of a float coordinate) is scattered too: o' leaves q, and the work drops by o''s extent
again.  HDRNet's bilateral grid (benchmarks/models_defs.py) reads grid[z(guide[y, x]), y(y),
x(x)]: scattering z alone still loops over every (y', x') cell for each pixel.

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

from tvm_autodiff.ir.expr import cast, free_vars, is_const, reads, substitute
from tvm_autodiff.ir.graph import (INDEPENDENT_LOOP, LANES_LOOP, SCATTER_TAG, TensorMap, is_load,
                                  unique_tensors)


@dataclass(frozen=True)
class ScatterAtom:
    """atoms[index] is the bracket [var == gather]: an outer variable equal to an index that does
    not mention it."""
    index: int
    var: Var
    gather: object


def _bracket(a, outer: set, found: list, on_data: bool) -> Optional[tuple]:
    """(o, g) if atom a is o == g (or g == o) with o in `outer`, g not mentioning o, and, against
    the brackets `found` so far, o neither scattered nor read by their indices and g mentioning no
    scattered variable; g must read tensor data if `on_data`, else mention some variable outside
    `outer` (a bracket on the outer variables alone is a plain condition)."""
    if not isinstance(a, tirx.EQ):
        return None
    chosen = {f.var for f in found}
    read = {v for f in found for v in free_vars(f.gather)}
    for o, g in ((a.a, a.b), (a.b, a.a)):
        if not (isinstance(o, Var) and o in outer) or o in chosen or o in read:
            continue
        used = set(free_vars(g))
        if o in used or used & chosen:
            continue
        if reads(g) if on_data else bool(used - outer):
            return o, g
    return None


def scatter_atoms(atoms: Sequence, outer_vars: Sequence[Var]) -> list[ScatterAtom]:
    """The brackets of `atoms` to scatter (module docstring): the first atom o == g with o in
    `outer_vars` and g reading tensor data, then every further bracket on another outer variable
    that `_bracket` admits; [] if no bracket reads data."""
    outer, found = set(outer_vars), []
    for on_data in (True, False):
        for n, a in enumerate(atoms):
            if any(f.index == n for f in found) or (on_data and found):
                continue
            hit = _bracket(a, outer, found, on_data)
            if hit is not None:
                found.append(ScatterAtom(n, *hit))
        if not found:
            return []
    return found


def scatter_add(name: str, axes: Sequence[tirx.IterVar], parts: Sequence[tuple], dtype: str) -> te.Tensor:
    """The tensor T over `axes` with

        T[o, q] = Σ_parts Σ_{k ∈ red} Π_i [o_i == g_i(k, q)] value(k, o, q)

    parts: ((scattered, red, value), ...) with scattered = ((o_i, g_i), ...), the g_i free of
    every o_j, and red = ((k, extent), ...), extents in the q variables only.  One zeroing for all
    parts, and one loop nest for the parts that keep the same axes and sum over boxes of the same
    extents: they share the loads and the index arithmetic of one iteration (the eight corners of
    a trilinear read)."""
    shape = [iv.dom.extent for iv in axes]
    parts = [(tuple(sc), tuple(red), substitute(value, {o: cast(g, str(o.ty.dtype)) for o, g in sc}))
             for sc, red, value in parts]
    inputs = unique_tensors([t for sc, _, value in parts for t in reads(value) + [u for _, g in sc for u in reads(g)]])

    def fcompute(ins, outs):
        out, buffers = outs[0], TensorMap(zip(inputs, ins))
        as_buffer = lambda e: tvm_ffi.structural_map(
            e, (Call, lambda c: tirx.BufferLoad(buffers[c.args[0]], list(c.args[1:])) if is_load(c) else c))
        nests = {}   # (kept axes, box extents) -> (kept, red, [store, ...])
        for sc, red, value in parts:
            index = [next((as_buffer(g) for o, g in sc if iv.var.same_as(o)), iv.var) for iv in axes]
            index = [cast(i, str(iv.var.ty.dtype)) for i, iv in zip(index, axes)]
            kept = [n for n, iv in enumerate(axes) if not any(iv.var.same_as(o) for o, _ in sc)]
            key = (tuple(kept), tvm_ffi.StructuralKey(tuple(ext for _, ext in red)))
            if key not in nests:
                nests[key] = ([axes[n] for n in kept], red, [])
            # The nest's reduce variables stand for this part's (same extents, so same box).
            rename = {k: k0 for (k, _), (k0, _) in zip(red, nests[key][1])}
            store = tirx.BufferStore(out, tirx.BufferLoad(out, index) + as_buffer(value), index)
            nests[key][2].append(substitute(store, rename))
        adds = [_add_nest(tirx.SeqStmt(stores) if len(stores) > 1 else stores[0], kept, red)
                for kept, red, stores in nests.values()]
        return tirx.SeqStmt([_zero_nest(out, axes, dtype), *adds])

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
    q_last, the plain order: for q: for k: add.  Where q_last is one chunk, q_1 is the independent
    loop instead (distinct q_1 write distinct slices too), so that the nest is still parallel.
    Every loop gets a fresh variable: two scatters of one graph share the adjoint's axis
    variables, and one PrimFunc may define a variable once."""
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
    outer_independent = is_const(chunks, 1) and len(qs) > 1
    nest = _loop(qo, chunks, nest, None if outer_independent else INDEPENDENT_LOOP)
    for n, (v, extent) in reversed(list(enumerate(qs[:-1]))):
        nest = _loop(v, extent, nest, INDEPENDENT_LOOP if outer_independent and n == 0 else None)
    return nest
