"""View composition: a view of a view reads the first view's source directly.

    Y[i] = X[f(i)],  X[j] = Z[g(j)]   ==>   Y[i] = Z[g(f(i))]        (Y[i] = c when X[j] = c)

for views X and Y (`ir.graph.is_view`: one load at indices without division, or a constant).
Why: the identity adjoints of a chain of n additions are a chain of n identity views; the
per-kernel build repeats a view inside every kernel that reads it (tvm_autodiff/kernels.py),
which for a chain would be n² ops, where composed, every view reads a non-view and each kernel
repeats at most one per input.  X stays where anything else reads it.  Pure graph rewriting;
values are unchanged.
"""
from __future__ import annotations

from tvm import te

from tvm_autodiff.ir.expr import substitute
from tvm_autodiff.ir.graph import is_load, is_view, rebuild

from .arguments import tensor_list


def _composed(op: te.ComputeOp, bodies: list):
    """Y's body reading through the view it reads (module docstring), else None."""
    body = bodies[0]
    if not (is_view(op) and is_load(body) and is_view(body.args[0].op)):
        return None
    source = body.args[0].op
    vmap = {iv.var: x for iv, x in zip(source.axis, body.args[1:])}
    return [substitute(source.body[0], vmap)]


def compose_views(tensors):
    """The graph of `tensors` (a tensor or a list) with every view of a view reading its source
    (module docstring).  Values are unchanged; shared tensors stay shared."""
    items = tensor_list(tensors, "compose_views() tensors")
    out, _ = rebuild(items, _composed)
    return out[0] if isinstance(tensors, te.Tensor) else out


__all__ = ["compose_views"]
