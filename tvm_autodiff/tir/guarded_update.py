"""A store done only where a condition holds, in a form that vectorizes.

    Y[l] = v      where c      ==>      Y[l] = select(c, v', Y[l])

where v' is v with the indices of loads of other buffers clamped into their buffers, so lanes on
which c fails read valid addresses and are then discarded.  A Select vectorizes where an `if` makes
LLVM's vectorizer give up.  Used by the window flattening and partitioning passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm_ffi
from tvm import tirx

from .nodes import LOAD_TYPE, loads


@dataclass(frozen=True)
class Guard:
    """A flattened block's update before guarding: `store` runs where `cond` holds; `analyzer`
    knows the block's iter var ranges."""
    store: object
    cond: object
    analyzer: object


def guarded(store, cond, ana):
    """`store` done only where `cond` holds, as a Select over clamped loads (module docstring).
    A buffer with a symbolic shape cannot be clamped: then the guard is an `if`."""
    others = [l for l in loads(store.value) if not l.source.same_as(store.buffer)]
    if any(not isinstance(n, tirx.IntImm) for l in others for n in l.source.shape):
        return tirx.IfThenElse(cond, store, None)

    def clamp(load):
        if load.source.same_as(store.buffer):
            return load
        idx = []
        for i, n in zip(load.indices, load.source.shape):
            dt = str(i.ty.dtype)
            if not ana.can_prove(i < int(n)):
                i = tirx.Min(i, tirx.const(int(n) - 1, dt))
            if not ana.can_prove(i >= 0):
                i = tirx.Max(i, tirx.const(0, dt))
            idx.append(i)
        return tirx.BufferLoad(load.source, idx)

    value = tvm_ffi.structural_map(store.value, (LOAD_TYPE, clamp))
    keep = tirx.BufferLoad(store.buffer, list(store.indices))
    return tirx.BufferStore(store.buffer, tirx.Select(cond, value, keep), list(store.indices))
