"""GPU schedules: dlight's rules for the whole function, then the project's thread-binding rule
for every top-level block they leave unbound.

dlight gives up on functions whose blocks it cannot normalize (nested variable-extent
reductions, a mix of reductions), and an unbound block would run on the host
(docs/tvm-0.27.md, "unscheduled CUDA becomes a host loop"), so `schedule_gpu` raises rather than
return a function with one.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight

from ..tir import bind_annotated_loops

from .analysis import block_infos, block_loops
from .inline import inline_injective
from .rule import Choice, Decline, Scheduled, ScheduleRule, schedule_block
from .target import GpuConfig


def _thread_bound(sch: s_tir.Schedule, block) -> bool:
    """Whether `block` already runs inside a thread-bound loop (its own or an ancestor's), or
    binds threads in its body (a hand-built loop nest, tir/annotated_loops.py)."""
    inner = tvm_ffi.structural_walk(sch.get(block).body, (tirx.For, lambda l: tvm_ffi.VisitInterrupt(True)
                                                         if l.thread_binding is not None else None))
    if inner is not None:
        return True
    sref = sch.get_sref(block).parent
    while sref is not None:
        stmt = sref.stmt
        if isinstance(stmt, tirx.For) and stmt.thread_binding is not None:
            return True
        sref = sref.parent
    return False


class ThreadBind(ScheduleRule):
    """The leading spatial loops fused into blockIdx.x x threadIdx.x (config.threads per block);
    reductions stay per thread."""
    name = "thread-bind"

    def plan(self, sch, info, config):
        if not info.top_level:
            return Decline("nested inside another block's loops")
        if _thread_bound(sch, sch.get_sblock(info.name)):
            return Decline("already bound to threads")
        return True

    def apply(self, sch, info, plan, config):
        block = sch.get_sblock(info.name)
        rvs, loops = sch.get_loops(block), block_loops(sch, info)
        spatial = [rvs[l.pos] for l in loops if l.kind == "S"]
        rest = [rvs[l.pos] for l in loops if l.kind != "S"]
        first_reduction = next((rv for rv, l in zip(rvs, loops) if l.kind == "R"), None)
        if not spatial:
            spatial = [sch.add_unit_loop(block)]
        elif rest:
            sch.reorder(*spatial, *rest)
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        bx, tx = sch.split(fused, factors=[None, config.threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        if first_reduction is not None and not info.has_children:
            sch.decompose_reduction(block, first_reduction)


def _with_root(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """func with its body block inside a root block.  create_prim_func makes the block of a lone
    extern op (e.g. a scatter-add gradient) the function body itself, where no schedule primitive
    can reach it."""
    body = func.body
    if not isinstance(body, s_tir.SBlockRealize) or body.block.name_hint == "root":
        return func
    root = s_tir.SBlock([], [], [], "root", body)
    return func.with_body(s_tir.SBlockRealize([], tirx.const(True, "bool"), root))


def _dlight(func, target, cross_thread: bool):
    """(func after the first dlight rule that applies, its name or None, [(rule, reason)]).
    cross_thread=False leaves out the rules that reduce across threads: TVM lowers those only
    for reducers it recognizes, not for tuple reducers such as the argmax that max/min gradients
    reuse."""
    reducing = [dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction()]
    rules = [dlight.gpu.Matmul(), *(reducing if cross_thread else []), dlight.gpu.Fallback()]
    declined = []
    with target:
        for rule in rules:
            name = "dlight." + type(rule).__name__
            try:
                space = rule.apply(func, target, False)
            except s_tir.ScheduleError as err:
                declined.append((name, f"ScheduleError: {str(err).splitlines()[0] if str(err) else ''}"))
                continue
            except AssertionError:
                # dlight's read analysis asserts on a reduction that reads two regions of one
                # buffer (docs/tvm-0.27.md, "dlight asserts on two reads of one buffer").
                declined.append((name, "dlight's read analysis failed an assertion"))
                continue
            if space is None:
                declined.append((name, "does not match the function"))
                continue
            space = space[0] if isinstance(space, list) else space
            return space.mod["main"].with_attr("tirx.is_scheduled", True), name, declined
    return func, None, declined


def schedule_gpu(func: tirx.PrimFunc, target: tvm.target.Target, cross_thread: bool = True):
    """The GPU schedule of `func` (module docstring) as a `Scheduled`; raises RuntimeError when a
    top-level block is left without threads."""
    config = GpuConfig.of(target)
    rooted = _with_root(func)
    bound = bind_annotated_loops(rooted)
    annotated = set()
    if not bound.same_as(rooted):       # only hand-built nests carry annotations
        bound_sch = s_tir.Schedule(bound)
        annotated = {i.name for i in block_infos(bound)
                     if i.top_level and _thread_bound(bound_sch, bound_sch.get_sblock(i.name))}
    func, chosen, declined = _dlight(bound, target, cross_thread)
    sch = s_tir.Schedule(func)
    inlined = {}
    if chosen is None:
        sch, inlined = inline_injective(sch)
    choices = [c for c in inlined.values() if c.rule is not None]
    for info in block_infos(sch.mod["main"]):
        if not info.top_level:
            continue
        if info.name in annotated:      # a hand-built nest, bound by tir/annotated_loops.py
            choices.append(Choice(info.name, "annotated-loops"))
            continue
        if _thread_bound(sch, sch.get_sblock(info.name)):
            choices.append(Choice(info.name, chosen, tuple(declined)))
            continue
        sch, choice = schedule_block(sch, info, [ThreadBind()], config)
        choices.append(Choice(info.name, choice.rule, tuple(declined) + choice.declined))
    unbound = [c.block for c in choices if c.rule is None]
    if unbound:
        raise RuntimeError(f"no GPU schedule for blocks {unbound}; they would run on the host")
    return Scheduled(sch.mod["main"], tuple(choices))


def gpu_limits_ok(func: tirx.PrimFunc, target: tvm.target.Target, **limits) -> bool:
    """`verify_gpu_code` on `func` after the partial lowering that makes thread extents visible
    (on the raw function it ignores them).  Default limits come from the target."""
    limits = {"max_threads_per_block": int(target.attrs.get("max_num_threads", 1024)),
              "max_shared_memory_per_block": int(target.attrs.get("max_shared_memory_per_block", 49152)),
              **limits}
    mod = tirx.transform.BindTarget(target)(tvm.IRModule({"main": func}))
    mod = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.UnifyThreadBinding(), s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer()])(mod)
    return bool(s_tir.analysis.verify_gpu_code(mod["main"], limits))
