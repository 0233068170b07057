"""tvm_autodiff: reverse-mode automatic differentiation of TVM tensor expressions.

Importing this package also installs `tvm.differentiate` and `tvm.te.gradient`.
"""
from __future__ import annotations

from typing import Sequence

import tvm
from tvm import te

from . import passes, schedule
from .build import Compiled, build, compile_ptx
from .errors import DifferentiationError
from .index_guard import guard_indices
from .reverse import Gradients, differentiate
from .counting import Work, explain, work


def gradient(output: te.Tensor, inputs: Sequence[te.Tensor], head: te.Tensor | None = None) -> list:
    """TVM 0.19 `te.gradient` contract: the list of adjoints of `inputs`; head=None is the identity."""
    return list(differentiate(output, inputs, head))


def jacobian(output: te.Tensor, input: te.Tensor) -> te.Tensor:
    """d output / d input, of shape output.shape + input.shape."""
    return differentiate(output, [input])[0]


def hessian(output: te.Tensor, input: te.Tensor, input2: te.Tensor | None = None) -> te.Tensor:
    """Second derivatives of a 0-d `output`: d²out / d input d input2 (input2 defaults to input),
    of shape input.shape + input2.shape.  The gradient is plain TE, so it is differentiated again;
    zero elimination keeps the result as compact as the math allows."""
    if len(output.shape) != 0:
        raise DifferentiationError(
            f"hessian() needs a 0-d output, got {output.name!r} of shape {list(output.shape)}; "
            "reduce it to a scalar first, or use jacobian() on its gradient.")
    # A scatter-add extern kernel has no derivative rule, so the inner gradient keeps gathers'
    # adjoints as reductions; the outer elimination may still scatter.
    (grad,) = differentiate(output, [input], scatter=False)
    return jacobian(grad, input if input2 is None else input2)


tvm.differentiate = differentiate
te.gradient = gradient
schedule.use_all_cores()

__all__ = ["Compiled", "DifferentiationError", "Gradients", "Work", "build", "compile_ptx", "differentiate", "explain", "gradient", "guard_indices", "hessian",
           "jacobian", "passes", "work"]
