"""Walking and rebuilding te.Tensor graphs.

A TE graph is a DAG of operations (`te.Operation`); a tensor is one output `(op, value_index)` of
an operation.  Ops hash and compare by identity of the underlying node, so they work as dict keys;
tensors are compared by `same_tensor` and kept in `TensorMap`s (docs/tvm-0.27.md, "te.Tensor
identity").
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Callable, Iterable, Sequence

import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call

TENSOR_LOAD = "te.tensor_load"
# The tag of the scatter-add extern ops that zero elimination builds (passes/scatter.py), so that
# differentiate() can say where one came from.
SCATTER_TAG = "tvm_autodiff.scatter_add"
# The compute attribute (a block annotation in the PrimFunc) of a tensor that a pass made to be
# stored, such as a transposed operand (passes/transpose.py): the inlining rule keeps it.
MATERIALIZE = "tvm_autodiff.materialize"
# Loop annotations of hand-built loop nests (the scatter-add's), which the schedule cannot reach
# with its primitives: INDEPENDENT marks a loop whose iterations write disjoint elements, LANES
# a constant-extent inner loop over contiguous elements (tir/annotated_loops.py).
INDEPENDENT_LOOP = "tvm_autodiff.independent"
LANES_LOOP = "tvm_autodiff.lanes"


def same_tensor(a: te.Tensor, b: te.Tensor) -> bool:
    """Tensor identity: the same output of the same op.  (`==` raises on 0-d tensors and
    `same_as` compares the Python wrappers: docs/tvm-0.27.md, "0-d tensor ==", "te.Tensor
    identity".)"""
    return a.op.same_as(b.op) and a.value_index == b.value_index


class TensorMap(MutableMapping):
    """A dict keyed by te.Tensor identity (op, value_index); plain dicts call `==` on tensors, which
    TVM refuses for 0-d tensors (docs/tvm-0.27.md, "0-d tensor ==")."""

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
    """A structural key for e, with tensor reads renamed (TVM cannot hash te.Tensor:
    docs/tvm-0.27.md, "expressions that read tensors cannot be hashed")."""
    def canon(c):
        if is_load(c):
            if c.args[0] not in names:
                names[c.args[0]] = f"t{len(names)}"
            return tirx.call_pure_extern(str(c.ty.dtype), names[c.args[0]], *c.args[1:])
        return c
    return tvm_ffi.StructuralKey(tvm_ffi.structural_map(e, (Call, canon)))


_DIVISIONS = (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod)


def is_view(op: te.Operation) -> bool:
    """Whether op is a view: one elementwise output (no reduction) whose value is a constant or
    one tensor load at indices without division (a slice, a broadcast, a transpose, an identity
    copy, a zero state), with no MATERIALIZE attribute.  Repeating a view costs no arithmetic."""
    if (not isinstance(op, te.ComputeOp) or op.reduce_axis or op.num_outputs != 1
            or MATERIALIZE in (op.attrs or {})):
        return False
    body = op.body[0]
    if isinstance(body, (tirx.IntImm, tirx.FloatImm)):
        return True
    hit = lambda e: tvm_ffi.VisitInterrupt(True)   # noqa: E731
    return is_load(body) and tvm_ffi.structural_walk(body, [(t, hit) for t in _DIVISIONS]) is None


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


def bodies_reading(op: te.ComputeOp, mapping: dict) -> list:
    """op's bodies with `replace_loads(·, mapping)`.  The Reduce bodies of a multi-output reduction
    keep sharing one source array, as TE requires of them."""
    bodies = list(op.body)
    if len(bodies) > 1 and isinstance(bodies[0], tirx.Reduce):
        r = bodies[0]
        sources = tvm_ffi.convert([replace_loads(x, mapping) for x in r.source])
        condition = replace_loads(r.condition, mapping)
        return [tirx.Reduce(r.combiner, sources, r.axis, condition, b.value_index, b.init)
                for b in bodies]
    return [replace_loads(b, mapping) for b in bodies]


def compute_op(name: str, tag: str, attrs, axis: Sequence, bodies: Sequence) -> te.Operation:
    """A ComputeOp over existing IterVars (te.compute would make fresh ones)."""
    return te._ffi_api.ComputeOp(name, tag, attrs, list(axis), list(bodies))


def rebuild(outputs: Sequence[te.Tensor],
            rewrite: Callable[[te.ComputeOp, list], list | te.Tensor | None]
            ) -> tuple[list[te.Tensor], TensorMap]:
    """Rebuild the graph of `outputs` bottom-up.

    `rewrite(op, bodies)` gets each ComputeOp with its bodies already reading the rebuilt inputs and
    returns new bodies, None to keep them, or (for a single-output op) a tensor that replaces it.
    Ops whose inputs and bodies are unchanged are kept as they are, so untouched subgraphs (and
    placeholders) stay identical objects.  Returns the new outputs and the map {old tensor: new
    tensor} of every tensor that changed.
    """
    mapping = TensorMap()
    for op in ops_post_order(outputs):
        if isinstance(op, te.PlaceholderOp):
            continue
        changed_inputs = TensorMap((t, mapping[t]) for t in op.input_tensors if t in mapping)
        if isinstance(op, te.ComputeOp):
            bodies = bodies_reading(op, changed_inputs)
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
