"""tvm_autodiff: reverse-mode automatic differentiation of TVM tensor expressions.

Importing this package also installs `tvm.differentiate` and `tvm.te.gradient`.
"""
from __future__ import annotations

import tvm
from tvm import te

from . import passes, schedule
from .build import Compiled, build, compile_ptx
from .errors import DifferentiationError
from .index_guard import guard_indices
from .frontend import Gradients, differentiate, gradient, hessian, jacobian, register_rule
from .counting import Work, explain, work


tvm.differentiate = differentiate
te.gradient = gradient
schedule.use_all_cores()

__all__ = ["Compiled", "DifferentiationError", "Gradients", "Work", "build", "compile_ptx", "differentiate", "explain", "gradient", "guard_indices", "hessian",
           "jacobian", "passes", "register_rule", "work"]
