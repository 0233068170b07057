"""Small queries and builders over TIR statements, shared by the TIR rewrites and the schedule
rules."""
from __future__ import annotations

from typing import Sequence

import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import Call

# The class of buffer loads (docs/tvm-0.27.md, "BufferLoad is a constructor function").
LOAD_TYPE = type(tirx.BufferLoad(tirx.decl_buffer((1,), "float32"), [tirx.const(0)]))

# Calls that cost tens of cycles: a producer computing one is not inlined into a consumer that
# would evaluate it more than once per element, and a matmul factor computing one gets a block.
EXPENSIVE = {"tirx.exp", "tirx.log", "tirx.pow", "tirx.tanh", "tirx.sigmoid", "tirx.sqrt",
             "tirx.rsqrt", "tirx.erf", "tirx.exp2", "tirx.log2", "tirx.log1p", "tirx.fmod"}


def _found(hit) -> bool:
    return hit is not None


def uses(expr, var) -> bool:
    """Whether `var` occurs in `expr`."""
    return _found(tvm_ffi.structural_walk(
        expr, (tirx.Var, lambda v: tvm_ffi.VisitInterrupt(True) if v.same_as(var) else None)))


def loads(stmt) -> list:
    """Every BufferLoad in `stmt`, in visiting order."""
    found = []
    tvm_ffi.structural_walk(stmt, (LOAD_TYPE, found.append))
    return found


def has_expensive_call(stmt) -> bool:
    return _found(tvm_ffi.structural_walk(
        stmt, (Call, lambda c: tvm_ffi.VisitInterrupt(True) if c.op.name in EXPENSIVE else None)))


def contains_block(stmt) -> bool:
    return _found(tvm_ffi.structural_walk(
        stmt, (s_tir.SBlockRealize, lambda _: tvm_ffi.VisitInterrupt(True))))


def is_true(pred) -> bool:
    return isinstance(pred, tirx.IntImm) and pred.value == 1


def is_zero(e) -> bool:
    return isinstance(e, tirx.IntImm) and e.value == 0


def rename(node, mapping: dict):
    """`node` with the variables in `mapping` replaced (Var -> Var or expression)."""
    return tvm_ffi.structural_map(node, (tirx.Var, lambda v: mapping.get(v, v)))


def fresh_vars(ivs: Sequence[tirx.IterVar], suffix: str = "") -> dict:
    """{iter var's Var: a new Var of the same name (+ suffix) and dtype}: TIR forbids defining a
    variable twice, so every block built from another one gets its own."""
    return {iv.var: tirx.Var(iv.var.name + suffix, iv.var.ty.dtype) for iv in ivs}


def loop_nest(body, loops: Sequence[tuple]):
    """`body` inside `for var in range(extent)` loops, outermost first: loops are
    (var, extent) or (var, extent, kind)."""
    for loop in reversed(list(loops)):
        var, extent = loop[0], loop[1]
        kind = loop[2] if len(loop) > 2 else tirx.ForKind.SERIAL
        body = tirx.For(var, tirx.const(0, str(var.ty.dtype)), extent, kind, body)
    return body


def peel_loops(stmt) -> tuple[list, object]:
    """(the loops around `stmt`'s first non-loop statement, outermost first; that statement)."""
    loops = []
    while isinstance(stmt, tirx.For):
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def canonical_nest(loops, realize) -> bool:
    """Whether `loops` are one serial loop per iter var of `realize`'s block, in order, each from 0
    to its iter var's constant-free extent and bound to it directly (create_prim_func's form)."""
    block = realize.block
    return len(loops) == len(block.iter_vars) and all(
        l.kind == tirx.ForKind.SERIAL and l.thread_binding is None and l.loop_var.same_as(b)
        and is_zero(l.min) and is_zero(iv.dom.min) and tvm_ffi.structural_equal(l.extent, iv.dom.extent)
        for l, b, iv in zip(loops, realize.iter_values, block.iter_vars))


def with_root_body(func: tirx.PrimFunc, body, alloc_buffers=None) -> tirx.PrimFunc:
    """`func` with its root block's body (and allocations) replaced."""
    root = func.body
    block = root.block
    allocs = block.alloc_buffers if alloc_buffers is None else alloc_buffers
    return func.with_body(s_tir.SBlockRealize(root.iter_values, root.predicate, s_tir.SBlock(
        block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init, allocs,
        block.match_buffers, block.annotations)))


def root_statements(func: tirx.PrimFunc) -> list | None:
    """The statements directly under `func`'s root block, or None when it has no root block."""
    if not isinstance(func.body, s_tir.SBlockRealize):
        return None
    body = func.body.block.body
    return list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]


def vector_factor(extent: int, lanes: int) -> int | None:
    """A divisor of `extent` in [4, lanes], so a vector loop needs no tail: the largest multiple of
    8 (whole machine vectors of float32) if any, else the largest."""
    divisors = [f for f in range(min(extent, lanes), 3, -1) if extent % f == 0]
    return next((f for f in divisors if f % 8 == 0), divisors[0] if divisors else None)
