"""The adjoint contribution of one edge: consumer op Y (a ComputeOp) reading tensor X.

With head H (the adjoint of Y, shape prefix + Y.shape):

    dX[p, j] = Σ_{i ∈ dom Y} Σ_{k ∈ red Y}  H[p, i] · ∂body(i, k) · [j == f(i, k)]

where the Iverson bracket [j == f] seeds each read X[f] in the forward-mode tangent of the body
(`rules.jvp`).  The bracket stays explicit (select(j == f, 1, 0)) so the zero-elimination passes can
solve it into a gather; this Iverson-bracket form of the adjoint follows Urban & van der Smagt,
"Automatic Differentiation for Tensor Algebras" (arXiv 1711.01348).  How a reduction's tangent is
formed depends on its combiner: see the reducer rule table, `reducers.py`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from tvm import te, tirx

from tvm_autodiff.ir.expr import cast, substitute
from tvm_autodiff.ir.graph import is_load, make_compute, same_tensor

from .reducers import ForwardTensors, fresh_reduce_axes, in_reduce_domain, reduce_box, reduction_terms
from .rules import add, const, jvp


def bracket(j: Sequence, f: Sequence, dtype: str):
    """[j == f] as a float: the Kronecker delta of the read X[f] at the adjoint index j."""
    if not j:
        return tirx.const(1.0, dtype)
    return tirx.Select(tirx.all(*[a == b for a, b in zip(j, f)]),
                       tirx.const(1.0, dtype), tirx.const(0.0, dtype))


def shape_and_dtype(X) -> tuple[list, str]:
    """(shape, dtype) of what is differentiated: a tensor, or a scalar variable (shape ())."""
    if isinstance(X, tirx.Var):
        return [], str(X.ty.dtype)
    return list(X.shape), str(X.dtype)


def read_seed(X, j: Sequence) -> Callable:
    """Seed for jvp: each read X[f] of the tensor X gets the tangent [j == f]; the scalar
    variable X gets 1 (it has no index); everything else is constant."""
    if isinstance(X, tirx.Var):
        one = tirx.const(1.0, str(X.ty.dtype))
        return lambda leaf: one if leaf.same_as(X) else None
    return lambda leaf: bracket(j, leaf.args[1:], str(leaf.ty.dtype)) \
        if is_load(leaf) and same_tensor(leaf.args[0], X) else None


class EdgeBuilder:
    """Builds edge contributions; forward helper tensors (`reducers.ForwardTensors`) are made once
    per consumer op and shared by all the tensors it reads."""

    def __init__(self):
        self.forward = ForwardTensors()

    def terms(self, op: te.ComputeOp, heads: Sequence, X, j: Sequence) -> list:
        """[(head, tangent)] pairs: the tangent is in op's own axis and reduce-axis variables."""
        seed = read_seed(X, j)
        bodies = list(op.body)
        if isinstance(bodies[0], tirx.Reduce):
            return reduction_terms(self.forward, op, heads, seed)
        return [(h, jvp(b, seed)) for h, b in zip(heads, bodies) if h is not None]

    def contribution(self, op: te.ComputeOp, heads: Sequence[Optional[Callable]], X,
                     prefix: Sequence, name: str) -> Optional[te.Tensor]:
        """dX from consumer `op`, or None when op's value does not depend on X (a tensor that op
        reads, or a scalar variable in op's bodies: dX[p] = Σ_{i,k} H[p, i] · ∂body(i, k)/∂X).

        `heads[v](p, i)` reads the adjoint of op's output v (None: zero adjoint)."""
        out_axes, red_axes = list(op.axis), list(op.reduce_axis)
        shape, dtype = shape_and_dtype(X)

        def body(*pj):
            p, j = pj[:len(prefix)], pj[len(prefix):]
            terms = [(h, t) for h, t in self.terms(op, heads, X, j) if t is not None]
            if not terms:
                return None
            new_axes = fresh_reduce_axes(out_axes) + [
                te.reduce_axis((lo, lo + ext), name=rv.var.name + "_r")
                for rv, (lo, ext) in zip(red_axes, reduce_box(op))]
            vmap = {iv.var: r.var for iv, r in zip(out_axes + red_axes, new_axes)}
            i = [vmap[iv.var] for iv in out_axes]
            total = None
            for h, t in terms:
                t = substitute(t, vmap)
                total = add(total, h(p, i) * t)
            total = cast(total, dtype)
            inside = in_reduce_domain(op, vmap)
            if inside is not None:
                total = tirx.Select(inside, total, const(0.0, total))
            return te.sum(total, axis=new_axes) if new_axes else total

        return make_compute(name, list(prefix) + shape, body)
