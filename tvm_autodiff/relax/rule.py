"""The FPrimalGradient rule that every registered op shares.

    gradient(orig_var, orig_call, output_grad, ctx):
      1. a te.placeholder per tensor argument of the call (a tuple argument: one per field),
         shaped by its Relax type (int64 and symbolic dimensions as Relax has them);
      2. replay the op's legalization on them (replay.py) -> the forward TE output(s) Y_j;
      3. differentiate each used float output Y_j with head = a placeholder for its output
         gradient, with respect to the float arguments, and sum over j;
      4. the gradient graph's reads of Y_j become reads of a placeholder for `orig_var` (field j):
         Relax has computed the forward output already, so the kernel does not rebuild it;
      5. one PrimFunc of the placeholders it reads -> the gradients, emitted as a call_tir.

What each argument gets back:

    argument                               gradient
    float tensor                           the computed gradient
    integer / boolean tensor               no_grad
    the same Relax value a second time     no_grad (the first occurrence has the whole gradient)
    tuple of tensors                       a Tuple of per-field gradients (zeros for integer fields)
    shape, PrimValue, anything else        no_grad
    any argument of an op whose outputs    no_grad (piecewise constant: comparisons, argmax, ...)
      are all non-float

An output field whose gradient is `relax.zeros` (unused by the loss) is left out of step 3.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import relax, te, tirx, topi

from ..errors import DifferentiationError
from ..frontend import differentiate
from ..ir.expr import free_vars, is_float
from ..ir.graph import TensorMap, placeholders, rebuild
from .replay import manual_hint, replay

# The attribute that marks the PrimFuncs this rule emits (the pass schedules exactly these).
GRADIENT_ATTR = "tvm_autodiff.gradient_of"
_ZEROS = tvm.ir.Op.get("relax.zeros")


def _tensor_type(expr) -> relax.TensorType | None:
    """expr's tensor type, or None for shapes, tuples, PrimValues (they get no placeholder)."""
    ty = expr.ty
    return ty if isinstance(ty, relax.TensorType) else None


def _placeholder(ty: relax.TensorType, name: str, op_name: str) -> te.Tensor:
    """A placeholder shaped like a Relax tensor type; a shape Relax does not know is refused."""
    if not isinstance(ty.shape, relax.ShapeExpr):
        raise DifferentiationError(f"{op_name}: tensor {name!r} has no known shape ({ty}); "
                                   "match_cast it to a shape with symbolic dimensions first")
    return te.placeholder(list(ty.shape.values), str(ty.dtype), name=name)


def _fields(expr, ctx: relax.BlockBuilder) -> list:
    """The fields of a tuple-typed Relax expression as Relax expressions."""
    if isinstance(expr, relax.Tuple):
        return list(expr.fields)
    bound = ctx.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    if isinstance(bound, relax.Tuple):
        return list(bound.fields)
    return [ctx.emit(relax.TupleGetItem(expr, i)) for i in range(len(expr.ty.fields))]


class _Leaves:
    """The call's tensor arguments as placeholders, with the Relax value each stands for."""

    def __init__(self, call: relax.Call, ctx: relax.BlockBuilder):
        self.op_name = call.op.name
        self.values: dict = {}            # Relax expr -> its TE stand-in (replay.py)
        self.relax_of = TensorMap()       # placeholder -> Relax expr passed to the kernel
        for i, arg in enumerate(call.args):
            if _tensor_type(arg) is not None:
                self.values[arg] = self._leaf(arg, f"arg{i}")
            elif isinstance(arg.ty, relax.TupleType) and all(
                    isinstance(f, relax.TensorType) for f in arg.ty.fields):
                fields = _fields(arg, ctx)
                self.values[arg] = [self._leaf(f, f"arg{i}_{j}") for j, f in enumerate(fields)]

    def _leaf(self, expr, name: str) -> te.Tensor:
        if expr in self.values:           # the same Relax value twice: one placeholder
            return self.values[expr]
        t = _placeholder(_tensor_type(expr), name, self.op_name)
        self.values[expr] = t
        self.relax_of[t] = expr
        return t


def _used_output_grads(orig_var, output_grad, ctx) -> list:
    """Per output field: (its output gradient as a Relax expr, or None when it is relax.zeros or
    the field is not float)."""
    if _tensor_type(orig_var) is not None:
        return [output_grad]
    grads = _fields(output_grad, ctx)
    unused = [isinstance(g, relax.Call) and g.op.same_as(_ZEROS) for g in grads]
    return [None if skip or not is_float(str(ty.dtype)) else g
            for g, skip, ty in zip(grads, unused, orig_var.ty.fields)]


def _forward_reads(grads: list, outputs: list, stand_ins: list) -> list:
    """`grads` reading the placeholders `stand_ins` where they read the forward `outputs` (step 4
    of the module docstring).  An output of a multi-output TE op stays as it is: a placeholder
    cannot replace one output of an op whose other outputs the gradient may read."""
    replace = TensorMap((y, p) for y, p in zip(outputs, stand_ins) if not isinstance(y.op, te.PlaceholderOp))

    def rewrite(op, bodies):
        return replace.get(op.output(0)) if op.num_outputs == 1 else None

    return rebuild(grads, rewrite)[0]


def _total(op_name: str, outputs: list, heads: list, inputs: list) -> list:
    """d(sum_j <head_j, output_j>)/d inputs, zero-eliminated."""
    total = None
    for y, h in zip(outputs, heads):
        if h is None:
            continue
        try:
            part = list(differentiate(y, inputs, head=h))
        except DifferentiationError as err:
            raise DifferentiationError(f"{op_name}: {err}  {manual_hint(op_name)}") from err
        total = part if total is None else [topi.add(a, b) for a, b in zip(total, part)]
    return total


def _result(call, leaves: _Leaves, grad_of: TensorMap, ctx) -> list:
    """One gradient per call argument (module docstring table)."""
    given = set()

    def of(expr):
        t = leaves.values.get(expr) if _tensor_type(expr) is not None else None
        if t is None or t not in grad_of or expr in given:
            return None
        given.add(expr)
        return grad_of[t]

    def field(f):
        g = of(f)
        return relax.op.zeros(f.ty.shape, f.ty.dtype) if g is None else g

    out = []
    for arg in call.args:
        if isinstance(leaves.values.get(arg), list):
            out.append(relax.Tuple([field(f) for f in _fields(arg, ctx)]))
        else:
            g = of(arg)
            out.append(relax.op.grad.no_grad(arg) if g is None else g)
    return out


def _own_shape_vars(func, params: list):
    """func with fresh copies of the symbolic dimensions it shares with the calling Relax function
    (a PrimFunc binds its own from the buffer shapes, as emit_te's do).  s_tir.renew_defs would do
    it but fails on gradient kernels that reuse a loop variable in two loops."""
    shared = set().union(*[free_vars(d) for p in params for d in p.shape]) if params else set()
    fresh = {v: tirx.Var(v.name, v.ty.dtype) for v in shared}
    return tvm_ffi.structural_map(func, (tirx.Var, lambda v: fresh.get(v, v))) if fresh else func


class _Failures(threading.local):
    """The last DifferentiationError a rule raised in this thread: TVM's FFI turns it into a
    RuntimeError on its way out of relax.transform.Gradient, and the pass (transform.py) raises
    the original again."""
    last: DifferentiationError | None = None


FAILURES = _Failures()


def primal_gradient(orig_var, orig_call, output_grad, ctx: relax.BlockBuilder) -> list:
    """The FPrimalGradient of any op with a TE legalization (module docstring)."""
    try:
        return _gradient(orig_var, orig_call, output_grad, ctx)
    except DifferentiationError as err:
        FAILURES.last = err
        raise


@dataclass
class TEGradient:
    """The TE of one op's gradient kernel (steps 1-4 of the module docstring)."""
    forward: list       # the forward outputs the legalization computes
    inputs: list        # the float argument placeholders, in the order of `grads`
    heads: list         # per output field: its gradient's placeholder, None when unused
    stand_ins: list     # per output field: the placeholder standing for that field of orig_var
    grads: list         # the gradients of `inputs`, reading `stand_ins` instead of `forward`


def _te_gradient(call: relax.Call, leaves: _Leaves, out_types: list, used: list) -> TEGradient:
    op_name = call.op.name
    forward = replay(call, leaves.values)
    outputs = [forward] if isinstance(forward, te.Tensor) else forward
    inputs = [t for t in leaves.relax_of if is_float(t)]
    heads = [_placeholder(ty, f"grad{j}", op_name) if u else None for j, (ty, u) in enumerate(zip(out_types, used))]
    stand_ins = [_placeholder(ty, f"out{j}", op_name) for j, ty in enumerate(out_types)]
    grads = _forward_reads(_total(op_name, outputs, heads, inputs), outputs, stand_ins)
    return TEGradient(outputs, inputs, heads, stand_ins, grads)


def gradient_te(call: relax.Call) -> TEGradient:
    """The TE gradient kernel the rule emits for `call` (tensor arguments, every float output
    used): for inspecting it, e.g. with tvm_autodiff.work."""
    ty = call.ty if call.ty is not None else relax.BlockBuilder().normalize(call).ty
    out_types = [ty] if isinstance(ty, relax.TensorType) else list(ty.fields)
    return _te_gradient(call, _Leaves(call, None), out_types, [is_float(str(t.dtype)) for t in out_types])


def _gradient(orig_var, orig_call, output_grad, ctx: relax.BlockBuilder) -> list:
    leaves = _Leaves(orig_call, ctx)
    out_grads = _used_output_grads(orig_var, output_grad, ctx)
    if not any(is_float(t) for t in leaves.relax_of) or all(g is None for g in out_grads):
        return _result(orig_call, leaves, TensorMap(), ctx)
    out_vars = [orig_var] if _tensor_type(orig_var) is not None else _fields(orig_var, ctx)
    kernel = _te_gradient(orig_call, leaves, [v.ty for v in out_vars], [g is not None for g in out_grads])

    relax_of = TensorMap(leaves.relax_of.items())
    relax_of.update((h, g) for h, g in zip(kernel.heads, out_grads) if h is not None)
    relax_of.update(zip(kernel.stand_ins, out_vars))
    params = placeholders(kernel.grads)
    op_name = orig_call.op.name
    func = te.create_prim_func([*params, *kernel.grads]).without_attr("global_symbol").with_attr(GRADIENT_ATTR, op_name)
    gv = ctx.add_func(_own_shape_vars(func, params), op_name.split(".")[-1] + "_grad")
    types = [_tensor_type(leaves.relax_of[x]) for x in kernel.inputs]
    value = ctx.emit(relax.call_tir(gv, [relax_of[p] for p in params], types if len(types) > 1 else types[0]))
    grad_vars = [value] if len(types) == 1 else [ctx.emit(relax.TupleGetItem(value, i)) for i in range(len(types))]
    return _result(orig_call, leaves, TensorMap(zip(kernel.inputs, grad_vars)), ctx)
