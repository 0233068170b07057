"""Column-operand transposition: a sum that reads its column operand across rows reads a
transposed copy along them.

    Y[.., i, j] = Σ_k A[.., i, k] · B[.., j, k]      (A·Bᵀ: a dense layer, attention's Q·Kᵀ)
      ==>  Y[.., i, j] = Σ_k A[.., i, k] · Bᵗ[.., k, j],   Bᵗ[.., k, j] = B[.., j, k]

where j is Y's last axis, B reads j and the reduce variable k as its last two indices and
nowhere else, and A does not read j.  Why: the CPU schedules vectorize j, and only Bᵗ is
contiguous along it; A·Bᵀ otherwise takes the dot-product tile, whose partial sums need a
reduction across lanes per output, where Bᵗ gets the outer-product matmul tile (at GPT's sizes,
2048 x 2000 x 256: 16.7 -> 12.4 ms; 2048 x 768 x 256: 10.2 -> 4.3 ms).  Bᵗ carries the compute
attribute MATERIALIZE, which the inlining rule honours (a transpose inlined back would be the
strided read again).  One Bᵗ per B, shared by every sum that reads it so (the weights of all the
steps of an unrolled recurrence).  Pure graph rewriting; values are unchanged.
"""
from __future__ import annotations

import math

from tvm import te, tirx

from tvm_autodiff.ir.expr import free_vars
from tvm_autodiff.ir.graph import MATERIALIZE, is_load, ops_post_order, rebuild
from tvm_autodiff.ir.reductions import plain_sum

from .arguments import tensor_list

# Columns of Y must be whole vectors of this many lanes, as the matmul tile takes them.
COLUMN_MULTIPLE = 8
# Least multiply-adds per element of Bᵗ, over all the sums that read it (the rows of A that reuse
# it), so that the copy is small next to them: a lone 32 x 512 x 128 dense layer went from 0.036
# to 0.050 ms with its own transpose (32 per element); an LSTM's 32 steps share one.
MIN_WORK_PER_COPY = 64


def _column_read(axis, bodies: list):
    """(A's load, B's load, the sum's multiply-adds) of an A·Bᵀ-form sum over `axis` (module
    docstring) with constant extents and whole-vector columns, else None."""
    if len(bodies) != 1 or not plain_sum(bodies[0]) or len(bodies[0].source) != 1 or not axis:
        return None
    r = bodies[0]
    s = r.source[0]
    if not (isinstance(s, tirx.Mul) and is_load(s.a) and is_load(s.b)):
        return None
    extents = [iv.dom.extent for iv in [*axis, *r.axis]]
    if not all(isinstance(d, tirx.IntImm) for d in extents) or extents[len(axis) - 1].value % COLUMN_MULTIPLE:
        return None
    j, reduce_vars = axis[-1].var, {rv.var for rv in r.axis}
    for a, b in ((s.a, s.b), (s.b, s.a)):
        if len(b.args) < 3 or not all(isinstance(d, tirx.IntImm) for d in b.args[0].shape):
            continue
        *prefix, bj, bk = b.args[1:]
        if (isinstance(bj, tirx.Var) and bj.same_as(j) and isinstance(bk, tirx.Var) and bk in reduce_vars
                and not any(free_vars(x) & {j, bk} for x in prefix) and j not in free_vars(a)):
            return a, b, math.prod(e.value for e in extents)
    return None


def _size(t: te.Tensor) -> int:
    return math.prod(d.value for d in t.shape)


class _Transposer:
    """The rewrite callback for `rebuild`; `copies` shares Bᵗ between sums, and `work` holds the
    multiply-adds of all the sums that read each B so (the ops before rebuilding)."""

    def __init__(self, work: dict):
        self.copies, self.work = {}, work

    def __call__(self, op: te.ComputeOp, bodies: list):
        found = _column_read(op.axis, bodies)
        if found is None:
            return None
        a, b, work = found
        t = b.args[0]
        if self.work.get((t.op, t.value_index), work) < MIN_WORK_PER_COPY * _size(t):
            return None
        *prefix, bj, bk = b.args[1:]
        r = bodies[0]
        return [te.sum(a * self._transposed(t)(*prefix, bk, bj), axis=list(r.axis))]

    def _transposed(self, t: te.Tensor) -> te.Tensor:
        key = (t.op, t.value_index)
        if key not in self.copies:
            *lead, n, k = t.shape
            self.copies[key] = te.compute([*lead, k, n], lambda *i: t(*i[:-2], i[-1], i[-2]),
                                          name=f"{t.op.name}_T", attrs={MATERIALIZE: 1})
        return self.copies[key]


def transpose_columns(tensors):
    """The graph of `tensors` (a tensor or a list) with the column operand of every A·Bᵀ-form sum
    read from a transposed copy (module docstring).  Values are unchanged; shared tensors stay
    shared."""
    items = tensor_list(tensors, "transpose_columns() tensors")
    work: dict = {}
    for op in ops_post_order(items):
        found = _column_read(op.axis, list(op.body)) if isinstance(op, te.ComputeOp) else None
        if found is not None:
            t = found[1].args[0]
            work[t.op, t.value_index] = work.get((t.op, t.value_index), 0) + found[2]
    out, _ = rebuild(items, _Transposer(work))
    return out[0] if isinstance(tensors, te.Tensor) else out


__all__ = ["transpose_columns"]
