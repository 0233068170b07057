"""Replaying a Relax op's legalization to get its TE compute.

An op's `FLegalize` function turns a `relax.Call` into `call_tir`s by calling `bb.call_te(topi_fn,
*args)` on a BlockBuilder.  `replay` hands it a `Recorder` instead: each `call_te` / `emit_te`
applies the TE function to the te.Tensors that stand for its Relax arguments and answers a token
variable that stands for the result.  A legalization that chains several `call_te`s (the token of
one is an argument of the next) composes into one TE graph.  Anything that is not TE (a packed
function, `add_func` of a hand-written PrimFunc, a `match_cast`) raises a `DifferentiationError`.

    relax argument          TE stand-in
    Tensor-typed expr       the te.Tensor in `values` (placeholders the caller built)
    ShapeExpr               the list of its PrimExpr dimensions
    PrimExpr (a prim_value)  itself
    Tuple / tuple-typed     the list of its fields' stand-ins
    token of a call_te      the te.Tensor (or list) that call_te returned
"""
from __future__ import annotations

import tvm
from tvm import relax, te

from ..errors import DifferentiationError

LEGALIZE = "FLegalize"


def legalization(op_name: str):
    """The op's FLegalize function, or None."""
    return tvm.ir.Op.get(op_name).get_attr(LEGALIZE)


def manual_hint(op_name: str) -> str:
    """How to give an op a gradient by hand, for error messages."""
    return (f"Register a manual gradient: tvm.ir.register_op_attr({op_name!r}, 'FPrimalGradient', "
            f"fn, level=11) with fn(orig_var, orig_call, output_grad, ctx) returning one gradient "
            f"(or relax.op.grad.no_grad(arg)) per argument of the call.")


def _relax_type(value):
    """The Relax type of a TE result (a tensor or a list of tensors), for its token variable."""
    if isinstance(value, te.Tensor):
        return relax.TensorType([d for d in value.shape], str(value.dtype))
    return relax.TupleType([_relax_type(v) for v in value])


class Recorder:
    """A BlockBuilder stand-in that records the TE of the `call_te`s a legalization makes (module
    docstring).  `values` maps Relax expressions to their TE stand-ins; the results of `call_te`
    are added to it."""

    def __init__(self, op_name: str, values: dict):
        self.op_name = op_name
        self.values = values

    def _refuse(self, what: str):
        raise DifferentiationError(f"{self.op_name}: its legalization {what}, which is not a TE "
                                   f"compute, so tvm_autodiff cannot differentiate it.  "
                                   f"{manual_hint(self.op_name)}")

    def te_value(self, arg):
        """The TE stand-in of a legalization's argument (module docstring table)."""
        if isinstance(arg, relax.Expr) and not tvm.ir.is_prim_expr(arg):
            if arg in self.values:
                return self.values[arg]
            if isinstance(arg, relax.ShapeExpr):
                return list(arg.values)
            if isinstance(arg, relax.Tuple):
                return [self.te_value(f) for f in arg.fields]
            if isinstance(arg, relax.TupleGetItem):
                return self.te_value(arg.tuple_value)[arg.index]
            self._refuse(f"reads {type(arg).__name__} {str(arg)[:60]!r}")
        if isinstance(arg, (list, tuple, tvm.ir.Array)):
            return [self.te_value(a) for a in arg]
        if isinstance(arg, (dict, tvm.ir.Map)):
            return {k: self.te_value(v) for k, v in arg.items()}
        return arg

    def call_te(self, func, *args, **kwargs):
        """Apply the TE function to the stand-ins of its arguments; answer a token for the result."""
        kwargs.pop("primfunc_name_hint", None)
        kwargs.pop("primfunc_attrs", None)
        result = func(*self.te_value(list(args)), **self.te_value(dict(kwargs)))
        if not isinstance(result, te.Tensor):
            result = list(result)
        token = relax.Var("replayed", _relax_type(result))
        self.values[token] = result
        return token

    emit_te = call_te

    def emit(self, expr, name_hint: str = ""):
        """Binding a replayed value (a token, a field of one, a tuple of them) keeps it a stand-in."""
        token = relax.Var(name_hint or "bound", expr.ty)
        self.values[token] = self.te_value(expr)
        return token

    normalize = emit

    def lookup_binding(self, var):
        """Replayed values have no Relax binding (legalizations then read tuple fields one by one)."""
        return None

    def match_cast(self, *args, **kwargs):
        self._refuse("casts a value to a shape computed at run time (match_cast)")

    def add_func(self, *args, **kwargs):
        self._refuse("adds a hand-written PrimFunc")


def replay(call: relax.Call, values: dict):
    """The TE result of `call`'s legalization (a te.Tensor or a list of them), given the TE
    stand-ins `values` of its Relax arguments."""
    name = call.op.name
    legalize = legalization(name)
    if legalize is None:
        raise DifferentiationError(f"{name} has no legalization (FLegalize) to differentiate")
    recorder = Recorder(name, dict(values))
    result = legalize(recorder, call)
    if isinstance(result, relax.Call):     # not legalized (left as is, or rewritten to other ops)
        recorder._refuse(f"emits {result.op.name if isinstance(result.op, tvm.ir.Op) else 'a call'}"
                         " (not a call_te)")
    value = recorder.te_value(result)
    if not isinstance(value, te.Tensor) and not all(isinstance(v, te.Tensor) for v in value):
        recorder._refuse("returns something other than TE tensors")
    return value
