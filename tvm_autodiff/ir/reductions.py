"""Reductions: what a combiner computes, and removing `where=` / `init=` from reductions.

TVM 0.27's `te.create_prim_func` silently drops `Reduce.condition` (`where=`) and `Reduce.init`
(docs/tvm-0.27.md, "create_prim_func drops where= and init="), so every graph that we build or
differentiate first goes through `fold_where_init`:

    reduce(c(k) ? s(k)) with init v   ==>   R = reduce_k select(c(k), s(k), identity);  Y = combine(v, R)
"""
from __future__ import annotations

from typing import Optional, Sequence

import tvm
import tvm_ffi
from tvm import te, tirx

from .expr import TRUE, is_const, simplify, substitute
from .graph import TensorMap, rebuild

# The kinds of `reducer_kind`: the four elementwise ones, then the two that a combiner as a whole has.
ELEMENTWISE_KINDS = ("sum", "prod", "max", "min")
REDUCER_KINDS = ELEMENTWISE_KINDS + ("selection", "generic")

_ELEMENTWISE = {tirx.Add: "sum", tirx.Mul: "prod", tirx.Max: "max", tirx.Min: "min"}
_IDENTITY = {"sum": 0, "prod": 1}


def _elementwise_kind(combiner: tirx.CommReducer, v: int) -> Optional[str]:
    """'sum', 'prod', 'max' or 'min' when value v of the combiner is that reduction of its own
    component (x_v ⊕ y_v, with the matching identity for sum and prod); else None."""
    x, y, r = combiner.lhs[v], combiner.rhs[v], combiner.result[v]
    kind = _ELEMENTWISE.get(type(r))
    if kind is None or {hash(r.a), hash(r.b)} != {hash(x), hash(y)}:
        return None
    if kind in _IDENTITY and not is_const(combiner.identity_element[v], _IDENTITY[kind]):
        return None
    return kind


def selection_condition(combiner: tirx.CommReducer):
    """c when every result of the combiner is select(c, x_v, y_v) with one condition c (argmax
    pairs), else None."""
    conds = []
    for x, y, r in zip(combiner.lhs, combiner.rhs, combiner.result):
        if not (isinstance(r, tirx.Select) and r.true_value.same_as(x) and r.false_value.same_as(y)):
            return None
        conds.append(r.condition)
    return conds[0] if all(tvm_ffi.structural_equal(c, conds[0]) for c in conds[1:]) else None


def reducer_kind(combiner: tirx.CommReducer, v: int = 0) -> str:
    """The classification of a combiner that picks the derivative rule of a reduction, for value v.

    When every value of the combiner is an elementwise reduction of its own component, value v's
    kind is 'sum', 'prod', 'max' or 'min' (`_elementwise_kind`; the values of a tuple reducer may
    differ).  Otherwise the combiner is one kind for all values: 'selection' when each result is
    select(c, x_v, y_v) with one condition c (`selection_condition`), else 'generic'."""
    kinds = [_elementwise_kind(combiner, w) for w in range(len(combiner.result))]
    if None not in kinds:
        return kinds[v]
    return "selection" if selection_condition(combiner) is not None else "generic"


def plain_sum(body) -> bool:
    """Whether `body` is a sum reduction (of its first value) with no condition and no init: the
    form the passes rewrite, Σ_k f(k) and nothing else."""
    return (isinstance(body, tirx.Reduce) and reducer_kind(body.combiner) == "sum"
            and is_const(body.condition, True) and not len(body.init))


def combine(combiner: tirx.CommReducer, lhs: Sequence, rhs: Sequence) -> list:
    """The combiner's results applied to concrete lhs and rhs tuples."""
    vmap = {**dict(zip(combiner.lhs, lhs)), **dict(zip(combiner.rhs, rhs))}
    return [substitute(r, vmap) for r in combiner.result]


def multi_reduce(combiner: tirx.CommReducer, sources: Sequence, axes: Sequence, condition=None,
                 values: Sequence[int] | None = None) -> list[tirx.Reduce]:
    """The Reduce bodies of a multi-output reduction: TE requires them to share one source array."""
    sources, axes = tvm_ffi.convert(list(sources)), tvm_ffi.convert(list(axes))
    condition = TRUE if condition is None else condition
    values = range(len(sources)) if values is None else values
    return [tirx.Reduce(combiner, sources, axes, condition, v) for v in values]


def reduction_at(op: te.ComputeOp, at: Sequence, ranges: dict) -> tirx.Reduce:
    """The reduction of the single-output op evaluated at the indices `at`: fresh reduce axes
    (their extents may read the indices), and source, condition and init, with op's axes replaced
    by `at` and simplified knowing the ranges {var: Range} of the variables in `at`."""
    r = op.body[0]
    ana = tvm.sym.Analyzer()
    for v, dom in ranges.items():
        ana.bind(v, dom)
    vmap = {iv.var: x for iv, x in zip(op.axis, at)}
    axes = []
    for rv in r.axis:
        dom = tvm.ir.Range.from_min_extent(simplify(substitute(rv.dom.min, vmap), ana),
                                           simplify(substitute(rv.dom.extent, vmap), ana))
        axes.append(tirx.IterVar(dom, tirx.Var(rv.var.name, str(rv.var.ty.dtype)), tirx.IterVar.CommReduce))
        vmap[rv.var] = axes[-1].var
    return tirx.Reduce(r.combiner, [simplify(substitute(s, vmap), ana) for s in r.source], axes,
                       simplify(substitute(r.condition, vmap), ana), 0, [substitute(i, vmap) for i in r.init])


def _has_extras(body) -> bool:
    return isinstance(body, tirx.Reduce) and (not is_const(body.condition, True) or len(body.init) > 0)


def fold_where(bodies: Sequence[tirx.Reduce]) -> list[tirx.Reduce]:
    """Reduce bodies with the `where` condition moved into the sources as select(c, s, identity)."""
    r0 = bodies[0]
    cond = r0.condition
    sources = list(r0.source)
    if not is_const(cond, True):
        sources = [tirx.Select(cond, s, e) for s, e in zip(sources, r0.combiner.identity_element)]
    return multi_reduce(r0.combiner, sources, r0.axis, values=[b.value_index for b in bodies])


def fold_where_init(outputs: Sequence[te.Tensor]) -> tuple[list[te.Tensor], TensorMap]:
    """Equivalent tensors whose graph has no `where=` or `init=` in any reduction.

    Returns the new outputs and the map {old tensor: new tensor} of every rebuilt tensor.  Graphs
    without either come back unchanged (the same objects).
    """

    def rewrite(op, bodies):
        if not _has_extras(bodies[0]):
            return None
        folded = fold_where(bodies)
        init = list(bodies[0].init)
        if not init:
            return folded
        # R holds the reduction alone; the op itself becomes combine(init, R) elementwise.
        shape = [iv.dom.extent for iv in op.axis]

        def reduction(*idx):
            vmap = {iv.var: i for iv, i in zip(op.axis, idx)}
            return tuple(substitute(b, vmap) for b in folded)

        r = te.compute(shape, reduction, name=op.name + "_reduce")
        r = r if isinstance(r, (list, tuple)) else [r]
        here = [iv.var for iv in op.axis]
        return combine(bodies[0].combiner, init, [t(*here) for t in r])

    return rebuild(outputs, rewrite)
