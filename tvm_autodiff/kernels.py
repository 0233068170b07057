"""Partition a TE graph into kernels: one PrimFunc per op, with its single-use injective producers.
(An extern op, such as the scatter-add of passes/scatter.py, is a kernel of its own.)

A training step is a graph of a few hundred ops.  As one PrimFunc its compile time grows
superlinearly with its size, and identical steps (an unrolled recurrence) are compiled once each;
as kernels, each is small, identical ones are one function, and every tensor that crosses a
kernel boundary is materialized once (README, "Building, scheduling, tuning, CUDA").

The rule, for ops in reverse topological order (consumers first):

    kernel(P) = kernel(C)   if P is injective (no reduce axis, one output), P is not an output
                            of the graph, and every read of P is by one consumer op C
                            and that kernel has fewer than MAX_KERNEL_OPS ops
    kernel(P) = P           otherwise (P is the root of its own kernel)

except that a view (`ir.graph.is_view`: one load at indices without division, or a constant: a
slice, a broadcast, an identity copy, a zero state) that is not an output of the graph and reads
no view is no kernel of its own but a member of every kernel that reads it.  Repeating it costs
no arithmetic (its consumers read its source instead), where its own kernel cost a launch, an
allocation and a copy (an LSTM step had six such kernels: its gate slices, and the identity
adjoints of adds).

A kernel is thus a tree of injective ops below one root, plus the views it reads; its inputs are
the tensors it reads from other kernels or from the graph's inputs, its outputs the root's.
Inside a kernel the schedule's inline rules (`schedule/inline.py`) fuse the injective ops into
the root; a producer read by several consumers is a kernel output, so it is never recomputed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import tvm_ffi
from tvm import te

from .ir.graph import TensorMap, bodies_reading, compute_op, is_view, ops_post_order, outputs_of

# The inline rules fuse a kernel's injective ops into one loop body, whose machine code LLVM
# compiles in time superlinear in its size: the gradient of a 1,000-op elementwise chain as one
# kernel took minutes (README, "Building, scheduling, tuning, CUDA").  A chain longer than this
# is cut into kernels of this many ops, which, for a repeating chain, are mostly one PrimFunc.
MAX_KERNEL_OPS = 32

# topi's dense and matmul name their weight placeholder in this attribute; inside a kernel that
# placeholder is a new one, so the attribute would point at a tensor the PrimFunc does not have.
_GRAPH_ATTRS = ("layout_free_placeholders",)


@dataclass(frozen=True)
class Kernel:
    """The ops of one kernel (producers first, the root last) and the tensors it reads from
    outside."""
    ops: tuple
    inputs: tuple

    @property
    def root(self) -> te.Operation:
        return self.ops[-1]

    @property
    def outputs(self) -> list[te.Tensor]:
        return outputs_of(self.root)

    @cached_property
    def prim_func(self):
        """The kernel as a PrimFunc over fresh placeholders for its inputs: (inputs..., outputs...)."""
        mapping = TensorMap((t, te.placeholder(t.shape, str(t.dtype), name=t.op.name))
                            for t in self.inputs)
        params = [mapping[t] for t in self.inputs]
        for op in self.ops:
            mapping.update(zip(outputs_of(op), outputs_of(_reading(op, mapping))))
        return te.create_prim_func(params + [mapping[t] for t in self.outputs])


def _reading(op: te.Operation, mapping: TensorMap) -> te.Operation:
    """op, reading mapping[t] for each input t that `mapping` has."""
    if isinstance(op, te.ExternOp):
        return te._ffi_api.ExternOp(op.name, op.tag, op.attrs, [mapping.get(t, t) for t in op.inputs],
                                    op.input_placeholders, op.output_placeholders, op.body)
    attrs = {k: v for k, v in (op.attrs or {}).items() if k not in _GRAPH_ATTRS}
    return compute_op(op.name, op.tag, attrs, op.axis, bodies_reading(op, mapping))


_KERNEL_OPS = (te.ComputeOp, te.ExternOp)


def partitionable(outputs) -> bool:
    """Whether every op of the graph is a compute op, an extern op (such as the scatter-add of
    passes/scatter.py, a kernel of its own) or a placeholder."""
    return all(isinstance(op, (*_KERNEL_OPS, te.PlaceholderOp)) for op in ops_post_order(outputs))


def _fusible(op: te.Operation) -> bool:
    return isinstance(op, te.ComputeOp) and not op.reduce_axis and op.num_outputs == 1


def _with_views(ops: list, views: set) -> list:
    """`ops` (producers first) with the views they read placed before them."""
    out = []
    for op in ops:
        out += [t.op for t in op.input_tensors if t.op in views and t.op not in out]
        out.append(op)
    return out


def partition(outputs) -> list[Kernel]:
    """The kernels of the graph of `outputs` (module docstring), producers first.  The graph's
    placeholders are the inputs; its other ops are compute or extern ops (`partitionable`)."""
    order = [op for op in ops_post_order(outputs) if isinstance(op, _KERNEL_OPS)]
    consumers: dict = {}
    for op in order:
        for t in op.input_tensors:
            consumers.setdefault(t.op, set()).add(op)
    graph_outputs = {t.op for t in outputs}
    # A view of a view stays a kernel, so that a chain of views is not repeated in every kernel
    # along it (build() composes such chains first: passes/views.py).
    viewlike = {op for op in order if is_view(op)}
    views = {op for op in viewlike if op not in graph_outputs
             and not any(t.op in viewlike for t in op.input_tensors)}
    root: dict = {}
    size: Counter = Counter()
    for op in reversed(order):
        if op in views:
            continue
        users = consumers.get(op, set())
        joined = root.get(next(iter(users))) if len(users) == 1 else None
        if _fusible(op) and op not in graph_outputs and joined is not None \
                and size[joined] < MAX_KERNEL_OPS:
            root[op] = joined
        else:
            root[op] = op
        size[root[op]] += 1
    members: dict = {}
    for op in order:
        if op not in views:
            members.setdefault(root[op], []).append(op)
    kernels = []
    for op in order:
        if root.get(op) is op:
            ops = _with_views(members[op], views)
            inside = set(ops)
            reads = TensorMap((t, None) for o in ops for t in o.input_tensors if t.op not in inside)
            kernels.append(Kernel(tuple(ops), tuple(reads)))
    return kernels


def distinct(kernels: list[Kernel]) -> int:
    """How many of `kernels` differ structurally (identical ones compile to one PrimFunc)."""
    return len({tvm_ffi.StructuralKey(k.prim_func) for k in kernels})
