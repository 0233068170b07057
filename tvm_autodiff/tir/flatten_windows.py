"""TIR pass: flatten window reductions whose extents depend on the output index.

Zero elimination turns the adjoint of a window read (a conv's input gradient, a pool's) into a sum
over a deskewed window, `dX[l] = Σ_{r ∈ [lo(l), hi(l))} H[l - r] · W[r]`, whose bounds are min/max
of the output index.  `te.create_prim_func` emits such a reduction as a block holding a loop nest
of variable extent around a nested update block: it runs as a tiny loop per output element, and
no loop inside it can be reordered, unrolled or vectorized.  The rewrite

    for l: block Y { init; for r in [lo(l), hi(l)): block Y_upd { Y[l] += f(l, r) } }
      ==>
    for l, r' in [0, R): block Y { init; Y[l] = select(r' < hi(l) - lo(l), Y[l] + f(l, r' + lo(l)), Y[l]) }

(R the largest extent, at most MAX_FLAT_EXTENT) makes it one flat reduction with constant extents.
The guarded update is a Select, which vectorizes (an `if` makes the vectorizer give up); loads of
other buffers get their indices clamped into the buffer, so the lanes that the guard discards read
valid addresses.  Each flattened block is then split along its innermost spatial axis into edge
regions and a guard-free interior (`window_partition.partition`).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Optional

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from ..ir.expr import evaluate, free_vars
from .guarded_update import Guard, guarded
from .nodes import is_true, loop_nest, peel_loops, rename, root_statements, with_root_body
from .window_partition import partition

# Largest padded extent of a flattened variable-extent loop (a window of a few taps).
MAX_FLAT_EXTENT = 64


def _window_loops(realize) -> Optional[tuple[list, object]]:
    """(the variable loops, the nested update realize) of a top-level reduction block whose body is
    serial loops around one plain update block (a BufferStore with no init, allocation, match
    buffer or predicate); None for any other block."""
    block = realize.block
    if block.init is None:
        return None
    loops, stmt = peel_loops(block.body)
    if (not loops or any(l.kind != tirx.ForKind.SERIAL or l.thread_binding is not None for l in loops)
            or not isinstance(stmt, s_tir.SBlockRealize)):
        return None
    inner = stmt.block
    if (not isinstance(inner.body, tirx.BufferStore) or inner.init is not None
            or inner.alloc_buffers or inner.match_buffers or not is_true(stmt.predicate)):
        return None
    return loops, stmt


def _padded_axes(block, loops, ana):
    """For each variable loop, a new reduce iter var r in [0, bound) with loop var = r + min; the
    guard conjuncts r < extent that the analyzer cannot prove; and the substitution.  None when a
    loop's extent is unbounded or wider than MAX_FLAT_EXTENT."""
    new_ivs, conds, sub = [], [], {}
    domains = {iv.var: iv.dom for iv in block.iter_vars}
    for loop in loops:
        ext, lo = rename(loop.extent, sub), rename(loop.min, sub)
        bound = _largest(ext, domains)
        if bound is None:
            bound = ana.const_int_bound(ext).max_value
        if bound <= 0 or bound > MAX_FLAT_EXTENT:
            return None
        r = tirx.Var(loop.loop_var.name + "_flat", loop.loop_var.ty.dtype)
        dt = str(r.ty.dtype)
        new_ivs.append(tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.const(0, dt), tirx.const(bound, dt)),
                                    r, tirx.IterVar.CommReduce))
        ana.bind(r, tvm.ir.Range.from_min_extent(0, bound))
        sub[loop.loop_var] = r + lo
        if not ana.can_prove(ext >= bound):
            conds.append(r < ext)
    return new_ivs, conds, sub


# Largest number of iteration points over which `_largest` evaluates an extent exactly.
MAX_ENUMERATED = 4096

def _largest(extent, domains: dict):
    """The exact maximum of `extent` over the block's iteration domain, by evaluating it at every
    point of the variables it uses (at most MAX_ENUMERATED), or None.  The analyzer's bound treats
    min, max and floordiv terms separately: a stride-2 conv's input-gradient window,
    min(0, k//2 + 1 - k) + 1 - max(-3, -(k//2)), has at most 2 taps but a bound of 4, which padded
    its window to 16 taps instead of 4."""
    names = [v for v in free_vars(extent) if v in domains]
    if len(names) != len(free_vars(extent)):
        return None
    ranges = []
    for v in names:
        dom = domains[v]
        if not (isinstance(dom.min, tirx.IntImm) and isinstance(dom.extent, tirx.IntImm)):
            return None
        ranges.append(range(dom.min.value, dom.min.value + dom.extent.value))
    if math.prod(len(r) for r in ranges) > MAX_ENUMERATED:
        return None
    try:
        return max(evaluate(extent, dict(zip(names, point)).__getitem__) for point in itertools.product(*ranges))
    except KeyError:
        return None


def _flatten_one(realize, guards: dict):
    """`realize` as one flat reduction block (see the module docstring), or None when it is not a
    window reduction.  Records the block's `Guard` in `guards` when the update needs one."""
    found = _window_loops(realize)
    if found is None:
        return None
    loops, stmt = found
    block, inner = realize.block, stmt.block
    ana = tvm.sym.Analyzer()
    for iv in block.iter_vars:
        ana.bind(iv.var, iv.dom)
    padded = _padded_axes(block, loops, ana)
    if padded is None:
        return None
    new_ivs, conds, sub = padded
    # Inner iter vars are replaced by their bindings (which the loop vars feed).
    for iv, val in zip(inner.iter_vars, stmt.iter_values):
        sub[iv.var] = rename(val, sub)
    body = rename(inner.body, sub)
    if conds:
        cond = functools.reduce(tirx.And, conds)
        guards[block.name_hint] = Guard(body, cond, ana)
        body = guarded(body, cond, ana)
    flat = s_tir.SBlock(list(block.iter_vars) + new_ivs, list(block.reads), list(block.writes),
                        block.name_hint, body, block.init, list(block.alloc_buffers),
                        list(block.match_buffers), dict(block.annotations))
    # The new loops bind the new reduce vars directly; they sit inside the block's loop nest.
    loop_vars = [tirx.Var(iv.var.name + "_l", iv.var.ty.dtype) for iv in new_ivs]
    result = s_tir.SBlockRealize(list(realize.iter_values) + loop_vars, realize.predicate, flat)
    return loop_nest(result, [(lv, iv.dom.extent) for iv, lv in zip(new_ivs, loop_vars)])


def flatten_windows(func: tirx.PrimFunc, lanes: Callable[[object], int]) -> tirx.PrimFunc:
    """`func` with every top-level window reduction flattened and partitioned (module docstring).
    `lanes(dtype)` is the widest vector loop for the interior of a block writing `dtype` (0: no
    vectors).  Functions without such blocks come back unchanged."""
    if root_statements(func) is None:
        return func
    root = func.body
    changed, guards = [], {}

    def visit(r):
        if r.same_as(root) or r.block.init is None:
            return r
        flat = _flatten_one(r, guards)
        if flat is not None:
            changed.append(r.block.name_hint)
        return r if flat is None else flat

    # structural_map runs bottom-up; nested update blocks have no init and are left alone.
    body = tvm_ffi.structural_map(root.block.body, (s_tir.SBlockRealize, visit))
    if not changed:
        return func
    if guards:
        stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
        parts = [p for st in stmts for p in partition(st, guards, lanes)]
        body = tirx.SeqStmt(parts) if len(parts) > 1 else body
    return with_root_body(func, body)
