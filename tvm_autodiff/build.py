"""Compile forward and gradient tensors into one callable.

`build(outputs, inputs)` makes one PrimFunc over every output, so tensors that several outputs
share (forward values that the gradient reads) are computed once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tvm
from tvm import sym, te, tirx

from .errors import DifferentiationError
from .graph import TensorMap, placeholders, unique_tensors
from .reductions import fold_where_init, substitute


class Compiled:
    """A compiled module: call it with numpy (or DLPack) arrays for `inputs`, get numpy outputs."""

    def __init__(self, executable, inputs, outputs, device, single):
        # The kernel writes each distinct computed tensor once; outputs that repeat, or that are
        # inputs themselves (a head passed straight through), are filled in from those.
        self.executable, self.inputs, self.requested = executable, inputs, outputs
        given = TensorMap((t, None) for t in inputs)
        self.outputs = [t for t in unique_tensors(outputs) if t not in given]
        self.device, self.single = device, single

    def _bind(self, arrays) -> dict:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} arrays for inputs "
                             f"{[t.name for t in self.inputs]}, got {len(arrays)}")
        env = {}
        for t, a in zip(self.inputs, arrays):
            if str(a.dtype) != str(t.dtype) or len(a.shape) != len(t.shape):
                raise ValueError(f"input {t.name!r} must be {t.dtype} with {len(t.shape)} dims, "
                                 f"got {a.dtype} with shape {tuple(a.shape)}")
            for dim, n in zip(t.shape, a.shape):
                if isinstance(dim, tirx.Var):
                    if env.setdefault(dim, n) != n:
                        raise ValueError(f"input {t.name!r}: dimension {dim.name} is bound to "
                                         f"{env[dim]} but this array has {n}")
                elif int(dim) != n:
                    raise ValueError(f"input {t.name!r} must have shape {[str(d) for d in t.shape]}, "
                                     f"got {tuple(a.shape)}")
        return env

    def __call__(self, *arrays):
        arrays = [np.asarray(a) if not hasattr(a, "__dlpack__") or isinstance(a, np.ndarray)
                  else np.from_dlpack(a) for a in arrays]
        env = self._bind(arrays)
        ana = sym.Analyzer()
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in arrays]
        outs = []
        for t in self.outputs:
            shape = [int(ana.simplify(substitute(d, {v: tirx.const(n, str(v.ty.dtype))
                                                     for v, n in env.items()}))) for d in t.shape]
            outs.append(tvm.runtime.empty(shape, str(t.dtype), self.device))
        self.executable(*args, *outs)
        values = TensorMap([*zip(self.inputs, arrays), *((t, o.numpy()) for t, o in zip(self.outputs, outs))])
        result = [np.array(values[t]) for t in self.requested]
        return result[0] if self.single else result


def build(outputs, inputs: Sequence[te.Tensor] | None = None, target="llvm",
          schedule: str | None = None) -> Compiled:
    """Compile `outputs` (a tensor or a list) as one kernel taking the placeholders `inputs`
    (default: every placeholder they read, in first-use order)."""
    single = isinstance(outputs, te.Tensor)
    outputs = [outputs] if single else list(outputs)
    inputs = placeholders(outputs) if inputs is None else list(inputs)
    for t in inputs:
        if not isinstance(t.op, te.PlaceholderOp):
            raise DifferentiationError(f"build() inputs must be placeholders; {t.name!r} is computed "
                                       f"by {type(t.op).__name__} {t.op.name!r}.")
    given = TensorMap((t, None) for t in inputs)
    missing = [t.name for t in placeholders(outputs) if t not in given]
    if missing:
        raise DifferentiationError(f"the outputs read placeholders {missing} that are not in inputs")
    lowered, _ = fold_where_init(outputs)
    computed = [t for t in unique_tensors(lowered) if t not in given]
    executable = tvm.compile(te.create_prim_func(inputs + computed), target=target)
    return Compiled(executable, inputs, lowered, tvm.cpu(), single)
