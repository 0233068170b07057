"""TIR rewrites that run between `te.create_prim_func` and the schedule rules, or just before
compiling: each a pure function PrimFunc -> PrimFunc whose module docstring states its rewrite."""
from .annotated_loops import bind_annotated_loops, schedule_annotated_loops
from .factor_blocks import hoist_invariant_factors
from .fast_math import vector_transcendentals
from .flatten_windows import flatten_windows
from .index_guard import guard_indices

__all__ = ["bind_annotated_loops", "flatten_windows", "guard_indices", "hoist_invariant_factors", "schedule_annotated_loops",
           "vector_transcendentals"]
