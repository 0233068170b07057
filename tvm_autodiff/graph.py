"""Walking and rebuilding te.Tensor graphs.

A TE graph is a DAG of operations (`te.Operation`); a tensor is one output `(op, value_index)` of
an operation.  Ops hash and compare by identity of the underlying node, so they work as dict keys;
tensors compare with `==` (never `same_as`, see tvm-0.27-notes pitfall 9).
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Callable, Iterable, Sequence

import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call

TENSOR_LOAD = "te.tensor_load"


def same_tensor(a: te.Tensor, b: te.Tensor) -> bool:
    """Tensor identity.  (`==` on 0-d tensors raises in TVM, and `same_as` compares wrappers.)"""
    return a.op.same_as(b.op) and a.value_index == b.value_index


class TensorMap(MutableMapping):
    """A dict keyed by te.Tensor identity (op, value_index); plain dicts call `==` on tensors, which
    TVM refuses for 0-d tensors."""

    def __init__(self, items=()):
        self._d: dict = {}
        for k, v in items:
            self[k] = v

    def __getitem__(self, t):
        return self._d[(t.op, t.value_index)][1]

    def __setitem__(self, t, value):
        self._d[(t.op, t.value_index)] = (t, value)

    def __delitem__(self, t):
        del self._d[(t.op, t.value_index)]

    def __contains__(self, t):
        return t is not None and (t.op, t.value_index) in self._d

    def __iter__(self):
        return (t for t, _ in self._d.values())

    def __len__(self):
        return len(self._d)

    def __repr__(self):
        return "{" + ", ".join(f"{t.name}: {v!r}" for t, v in self._d.values()) + "}"


def unique_tensors(tensors: Iterable[te.Tensor]) -> list[te.Tensor]:
    return list(TensorMap((t, None) for t in tensors))


def is_load(e) -> bool:
    """True if `e` is a read `T[idx]` of a tensor inside a TE body."""
    return isinstance(e, Call) and e.op.name == TENSOR_LOAD


def structural_key(e, names: TensorMap):
    """A structural key for e, with tensor reads renamed (TVM cannot hash te.Tensor)."""
    def canon(c):
        if is_load(c):
            if c.args[0] not in names:
                names[c.args[0]] = f"t{len(names)}"
            return tirx.call_pure_extern(str(c.ty.dtype), names[c.args[0]], *c.args[1:])
        return c
    return tvm_ffi.StructuralKey(tvm_ffi.structural_map(e, (Call, canon)))


def ops_post_order(outputs: Iterable[te.Tensor]) -> list[te.Operation]:
    """Every op that `outputs` depend on, producers before consumers."""
    order: list[te.Operation] = []
    seen: set = set()
    stack = [(t.op, False) for t in reversed(list(outputs))]
    while stack:
        op, expanded = stack.pop()
        if expanded:
            order.append(op)
            continue
        if op in seen:
            continue
        seen.add(op)
        stack.append((op, True))
        stack.extend((t.op, False) for t in reversed(list(op.input_tensors)) if t.op not in seen)
    return order


def placeholders(outputs: Iterable[te.Tensor]) -> list[te.Tensor]:
    """The placeholder tensors that `outputs` read, in first-use order."""
    return [op.output(0) for op in ops_post_order(outputs) if isinstance(op, te.PlaceholderOp)]


def outputs_of(op: te.Operation) -> list[te.Tensor]:
    return [op.output(i) for i in range(op.num_outputs)]


def replace_loads(expr, mapping: dict) -> object:
    """`expr` with every read `T[idx]` of a tensor `T` in `mapping` replaced by `mapping[T][idx]`."""
    if not mapping:
        return expr

    def visit(c):
        if is_load(c):
            new = mapping.get(c.args[0])
            if new is not None:
                return new(*c.args[1:])
        return c

    return tvm_ffi.structural_map(expr, (Call, visit))


def compute_op(name: str, tag: str, attrs, axis: Sequence, bodies: Sequence) -> te.Operation:
    """A ComputeOp over existing IterVars (te.compute would make fresh ones)."""
    return te._ffi_api.ComputeOp(name, tag, attrs, list(axis), list(bodies))


def rebuild(outputs: Sequence[te.Tensor],
            rewrite: Callable[[te.ComputeOp, list], list | None]) -> tuple[list[te.Tensor], dict]:
    """Rebuild the graph of `outputs` bottom-up.

    `rewrite(op, bodies)` gets each ComputeOp with its bodies already reading the rebuilt inputs and
    returns new bodies, None to keep them, or (for a single-output op) a tensor that replaces it.  Ops whose inputs and bodies are unchanged are kept as
    they are, so untouched subgraphs (and placeholders) stay identical objects.  Returns the new
    outputs and the map {old tensor: new tensor} of every tensor that changed.
    """
    mapping = TensorMap()
    for op in ops_post_order(outputs):
        if isinstance(op, te.PlaceholderOp):
            continue
        changed_inputs = TensorMap((t, mapping[t]) for t in op.input_tensors if t in mapping)
        if isinstance(op, te.ComputeOp):
            bodies = [replace_loads(b, changed_inputs) for b in op.body]
            new_bodies = rewrite(op, bodies)
            if isinstance(new_bodies, te.Tensor):
                mapping[op.output(0)] = new_bodies
                continue
            if new_bodies is None:
                if not changed_inputs:
                    continue
                new_bodies = bodies
            new_op = compute_op(op.name, op.tag, op.attrs, op.axis, new_bodies)
        elif changed_inputs:
            if not isinstance(op, te.ExternOp):
                raise NotImplementedError(f"cannot rebuild {type(op).__name__} {op.name!r}")
            inputs = [changed_inputs.get(t, t) for t in op.inputs]
            new_op = te._ffi_api.ExternOp(op.name, op.tag, op.attrs, inputs, op.input_placeholders,
                                          op.output_placeholders, op.body)
        else:
            continue
        for old, new in zip(outputs_of(op), outputs_of(new_op)):
            mapping[old] = new
    return [mapping.get(t, t) for t in outputs], mapping


def make_compute(name: str, shape: Sequence, fbody: Callable, names: str = "ijklmnopqrstuvw",
                 tag: str = "") -> te.Tensor | None:
    """Like te.compute, but `fbody(*axis_vars)` may return None (an exact zero), in which case no op is
    built and None is returned.  The axis variables take the index dtype of each extent."""
    axes = []
    for d, extent in enumerate(shape):
        extent = tirx.const(extent, "int32") if isinstance(extent, int) else extent
        var = tirx.Var(names[d % len(names)] + ("" if d < len(names) else str(d)), str(extent.ty.dtype))
        axes.append(tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.const(0, str(extent.ty.dtype)), extent),
                                 var, 0))
    body = fbody(*[iv.var for iv in axes])
    if body is None:
        return None
    return compute_op(name, tag, None, axes, [body]).output(0)


def simplify(expr):
    """tvm.sym.Analyzer simplification of an expression that may read tensors, with integer
    divisions in the form TVM compiles correctly (`positive_divisions`).

    The analyzer hashes subexpressions and TVM cannot hash a te.Tensor, so reads are swapped for
    opaque pure calls `__load<n>(idx...)` while simplifying and swapped back afterwards."""
    tensors: list = []

    def hide(c):
        if not is_load(c):
            return c
        tensors.append(c.args[0])
        return tirx.call_pure_extern(str(c.ty.dtype), f"__load{len(tensors) - 1}", *c.args[1:])

    def reveal(c):
        name = c.args[0].value if c.op.name == "tirx.call_pure_extern" else ""
        if not name.startswith("__load"):
            return c
        return tensors[int(name[6:])](*c.args[1:])

    ana = tvm.sym.Analyzer()
    hidden = positive_divisions(ana.simplify(tvm_ffi.structural_map(expr, (Call, hide))), ana)
    return tvm_ffi.structural_map(hidden, (Call, reveal))


def _negative_leading(a) -> bool:
    """a is linear in its variables with no positive and some negative coefficient (-i - 1)."""
    variables = list(tvm.tirx.analysis.undefined_vars(a))
    coefs = list(tvm.sym.detect_linear_equation(a, variables)) if variables else []
    if not coefs:
        return False
    signs = [c.value for c in coefs[:-1] if isinstance(c, tirx.IntImm)]
    return len(signs) == len(variables) and max(signs) <= 0 and min(signs) < 0


def positive_divisions(expr, ana):
    """expr with each integer a // d and a % d (d constant) rewritten so that d > 0 and a has no
    negative leading coefficients, using (c > 0)

        a // -c = (-a) // c                 a % -c = -((-a) % c)
        n // c  = -((c - 1 - n) // c)       n % c  = c - 1 - (c - 1 - n) % c     (n = -i - 1 ...)

    The analyzer's canonical form likes `k // -3` and `(0 - i - 1) // 3`; TVM 0.27 miscompiles
    the first after loop fusion.  (Divisions of offset numerators as load indices are miscompiled
    too, whatever their form: `build` guards those, see `index_guard`.)"""
    def normalized(e):
        a, d = e.a, e.b
        if not isinstance(d, tirx.IntImm) or str(e.ty.dtype).startswith(("float", "bfloat")):
            return None
        sign = 1
        if d.value < 0:
            a, d, sign = ana.simplify(0 - a), tirx.const(-d.value, str(d.ty.dtype)), -1
        n = ana.simplify(d - 1 - a) if _negative_leading(a) else None
        return a, d, sign, n

    def div(e):
        parts = normalized(e)
        if parts is None:
            return e
        a, d, _, n = parts   # floor(a / -c) = floor(-a / c): the sign only moves into a
        return tirx.floordiv(a, d) if n is None else 0 - tirx.floordiv(n, d)

    def mod(e):
        parts = normalized(e)
        if parts is None:
            return e
        a, d, sign, n = parts
        m = tirx.floormod(a, d) if n is None else d - 1 - tirx.floormod(n, d)
        return m if sign > 0 else 0 - m

    return tvm_ffi.structural_map(tvm_ffi.structural_map(expr, (tirx.FloorDiv, div)), (tirx.FloorMod, mod))
