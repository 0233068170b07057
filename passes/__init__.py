"""Zero elimination and domain passes for TE tensors (installed as `tvm_autodiff.passes`).

The passes know nothing about differentiation: they rewrite any TE graph whose reductions sum
over regions where the summand is zero (`select(c, v, 0)`), and take factors that only some axes
read out of tensors that would otherwise carry those axes (`hoist_factors`), and compute a
reduction that a crop alone reads on the crop's grid (`fuse_crops`), and run 2-D window sums over
one flat row of their rows' pitch (`flatten_rows`), and let A·Bᵀ sums read a stored Bᵀ
(`transpose_columns`), and compute a sum of same-domain reductions as one (`merge_sums`), and let
views of views read their sources (`compose_views`), keeping every value unchanged (`merge_sums`
up to the association of floating-point additions).
"""
from .crop import fuse_crops
from .eliminate import eliminate_reduction, eliminate_zeros
from .factor import hoist_factors
from .merge_sums import merge_sums
from .pitch import flatten_rows
from .transpose import transpose_columns
from .views import compose_views

__all__ = ["compose_views", "eliminate_reduction", "eliminate_zeros", "flatten_rows", "fuse_crops",
           "hoist_factors", "merge_sums", "transpose_columns"]
