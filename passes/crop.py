"""Crop fusion: a tensor that one consumer copies at shifted indices is computed there.

The adjoint of a zero padding is a crop: for Xp = pad(X, c), dX[v] = dXp[v + c], and dXp is the
input gradient of the convolution that read Xp, a reduction over the padded (larger) grid.  For
a reduction R that nothing reads but a tensor Y whose body is the one load R[v + c] (v: Y's
axes, c: constants),

    R[u] = ⊕_{r ∈ D(u)} f(u, r),   Y[v] = R[v + c]
      ==>
    Y[v] = ⊕_{r ∈ D(v + c)} f(v + c, r)

Exact: Y holds the values of R that it read, and R is gone.  An elementwise R is inlined the
same way, so a graph whose shapes make a sum elementwise (a batch of 1) keeps the same work.
The work is R's on Y's grid only, and that grid is often the one the schedules tile well: a 3×3 convolution's input gradient over
32 columns instead of the 34 of the padded input (34 = 2·17 leaves 2-lane vectors).
"""
from __future__ import annotations

from collections import Counter

from tvm import te, tirx

from tvm_autodiff.ir.expr import reads, simplify, substitute
from tvm_autodiff.ir.graph import is_load, ops_post_order, rebuild
from tvm_autodiff.ir.reductions import reduction_at

from .arguments import tensor_list


def _read_counts(tensors: list) -> Counter:
    """How many loads read each op's output over the graph of `tensors`; an output counts as a
    read (it must stay)."""
    counts: Counter = Counter(t.op for t in tensors)
    for op in ops_post_order(tensors):
        if isinstance(op, te.ComputeOp):
            for b in op.body:
                counts.update(t.op for t in reads(b))
    return counts


def _shift(load, axes: list):
    """The constants c with load = R[axes + c] (R of the same rank), or None."""
    idx = list(load.args[1:])
    if len(idx) != len(axes):
        return None
    shift = [simplify(i - v) for i, v in zip(idx, axes)]
    return shift if all(isinstance(c, tirx.IntImm) for c in shift) else None


def _fusable(load, axes: list, counts: Counter):
    """The shift c when load R[axes + c] reads a single-output compute op that only it reads;
    else None."""
    op = load.args[0].op
    if not (isinstance(op, te.ComputeOp) and op.num_outputs == 1):
        return None
    return _shift(load, axes) if counts[op] == 1 else None


def fuse_crops(tensors):
    """The graph of `tensors` (a tensor or a list) with every compute op that only a copy reads,
    at the copy's indices plus constants, computed on the copy's grid (module docstring).
    Values are unchanged; the tensors keep their names."""
    items = tensor_list(tensors, "fuse_crops() tensors")
    counts = _read_counts(items)

    def rewrite(op, bodies):
        # Decided on the input graph's op, whose reads `counts` counted; built from the rebuilt
        # bodies, which read the rebuilt producers.
        if not (isinstance(op, te.ComputeOp) and op.num_outputs == 1 and is_load(op.body[0])):
            return None
        shift = _fusable(op.body[0], [iv.var for iv in op.axis], counts)
        if shift is None:
            return None
        producer = bodies[0].args[0].op
        at = [iv.var + c for iv, c in zip(op.axis, shift)]
        if not isinstance(producer.body[0], tirx.Reduce):
            # An elementwise producer is inlined (the same work; a reduction would also have been
            # reduced to one at a batch of 1).
            return [simplify(substitute(producer.body[0], {iv.var: x for iv, x in zip(producer.axis, at)}))]
        return [reduction_at(producer, at, {iv.var: iv.dom for iv in op.axis})]

    out, _ = rebuild(items, rewrite)
    return out[0] if isinstance(tensors, te.Tensor) else out
