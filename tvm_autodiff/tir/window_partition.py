"""Splitting a flattened window reduction into edge regions and a guard-free interior.

A flattened window block (`flatten_windows`) is guarded everywhere, although the guard only fails
near the edges of its innermost spatial axis l.  For the largest interior [lo, hi) on which the
analyzer proves the guard and simplifies the window's min/max away, the loads are affine in l (a
stride-1 conv's input gradient reads H[.., l - r]), so the interior vectorizes with contiguous
loads:

    Y[l] = init;   Y[l] += guarded f(l, r)        for l in [0, L)
      ==>
    Y[l] = init                                   for l in [0, L)
    Y[l] += guarded f(l, r)                       for l in [0, lo) and [hi, L)   (blocks Y_lo, Y_hi)
    Y[l] += f(l, r)                               for l in [lo, hi)              (block Y)

The regions are blocks writing disjoint parts of the output, without an init of their own (a
reduction block with init must be its buffer's only writer), so their loops are scheduled here:
the schedule's parallel primitive rejects reductions without init.
"""
from __future__ import annotations

from typing import Callable, Optional

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from ..ir.expr import flatten
from .guarded_update import guarded
from .nodes import LOAD_TYPE, canonical_nest, fresh_vars, loop_nest, peel_loops, rename, uses, vector_factor

# Widest edge region split off a guarded window loop.
MAX_EDGE = 8


def _simplified(store, ana):
    """`store` with its indices and loaded indices simplified (under `ana`'s constraints)."""
    def load(l):
        return tirx.BufferLoad(l.source, [ana.simplify(i) for i in l.indices])

    value = ana.simplify(tvm_ffi.structural_map(store.value, (LOAD_TYPE, load)))
    return tirx.BufferStore(store.buffer, value, [ana.simplify(i) for i in store.indices])


def _window_free(store, var) -> bool:
    """No min/max/select that depends on `var` is left in `store` (its loads are affine in it)."""
    def hit(e):
        return tvm_ffi.VisitInterrupt(True) if uses(e, var) else None

    kinds = [(tirx.Min, hit), (tirx.Max, hit), (tirx.Select, hit)]
    return (tvm_ffi.structural_walk(store.value, kinds) is None
            and all(tvm_ffi.structural_walk(i, kinds) is None for i in store.indices))


def _simplify_cond(cond, ana):
    """`cond` simplified, or a true constant when the analyzer proves it."""
    return tirx.const(True, "bool") if ana.can_prove(cond) else ana.simplify(cond)


def _interior(guard, var, extent: int) -> Optional[tuple[int, int, object]]:
    """(lo, hi, unguarded update) for the widest interior [lo, hi) of `var` (at most MAX_EDGE
    points cut off each side, at least half the axis left) where the guard's conjuncts on `var`
    hold and the update is window-free; None when there is none."""
    conjuncts = flatten(guard.cond, tirx.And)
    on_var = [c for c in conjuncts if uses(c, var)]
    rest = [c for c in conjuncts if not uses(c, var)]
    if not on_var:
        return None
    ana = guard.analyzer
    for total in range(0, 2 * MAX_EDGE + 1):
        for lo in range(0, min(total, MAX_EDGE) + 1):
            hi = extent - (total - lo)
            if total - lo > MAX_EDGE or 2 * (hi - lo) < extent:
                continue
            with ana.constraint_scope(tirx.all(var >= lo, var < hi)):
                if not all(ana.can_prove(c) for c in on_var):
                    continue
                inner = _simplified(guard.store, ana)
                if _window_free(inner, var):
                    # Guards that do not depend on `var` stay (clamping only their loads).
                    return lo, hi, guarded(inner, tirx.all(*rest), ana) if rest else inner
    return None


def _init_nest(block, loops, predicate):
    """The loop nest of a spatial block that runs `block`'s init over its spatial iter vars."""
    fresh = fresh_vars(block.iter_vars)
    keep = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tirx.IterVar.DataPar]
    ivs = [tirx.IterVar(block.iter_vars[i].dom, fresh[block.iter_vars[i].var], tirx.IterVar.DataPar)
           for i in keep]
    init = s_tir.SBlock(ivs, [], [rename(w, fresh) for w in block.writes], block.name_hint + "_init",
                        rename(block.init, fresh))
    lvs = [tirx.Var(loops[i].loop_var.name, loops[i].loop_var.ty.dtype) for i in keep]
    return loop_nest(s_tir.SBlockRealize(lvs, predicate, init),
                     [(lv, loops[i].extent) for i, lv in zip(keep, lvs)])


def _region_block(block, body, pos: int, start: int, stop: int, suffix: str):
    """`block` restricted to [start, stop) along iter var `pos`, with update `body` and no init."""
    dt = str(block.iter_vars[pos].var.ty.dtype)
    fresh = fresh_vars(block.iter_vars)
    ivs = [tirx.IterVar(iv.dom, fresh[iv.var], iv.iter_type) for iv in block.iter_vars]
    ivs[pos] = tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.const(start, dt), tirx.const(stop - start, dt)),
                            fresh[block.iter_vars[pos].var], tirx.IterVar.DataPar)
    return s_tir.SBlock(ivs, [rename(r, fresh) for r in block.reads],
                        [rename(w, fresh) for w in block.writes], block.name_hint + suffix,
                        rename(body, fresh), None, list(block.alloc_buffers),
                        list(block.match_buffers), dict(block.annotations))


def _update_nest(block, loops, predicate, pos, start, extent, lanes):
    """The loops of one region's update block.  Order: outermost spatial loop parallel, other
    spatial loops, reduction loops, then the region's loop (`pos`, `extent` iterations from
    `start`) split into vector lanes when a factor divides it, or else (scalar) with the other
    spatial loops, so each output element accumulates in a register over consecutive iterations."""
    dt = str(block.iter_vars[pos].var.ty.dtype)
    lvs = [tirx.Var(l.loop_var.name, l.loop_var.ty.dtype) for l in loops]
    binds = list(lvs)
    factor = vector_factor(extent, lanes) if lanes else None
    inner = []
    if factor and factor < extent:
        vo, vi = tirx.Var(lvs[pos].name + "_o", dt), tirx.Var(lvs[pos].name + "_v", dt)
        binds[pos] = vo * factor + vi
        inner = [(vo, extent // factor, tirx.ForKind.SERIAL), (vi, factor, tirx.ForKind.VECTORIZED)]
    elif factor:
        inner = [(lvs[pos], extent, tirx.ForKind.VECTORIZED)]
    if start:
        binds[pos] = binds[pos] + tirx.const(start, dt)
    spatial = [iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars]
    order = ([i for i in range(len(loops)) if (i != pos or not inner) and spatial[i]]
             + [i for i in range(len(loops)) if not spatial[i]])
    nest = [(lvs[i], tirx.const(extent, dt) if i == pos else loops[i].extent, tirx.ForKind.SERIAL)
            for i in order] + inner
    if nest and order and spatial[order[0]]:
        nest[0] = (nest[0][0], nest[0][1], tirx.ForKind.PARALLEL)
    return loop_nest(s_tir.SBlockRealize(binds, predicate, block), nest)


def partition(stmt, guards: dict, lanes: Callable[[object], int]) -> list:
    """`stmt` (a top-level loop nest) as [init nest, region nests...] when it holds a flattened
    window block with a guard (`guards`: block name -> Guard) whose interior can be split off;
    else [stmt]."""
    loops, s = peel_loops(stmt)
    if not isinstance(s, s_tir.SBlockRealize) or s.block.name_hint not in guards:
        return [stmt]
    block, guard = s.block, guards[s.block.name_hint]
    spatial = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tirx.IterVar.DataPar]
    if (not canonical_nest(loops, s) or not spatial
            or not isinstance(block.iter_vars[spatial[-1]].dom.extent, tirx.IntImm)):
        return [stmt]
    pos = spatial[-1]
    var, extent = block.iter_vars[pos].var, int(block.iter_vars[pos].dom.extent)
    found = _interior(guard, var, extent)
    if found is None:
        return [stmt]
    lo, hi, inner = found
    width = lanes(block.writes[0].source.dtype)
    out = [_init_nest(block, loops, s.predicate)]
    for start, stop, suffix in ((0, lo, "_lo"), (lo, hi, ""), (hi, extent, "_hi")):
        if stop <= start:
            continue
        body = inner
        if suffix:
            # An edge keeps the guard; what the analyzer can decide on the edge's range (e.g. the
            # far side of the window's min/max) is simplified away.
            ana = guard.analyzer
            with ana.constraint_scope(tirx.all(var >= start, var < stop)):
                body = guarded(_simplified(guard.store, ana), _simplify_cond(guard.cond, ana), ana)
        region = _region_block(block, body, pos, start, stop, suffix)
        out.append(_update_nest(region, loops, s.predicate, pos, start, stop - start, width))
    return out
