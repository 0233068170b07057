"""Errors raised to users of tvm_autodiff, and the argument checks that the entry points
(`differentiate`, `gradient`, `jacobian`, `hessian`, `build`) share, so that a wrong argument is
refused before any work with a message that names it."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tvm import te, tirx


class DifferentiationError(ValueError):
    """A graph, head or input that cannot be differentiated.  The message names the tensor, the op
    and the way out (usually `manual=`)."""


class ArgumentTypeError(DifferentiationError, TypeError):
    """An argument of the wrong type: a DifferentiationError that is also a TypeError, so either
    `except` catches it."""


def describe(x) -> str:
    """A user's argument as error messages show it: tensors and variables by name, anything else
    by type and a short repr."""
    if isinstance(x, te.Tensor):
        return f"te.Tensor {x.name!r}"
    if isinstance(x, tirx.Var):
        return f"variable {x.name!r} ({x.ty.dtype})"
    text = " ".join(repr(x).split())
    return f"{type(x).__name__} {text[:57] + '...' if len(text) > 60 else text}"


def as_list(value, name: str, what: str, single: tuple = (te.Tensor,)) -> list:
    """`value` as a list: one object of a `single` type is a one-element list, any other iterable
    is listed.  A te.Tensor is never iterated: it is indexable without end (`A[i]` is a slice), so
    `list(A)` grows until memory runs out (the failure of issue 13)."""
    if isinstance(value, single):
        return [value]
    if isinstance(value, (te.Tensor, str, bytes)) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be {what}, got {describe(value)}.")
    return list(value)


def check_bool(name: str, value) -> None:
    """Flags are True or False: a string such as "no" would otherwise count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {describe(value)}.")
