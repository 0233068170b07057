"""CPU rules for matmul-like reductions: register tiles of vector accumulators.

`MatmulTile`: C[i, j] = Σ_k A[i, k] · B[k, j] (and transposed A, batched, weight gradients), with
j contiguous in C and in the operand that reads it:
    [outer spatial, j tiles, i tiles] fused and parallel, reductions, then an r x c register tile
    (rows unrolled, columns vectorized) accumulating in a local buffer, written back once per tile;
    each reduction step loads c/lanes vectors of B and broadcasts r elements of A for r·c/lanes FMAs.
`DotTile`: C[i, j] = Σ_k A[i, k] · B[j, k] (a dense layer's forward), both operands contiguous
along k: an r x c tile of dot products keeps r·c vector partial sums over machine-vector chunks
of k in a local buffer (r + c vector loads for r·c FMAs per chunk), summed across lanes once per
output at the end.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Optional

import tvm

from .analysis import block_loops, info_of, loopless_root_block, plain_update, split_loops, store_loads
from .cpu_rows import RFACTOR_CRASH, SINGLE_VECTOR, top_level_loops
from .rule import Decline, ScheduleRule
from ..tir.nodes import uses

# Rows of a matmul register tile.
MAX_TILE_ROWS = 8
# Pack B's column panel only when at least this many row tiles reuse it, and the column tiles
# (the parallel loop) are at least MIN_PACKED_TILES: 4 keeps packing the 256-wide GEMMs of GPT's
# gradients in 64-column (16-lane) tiles, which ran 1.1-1.5 times slower unpacked.
MIN_ROW_TILES_PER_PANEL = 4
MIN_PACKED_TILES = 4
# Rows and columns of a dot-product tile, each at most this (and r·c within the accumulators): 6
# where AVX-512's 24 accumulators fit a 4 x 6 tile (conv 3x3 weight gradient at (16, 64, 28, 28):
# 13.5 -> 11 ms; AVX2's 12 keep them at 3 x 4).
MAX_DOT_TILE = 6


def _elem_bytes(dtype) -> int:
    return tvm.runtime.DataType(str(dtype)).bits // 8


def matmul_tile(rows: int, cols: int, vec: int, max_acc: int) -> Optional[tuple[int, int, int]]:
    """(rows r, columns, lanes l) of a register tile for a `rows` x `cols` output: r rows of m
    vectors of l lanes each (columns = m * l), both dividing their extents (no tails).  A vector
    of l lanes takes u = ceil(l / vec) machine registers and instructions; per reduction step the
    tile does r*m*u FMAs for r broadcasts and m*u loads, so the tile with the most useful lanes
    per instruction within `max_acc` registers wins.  Lanes are whole machine vectors (l = vec),
    or when `cols` has no such divisor, a divisor below 2*vec (wider vectors that are not a
    multiple of the machine's come out slow from LLVM)."""
    best, best_key = None, None
    widths = [vec] if cols % vec == 0 else [l for l in range(2 * vec - 1, 1, -1) if cols % l == 0]
    for l in widths:
        u = -(-l // vec)
        for m in range(1, max_acc // u + 1):
            if cols % (l * m):
                continue
            for r in range(1, min(rows, MAX_TILE_ROWS) + 1):
                if rows % r or r * m * u > max_acc:
                    continue
                key = (r * m * l / (r * m * u + m * u + r), r * m * l)
                if best_key is None or key > best_key:
                    best, best_key = (r, l * m, l), key
    return best if best and best_key[1] >= 2 * vec else None


def _tile_lanes(cols: int, config, dtype) -> int:
    """Machine-vector lanes of a matmul tile over `cols` columns: the target's widest vector where
    it divides them (AVX-512 on a GEMM, with MIN_PACKED_TILES: dense weight gradients at GPT sizes
    19.1 -> 11.7 ms and 7.5 -> 5.9 ms), else MAX_VECTOR_BYTES' (a 28-wide convolution row in 16-lane vectors ran 3.5
    times slower; README, "Schedules")."""
    wide = config.wide_lanes(dtype)
    return wide if cols % wide == 0 else config.lanes(dtype)


def _plain_reduction(sch, info, config):
    """(spatial, reduction) loops of a top-level single-output reduction with an init, at least
    two spatial loops and no heavy work, or a Decline (also when vectorization is off: the tiles
    are vector accumulators)."""
    if not config.vectorize:
        return Decline("vectorization is off")
    loops = top_level_loops(sch, info)
    if isinstance(loops, Decline):
        return loops
    spatial, reduction = loops
    if info.has_children or len(info.writes) != 1 or not info.has_init or not reduction:
        return Decline("not a plain top-level reduction")
    if len(spatial) < 2:
        return Decline("fewer than two spatial loops")
    if info.heavy():
        # Work besides the product (an inlined elementwise gradient) would be redone for every
        # tile; the row rule keeps whole rows under the reduction instead.
        return Decline("heavy body (an expensive call or more than two inputs)")
    return spatial, reduction


@dataclass(frozen=True)
class MatmulPlan:
    rows: int         # register tile rows (tr)
    cols: int         # register tile columns (tc)
    lanes: int        # vector lanes per operation
    packed: object    # B's buffer when its column panel is packed, else None
    row: int          # the spatial loop of the tile rows (the columns are the last)


def _matmul_operands(sch, info, ivar, jvar):
    """The loads along j (B) and along i (A), or a Decline when the block is not matmul-like."""
    reads = store_loads(sch, info)
    along_j = [l for l in reads if any(uses(x, jvar) for x in l.indices)]
    along_i = [l for l in reads if any(uses(x, ivar) for x in l.indices)]
    rvars = [iv.var for iv in info.iter_vars if iv.iter_type == tvm.tirx.IterVar.CommReduce]
    if (not along_j or not along_i or any(a.same_as(b) for a in along_j for b in along_i)
            or not all(any(uses(x, r) for x in l.indices for r in rvars) for l in along_j)):
        return Decline("not matmul-like (no operand along each tile axis, or one along both)")
    if any(uses(x, jvar) for l in along_j for x in l.indices[:-1]):
        return Decline("a read along j that is not in its last index (a gather)")
    return along_j, along_i


class _TileRule(ScheduleRule):
    """A register-tile rule: it applies to plain reductions (`_plain_reduction`) only."""

    def plan(self, sch, info, config):
        loops = _plain_reduction(sch, info, config)
        return loops if isinstance(loops, Decline) else self.plan_tile(sch, info, config, *loops)

    @abc.abstractmethod
    def plan_tile(self, sch, info, config, spatial, reduction):
        """The plan for a plain reduction with these loops, or a Decline."""


class MatmulTile(_TileRule):
    """The matmul register tile (module docstring)."""
    name = "matmul-tile"

    def plan_tile(self, sch, info, config, spatial, reduction):
        jvar, cols = spatial[-1].var, spatial[-1].extent
        if jvar is None or any(l.var is None for l in spatial[:-1]):
            return Decline("a tile loop feeds several iter vars")
        if not cols or not info.contiguous(jvar):
            return Decline("the inner spatial loop is not contiguous")
        if cols < config.lanes(info.dtype):
            # A convolution's weight gradient has its kernel width there (3): vectors of 3 lanes.
            # The dot-product tile takes two wider axes (the channels) instead.
            return Decline("the inner spatial loop is narrower than a machine vector")
        # The rows: the innermost other spatial loop that is matmul-like with j, the one before
        # the columns in a matmul, the output channels in a convolution (whose image rows index
        # the same operand as its columns).
        found = None
        for row in range(len(spatial) - 2, -1, -1):
            operands = _matmul_operands(sch, info, spatial[row].var, jvar)
            found = found if isinstance(operands, Decline) and found is not None else (row, operands)
            if not isinstance(operands, Decline):
                break
        row, operands = found
        if isinstance(operands, Decline):
            return operands
        along_j, along_i = operands
        rows = spatial[row].extent
        vec = _tile_lanes(cols, config, info.dtype)
        tile = matmul_tile(rows, cols, vec, config.max_accumulators) if rows else None
        if tile is None:
            return Decline("no register tile divides the output")
        tr, tc, lanes = tile
        # Pack B's panel (all of k for one tile of columns) contiguously per column tile when it
        # overflows L1 and many row tiles reuse it: its rows are then consecutive, not a whole row
        # of B apart (1000x2000x1000: 62 -> 41 ms).  The column tiles alone must then give enough
        # parallel work.  Not when the rows operand reads the same buffer (Xᵀ·diag(s)·X): the
        # cache would copy all of it per column tile.
        depth = math.prod(l.extent or 0 for l in reduction)
        tiles = math.prod(l.extent or 0 for n, l in enumerate(spatial[:-1]) if n != row) * (cols // tc)
        pack = (len(along_j) == 1 and depth * tc * _elem_bytes(info.dtype) > config.l1_bytes
                and rows // tr >= MIN_ROW_TILES_PER_PANEL and tiles >= MIN_PACKED_TILES
                and not any(l.source.same_as(along_j[0].source) for l in along_i))
        return MatmulPlan(tr, tc, lanes, along_j[0].source if pack else None, row)

    def apply(self, sch, info, plan, config):
        block, spatial, reduction = split_loops(sch, info)
        jo, ji = sch.split(spatial[-1], factors=[None, plan.cols])
        io, ii = sch.split(spatial[plan.row], factors=[None, plan.rows])
        outer = [*(l for n, l in enumerate(spatial[:-1]) if n != plan.row), jo, io]
        sch.reorder(*outer, *reduction, ii, ji)
        if plan.packed is not None:
            pfused = sch.fuse(*outer[:-1]) if len(outer) > 2 else outer[0]
            if config.parallel_pays(info):
                sch.parallel(pfused)
            fused = io
            index = next(n for n, r in enumerate(sch.get(block).reads) if r.source.same_as(plan.packed))
            packed = sch.cache_read(block, index, "global", consumer_blocks=[block])
            sch.compute_at(packed, pfused)
            sch.vectorize(sch.get_loops(packed)[-1])
        else:
            fused = sch.fuse(*outer)
            if config.parallel_pays(info):
                sch.parallel(fused)
        wb = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(wb, fused)
        wb_loops = sch.get_loops(wb)[1:]
        if len(wb_loops) >= 2:
            sch.vectorize(wb_loops[-1])
        sch.unroll(ii)
        if plan.cols > plan.lanes:
            # At most one or two machine vectors per operation: LLVM legalizes a wide vector
            # (e.g. 40 lanes) poorly, where unrolled 8-lane operations keep every accumulator in
            # a register (5 to 10 times faster).
            jm, ji = sch.split(ji, factors=[None, plan.lanes])
            sch.unroll(jm)
        sch.vectorize(ji)
        sch.decompose_reduction(block, reduction[0])


@dataclass(frozen=True)
class DotPlan:
    rows: int     # tile rows r
    cols: int     # tile columns c
    chunk: int    # lanes per chunk of k
    row: int      # the spatial loops of the tile's rows and columns
    col: int
    block: int    # column tiles per L2 block (all of them when the column operand fits)


def _dot_chunk(depth: int, vec: int) -> Optional[int]:
    """Lanes per chunk of the reduction: a machine vector, or when it does not divide the depth,
    the widest power of two in [4, vec) that does, else the widest divisor in [4, vec)
    (partial-sum vectors wider than one came out twice as slow).  A whole narrower vector beats
    a ragged one, which LLVM loads in pieces (7 lanes as 4 + 2 + 1): the weight gradient of a 3x3
    convolution over 28-wide rows in 4-lane chunks instead of 7-lane ones, 32 -> 23 ms, and of a
    1x1 one, 7.6 -> 3.7 ms (both measured under load, in the same run)."""
    if depth % vec == 0:
        return vec
    divisors = [l for l in range(4, vec) if depth % l == 0]
    return max(divisors, key=lambda l: (l & (l - 1) == 0, l), default=None)


def _dot_axes(loads, row, col) -> bool:
    """Whether loops `row` and `col` can be a dot tile's axes: each a single known iter var, some
    operand read along each, and none along both (an r x c tile then loads r + c vectors)."""
    if row.var is None or col.var is None or not row.extent or not col.extent:
        return False
    along = [(any(uses(x, row.var) for x in l.indices), any(uses(x, col.var) for x in l.indices))
             for l in loads]
    return (any(a and not b for a, b in along) and any(b and not a for a, b in along)
            and not any(a and b for a, b in along))


def _dot_tile(rows: int, cols: int, regs: int, max_acc: int) -> tuple[int, int]:
    """(r, c) dividing (rows, cols) with r·c·regs accumulators at most `max_acc` that maximizes
    FMAs per load, r·c / (r + c), then r·c."""
    best, key = (1, 1), None
    for r in range(1, MAX_DOT_TILE + 1):
        for c in range(1, MAX_DOT_TILE + 1):
            if rows % r or cols % c or r * c * regs > max_acc:
                continue
            k = (r * c / (r + c), r * c)
            if key is None or k > key:
                best, key = (r, c), k
    return best


class DotTile(_TileRule):
    """The dot-product register tile (module docstring)."""
    name = "dot-tile"

    def plan_tile(self, sch, info, config, spatial, reduction):
        if not plain_update(sch, info):
            return Decline("the update is not C = C + f (or *, max, min), which rfactor needs")
        if loopless_root_block(sch):
            return Decline(RFACTOR_CRASH)
        kvar, depth = reduction[-1].var, reduction[-1].extent
        if kvar is None or not depth or not info.contiguous(kvar, output_dim=False):
            return Decline("the inner reduction loop is not vectorizable")
        vec = config.lanes(info.dtype)
        chunk = _dot_chunk(depth, vec)
        if chunk is None:
            return Decline("no vector width divides the reduction")
        if len(reduction) == 1 and depth == chunk:
            return Decline(SINGLE_VECTOR)
        regs = -(-chunk // vec)
        best, best_key = None, None
        loads = store_loads(sch, info)
        for row in range(len(spatial)):
            for col in range(row + 1, len(spatial)):
                if _dot_axes(loads, spatial[row], spatial[col]):
                    r, c = _dot_tile(spatial[row].extent, spatial[col].extent, regs, config.max_accumulators)
                    key = (r * c / (r + c), r * c, row, col)   # FMAs per load, then inner loops
                    if best_key is None or key > best_key:
                        best, best_key = (r, c, row, col), key
        if best is None:
            return Decline("no two spatial loops along which different operands are read")
        r, c, row, col = best
        if r * c < 4:
            return Decline("no register tile of at least 4 outputs divides the output")
        # Column tiles whose rows of the column operand (c rows of the reduction's length) fit the
        # L2 block, at least one; a divisor of the column tiles, so that no block has a tail.
        depth = math.prod(l.extent or 0 for l in reduction)
        tiles = spatial[col].extent // c
        fit = max(1, config.l2_block_bytes // max(1, c * depth * _elem_bytes(info.dtype)))
        block = max(b for b in range(1, min(fit, tiles) + 1) if tiles % b == 0)
        return DotPlan(r, c, chunk, row, col, block)

    def apply(self, sch, info, plan, config):
        block, spatial, reduction = split_loops(sch, info)
        ko, ki = sch.split(reduction[-1], factors=[None, plan.chunk])
        jo, ji = sch.split(spatial[plan.col], factors=[None, plan.cols])
        io, ii = sch.split(spatial[plan.row], factors=[None, plan.rows])
        # Blocks of column tiles outside the row tiles: a block's column rows stay in L2 while
        # every row tile passes them (plan.block).
        jb, jo = sch.split(jo, factors=[None, plan.block])
        outer = [*(l for n, l in enumerate(spatial) if n not in (plan.row, plan.col)), jb, io]
        sch.reorder(*outer, jo, *reduction[:-1], ko, ii, ji, ki)
        fused = sch.fuse(*outer)
        rf = sch.rfactor(ki, factor_axis=len(info.writes[0].region))
        if config.parallel_pays(info):
            sch.parallel(fused)
        sch.compute_at(rf, jo)
        sch.set_scope(rf, 0, "local")
        self._tile_partial_sums(sch, rf, outer=2)
        sch.decompose_reduction(block, sch.get_loops(block)[2])

    @staticmethod
    def _tile_partial_sums(sch, rf, outer):
        """The rfactor block's loops inside its `outer` ones: reductions outside, then its spatial
        loops ordered by the dimension of the partial-sum buffer they index (unrolled, the last
        vectorized)."""
        rf_info = info_of(sch, sch.get(rf).name_hint)
        rf_rvs = sch.get_loops(rf)[outer:]
        rf_loops = block_loops(sch, rf_info)[outer:]
        write = rf_info.writes[0]
        dims = []
        for rv, loop in zip(rf_rvs, rf_loops):
            if loop.kind != "S":
                continue
            lv = sch.get(rv).loop_var
            ivs = [iv.var for iv, b in zip(rf_info.iter_vars, rf_info.bindings) if uses(b, lv)]
            dims.append((next(d for d, rng in enumerate(write.region) if any(uses(rng.min, v) for v in ivs)), rv))
        dims.sort(key=lambda t: t[0])
        tile_loops = [rv for _, rv in dims]
        rf_reduction = [rv for rv, l in zip(rf_rvs, rf_loops) if l.kind == "R"]
        sch.reorder(*rf_reduction, *tile_loops)
        for rv in tile_loops[:-1]:
            extent = sch.get(rv).extent
            if isinstance(extent, tvm.tirx.IntImm) and int(extent) > 1:
                sch.unroll(rv)
        sch.vectorize(tile_loops[-1])
        sch.decompose_reduction(rf, rf_reduction[0])
