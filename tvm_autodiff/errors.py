"""Errors raised to users of tvm_autodiff."""


class DifferentiationError(ValueError):
    """A graph, head or input that cannot be differentiated.  The message names the tensor, the op
    and the way out (usually `manual=`)."""
