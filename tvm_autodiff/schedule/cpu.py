"""The default CPU schedule: TIR rewrites, inlining, then one rule per block.

Order of the rules (the first that applies wins): blocks that a TIR pass scheduled already;
blocks nested in another block's loops;
matmul-like reductions (register tiles); rows of vectors; reductions vectorized along their own
axis; scalar rows; the parallel-loop fallbacks.
"""
from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from ..tir import flatten_windows, hoist_invariant_factors, schedule_annotated_loops
from .analysis import block_infos
from .cpu_matmul import DotTile, MatmulTile
from .cpu_rows import Nested, ParallelOuter, Prescheduled, ReductionLanes, Rows
from .inline import inline_injective
from .rule import Choice, Scheduled, schedule_block
from .target import CpuConfig

CPU_RULES = (Prescheduled(), Nested(), MatmulTile(), DotTile(), Rows(need_vector=True), ReductionLanes(),
             Rows(need_vector=False), ParallelOuter(fuse=True), ParallelOuter(fuse=False))


def schedule_cpu(func: tirx.PrimFunc, target: tvm.target.Target, vectorize: bool = True) -> Scheduled:
    """Default CPU schedule of `func` for `target` (module docstring).  `vectorize=False` keeps
    every loop scalar: LLVM has no vector form of some intrinsics (e.g. sinh), which only shows
    when compiling (docs/tvm-0.27.md, "no vector form of some intrinsics")."""
    config = CpuConfig.of(target, vectorize)
    func = schedule_annotated_loops(func, vectorize)
    sch = s_tir.Schedule(flatten_windows(func, config.row_lanes))
    sch, inlined = inline_injective(sch, config)
    if vectorize:
        sch = s_tir.Schedule(hoist_invariant_factors(sch.mod["main"]))
    choices = [c for c in inlined.values() if c.rule is not None]
    for info in block_infos(sch.mod["main"]):
        sch, choice = schedule_block(sch, info, CPU_RULES, config)
        kept = inlined.get(info.name)
        choices.append(choice if kept is None else Choice(choice.block, choice.rule, kept.declined + choice.declined))
    return Scheduled(sch.mod["main"], tuple(choices))
