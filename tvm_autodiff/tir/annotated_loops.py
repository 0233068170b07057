"""Schedule the annotated loops of hand-built loop nests (the scatter-add of passes/scatter.py).

A te.extern body sits inside one opaque block, out of reach of the schedule primitives, so its
builder states what it knows about its loops as annotations (ir/graph.py) and this pass acts on
them:

    for v (INDEPENDENT_LOOP)  ->  for v (parallel)     outermost annotated loop of a nest only
    for v (LANES_LOOP)        ->  for v (vectorized)   when vectorizing (its extent is a
                                                       constant multiple of every machine vector,
                                                       which LLVM splits into machine vectors)
    (other loops and statements unchanged; the annotations are removed either way)

and on GPUs (`bind_annotated_loops`): the independent loop to blockIdx.x, a lanes loop inside it
to threadIdx.x.  Threads then own disjoint elements, so the adds need no atomics.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from ..ir.graph import INDEPENDENT_LOOP, LANES_LOOP

_OURS = (INDEPENDENT_LOOP, LANES_LOOP)


def bind_annotated_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """func with its annotated loops bound to GPU blocks and threads (module docstring)."""
    return _rewrite(func, {INDEPENDENT_LOOP: "blockIdx.x", LANES_LOOP: "threadIdx.x"})


def _scheduled(loop: tirx.For, body, how) -> tirx.For:
    """loop as `how` says: a thread tag binds it, a ForKind sets its kind.  A guarded body (the
    last chunk of an extent that the chunk does not divide) is not vectorized."""
    if isinstance(how, tirx.ForKind):
        if how == tirx.ForKind.VECTORIZED and isinstance(body, tirx.IfThenElse):
            how = loop.kind
        return tirx.For(loop.loop_var, loop.min, loop.extent, how, body, loop.thread_binding,
                        _others(loop))
    iv = tirx.IterVar(tvm.ir.Range.from_min_extent(loop.min, loop.extent), loop.loop_var,
                      tirx.IterVar.ThreadIndex, how)
    return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.THREAD_BINDING, body, iv,
                    _others(loop))


def _others(loop: tirx.For) -> dict:
    return {k: v for k, v in loop.annotations.items() if k not in _OURS}


def _rewrite(func: tirx.PrimFunc, table: dict) -> tirx.PrimFunc:
    """Annotated loops scheduled as `table` says ({annotation: thread tag or ForKind or None}):
    only the outermost independent loop of a nest, and a lanes loop only inside one."""
    def visit(loop: tirx.For, inside: bool):
        marks = set(loop.annotations.keys()) & set(_OURS)
        how = (table[INDEPENDENT_LOOP] if INDEPENDENT_LOOP in marks and not inside else
               table[LANES_LOOP] if LANES_LOOP in marks and inside else None)
        body = rewrite(loop.body, inside or INDEPENDENT_LOOP in marks)
        if how is not None:
            return _scheduled(loop, body, how)
        if not marks and body.same_as(loop.body):
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding,
                        _others(loop))

    def rewrite(stmt, inside: bool):
        return tvm_ffi.structural_mutate(stmt, (tirx.For, lambda loop, m: visit(loop, inside)))

    body = rewrite(func.body, False)
    return func if body.same_as(func.body) else func.with_body(body)


def schedule_annotated_loops(func: tirx.PrimFunc, vectorize: bool) -> tirx.PrimFunc:
    """func with its annotated loops parallel or vectorized (module docstring)."""
    return _rewrite(func, {INDEPENDENT_LOOP: tirx.ForKind.PARALLEL,
                           LANES_LOOP: tirx.ForKind.VECTORIZED if vectorize else None})
