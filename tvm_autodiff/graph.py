"""Walking and rebuilding te.Tensor graphs.

A TE graph is a DAG of operations (`te.Operation`); a tensor is one output `(op, value_index)` of
an operation.  Ops hash and compare by identity of the underlying node, so they work as dict keys;
tensors compare with `==` (never `same_as`, see tvm-0.27-notes pitfall 9).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import tvm_ffi
from tvm import te
from tvm.ir import Call

TENSOR_LOAD = "te.tensor_load"


def is_load(e) -> bool:
    """True if `e` is a read `T[idx]` of a tensor inside a TE body."""
    return isinstance(e, Call) and e.op.name == TENSOR_LOAD


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
            rewrite: Callable[[te.ComputeOp, list], list | None]) -> list[te.Tensor]:
    """Rebuild the graph of `outputs` bottom-up.

    `rewrite(op, bodies)` gets each ComputeOp with its bodies already reading the rebuilt inputs and
    returns new bodies, or None to keep them.  Ops whose inputs and bodies are unchanged are kept as
    they are, so untouched subgraphs (and placeholders) stay identical objects.
    """
    mapping: dict = {}
    for op in ops_post_order(outputs):
        if isinstance(op, te.PlaceholderOp):
            continue
        changed_inputs = {t: mapping[t] for t in op.input_tensors if t in mapping}
        if isinstance(op, te.ComputeOp):
            bodies = [replace_loads(b, changed_inputs) for b in op.body]
            new_bodies = rewrite(op, bodies)
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
    return [mapping.get(t, t) for t in outputs]
