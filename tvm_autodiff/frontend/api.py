"""The small public helpers over `differentiate`: `gradient` (TVM 0.19's `te.gradient`),
`jacobian` and `hessian`.  Each checks its own arguments first, so a message names the argument
of the function that was called."""
from __future__ import annotations

from tvm import te

from tvm_autodiff.errors import DifferentiationError

from .reverse import check_input, check_output, differentiate


def gradient(output: te.Tensor, inputs, head: te.Tensor | None = None) -> list:
    """TVM 0.19 `te.gradient` contract: the list of adjoints of `inputs` (a list, or one tensor or
    scalar variable for a one-element list); head=None is the identity."""
    return list(differentiate(output, inputs, head))


def jacobian(output: te.Tensor, input) -> te.Tensor:
    """d output / d input, of shape output.shape + input.shape (input: one tensor or float scalar
    variable; for several, differentiate(output, [x, y]))."""
    check_output(output, "jacobian")
    check_input(input, "jacobian() input")
    return differentiate(output, [input])[0]


def hessian(output: te.Tensor, input, input2=None) -> te.Tensor:
    """Second derivatives of a 0-d `output`: d²out / d input d input2 (input2 defaults to input),
    of shape input.shape + input2.shape.  The gradient is plain TE, so it is differentiated again;
    zero elimination keeps the result as compact as the math allows."""
    check_output(output, "hessian")
    check_input(input, "hessian() input")
    if input2 is not None:
        check_input(input2, "hessian() input2")
    if len(output.shape) != 0:
        raise DifferentiationError(
            f"hessian() needs a 0-d output, got {output.name!r} of shape {list(output.shape)}; "
            "reduce it to a scalar first, or use jacobian() on its gradient.")
    # A scatter-add extern kernel has no derivative rule, so the inner gradient keeps gathers'
    # adjoints as reductions; the outer elimination may still scatter.
    (grad,) = differentiate(output, [input], scatter=False)
    return jacobian(grad, input if input2 is None else input2)
