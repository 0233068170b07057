"""Work counts: how many loop-body executions the kernel of a TE graph performs.

`work` counts on the PrimFunc that `te.create_prim_func` builds, so the numbers are those of the real
(unscheduled) kernel.  A reduce axis whose extent depends on an outer axis becomes, in that TIR, an
outer block `C_l1` over the spatial loops holding a loop `for k in range(v_i + 1)` around the block
`C`; such loop nests are counted exactly by enumerating only the outer loop values that inner bounds
depend on (vectorized with numpy).  Predicates (`where=`, `T.where`) never reduce a count: we count
loop iterations, not predicate hits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var
from tvm.s_tir import SBlock, SBlockRealize

from tvm_autodiff.ir.expr import free_vars, substitute
from tvm_autodiff.ir.graph import ops_post_order, outputs_of, placeholders, unique_tensors
from tvm_autodiff.passes import eliminate_zeros

from .compile import Compiled
from .printing import format_expr, format_range

# Enumerating more distinct outer-loop values than this would take minutes and gigabytes.
_MAX_ROWS = 50_000_000


@dataclass(frozen=True)
class Work:
    """`iterations`: executions of innermost loop or block bodies (reduction inits excluded);
    `elements`: elements of every materialized (non-placeholder) tensor; `per_op`: block name ->
    iterations."""
    iterations: int
    elements: int
    per_op: dict = field(default_factory=dict)

    def __int__(self) -> int:
        return self.iterations


def work(tensors, bindings=None) -> Work:
    """Count the work of computing `tensors` (a te.Tensor or a list) and everything they depend on.

    `bindings` maps the symbolic shape variables (tvm Vars or their names) to ints.
    """
    tensors = unique_tensors([tensors] if isinstance(tensors, te.Tensor) else tensors)
    env = _Bindings(bindings)
    computed = [t for t in tensors if not isinstance(t.op, te.PlaceholderOp)]
    per_op: dict[str, int] = {}
    if computed:
        func = te.create_prim_func(placeholders(tensors) + computed)
        for name, loops in _leaves(func.body):
            per_op[name] = per_op.get(name, 0) + count_loops(loops, env)
    elements = sum(_size(t.shape, env) for op in ops_post_order(tensors)
                   if not isinstance(op, te.PlaceholderOp) for t in outputs_of(op))
    return Work(sum(per_op.values()), elements, per_op)


def op_iterations(op, bindings=None) -> int:
    """Iterations of one ComputeOp read off its TE axes: create_prim_func emits one block per output
    of an elementwise op, and one block storing every output of a reduction."""
    loops = [(iv.var, iv.dom.min, iv.dom.extent, None) for iv in list(op.axis) + list(op.reduce_axis)]
    blocks = 1 if len(op.reduce_axis) else op.num_outputs
    return blocks * count_loops(loops, _Bindings(bindings))


def explain(tensors, file=None, bindings=None) -> str:
    """A readable dump of the graph of `tensors`: each op (producers first) with its shape, axes,
    body and work, then the total, before and after `tvm_autodiff.passes.eliminate_zeros`.
    Given a `Compiled` (what `build` returns), the schedule rule of each of its blocks and why the
    rules before it declined.  Returns the text and also writes it to `file` if given."""
    if isinstance(tensors, Compiled):
        text = tensors.explain() + "\n"
        if file is not None:
            file.write(text)
        return text
    tensors = [tensors] if isinstance(tensors, te.Tensor) else list(tensors)
    sections = [("before", tensors), ("after eliminate_zeros", [eliminate_zeros(t) for t in tensors])]
    lines, totals = [], []
    for title, graph in sections:
        total = work(graph, bindings)
        totals.append(total.iterations)
        lines += [f"== {title} =="] + _describe(graph, bindings)
        lines.append(f"total {title}: {total.iterations} iterations, {total.elements} elements")
    lines.append(f"work: {totals[0]} -> {totals[1]} iterations ({totals[1] / max(totals[0], 1):.3g}x)")
    text = "\n".join(lines) + "\n"
    if file is not None:
        file.write(text)
    return text


def _describe(tensors, bindings) -> list[str]:
    lines = []
    for op in ops_post_order(tensors):
        for t in outputs_of(op):
            shape = "(" + ", ".join(format_expr(d) for d in t.shape) + ("," if len(t.shape) == 1 else "") + ")"
            kind = {te.PlaceholderOp: "input", te.ComputeOp: "compute"}.get(type(op), type(op).__name__)
            lines.append(f"{t.name}: {shape} {t.dtype} {kind}")
        if not isinstance(op, te.ComputeOp):
            continue
        if len(op.axis):
            lines.append("  axes:   " + ", ".join(format_range(iv) for iv in op.axis))
        if len(op.reduce_axis):
            lines.append("  reduce: " + ", ".join(format_range(iv) for iv in op.reduce_axis))
        for i, body in enumerate(op.body):
            label = "body:  " if op.num_outputs == 1 else f"body[{i}]:"
            lines.append(f"  {label} {format_expr(body)}")
        lines.append(f"  work:   {op_iterations(op, bindings)} iterations")
    return lines


# ---------------------------------------------------------------------------------------------
# The TIR walk: every leaf (a loop or block body without loops or blocks inside) with its loops.

def _leaves(stmt, loops=(), subst=None, block="root"):
    """Yield (block name, [(var, min, extent, step)]) for each leaf under `stmt`.  Inside a nested
    block, loop bounds refer to the block's iter vars (`range(v_i + 1)`); `subst` maps those to their
    bindings, so that every bound is written over loop vars and shape vars only."""
    subst = subst or {}
    if isinstance(stmt, SBlock):  # the init statement is not counted, only the body
        yield from _leaves(stmt.body, loops, subst, stmt.name_hint)
    elif not _has_loops(stmt):  # one leaf, however many statements (a multi-output reduce stores several)
        yield block, loops
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            yield from _leaves(s, loops, subst, block)
    elif isinstance(stmt, tirx.For):
        step = None if stmt.step is None else substitute(stmt.step, subst)
        bound = (stmt.loop_var, substitute(stmt.min, subst), substitute(stmt.extent, subst), step)
        yield from _leaves(stmt.body, loops + (bound,), subst, block)
    elif isinstance(stmt, SBlockRealize):
        inner = dict(subst)
        inner.update((iv.var, substitute(v, subst)) for iv, v in zip(stmt.block.iter_vars, stmt.iter_values))
        yield from _leaves(stmt.block, loops, inner, block)
    elif isinstance(stmt, tirx.IfThenElse):  # both branches: we count iterations, not predicate hits
        yield from _leaves(stmt.then_case, loops, subst, block)
        if stmt.else_case is not None:
            yield from _leaves(stmt.else_case, loops, subst, block)
    elif hasattr(stmt, "body"):  # LetStmt, AttrStmt, AllocBuffer, ...: a wrapper around a body
        yield from _leaves(stmt.body, loops, subst, block)
    else:
        raise NotImplementedError(f"work: cannot count loops under {type(stmt).__name__}")


def _has_loops(stmt) -> bool:
    def visit(n):
        return tvm_ffi.VisitInterrupt(n) if isinstance(n, (tirx.For, SBlockRealize)) else None
    return isinstance(tvm_ffi.structural_walk(stmt, visit, order="pre"), tvm_ffi.VisitInterrupt)


# ---------------------------------------------------------------------------------------------
# Counting the iterations of a loop nest.

def count_loops(loops, bindings) -> int:
    """Number of iterations of the nest `loops` ([(var, min, extent, step)], outermost first).

    Loops that no inner bound depends on just multiply the count.  The values of the others are
    enumerated as numpy columns ("rows" = distinct combinations, each with a weight), and columns
    are dropped as soon as no inner bound needs them.
    """
    needed_after = [set() for _ in loops]
    needed = set()
    for j in range(len(loops) - 1, -1, -1):
        needed_after[j] = set(needed)
        _, lo, ext, step = loops[j]
        needed |= free_vars(lo) | free_vars(ext) | free_vars(step)
    scale, cols, weights = 1, {}, np.ones(1, np.int64)
    for (var, lo, ext, step), later in zip(loops, needed_after):
        step = 1 if step is None else _evaluate(step, cols, bindings)
        trips = np.maximum(-(-_evaluate(ext, cols, bindings) // step), 0)  # ceil(extent / step)
        if var in later:
            cols, weights = _expand(var, _evaluate(lo, cols, bindings), step, trips, cols, weights)
        elif np.ndim(trips):
            weights = weights * trips
        else:
            scale *= int(trips)
        cols = {v: c for v, c in cols.items() if v in later}
        if not cols and len(weights) > 1:  # nothing left to tell the rows apart: fold them
            weights = np.array([weights.sum()], np.int64)
    return scale * int(weights.sum())


def _expand(var, lo, step, trips, cols, weights):
    """Repeat each row once per iteration of `var`, adding a column with its values."""
    rows = len(weights)
    trips = np.broadcast_to(trips, (rows,)).astype(np.int64)
    total = int(trips.sum())
    if total > _MAX_ROWS:
        raise ValueError(f"work: too many distinct loop bounds to enumerate ({total} values of {var.name})")
    idx = np.repeat(np.arange(rows), trips)
    offsets = np.arange(total) - np.repeat(np.cumsum(trips) - trips, trips)
    cols = {v: c[idx] for v, c in cols.items()}
    cols[var] = np.broadcast_to(lo, (rows,))[idx] + offsets * np.broadcast_to(step, (rows,))[idx]
    return cols, weights[idx]


class _Bindings:
    """Values of symbolic shape variables, looked up by Var identity or by name."""

    def __init__(self, bindings):
        self.by_var, self.by_name = {}, {}
        for key, value in (bindings or {}).items():
            (self.by_name if isinstance(key, str) else self.by_var)[key] = int(value)

    def __getitem__(self, var) -> int:
        if var in self.by_var:
            return self.by_var[var]
        if var.name in self.by_name:
            return self.by_name[var.name]
        raise ValueError(f"work: symbolic variable {var.name!r} is unbound; pass bindings={{{var.name!r}: <int>}}")


def _evaluate(expr, cols, bindings):
    """Integer value of an index expression: an int, or a numpy array over the enumerated rows."""
    if isinstance(expr, Var):
        return cols[expr] if expr in cols else bindings[expr]
    rule = _EVAL.get(type(expr))
    if rule is None or (isinstance(expr, Call) and expr.op.name != "prim.if_then_else"):
        raise NotImplementedError(f"work: cannot evaluate loop bound {format_expr(expr)} ({type(expr).__name__})")
    value = rule(expr, lambda e: _evaluate(e, cols, bindings))
    return int(value) if np.ndim(value) == 0 else value


def _trunc_div(a, b):
    return np.fix(np.true_divide(a, b)).astype(np.int64)


# Rules: (expr, evaluate) -> value.  Integers stay Python ints until a numpy column comes in.
_EVAL = {
    tirx.IntImm: lambda e, ev: e.value,
    tirx.Add: lambda e, ev: ev(e.a) + ev(e.b),
    tirx.Sub: lambda e, ev: ev(e.a) - ev(e.b),
    tirx.Mul: lambda e, ev: ev(e.a) * ev(e.b),
    tirx.FloorDiv: lambda e, ev: ev(e.a) // ev(e.b),  # Python and numpy round down, like TIR's floordiv
    tirx.FloorMod: lambda e, ev: ev(e.a) % ev(e.b),
    tirx.Div: lambda e, ev: _trunc_div(ev(e.a), ev(e.b)),
    tirx.Mod: lambda e, ev: ev(e.a) - _trunc_div(ev(e.a), ev(e.b)) * ev(e.b),
    tirx.Min: lambda e, ev: np.minimum(ev(e.a), ev(e.b)),
    tirx.Max: lambda e, ev: np.maximum(ev(e.a), ev(e.b)),
    tirx.Cast: lambda e, ev: ev(e.value),
    tirx.Select: lambda e, ev: np.where(ev(e.condition), ev(e.true_value), ev(e.false_value)),
    Call: lambda e, ev: np.where(ev(e.args[0]), ev(e.args[1]), ev(e.args[2])),  # if_then_else
    tirx.EQ: lambda e, ev: np.equal(ev(e.a), ev(e.b)),
    tirx.NE: lambda e, ev: np.not_equal(ev(e.a), ev(e.b)),
    tirx.LT: lambda e, ev: np.less(ev(e.a), ev(e.b)),
    tirx.LE: lambda e, ev: np.less_equal(ev(e.a), ev(e.b)),
    tirx.GT: lambda e, ev: np.greater(ev(e.a), ev(e.b)),
    tirx.GE: lambda e, ev: np.greater_equal(ev(e.a), ev(e.b)),
    tirx.And: lambda e, ev: np.logical_and(ev(e.a), ev(e.b)),
    tirx.Or: lambda e, ev: np.logical_or(ev(e.a), ev(e.b)),
    tirx.Not: lambda e, ev: np.logical_not(ev(e.a)),
}


def _size(shape, bindings) -> int:
    size = 1
    for dim in shape:
        size *= _evaluate(dim, {}, bindings)
    return size
