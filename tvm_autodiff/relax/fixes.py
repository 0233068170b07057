"""Rewrites of imported Relax modules around TVM 0.27 bugs (README, "Relax", the Relax bugs).

    bug                                              rewrite
    x[:, -1] imports as take(x, const(-1),           wrap_negative_take: constant negative indices
      mode="fast"), which reads out of bounds          become index + dim (what torch means)
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

_TAKE = tvm.ir.Op.get("relax.take")


@relax.expr_functor.mutator
class _WrapTake(relax.PyExprMutator):
    """take(x, constant indices) with every negative index wrapped once."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not (call.op.same_as(_TAKE) and isinstance(call.args[1], tvm.ir.GenericConst)):
            return call
        indices = call.args[1].value.numpy()
        if not (indices < 0).any():
            return call
        x = call.args[0]
        axis = int(call.attrs.axis) if call.attrs.axis is not None else None
        if axis is None or not isinstance(x.ty.shape.values[axis], tvm.tirx.IntImm):
            return call
        wrapped = np.where(indices < 0, indices + int(x.ty.shape.values[axis]), indices).astype(indices.dtype)
        return relax.op.take(x, relax.const(wrapped, str(indices.dtype)), axis, call.attrs.mode)


def wrap_negative_take(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with the constant negative indices of every take wrapped (module docstring)."""
    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _WrapTake().visit_expr(func)
    return out
