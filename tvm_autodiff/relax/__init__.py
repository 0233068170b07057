"""Relax integration: gradients for every Relax op with a TE legalization (README, "Relax").

Importing this package registers nothing; `register_gradients()` does.
"""
from .register import candidates, register_gradients
from .replay import replay
from .rule import GRADIENT_ATTR, primal_gradient

__all__ = ["GRADIENT_ATTR", "candidates", "primal_gradient", "register_gradients", "replay"]
