"""Reductions: what a combiner computes, and removing `where=` / `init=` from reductions.

TVM 0.27's `te.create_prim_func` silently drops `Reduce.condition` (`where=`) and `Reduce.init`, so
every graph that we build or differentiate first goes through `fold_where_init`:

    reduce(c(k) ? s(k)) with init v   ==>   R = reduce_k select(c(k), s(k), identity);  Y = combine(v, R)
"""
from __future__ import annotations

from typing import Optional, Sequence

import tvm_ffi
from tvm import te, tirx
from tvm.ir import Var

from .graph import rebuild


def substitute(expr, vmap: dict):
    """`expr` with free variables replaced by `vmap` (Var -> expr)."""
    if not vmap:
        return expr
    return tvm_ffi.structural_map(expr, (Var, lambda v: vmap.get(v, v)))


def _is_const(e, value) -> bool:
    return isinstance(e, (tirx.IntImm, tirx.FloatImm)) and e.value == value


def component_kind(combiner: tirx.CommReducer, v: int) -> Optional[str]:
    """'sum', 'prod', 'max' or 'min' when value v of the combiner is that elementwise reduction on
    its own component (x_v ⊕ y_v, with the matching identity); None for anything else (argmax,
    user-defined combiners), which gets the generic pair-combiner derivative."""
    x, y, r, ident = combiner.lhs[v], combiner.rhs[v], combiner.result[v], combiner.identity_element[v]
    kinds = {tirx.Add: "sum", tirx.Mul: "prod", tirx.Max: "max", tirx.Min: "min"}
    kind = kinds.get(type(r))
    if kind is None or {hash(r.a), hash(r.b)} != {hash(x), hash(y)}:
        return None
    if (kind == "sum" and not _is_const(ident, 0)) or (kind == "prod" and not _is_const(ident, 1)):
        return None
    return kind


def combine(combiner: tirx.CommReducer, lhs: Sequence, rhs: Sequence) -> list:
    """The combiner's results applied to concrete lhs and rhs tuples."""
    vmap = {**dict(zip(combiner.lhs, lhs)), **dict(zip(combiner.rhs, rhs))}
    return [substitute(r, vmap) for r in combiner.result]


def multi_reduce(combiner: tirx.CommReducer, sources: Sequence, axes: Sequence, condition=None,
                 values: Sequence[int] | None = None) -> list[tirx.Reduce]:
    """The Reduce bodies of a multi-output reduction: TE requires them to share one source array."""
    sources, axes = tvm_ffi.convert(list(sources)), tvm_ffi.convert(list(axes))
    condition = tirx.const(True, "bool") if condition is None else condition
    values = range(len(sources)) if values is None else values
    return [tirx.Reduce(combiner, sources, axes, condition, v) for v in values]


def _has_extras(body) -> bool:
    return isinstance(body, tirx.Reduce) and (not _is_const(body.condition, True) or len(body.init) > 0)


def fold_where(bodies: Sequence[tirx.Reduce]) -> list[tirx.Reduce]:
    """Reduce bodies with the `where` condition moved into the sources as select(c, s, identity)."""
    r0 = bodies[0]
    cond = r0.condition
    sources = list(r0.source)
    if not _is_const(cond, True):
        sources = [tirx.Select(cond, s, e) for s, e in zip(sources, r0.combiner.identity_element)]
    return multi_reduce(r0.combiner, sources, r0.axis, values=[b.value_index for b in bodies])


def fold_where_init(outputs: Sequence[te.Tensor]) -> tuple[list[te.Tensor], dict]:
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
