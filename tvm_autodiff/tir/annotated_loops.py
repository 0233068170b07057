"""Schedule the annotated loops of hand-built loop nests (the scatter-add of passes/scatter.py).

A te.extern body sits inside one opaque block, out of reach of the schedule primitives, so its
builder states what it knows about its loops as annotations (ir/graph.py) and this pass acts on
them:

    for v (INDEPENDENT_LOOP)  ->  for v (parallel)     outermost annotated loop of a nest only
    for v (LANES_LOOP)        ->  for v (vectorized)   when vectorizing (its extent is a
                                                       constant multiple of every machine vector,
                                                       which LLVM splits into machine vectors)
    (other loops and statements unchanged; the annotations are removed either way)
"""
from __future__ import annotations

import tvm_ffi
from tvm import tirx

from ..ir.graph import INDEPENDENT_LOOP, LANES_LOOP

_OURS = (INDEPENDENT_LOOP, LANES_LOOP)


def schedule_annotated_loops(func: tirx.PrimFunc, vectorize: bool) -> tirx.PrimFunc:
    """func with its annotated loops parallel or vectorized (module docstring)."""
    def visit(loop: tirx.For, inside_parallel: bool):
        marks = set(loop.annotations.keys()) & set(_OURS)
        kind = loop.kind
        if INDEPENDENT_LOOP in marks and not inside_parallel:
            kind = tirx.ForKind.PARALLEL
        elif LANES_LOOP in marks and vectorize:
            kind = tirx.ForKind.VECTORIZED
        body = rewrite(loop.body, inside_parallel or kind == tirx.ForKind.PARALLEL)
        if not marks and body.same_as(loop.body):
            return loop
        kept = {k: v for k, v in loop.annotations.items() if k not in _OURS}
        return tirx.For(loop.loop_var, loop.min, loop.extent, kind, body, loop.thread_binding, kept)

    def rewrite(stmt, inside_parallel: bool):
        return tvm_ffi.structural_mutate(stmt, (tirx.For, lambda loop, m: visit(loop, inside_parallel)))

    body = rewrite(func.body, False)
    return func if body.same_as(func.body) else func.with_body(body)
