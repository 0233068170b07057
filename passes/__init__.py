"""Zero elimination and domain passes for TE tensors (installed as `tvm_autodiff.passes`).

The passes know nothing about differentiation: they rewrite any TE graph whose reductions sum
over regions where the summand is zero (`select(c, v, 0)`), and take factors that only some axes
read out of tensors that would otherwise carry those axes (`hoist_factors`), and compute a
reduction that a crop alone reads on the crop's grid (`fuse_crops`), and run 2-D window sums over
one flat row of their rows' pitch (`flatten_rows`), and let A·Bᵀ sums read a stored Bᵀ
(`transpose_columns`), keeping every value unchanged.
"""
from .crop import fuse_crops
from .eliminate import eliminate_reduction, eliminate_zeros
from .factor import hoist_factors
from .pitch import flatten_rows
from .transpose import transpose_columns

__all__ = ["eliminate_reduction", "eliminate_zeros", "flatten_rows", "fuse_crops", "hoist_factors",
           "transpose_columns"]
