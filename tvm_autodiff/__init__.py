"""tvm_autodiff: reverse-mode automatic differentiation of TVM tensor expressions.

Importing this package also installs `tvm.differentiate` and `tvm.te.gradient`.
"""
from __future__ import annotations

from typing import Sequence

import tvm
from tvm import te

from . import passes
from .build import build
from .errors import DifferentiationError
from .reverse import Gradients, differentiate


def gradient(output: te.Tensor, inputs: Sequence[te.Tensor], head: te.Tensor | None = None) -> list:
    """TVM 0.19 `te.gradient` contract: the list of adjoints of `inputs`; head=None is the identity."""
    return list(differentiate(output, inputs, head))


def jacobian(output: te.Tensor, input: te.Tensor) -> te.Tensor:
    """d output / d input, of shape output.shape + input.shape."""
    return differentiate(output, [input])[0]


tvm.differentiate = differentiate
te.gradient = gradient

__all__ = ["DifferentiationError", "Gradients", "build", "differentiate", "gradient", "jacobian", "passes"]
