"""Registering the shared gradient rule (rule.py) as ops' FPrimalGradient.

    op has                      register_gradients(ops=None)    ops named in override
    FLegalize, no gradient      registered                      registered
    FLegalize and TVM gradient  kept TVM's                      registered (replaces TVM's)
    no FLegalize                skipped                         refused: nothing to replay
    relax.grad.* (the Gradient  skipped                         refused
      pass's own markers)

Registration is explicit (importing tvm_autodiff.relax registers nothing) and idempotent.
"""
from __future__ import annotations

import tvm

from ..errors import DifferentiationError
from .replay import LEGALIZE
from .rule import primal_gradient

GRADIENT = "FPrimalGradient"
# TVM registers its own gradients at level 10; an override must outrank them.
_LEVEL = 11


def _has(op_name: str, attr: str) -> bool:
    return tvm.ir.Op.get(op_name).get_attr(attr) is not None


# The Relax ops that have a gradient before this package registers any (TVM's own).
TVM_GRADIENTS = frozenset(n for n in tvm.ir.Op.list_op_names() if n.startswith("relax.") and _has(n, GRADIENT))
# The ops whose gradient is ours (TVM refuses a second registration at the same level).
OURS: set = set()


def candidates() -> list[str]:
    """Every Relax op with a legalization, except the Gradient pass's own relax.grad.* ops."""
    return sorted(n for n in tvm.ir.Op.list_op_names()
                  if n.startswith("relax.") and not n.startswith("relax.grad.") and _has(n, LEGALIZE))


def _check(names, what: str, allowed: list[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise DifferentiationError(f"register_gradients: {what} {bad} are not Relax ops with a TE "
                                   f"legalization (FLegalize); write their gradient by hand")
    return names


def register_gradients(ops=None, override=()) -> list[str]:
    """Register the TE-autodiff gradient for `ops` (None: every op with a legalization) that have
    no gradient yet, and for the ops in `override` even if TVM has one.  Returns the op names
    registered now (module docstring table)."""
    allowed = candidates()
    override = _check(override, "override ops", allowed)
    wanted = allowed if ops is None else _check(ops, "ops", allowed)
    registered = []
    for name in sorted(set(wanted) | set(override)):
        if name in OURS:
            continue
        if name in override:
            tvm.ir.register_op_attr(name, GRADIENT, primal_gradient, _LEVEL)
        elif not _has(name, GRADIENT):
            tvm.ir.register_op_attr(name, GRADIENT, primal_gradient)
        else:
            continue
        OURS.add(name)
        registered.append(name)
    return registered
