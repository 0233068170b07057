"""Argument checks of the passes' entry points, shared with `work` and `explain` (which take the
same graphs): a wrong argument is refused before any rewrite, with a message that names the
argument and what to pass instead, rather than an AttributeError deep inside TVM."""
from __future__ import annotations

import numpy as np
from tvm import te
from tvm.te.tensor import Operation

from tvm_autodiff.errors import ArgumentTypeError, as_list, describe

_TENSORS = "a te.Tensor or a list of te.Tensors"


def tensor_list(value, name: str) -> list:
    """`value`, one te.Tensor or an iterable of them (a list, a tuple, what `differentiate`
    returns), as a list; anything else is an ArgumentTypeError naming the argument `name`."""
    if isinstance(value, np.ndarray):
        # Iterable, so as_list would take it: name the mistake (values instead of the graph).
        raise ArgumentTypeError(f"{name} must be {_TENSORS}, got a numpy array of shape {value.shape}; "
                                "pass the te.Tensor itself, not its values.")
    items = as_list(value, name, _TENSORS)
    for n, t in enumerate(items):
        if not isinstance(t, te.Tensor):
            raise ArgumentTypeError(f"{name}[{n}] must be a te.Tensor, got {describe(t)}.")
    return items


def operation_set(value, name: str) -> set:
    """`value`, an iterable of te operations (`t.op`), as a set; a tensor in it is refused with
    the hint to pass its `.op`."""
    if isinstance(value, te.Tensor):
        raise ArgumentTypeError(f"{name} must be an iterable of te operations (t.op), got "
                                f"{describe(value)}; pass [{value.name}.op].")
    items = as_list(value, name, "an iterable of te operations (t.op)", single=(Operation,))
    for n, op in enumerate(items):
        if not isinstance(op, Operation):
            hint = f"; pass {op.name}.op" if isinstance(op, te.Tensor) else ""
            raise ArgumentTypeError(f"{name}[{n}] must be a te operation, got {describe(op)}{hint}.")
    return set(items)
