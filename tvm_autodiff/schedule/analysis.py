"""What the schedule rules know about a block: a frozen `BlockInfo` read off the PrimFunc, and
queries on a block's loops in a schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import tvm_ffi
from tvm import s_tir, tirx

from ..ir.expr import flatten
from ..tir.nodes import LOAD_TYPE, contains_block, has_expensive_call, loads, uses


def _has_negative_divisor(stmt) -> bool:
    """Whether floordiv/floormod by a negative constant occurs (zero elimination can emit them;
    docs/tvm-0.27.md, "negative divisors after loop fusion")."""
    def visit(e):
        return tvm_ffi.VisitInterrupt(True) if isinstance(e.b, tirx.IntImm) and e.b.value < 0 else None

    return tvm_ffi.structural_walk(stmt, [(tirx.FloorDiv, visit), (tirx.FloorMod, visit)]) is not None


def _selects_local_loads(stmt, params) -> bool:
    """Whether a branch of a select loads a buffer that is not a parameter (an intermediate the
    function allocates): see `BlockInfo.selects_local`."""
    def branch_loads_local(e):
        found = [l for b in (e.true_value, e.false_value) for l in loads(b)
                 if not any(l.source.same_as(p) for p in params)]
        return tvm_ffi.VisitInterrupt(True) if found else None

    return tvm_ffi.structural_walk(stmt, (tirx.Select, branch_loads_local)) is not None


def _sum_of_products(block) -> bool:
    """Whether the block's body is C[..] = C[..] + Σ_n A_n · B_n over several products, each of
    two loads: the form of reductions merged by passes/merge_sums.py."""
    body = block.body
    if not isinstance(body, tirx.BufferStore):
        return False
    terms = flatten(body.value, tirx.Add)
    own = [t for t in terms if isinstance(t, LOAD_TYPE) and t.source.same_as(body.buffer)]
    products = [t for t in terms if isinstance(t, tirx.Mul) and isinstance(t.a, LOAD_TYPE) and isinstance(t.b, LOAD_TYPE)]
    return len(own) == 1 and len(products) == len(terms) - 1 > 1


@dataclass(frozen=True, eq=False)
class BlockInfo:
    """One block of a PrimFunc, as the rules see it.

    top_level: directly under the root block (its loops are the function's).  is_output: writes a
    function parameter, so it must not be inlined away.  has_children: holds nested blocks (a
    window reduction that was not flattened).  expensive: calls one of tir.nodes.EXPENSIVE.
    negative_div: divides by a negative constant, which TVM's simplifier rewrites wrongly once
    loops are fused or split.  selects_local: a select loads an intermediate buffer, which TVM
    0.27 miscompiles in a vectorized loop outside a parallel one (docs/tvm-0.27.md, "vectorized
    selects of stack buffers").  products: the body adds several products of two loads
    (`_sum_of_products`)."""
    name: str
    top_level: bool
    iter_vars: tuple
    bindings: tuple
    reads: tuple
    writes: tuple
    is_output: bool
    has_children: bool
    is_reduction: bool
    has_init: bool
    expensive: bool
    negative_div: bool
    selects_local: bool = False
    products: bool = False

    @staticmethod
    def of(realize, top_level: bool, params) -> "BlockInfo":
        block = realize.block
        writes = tuple(block.writes)
        return BlockInfo(
            name=block.name_hint, top_level=top_level, iter_vars=tuple(block.iter_vars),
            bindings=tuple(realize.iter_values), reads=tuple(block.reads), writes=writes,
            is_output=any(w.source.same_as(p) for w in writes for p in params),
            has_children=contains_block(block.body),
            is_reduction=any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars),
            has_init=block.init is not None, expensive=has_expensive_call(block.body),
            negative_div=_has_negative_divisor(realize),
            selects_local=_selects_local_loads(block.body, params), products=_sum_of_products(block))

    @property
    def injective(self) -> bool:
        return not self.is_reduction and not self.has_children

    @property
    def dtype(self):
        return self.writes[0].source.dtype

    def volume(self) -> Optional[int]:
        """Iterations of the block (None when an extent is symbolic)."""
        extents = [iv.dom.extent for iv in self.iter_vars]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        return math.prod(int(e) for e in extents)

    def var_of(self, loop_var) -> Optional[tirx.Var]:
        """The iter var that `loop_var` feeds, when it feeds exactly one."""
        found = [iv.var for iv, b in zip(self.iter_vars, self.bindings) if uses(b, loop_var)]
        return found[0] if len(found) == 1 else None

    def inputs(self) -> list:
        """Buffers read other than the output."""
        out = []
        for r in self.reads:
            if not any(r.source.same_as(x) for x in out + [w.source for w in self.writes]):
                out.append(r.source)
        return out

    def heavy(self) -> bool:
        """Work in the body besides products of two loads: an expensive call, or reads of more
        than two buffers other than the output (inlined producers) that are not a sum of such
        products (merged reductions, whose every multiply-add reads its own two operands)."""
        return self.expensive or (len(self.inputs()) > 2 and not self.products)

    def cheap_along(self, var) -> bool:
        """At most one input read depends on iter var `var`: the rest of the body (the heavy part)
        is invariant along it, and shared when its loop runs inside the reduction."""
        outs = [w.source for w in self.writes]
        deps = [r for r in self.reads if not any(r.source.same_as(o) for o in outs)
                and any(uses(rng.min, var) or uses(rng.extent, var) for rng in r.region)]
        return len(deps) <= 1

    def contiguous(self, var, output_dim: bool = True) -> bool:
        """Whether iter var `var` indexes only the last dimension of the written buffer (unless
        not `output_dim`, for reduction vars) and of every read buffer it indexes at all: then
        vectorizing it gives contiguous loads and stores (or broadcasts), not gathers."""
        regions = [(r, output_dim) for r in self.writes] + [(r, False) for r in self.reads]
        for region, must_use in regions:
            dims = [uses(rng.min, var) or uses(rng.extent, var) for rng in region.region]
            if not dims or any(dims[:-1]) or (must_use and not dims[-1]):
                return False
        return True


def _child_realizes(stmt) -> list:
    """The block realizes directly inside `stmt` (not inside nested blocks)."""
    found = []

    def pre(node):
        if isinstance(node, s_tir.SBlockRealize):
            found.append(node)
            return tvm_ffi.WalkResult.SKIP
        return None

    tvm_ffi.structural_walk(stmt, pre, order="pre")
    return found


def block_infos(func: tirx.PrimFunc) -> list[BlockInfo]:
    """Every block except the root, producers first."""
    infos = []

    def visit(node, depth):
        for realize in _child_realizes(node):
            infos.append(BlockInfo.of(realize, depth == 0, func.params))
            visit(realize.block.body, depth + 1)

    if isinstance(func.body, s_tir.SBlockRealize):   # else no blocks (nothing is computed)
        visit(func.body.block.body, 0)
    return infos


@dataclass(frozen=True)
class Loop:
    """One loop of a block in a schedule: its position, kind ('S' spatial, 'R' reduction, 'O'
    mixed or neither, by the iter vars its loop var feeds), constant extent (None if symbolic),
    the one iter var it feeds (None if several or none), and whether it is still serial."""
    pos: int
    kind: str
    extent: Optional[int]
    var: Optional[tirx.Var]
    serial: bool


def block_loops(sch: s_tir.Schedule, info: BlockInfo) -> list[Loop]:
    """The loops of `info`'s block in `sch`, outermost first."""
    out = []
    for pos, rv in enumerate(sch.get_loops(sch.get_sblock(info.name))):
        loop = sch.get(rv)
        types = {iv.iter_type for iv, b in zip(info.iter_vars, info.bindings) if uses(b, loop.loop_var)}
        kind = {frozenset([tirx.IterVar.DataPar]): "S",
                frozenset([tirx.IterVar.CommReduce]): "R"}.get(frozenset(types), "O")
        extent = int(loop.extent) if isinstance(loop.extent, tirx.IntImm) else None
        serial = loop.kind == tirx.ForKind.SERIAL and loop.thread_binding is None
        out.append(Loop(pos, kind, extent, info.var_of(loop.loop_var), serial))
    return out


def split_loops(sch: s_tir.Schedule, info: BlockInfo) -> tuple:
    """(block, its spatial loop RVs, its reduction loop RVs) in `sch`, outermost first."""
    block = sch.get_sblock(info.name)
    rvs = sch.get_loops(block)
    loops = block_loops(sch, info)
    return (block, [rvs[l.pos] for l in loops if l.kind == "S"],
            [rvs[l.pos] for l in loops if l.kind == "R"])


def info_of(sch: s_tir.Schedule, name: str) -> BlockInfo:
    """The BlockInfo of block `name` in the current state of `sch`."""
    return next(i for i in block_infos(sch.mod["main"]) if i.name == name)


def loopless_root_block(sch: s_tir.Schedule) -> bool:
    """Whether a block sits directly under the root block with no loop around it (a 0-d
    output's block).  TVM 0.27's rfactor then fails an internal check while it rewrites the root
    (docs/tvm-0.27.md, "rfactor crashes beside a loopless block")."""
    root = sch.mod["main"].body
    if not isinstance(root, s_tir.SBlockRealize):
        return False
    body = root.block.body
    return any(isinstance(st, s_tir.SBlockRealize)
               for st in (body.seq if isinstance(body, tirx.SeqStmt) else [body]))


def plain_update(sch: s_tir.Schedule, info: BlockInfo) -> bool:
    """Whether the block's body is one store C[..] = C[..] ⊕ f with ⊕ in +, *, max, min: the
    update form that rfactor recognizes (a guarded, flattened window update is a Select)."""
    body = sch.get(sch.get_sblock(info.name)).body
    if not isinstance(body, tirx.BufferStore):
        return False
    value = body.value
    own = lambda e: isinstance(e, LOAD_TYPE) and e.source.same_as(body.buffer)   # noqa: E731
    return isinstance(value, (tirx.Add, tirx.Mul, tirx.Max, tirx.Min)) and (own(value.a) or own(value.b))


def store_loads(sch: s_tir.Schedule, info: BlockInfo) -> list:
    """The loads of `info`'s block's body other than of its output."""
    out = info.writes[0].source
    return [l for l in loads(sch.get(sch.get_sblock(info.name)).body) if not l.source.same_as(out)]
