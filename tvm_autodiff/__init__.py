"""tvm_autodiff: reverse-mode automatic differentiation of TVM tensor expressions.

The data flow, one package each: `ir` (the leaf layer: graph walking, expression and reduction
helpers) -> `frontend` (differentiate) -> `passes` (zero elimination) -> `tir` (TIR rewrites) and
`schedule` (schedule rules) -> `compile` (build); `relax` builds on them all (Relax gradients,
registered only by `relax.register_gradients()`).  Importing this package installs
`tvm.differentiate` and `tvm.te.gradient`, and changes nothing else.
"""
from __future__ import annotations

import tvm
from tvm import te

from . import passes, schedule
from .compile import Compiled, build, compile_ptx
from .counting import ScheduledWork, Work, explain, scheduled_work, work
from .errors import DifferentiationError
from .frontend import Gradients, differentiate, gradient, hessian, jacobian, register_rule
from .tir import guard_indices
from . import relax  # noqa: E402  (after the layers it builds on)

tvm.differentiate = differentiate
te.gradient = gradient

__all__ = ["Compiled", "DifferentiationError", "Gradients", "ScheduledWork", "Work", "build", "compile_ptx",
           "differentiate", "explain", "gradient", "guard_indices", "hessian", "jacobian", "passes",
           "register_rule", "relax", "schedule", "scheduled_work", "work"]
