"""Sum merging: a sum of reductions over one domain is one reduction of the sum of their summands.

    Y[i] = e(i) + Σ_{n=1..N} R_n[i],   R_n[i] = Σ_{r ∈ D} f_n(i, r)
      ==>  Y[i] = e(i) + M[i],   M[i] = Σ_{r ∈ D} Σ_n f_n(i, r)

where every R_n is a plain sum over the same constant domain D, of Y's shape, read by Y alone
(and by no output of the graph), once and at Y's own index i.  Why: the gradient of a weight that an
unrolled recurrence reads at every step is such a Y (reverse.py sums one contribution per step):
an LSTM's recurrent weight at T = 32 took 31 small GEMMs (K = the batch) that each wrote a
whole-weight partial, then a kernel that read all 31 back.  M is one GEMM whose reduction runs
over every step's operands (K = 31 · batch) and writes its output once.  The terms keep their
order within each r; only the association of the additions changes (floating-point sums may
differ in the last bits).  Groups hold at most MAX_TERMS summands, so that one body stays a size
that TVM compiles quickly.  Pure graph rewriting.
"""
from __future__ import annotations

import collections

import tvm_ffi
from tvm import te, tirx

from tvm_autodiff.ir.expr import add_all, flatten, substitute, tensor_loads
from tvm_autodiff.ir.graph import TensorMap, is_load, ops_post_order, rebuild
from tvm_autodiff.ir.reductions import plain_sum

from .arguments import tensor_list

# Most summands merged into one reduction (an LSTM at T = 32 has 32 per weight).
MAX_TERMS = 64


def _domain(op) -> tuple | None:
    """The reduce extents and dtype of a single-body plain sum over constant extents, else None."""
    if not isinstance(op, te.ComputeOp) or op.num_outputs != 1 or not plain_sum(op.body[0]):
        return None
    extents = [rv.dom.extent for rv in op.body[0].axis]
    if not all(isinstance(d, tirx.IntImm) for d in extents):
        return None
    return tuple(d.value for d in extents), str(op.output(0).dtype)


def _mergeable(op: te.ComputeOp, uses: TensorMap) -> list:
    """The indices, among op's summands, of the identity reads of reductions that only op reads,
    grouped by domain (each group at least two, at most MAX_TERMS)."""
    if op.num_outputs != 1 or isinstance(op.body[0], tirx.Reduce):
        return []
    axis = [iv.var for iv in op.axis]
    extents = [iv.dom.extent for iv in op.axis]
    groups = collections.defaultdict(list)
    for n, term in enumerate(flatten(op.body[0], tirx.Add)):
        if not is_load(term) or uses.get(term.args[0]) != 1:
            continue
        idx, shape = term.args[1:], term.args[0].shape
        # Read at Y's own index, and of Y's shape (M takes the first R's shape for all).
        if (len(idx) != len(axis) or not all(isinstance(x, tirx.Var) and x.same_as(v) for x, v in zip(idx, axis))
                or not all(tvm_ffi.structural_equal(d, e) for d, e in zip(shape, extents))):
            continue
        domain = _domain(term.args[0].op)
        if domain is not None:
            groups[domain].append(n)
    return [g[k:k + MAX_TERMS] for g in groups.values() for k in range(0, len(g), MAX_TERMS)
            if len(g[k:k + MAX_TERMS]) > 1]


def _merged(name: str, reductions: list) -> te.Tensor:
    """M = Σ_r Σ_n f_n (module docstring) of the reductions R_n (tensors of one domain)."""
    first = reductions[0].op.body[0]
    axes = [te.reduce_axis((0, rv.dom.extent), rv.var.name) for rv in first.axis]

    def summand(t, i):
        r = t.op.body[0]
        vmap = {**{iv.var: v for iv, v in zip(t.op.axis, i)}, **{rv.var: a.var for rv, a in zip(r.axis, axes)}}
        return substitute(r.source[0], vmap)

    def body(*i):
        return te.sum(add_all(summand(t, i) for t in reductions), axis=axes)

    return te.compute(reductions[0].shape, body, name=name)


class _Merger:
    """The rewrite callback for `rebuild`; `uses` counts the reads of each tensor in the graph
    before rebuilding (an output counts as one more)."""

    def __init__(self, uses: TensorMap):
        self.uses = uses

    def __call__(self, op: te.ComputeOp, bodies: list):
        groups = _mergeable(op, self.uses)
        if not groups:
            return None
        # The rebuilt body has the same summands in the same order, reading the rebuilt R_n.
        terms = flatten(bodies[0], tirx.Add)
        merged = {g[0]: _merged(f"{op.name}_sum{k}" if len(groups) > 1 else f"{op.name}_sum",
                                [terms[n].args[0] for n in g]) for k, g in enumerate(groups)}
        dropped = {n for g in groups for n in g[1:]}
        axis = [iv.var for iv in op.axis]
        return [add_all(merged[n](*axis) if n in merged else t for n, t in enumerate(terms) if n not in dropped)]


def merge_sums(tensors):
    """The graph of `tensors` (a tensor or a list) with every sum of same-domain reductions that
    nothing else reads computed as one reduction (module docstring).  Values are unchanged up to
    the association of floating-point additions; shared tensors stay shared."""
    items = tensor_list(tensors, "merge_sums() tensors")
    uses = TensorMap((t, 1) for t in items)
    for op in ops_post_order(items):
        if isinstance(op, te.ComputeOp):
            for body in op.body:
                for load in tensor_loads(body):
                    uses[load.args[0]] = uses.get(load.args[0], 0) + 1
    out, _ = rebuild(items, _Merger(uses))
    return out[0] if isinstance(tensors, te.Tensor) else out


__all__ = ["merge_sums"]
