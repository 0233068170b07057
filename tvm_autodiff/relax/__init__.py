"""Relax integration: gradients for every Relax op with a TE legalization (README, "Relax").

Modules: replay (an op's legalization as TE), rule (the FPrimalGradient they share), register
(register_gradients), transform (the one-call Gradient pass, prepare_gradients), training (to
tvm.relax.training from an imported model), fixes (rewrites around TVM bugs), coverage (which ops
have a gradient).  Importing this package registers nothing;
`register_gradients()` does.
"""
from .fixes import wrap_negative_take
from .register import candidates, register_gradients
from .replay import replay
from .rule import GRADIENT_ATTR, primal_gradient
from .training import Adam, ModelLoss, backbone
from .transform import SCHEDULE_ATTR, Gradient, prepare_gradients

__all__ = ["Adam", "GRADIENT_ATTR", "Gradient", "ModelLoss", "SCHEDULE_ATTR", "backbone", "candidates",
           "prepare_gradients", "primal_gradient", "register_gradients", "replay", "wrap_negative_take"]
