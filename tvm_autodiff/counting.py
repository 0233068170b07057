"""Work counts: how many loop-body executions the kernel of a TE graph performs.

`work` counts on the PrimFunc that `te.create_prim_func` builds, so the numbers are those of the real
(unscheduled) kernel.  A reduce axis whose extent depends on an outer axis becomes, in that TIR, an
outer block `C_l1` over the spatial loops holding a loop `for k in range(v_i + 1)` around the block
`C`; such loop nests are counted exactly by enumerating only the outer loop values that inner bounds
depend on (vectorized with numpy).  Predicates (`where=`, `T.where`) never reduce a count: we count
loop iterations, not predicate hits.

`scheduled_work` counts the same way on the kernel that `build` scheduled, and also the arithmetic
each loop body evaluates, so that a schedule that recomputes a value (inlining a producer into
several loads) shows up; its docstring has the formula.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Op, StringImm, Var
from tvm.ir.expr import Expr
from tvm.s_tir import SBlock, SBlockRealize

from tvm_autodiff.ir.expr import cast, evaluate, free_vars, simplify, substitute
from tvm_autodiff.ir.graph import ops_post_order, outputs_of, placeholders, unique_tensors
from tvm_autodiff.passes import eliminate_zeros
from tvm_autodiff.passes.arguments import tensor_list
from tvm_autodiff.tir.nodes import LOAD_TYPE

from .compile import Compiled
from .errors import ArgumentTypeError, DifferentiationError, describe
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

    `bindings` maps the graph's symbolic shape variables (te.var objects or their names) to ints;
    each one that a loop bound uses must be bound (`explain` shows the work of a graph with
    unbound ones as expressions in them)."""
    tensors = unique_tensors(tensor_list(tensors, "work() tensors"))
    dims = _shape_vars(tensors)
    env = _bind(bindings, dims, "work")
    missing = env.unbound(dims)
    if missing:
        raise DifferentiationError(f"work() counts iterations, which depend on the symbolic dimensions "
                                   f"{_names(missing)}; pass bindings={_template(missing)}.")
    return _count(tensors, env)


def _count(tensors, env: "_Bindings") -> Work:
    computed = [t for t in tensors if not isinstance(t.op, te.PlaceholderOp)]
    per_op: dict[str, int] = {}
    if computed:
        func = te.create_prim_func(placeholders(tensors) + computed)
        for name, loops, _ in _leaves(func.body):
            per_op[name] = per_op.get(name, 0) + count_loops(loops, env)
    elements = sum(math.prod(_evaluate(d, {}, env) for d in t.shape) for t in _materialized(tensors))
    return Work(sum(per_op.values()), elements, per_op)


@dataclass(frozen=True)
class ScheduledWork:
    """`iterations`: executions of innermost loop or block bodies of a kernel as scheduled (as
    `Work.iterations`, but over the scheduled loops); `ops`: the arithmetic those bodies evaluate
    (see `scheduled_work`); `per_block`: block name -> (iterations, ops)."""
    iterations: int
    ops: int
    per_block: dict = field(default_factory=dict)


def scheduled_work(kernel, bindings=None) -> ScheduledWork:
    """Count the work of a kernel as it runs: `kernel` is a `Compiled` (what `build` returns; its
    scheduled PrimFunc is counted, or each kernel of a per-kernel build) or a PrimFunc
    (`te.create_prim_func` gives the unscheduled one).

    `work` counts before scheduling, so it cannot see a schedule that recomputes: inlining a
    producer into a consumer that reads it k times per element removes the producer's loops but
    evaluates its expression k times.  Here, for each leaf L (an innermost loop or block body;
    a block's init is not counted, as in `work`, but an init that the schedule split off into a
    block of its own, `C_init`, is a leaf like any other) with loops l_1..l_d:

        iterations = sum over L of  prod_i trips(l_i)       (count_loops: exact for loops whose
                                                             bounds depend on outer loops)
        ops        = sum over L of  prod_i trips(l_i) * ops(L)

    (in a per-kernel build, each kernel's sums times the calls of it per run) where
    trips(l) = ceil(extent / step) and ops(L) is the number of expression nodes that L's
    stored values (and the conditions of its if-statements) evaluate: every node except loads,
    variables and constants, and not counting the index arithmetic inside load and store
    indices.  A select counts both branches.  Vectorized, unrolled and parallel loops count their
    extents, and a split loop's predicated-off iterations count too (loop iterations, not
    predicate hits).  Symbolic extents need `bindings` ({te.var or name: int}); without them the
    count is refused with the names to bind."""
    if not isinstance(kernel, (Compiled, tirx.PrimFunc)):
        raise ArgumentTypeError(f"scheduled_work() kernel must be a Compiled (from build) or a "
                                f"tirx.PrimFunc, got {describe(kernel)}.")
    leaves = [(prefix + name, loops, stmt, calls) for prefix, func, calls in _functions(kernel)
              for name, loops, stmt in _leaves(func.body)]
    symbolic = _bound_vars(leaves)
    env = _bind(bindings, _shape_vars(kernel.outputs) if isinstance(kernel, Compiled) else symbolic,
                "scheduled_work")
    missing = env.unbound(symbolic)
    if missing:
        raise DifferentiationError(f"scheduled_work() counts iterations, which depend on the symbolic "
                                   f"dimensions {_names(missing)}; pass bindings={_template(missing)}.")
    per_block: dict[str, tuple] = {}
    for name, loops, stmt, calls in leaves:
        n = calls * count_loops(loops, env)
        its, ops = per_block.get(name, (0, 0))
        per_block[name] = (its + n, ops + n * _leaf_ops(stmt))
    return ScheduledWork(sum(i for i, _ in per_block.values()), sum(o for _, o in per_block.values()),
                         per_block)


def _functions(kernel) -> list:
    """[(block-name prefix, scheduled PrimFunc, calls per run)] of `kernel`: a PrimFunc or a
    one-PrimFunc build is itself, run once; a per-kernel build (`Compiled.kernels`, {name:
    Scheduled}, with `Compiled.calls`) is each distinct kernel, run as often as a run calls it, its
    blocks named "kernel/block" as in `Compiled.rules`."""
    if isinstance(kernel, tirx.PrimFunc):
        return [("", kernel, 1)]
    if kernel.module is None:
        return [("", kernel.func, 1)]
    return [(f"{name}/", scheduled.func, kernel.calls[name]) for name, scheduled in kernel.kernels.items()]


def _bound_vars(leaves) -> list:
    """The variables in the loop bounds of `leaves` other than loop variables (the kernel's
    symbolic dimensions), by name."""
    own = {loop[0] for _, loops, _, _ in leaves for loop in loops}
    used = {v for _, loops, _, _ in leaves for loop in loops for e in loop[1:] if e is not None
            for v in free_vars(e)}
    return sorted(used - own, key=lambda v: v.name)


# Expression nodes that evaluate nothing: what `_leaf_ops` does not count.
_FREE = (LOAD_TYPE, Var, tirx.IntImm, tirx.FloatImm, StringImm, Op)


def _leaf_ops(stmt) -> int:
    """ops(L) of `scheduled_work`: the expression nodes in the values that `stmt` stores or
    evaluates and in its if-conditions, other than loads, variables and constants; load indices
    (address arithmetic) are not entered."""
    roots = []
    tvm_ffi.structural_walk(stmt, [(tirx.BufferStore, lambda st: roots.append(st.value)),
                                   (tirx.Evaluate, lambda st: roots.append(st.value)),
                                   (tirx.IfThenElse, lambda st: roots.append(st.condition))])
    count = 0

    def visit(e):
        nonlocal count
        if isinstance(e, LOAD_TYPE):
            return tvm_ffi.WalkResult.SKIP
        if isinstance(e, Expr) and not isinstance(e, _FREE):
            count += 1
        return None

    for root in roots:
        tvm_ffi.structural_walk(root, visit, order="pre")
    return count


def op_iterations(op, bindings=None) -> int:
    """Iterations of one ComputeOp read off its TE axes: create_prim_func emits one block per output
    of an elementwise op, and one block storing every output of a reduction."""
    return _count_op(op, _bind(bindings, _shape_vars(outputs_of(op)), "op_iterations"))


def _loops(op) -> list:
    return [(iv.var, iv.dom.min, iv.dom.extent, None) for iv in list(op.axis) + list(op.reduce_axis)]


def _blocks(op) -> int:
    return 1 if len(op.reduce_axis) else op.num_outputs


def _count_op(op, env: "_Bindings") -> int:
    return _blocks(op) * count_loops(_loops(op), env)


def _symbolic_iterations(op, env: "_Bindings"):
    """`_count_op` as an expression in the shape variables when op's loops form a box (no bound
    reads a loop variable): the product of the extents, which count_loops clamps at 0 (a
    difference only where an extent is negative, which no valid shape has); None otherwise."""
    loops = _loops(op)
    own = {v for v, _, _, _ in loops}
    if any(free_vars(ext) & own for _, _, ext, _ in loops):
        return None
    return _product([tirx.const(_blocks(op), "int32")] + [env.apply(ext) for _, _, ext, _ in loops])


def explain(tensors, file=None, bindings=None) -> str:
    """A readable dump of the graph of `tensors`: each op (producers first) with its shape, axes,
    body and work, then the total, before and after `tvm_autodiff.passes.eliminate_zeros`.  With
    symbolic shapes and no `bindings` for them, the work is shown as expressions in them where the
    loops form boxes, and the text says which bindings give counts.  Given a `Compiled` (what
    `build` returns), the schedule rule of each of its blocks and why the rules before it
    declined.  Returns the text and also writes it to `file` (anything with `write`) if given."""
    if file is not None and not callable(getattr(file, "write", None)):
        raise ArgumentTypeError(f"explain() file must have a write method (an open text file, "
                                f"io.StringIO, sys.stdout), got {describe(file)}.")
    if isinstance(tensors, Compiled):
        text = tensors.explain() + "\n"
    else:
        text = _explain_graph(tensor_list(tensors, "explain() tensors"), bindings)
    if file is not None:
        file.write(text)
    return text


def _explain_graph(tensors: list, bindings) -> str:
    dims = _shape_vars(tensors)
    env = _bind(bindings, dims, "explain")
    unbound = env.unbound(dims)
    lines = []
    if unbound:
        lines.append(f"symbolic dimensions {_names(unbound)} are unbound: the work is shown in terms of "
                     f"them; pass bindings={_template(unbound)} for counts")
    totals = []
    for title, graph in (("before", tensors), ("after eliminate_zeros", eliminate_zeros(tensors))):
        iterations, elements = _totals(unique_tensors(graph), env, unbound)
        totals.append(iterations)
        lines += [f"== {title} =="] + _describe(graph, env)
        lines.append(f"total {title}: {_show(iterations)} iterations, {_show(elements)} elements")
    before, after = totals
    ratio = f" ({after / max(before, 1):.3g}x)" if all(isinstance(t, int) for t in totals) else ""
    lines.append(f"work: {_show(before)} -> {_show(after)} iterations{ratio}")
    return "\n".join(lines) + "\n"


def _totals(tensors, env: "_Bindings", unbound: list) -> tuple:
    """(iterations, elements) of the graph: ints, or with unbound dimensions expressions in them
    (iterations None when some op's loops are not a box, or it is not a ComputeOp)."""
    if not unbound:
        w = _count(tensors, env)
        return w.iterations, w.elements
    ops = [op for op in ops_post_order(tensors) if not isinstance(op, te.PlaceholderOp)]
    counts = [_symbolic_iterations(op, env) if isinstance(op, te.ComputeOp) else None for op in ops]
    iterations = None if any(c is None for c in counts) else _sum(counts)
    return iterations, _sum([env.apply(_size(t)) for t in _materialized(tensors)])


def _show(count) -> str:
    if count is None:
        return "(pass bindings to count)"
    return str(count) if isinstance(count, int) else format_expr(count)


def _op_work(op, env: "_Bindings") -> str:
    """The iterations of op: a count when its bounds are bound, else an expression or a request."""
    missing = env.unbound(_shape_vars(outputs_of(op), inputs=False))
    if not missing:
        return f"{_count_op(op, env)} iterations"
    expr = _symbolic_iterations(op, env)
    return f"{format_expr(expr)} iterations" if expr is not None else f"(bind {_names(missing)} to count)"


def _describe(tensors, env: "_Bindings") -> list[str]:
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
        lines.append(f"  work:   {_op_work(op, env)}")
    return lines


# ---------------------------------------------------------------------------------------------
# Symbolic shape variables and their bindings.

def _shape_vars(tensors, inputs: bool = True) -> list:
    """The free variables of the loop bounds of the graph of `tensors` (its symbolic dimensions:
    shapes and axis ranges), by name; with inputs=False, of the ops of `tensors` alone."""
    seen = {}
    for op in ops_post_order(tensors) if inputs else {t.op: None for t in tensors}:
        exprs = [d for t in outputs_of(op) for d in t.shape]
        own = set()
        if isinstance(op, te.ComputeOp):
            ivs = list(op.axis) + list(op.reduce_axis)
            exprs += [e for iv in ivs for e in (iv.dom.min, iv.dom.extent)]
            own = {iv.var for iv in ivs}
        for e in exprs:
            seen.update((v, None) for v in free_vars(e) if v not in own)
    return sorted(seen, key=lambda v: v.name)


def _names(vars) -> str:
    return ", ".join(v.name for v in vars)


def _template(vars) -> str:
    return "{" + ", ".join(f"{v.name!r}: <int>" for v in vars) + "}"


# ---------------------------------------------------------------------------------------------
# The TIR walk: every leaf (a loop or block body without loops or blocks inside) with its loops.

def _leaves(stmt, loops=(), subst=None, block="root"):
    """Yield (block name, [(var, min, extent, step)], leaf statement) for each leaf under `stmt`.
    Inside a nested block, loop bounds refer to the block's iter vars (`range(v_i + 1)`); `subst`
    maps those to their bindings, so that every bound is written over loop vars and shape vars
    only."""
    subst = subst or {}
    if isinstance(stmt, SBlock):  # the init statement is not counted, only the body
        yield from _leaves(stmt.body, loops, subst, stmt.name_hint)
    elif not _has_loops(stmt):  # one leaf, however many statements (a multi-output reduce stores several)
        yield block, loops, stmt
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

    def __init__(self, by_var: dict, by_name: dict):
        self.by_var, self.by_name = by_var, by_name

    def unbound(self, vars) -> list:
        return [v for v in vars if v not in self.by_var and v.name not in self.by_name]

    def apply(self, expr):
        """expr with the bound variables replaced by their values."""
        bound = [v for v in free_vars(expr) if not self.unbound([v])]
        return simplify(substitute(expr, {v: tirx.const(self[v], str(v.ty.dtype)) for v in bound}))

    def __getitem__(self, var) -> int:
        if var in self.by_var:
            return self.by_var[var]
        if var.name in self.by_name:
            return self.by_name[var.name]
        raise DifferentiationError(f"work: symbolic variable {var.name!r} is unbound; pass bindings={{{var.name!r}: <int>}}")


def _bind(bindings, dims: list, fn: str) -> _Bindings:
    """`bindings` checked against the symbolic dimensions `dims` of a graph or kernel: a dict
    whose keys are some of them (te.var objects or their names) and whose values are ints >= 0."""
    if bindings is None:
        return _Bindings({}, {})
    if not isinstance(bindings, Mapping):
        raise ArgumentTypeError(f"{fn}() bindings must be a dict {{name or te.var: int}}, got {describe(bindings)}.")
    by_var, by_name = {}, {}
    for key, value in bindings.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ArgumentTypeError(f"{fn}() bindings[{key!r}] must be an int, got {describe(value)}.")
        if value < 0:
            raise DifferentiationError(f"{fn}() bindings[{key!r}] is {value}; a dimension is at least 0.")
        if isinstance(key, str):
            known, target = any(v.name == key for v in dims), by_name
        elif isinstance(key, Var):
            known, target = any(v.same_as(key) for v in dims), by_var
        else:
            raise ArgumentTypeError(f"{fn}() bindings keys must be te.var's or their names, got {describe(key)}.")
        if not known:
            raise DifferentiationError(f"{fn}() bindings: {key!r} is not a symbolic dimension of these tensors "
                                       f"(theirs: {_names(dims) or 'none'}).")
        target[key] = int(value)
    return _Bindings(by_var, by_name)


def _evaluate(expr, cols, bindings):
    """Integer value of an index expression: an int, or a numpy array over the enumerated rows."""
    try:
        return evaluate(expr, lambda v: cols[v] if v in cols else bindings[v])
    except KeyError as err:
        raise NotImplementedError(f"work: cannot evaluate loop bound {format_expr(expr)} ({err.args[0]})") from None


def _materialized(tensors) -> list:
    """Every non-placeholder tensor of the graph."""
    return [t for op in ops_post_order(tensors) if not isinstance(op, te.PlaceholderOp) for t in outputs_of(op)]


def _size(t):
    """The number of elements of t, as an expression."""
    return _product(list(t.shape))


def _folded(exprs, fold, start: int):
    """fold over exprs, simplified: the constants folded as Python ints first (TVM folds int32
    constants with wrap-around), in int64 when that constant or an operand needs it."""
    const = reduce(fold, (int(e.value) for e in exprs if isinstance(e, tirx.IntImm)), start)
    rest = [e for e in exprs if not isinstance(e, tirx.IntImm)]
    wide = abs(const) >= 1 << 31 or any(str(e.ty.dtype) == "int64" for e in rest)
    dtype = "int64" if wide else "int32"
    return simplify(reduce(fold, [cast(e, dtype) for e in rest], tirx.const(const, dtype)))


def _product(exprs):
    return _folded(exprs, operator.mul, 1)


def _sum(exprs):
    return _folded(exprs, operator.add, 0)
