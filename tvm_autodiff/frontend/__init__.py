"""The front end: reverse accumulation over TE graphs (`reverse`), the adjoint of one edge
(`edges`), and the derivative rules of expressions (`rules`) and of reductions (`reducers`)."""
from .api import gradient, hessian, jacobian
from .reverse import Gradients, differentiate
from .rules import register_rule

__all__ = ["Gradients", "differentiate", "gradient", "hessian", "jacobian", "register_rule"]
