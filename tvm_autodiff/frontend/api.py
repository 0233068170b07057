"""The small public helpers over `differentiate`: `gradient` (TVM 0.19's `te.gradient`),
`jacobian` and `hessian`."""
from __future__ import annotations

from typing import Sequence

from tvm import te

from tvm_autodiff.errors import DifferentiationError

from .reverse import differentiate


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
