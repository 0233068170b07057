"""CPU rules for blocks that are not matmul-like: rows of vectors, reductions vectorized along
their own axis, and the parallel-loop fallbacks.

Row plan (`Rows`):   [outer spatial, fused and parallel] [reductions] [row tile] [vector lanes]
Lanes plan (`ReductionLanes`): the innermost reduction loop split into vector lanes whose partial
sums an rfactor block keeps, for reductions whose inner spatial loop is strided in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..tir.nodes import vector_factor
from .analysis import block_loops, info_of, loopless_root_block, plain_update, split_loops
from .rule import Decline, ScheduleRule

# Longest output row (elements) kept whole under a reduction's loops (see Rows).
ROW_LIMIT = 256
# Rows per register tile of a reduction with a vectorized inner loop.
ROW_TILE = 4
# Loops moved under the reductions are unrolled up to this extent.
MAX_UNROLL = 8

NEGATIVE_DIVISOR = ("divides by a negative constant, which TVM's simplifier rewrites wrongly once "
                    "loops are fused or split (docs/tvm-0.27.md, \"negative divisors after loop fusion\")")

# compute_at drops the unit loop left of a split that covers the whole reduction, so the partial
# sums of an rfactor block would have no reduction loop to accumulate in.
SINGLE_VECTOR = "the reduction is a single vector (nothing for partial sums to accumulate)"

RFACTOR_CRASH = ("another block sits under the root with no loop, beside which TVM 0.27's rfactor "
                 "crashes (docs/tvm-0.27.md, \"rfactor crashes beside a loopless block\")")


def top_level_loops(sch, info, negative_div_ok: bool = False):
    """(spatial, reduction) loops of a top-level block whose loops are each spatial or reduction,
    or a Decline saying why the block is not one."""
    if not info.top_level:
        return Decline("nested inside another block's loops")
    if info.negative_div and not negative_div_ok:
        return Decline(NEGATIVE_DIVISOR)
    loops = block_loops(sch, info)
    if any(l.kind == "O" for l in loops):
        return Decline("a loop mixes spatial and reduction iterators")
    return [l for l in loops if l.kind == "S"], [l for l in loops if l.kind == "R"]


@dataclass(frozen=True)
class RowPlan:
    """split: factor splitting the last spatial loop into vector lanes (None: no split).  vector:
    that loop (or its lanes) is vectorized.  whole_row: the split's outer part goes under the
    reductions too.  moved: for each further spatial loop moved under the reductions, whether
    it is unrolled.  tile: the last remaining spatial loop is split into a ROW_TILE register
    tile."""
    split: Optional[int] = None
    vector: bool = False
    whole_row: bool = False
    moved: tuple = ()
    tile: bool = False


def _row_extension(info, extents, variables, factor, extent, min_outer):
    """(whole_row, moved): how much of the output row goes under the reductions.  When the body
    has heavy work that does not depend on the row (an elementwise gradient inlined into a
    matmul or conv weight gradient: exp, argmax selects, index arithmetic), up to ROW_LIMIT
    elements go there, keeping `min_outer` outer iterations, so that work is done once per
    reduction step, not once per vector.  Without such work, a shorter row keeps its accumulators
    in registers.  `extents`/`variables` are the spatial loops left outside; they are consumed."""
    whole_row, moved, volume = False, [], factor
    if factor < extent <= ROW_LIMIT:
        extents.pop(), variables.pop()
        whole_row, volume = True, extent
    while volume == extent and len(extents) >= 2:
        e, outer, var = extents[-1], extents[:-1], variables[-1]
        if (e is None or volume * e > ROW_LIMIT or None in outer or math.prod(outer) < min_outer
                or var is None or not info.cheap_along(var)):
            break
        volume *= e
        moved.append(e <= MAX_UNROLL)
        extents.pop(), variables.pop()
    return whole_row, tuple(moved)


class Rows(ScheduleRule):
    """The row plan (module docstring).  `need_vector`: decline a reduction whose inner spatial
    loop cannot be vectorized, so that `ReductionLanes` vectorizes its reduction instead."""

    def __init__(self, need_vector: bool):
        self.need_vector = need_vector
        self.name = "vector-rows" if need_vector else "rows"

    def plan(self, sch, info, config):
        loops = top_level_loops(sch, info)
        if isinstance(loops, Decline):
            return loops
        spatial, reduction = loops
        extents, variables = [l.extent for l in spatial], [l.var for l in spatial]
        plan = RowPlan()
        lanes = config.row_lanes(info.dtype) if len(info.writes) == 1 else 0
        if info.selects_local and not config.parallel_pays(info):
            lanes = 0       # docs/tvm-0.27.md, "vectorized selects of stack buffers"
        if spatial and lanes and not info.has_children:
            var, extent = spatial[-1].var, spatial[-1].extent
            factor = extent and vector_factor(extent, lanes)
            if var is not None and factor and info.contiguous(var):
                split = factor if factor < extent else None
                if split:
                    extents[-1:] = [extent // factor, factor]
                    variables[-1:] = [var, var]
                extents.pop(), variables.pop()
                whole_row, moved = False, ()
                if reduction and info.heavy() and info.cheap_along(var):
                    whole_row, moved = _row_extension(info, extents, variables, factor, extent,
                                                      2 * config.cores)
                plan = RowPlan(split, True, whole_row, moved)
        if self.need_vector and reduction and not plan.vector:
            return Decline("the inner spatial loop is not vectorizable (not contiguous, or no "
                           "vector width divides it)")
        tile = (plan.vector and bool(reduction) and len(extents) >= 2 and bool(extents[-1])
                and extents[-1] % ROW_TILE == 0 and extents[-1] >= 2 * ROW_TILE)
        return RowPlan(plan.split, plan.vector, plan.whole_row, plan.moved, tile)

    def apply(self, sch, info, plan, config):
        block, spatial, reduction = split_loops(sch, info)
        inner, tile, moved = [], [], []
        if plan.vector:
            if plan.split:
                spatial[-1:] = sch.split(spatial[-1], factors=[None, plan.split])
            inner = [spatial.pop()]
            if plan.whole_row:
                inner.insert(0, spatial.pop())
            for unroll in plan.moved:
                moved.append((spatial[-1], unroll))
                inner.insert(0, spatial.pop())
        if plan.tile:
            spatial[-1:] = sch.split(spatial[-1], factors=[None, ROW_TILE])
            tile = [spatial.pop()]
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        sch.reorder(*spatial, *reduction, *tile, *inner)
        # A scalar inner spatial loop stays out of the fused parallel loop, so the block does not
        # recompute every index with div/mod from one fused counter (3x slower on an argmax pool).
        if not inner and len(spatial) > 2:
            spatial = spatial[:-1]
        if config.parallel_pays(info):
            sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        if tile:
            sch.unroll(tile[0])
        for loop, unroll in moved:
            if unroll:
                sch.unroll(loop)
        if inner:
            sch.vectorize(inner[-1])
        if reduction and info.has_init:
            sch.decompose_reduction(block, reduction[0])


class ReductionLanes(ScheduleRule):
    """Vectorize a reduction along its innermost reduction loop (a dot product over the last axis
    of both operands): split it by the vector width and rfactor the lanes into a small partial-sum
    buffer per output element, computed inside the parallel spatial loop, lanes last."""
    name = "reduction-lanes"

    def plan(self, sch, info, config):
        loops = top_level_loops(sch, info)
        if isinstance(loops, Decline):
            return loops
        spatial, reduction = loops
        if info.has_children or len(info.writes) > 1 or not reduction or not info.has_init:
            return Decline("not a plain single-output reduction with an init")
        if not plain_update(sch, info):
            return Decline("the update is not C = C + f (or *, max, min), which rfactor needs")
        if loopless_root_block(sch):
            return Decline(RFACTOR_CRASH)
        last = reduction[-1]
        factor = last.extent and vector_factor(last.extent, config.row_lanes(info.dtype))
        if not factor or last.var is None or not info.contiguous(last.var, output_dim=False):
            return Decline("the inner reduction loop is not vectorizable")
        if len(reduction) == 1 and last.extent == factor:
            return Decline(SINGLE_VECTOR)
        return factor

    def apply(self, sch, info, factor, config):
        block, spatial, reduction = split_loops(sch, info)
        ko, ki = sch.split(reduction[-1], factors=[None, factor])
        sch.reorder(*spatial, *reduction[:-1], ko, ki)
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        rf = sch.rfactor(ki, factor_axis=len(info.writes[0].region))
        if config.parallel_pays(info):
            sch.parallel(outer)
        sch.compute_at(rf, outer)
        # Under `outer`, the only spatial loop of the partial-sum block is the lanes loop.
        rf_rvs = sch.get_loops(rf)[1:]
        rf_loops = block_loops(sch, info_of(sch, sch.get(rf).name_hint))[1:]
        lanes = next(rf_rvs[n] for n, l in enumerate(rf_loops) if l.kind == "S")
        rf_reduction = [rf_rvs[n] for n, l in enumerate(rf_loops) if l.kind == "R"]
        sch.reorder(*rf_reduction, lanes)
        sch.vectorize(lanes)
        sch.decompose_reduction(rf, rf_reduction[0])
        sch.decompose_reduction(block, sch.get_loops(block)[1])


class Nested(ScheduleRule):
    """A block nested in another block's loops (whose enclosing block is parallel already): only
    its reduction is decomposed, which also initializes zero-extent reductions."""
    name = "nested"
    atomic = True

    def plan(self, sch, info, config):
        if info.top_level:
            return Decline("top-level block")
        if info.negative_div:
            return Decline(NEGATIVE_DIVISOR)
        kinds = [l.kind for l in block_loops(sch, info)]
        return kinds.index("R") if "R" in kinds else None

    def apply(self, sch, info, first_reduction, config):
        if first_reduction is not None:
            block = sch.get_sblock(info.name)
            sch.decompose_reduction(block, sch.get_loops(block)[first_reduction])


class Prescheduled(ScheduleRule):
    """A block whose loops the TIR pass that built it already scheduled (the edge and interior
    regions of a partitioned window reduction, `tir.window_partition`): kept as it is."""
    name = "prescheduled"
    atomic = True

    def plan(self, sch, info, config):
        if all(l.serial for l in block_loops(sch, info)):
            return Decline("its loops are serial")
        return True

    def apply(self, sch, info, plan, config):
        pass


class ParallelOuter(ScheduleRule):
    """The fallback: the leading spatial loops fused into one parallel loop (or, with
    `fuse=False`, only the outermost loop parallel, which is safe for negative divisors too)."""

    def __init__(self, fuse: bool):
        self.fuse = fuse
        self.name = "parallel-outer" if fuse else "parallel-outermost"

    def plan(self, sch, info, config):
        if not info.top_level:
            return Decline("nested inside another block's loops")
        if info.negative_div and self.fuse:
            return Decline(NEGATIVE_DIVISOR)
        kinds = [l.kind for l in block_loops(sch, info)]
        n = next((i for i, k in enumerate(kinds) if k != "S"), len(kinds))
        if n == 0:
            return Decline("no leading spatial loop")
        return n if self.fuse else 1

    def apply(self, sch, info, n, config):
        loops = sch.get_loops(sch.get_sblock(info.name))
        if config.parallel_pays(info):
            sch.parallel(sch.fuse(*loops[:n]) if n > 1 else loops[0])
