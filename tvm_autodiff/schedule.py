"""Default schedules for arbitrary (gradient) PrimFuncs, on CPU and on CUDA.

TVM 0.27 has no default schedule for arbitrary TE: an unscheduled PrimFunc runs as serial scalar
loops, and on CUDA it even compiles into a host loop with no kernel.  Gradient graphs mix every
kind of block (injective, reductions over many axes, selects, and the nested blocks that
`create_prim_func` emits for reductions whose extent depends on outer spatial variables), so each
block gets a plan that is built from a few primitives, and a primitive that does not apply to a
block is skipped for that block only.  A plan runs on a copy of the schedule and is kept only if
every step in it succeeded, so a half-applied plan never leaks into the result.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import Call
from tvm.s_tir import dlight

# Calls that cost tens of cycles: such a producer is not inlined into a consumer that would
# evaluate it more than once per element.
_EXPENSIVE = {"tirx.exp", "tirx.log", "tirx.pow", "tirx.tanh", "tirx.sigmoid", "tirx.sqrt",
              "tirx.rsqrt", "tirx.erf", "tirx.exp2", "tirx.log2", "tirx.log1p", "tirx.fmod"}
_GPU_THREADS = 256
# Reads per element beyond which a producer with selects or gathers stays a block of its own.
_MAX_REREADS = 4
# Longest output row (elements) kept whole inside a reduction's loop nest (see _cpu_plan).
_ROW_LIMIT = 256   # threads per block for blocks that dlight leaves unbound
# What a primitive that does not apply raises: ScheduleError (a RuntimeError), TVM's
# InternalError (also a RuntimeError), or our own ValueError to abandon a plan.
_PLAN_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def host_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_all_cores() -> None:
    """Give TVM's CPU thread pool one thread per core this process may use (unless the user set
    TVM_NUM_THREADS).  TVM's default halves the logical CPU count on x86 to skip hyper-threads,
    which on a VM with one thread per core (a 2-vCPU cloud box) leaves every parallel loop on one
    core.  The pool reads the variable when it starts, at the first parallel kernel."""
    import psutil
    physical = psutil.cpu_count(logical=False) or host_cores()
    os.environ.setdefault("TVM_NUM_THREADS", str(max(1, min(host_cores(), physical))))


def cpu_target(num_cores: Optional[int] = None, **attrs) -> tvm.target.Target:
    """llvm target for this host: the real CPU name (`mcpu="native"` is not resolved by TVM 0.27)
    and `num-cores`, which meta_schedule requires and the parallel runtime uses."""
    mcpu = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": num_cores or host_cores(),
                              **attrs})


def cuda_arch() -> str:
    """The arch of CUDA device 0, or sm_80 when there is no GPU."""
    dev = tvm.cuda(0)
    return "sm_" + dev.compute_version.replace(".", "") if dev.exist else "sm_80"


# ---------------------------------------------------------------------------------------------
# Block analysis


class _BlockInfo:
    """What a plan needs to know about one block, read from the PrimFunc."""

    def __init__(self, realize, top_level: bool, params):
        block = realize.block
        self.name = block.name_hint
        self.top_level = top_level          # directly under the root block
        self.iter_vars = list(block.iter_vars)
        self.bindings = list(realize.iter_values)
        self.reads, self.writes = list(block.reads), list(block.writes)
        # Writes a function parameter (an output); such a block must not be inlined away.
        self.is_output = any(w.source.same_as(p) for w in self.writes for p in params)
        self.has_children = _contains_block(block.body)
        self.is_reduction = any(iv.iter_type == tirx.IterVar.CommReduce for iv in self.iter_vars)
        self.has_init = block.init is not None
        self.expensive = _has_expensive_call(block.body)
        self.copy_like = _is_copy_like(block.body)
        self.negative_div = _has_negative_divisor(realize)

    @property
    def injective(self) -> bool:
        return not self.is_reduction and not self.has_children

    def volume(self) -> Optional[int]:
        n = 1
        for iv in self.iter_vars:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return None
            n *= int(iv.dom.extent)
        return n


def _contains_block(stmt) -> bool:
    hit = tvm_ffi.structural_walk(
        stmt, (s_tir.SBlockRealize, lambda _: tvm_ffi.VisitInterrupt(True)))
    return hit is not None


def _has_negative_divisor(stmt) -> bool:
    """Whether floordiv/floormod by a negative constant occurs (zero elimination can emit them).
    TVM's simplifier rewrites them wrongly once loops are fused or split (a conv2d gradient with
    stride 2, dilation 3 came out wrong), so such blocks only get a parallel outer loop."""
    def visit(e):
        if isinstance(e.b, tirx.IntImm) and e.b.value < 0:
            return tvm_ffi.VisitInterrupt(True)
        return None

    return tvm_ffi.structural_walk(stmt, [(tirx.FloorDiv, visit), (tirx.FloorMod, visit)]) is not None


def _is_copy_like(stmt) -> bool:
    """At most two loads and plain arithmetic: no select, no integer division (the gathers of a
    pooling gradient), so recomputing it per read costs about what reading a copy would."""
    branchy = tvm_ffi.structural_walk(stmt, [
        (tirx.Select, lambda _: tvm_ffi.VisitInterrupt(True)),
        (tirx.FloorDiv, lambda _: tvm_ffi.VisitInterrupt(True)),
        (tirx.FloorMod, lambda _: tvm_ffi.VisitInterrupt(True)),
        (Call, lambda c: tvm_ffi.VisitInterrupt(True) if c.op.name == "tirx.if_then_else" else None)])
    return branchy is None and len(_loads(stmt)) <= 2


def _has_expensive_call(stmt) -> bool:
    hit = tvm_ffi.structural_walk(
        stmt, (Call, lambda c: tvm_ffi.VisitInterrupt(True) if c.op.name in _EXPENSIVE else None))
    return hit is not None


def _info_of(sch: s_tir.Schedule, name: str) -> _BlockInfo:
    return next(i for i in block_infos(sch.mod["main"]) if i.name == name)


def block_infos(func: tirx.PrimFunc) -> list[_BlockInfo]:
    """Every block except the root, producers first."""
    infos = []

    def visit(node, depth):
        for realize in _child_realizes(node):
            infos.append(_BlockInfo(realize, depth == 0, func.params))
            visit(realize.block.body, depth + 1)

    if isinstance(func.body, s_tir.SBlockRealize):   # else no blocks (nothing is computed)
        visit(func.body.block.body, 0)
    return infos


def _child_realizes(stmt) -> list:
    """The block realizes directly inside `stmt` (not inside nested blocks)."""
    found = []

    def pre(node):
        if isinstance(node, s_tir.SBlockRealize):
            found.append(node)
            return tvm_ffi.WalkResult.SKIP
        return None

    tvm_ffi.structural_walk(stmt, pre, order="pre")
    return found


def _uses(expr, var) -> bool:
    hit = tvm_ffi.structural_walk(
        expr, (tirx.Var, lambda v: tvm_ffi.VisitInterrupt(True) if v.same_as(var) else None))
    return hit is not None


def _contiguous(info: _BlockInfo, var, output_dim: bool = True) -> bool:
    """Whether block iter var `var` indexes only the last dimension of the written buffer (unless
    not `output_dim`, for reduction vars) and of every read buffer that it indexes at all: then
    vectorizing it gives contiguous loads and stores (or broadcasts) instead of gathers."""
    regions = [(r, output_dim) for r in info.writes] + [(r, False) for r in info.reads]
    for region, must_use in regions:
        dims = [_uses(rng.min, var) or _uses(rng.extent, var) for rng in region.region]
        if not dims:
            return False
        if any(dims[:-1]) or (must_use and not dims[-1]):
            return False
    return True


def _loop_kinds(sch: s_tir.Schedule, block, info: _BlockInfo) -> list[str]:
    """'S' or 'R' per loop of `block` (by the iter vars its loop var feeds), 'O' when mixed/none."""
    kinds = []
    for loop in sch.get_loops(block):
        var = sch.get(loop).loop_var
        types = {iv.iter_type for iv, b in zip(info.iter_vars, info.bindings) if _uses(b, var)}
        kinds.append({frozenset([tirx.IterVar.DataPar]): "S",
                      frozenset([tirx.IterVar.CommReduce]): "R"}.get(frozenset(types), "O"))
    return kinds


def _const_extent(sch, loop) -> Optional[int]:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


# ---------------------------------------------------------------------------------------------
# Applying plans safely


def _try(sch: s_tir.Schedule, plan: Callable[[s_tir.Schedule], None]) -> s_tir.Schedule:
    """`sch` after `plan`, or `sch` unchanged when any step of the plan fails."""
    trial = sch.copy()
    try:
        plan(trial)
    except _PLAN_ERRORS:
        return sch
    return trial


def inline_injective(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Inline every injective block into its consumers where legal and not wasteful, then
    reverse-inline injective output blocks into injective producers."""
    infos = block_infos(sch.mod["main"])
    volumes = {i.name: i.volume() for i in infos}
    kinds = {i.name: i for i in infos}
    for info in infos:
        if not info.injective or info.is_output:
            continue

        def plan(s, info=info):
            block = s.get_sblock(info.name)
            pv = volumes[info.name]
            for c in s.get_consumers(block):
                cv = volumes.get(s.get(c).name_hint)
                # Recomputing exp/log per read is only free when each element is read once;
                # selects and gathers (a zero-padded pooling adjoint feeding a window sum that
                # reads each element K² times) only when read a few times.
                if info.expensive and (cv is None or pv is None or cv > pv):
                    raise ValueError("expensive producer read more than once per element")
                if not info.copy_like and cv is not None and pv is not None and cv > _MAX_REREADS * pv:
                    raise ValueError("branchy producer read many times per element")
            s.compute_inline(block)

        sch = _try(sch, plan)
    for info in infos:
        if info.injective and info.is_output and info.top_level:
            def plan(s, info=info):
                block = s.get_sblock(info.name)
                producers = s.get_producers(block)
                if len(producers) != 1 or not kinds.get(s.get(producers[0]).name_hint, info).injective:
                    raise ValueError("reverse inline only into one injective producer")
                s.reverse_compute_inline(block)

            sch = _try(sch, plan)
    return sch


# ---------------------------------------------------------------------------------------------
# Flattening variable-extent reductions

# The class of buffer loads (tirx.BufferLoad is a constructor function in 0.27).
_LOAD_TYPE = type(tirx.BufferLoad(tirx.decl_buffer((1,), "float32"), [tirx.const(0)]))
# Largest padded extent of a flattened variable-extent loop (a window of a few taps).
_MAX_FLAT_EXTENT = 64


def _guarded(store, cond, ana):
    """`store` done only where `cond` holds, as a Select (which vectorizes, where an `if` makes the
    vectorizer fall back to scalar code): loads of other buffers get their indices clamped into
    the buffer, so the lanes where `cond` fails read a valid address and are then discarded."""
    def clamp(load):
        if load.source.same_as(store.buffer):
            return load
        idx = []
        for i, n in zip(load.indices, load.source.shape):
            if not isinstance(n, tirx.IntImm):
                raise ValueError("symbolic shape")
            dt = str(i.ty.dtype)
            if not ana.can_prove(i < int(n)):
                i = tirx.Min(i, tirx.const(int(n) - 1, dt))
            if not ana.can_prove(i >= 0):
                i = tirx.Max(i, tirx.const(0, dt))
            idx.append(i)
        return tirx.BufferLoad(load.source, idx)

    try:
        value = tvm_ffi.structural_map(store.value, (_LOAD_TYPE, clamp))
    except ValueError:
        return tirx.IfThenElse(cond, store, None)
    keep = tirx.BufferLoad(store.buffer, list(store.indices))
    return tirx.BufferStore(store.buffer, tirx.Select(cond, value, keep), list(store.indices))


def _flatten_one(realize, guards: dict):
    """`realize` (a top-level reduction block whose body is a loop nest, with extents that depend
    on the block's iter vars, around one nested update block) as one flat reduction block, or
    None.  The variable loops become constant-extent reduction axes padded to their largest
    extent, with the update guarded by `axis < extent`."""
    block = realize.block
    if block.init is None:
        return None
    loops, stmt = [], block.body
    while isinstance(stmt, tirx.For):
        if stmt.kind != tirx.ForKind.SERIAL or stmt.thread_binding is not None:
            return None
        loops.append(stmt)
        stmt = stmt.body
    if not loops or not isinstance(stmt, s_tir.SBlockRealize):
        return None
    inner = stmt.block
    if (not isinstance(inner.body, tirx.BufferStore) or inner.init is not None
            or inner.alloc_buffers or inner.match_buffers
            or not (isinstance(stmt.predicate, tirx.IntImm) and stmt.predicate.value == 1)):
        return None
    ana = tvm.sym.Analyzer()
    for iv in block.iter_vars:
        ana.bind(iv.var, iv.dom)
    # Each loop becomes a reduce var r in [0, bound) with the loop var = r + min, guarded by r < extent.
    loop_map, new_ivs, conds, sub = {}, [], [], {}
    for loop in loops:
        ext = tvm_ffi.structural_map(loop.extent, (tirx.Var, lambda v: sub.get(v, v)))
        lo = tvm_ffi.structural_map(loop.min, (tirx.Var, lambda v: sub.get(v, v)))
        bound = ana.const_int_bound(ext).max_value
        if bound <= 0 or bound > _MAX_FLAT_EXTENT:
            return None
        r = tirx.Var(loop.loop_var.name + "_flat", loop.loop_var.ty.dtype)
        new_ivs.append(tirx.IterVar(tvm.ir.Range.from_min_extent(
            tirx.const(0, str(r.ty.dtype)), tirx.const(bound, str(r.ty.dtype))), r, tirx.IterVar.CommReduce))
        ana.bind(r, tvm.ir.Range.from_min_extent(0, bound))
        sub[loop.loop_var] = r + lo
        if not ana.can_prove(ext >= bound):
            conds.append(r < ext)
    # Inner iter vars: those bound to outer values are replaced by them (loop vars included).
    for iv, val in zip(inner.iter_vars, stmt.iter_values):
        sub[iv.var] = tvm_ffi.structural_map(val, (tirx.Var, lambda v: sub.get(v, v)))
    body = tvm_ffi.structural_map(inner.body, (tirx.Var, lambda v: sub.get(v, v)))
    cond = None
    if conds:
        cond = conds[0]
        for c in conds[1:]:
            cond = tirx.And(cond, c)
        guards[block.name_hint] = (body, cond, ana)
        body = _guarded(body, cond, ana)
    flat = s_tir.SBlock(list(block.iter_vars) + new_ivs, list(block.reads), list(block.writes),
                        block.name_hint, body, block.init, list(block.alloc_buffers),
                        list(block.match_buffers), dict(block.annotations))
    # The new loops bind the new reduce vars directly; they sit inside the block's loop nest.
    loop_vars = [tirx.Var(iv.var.name + "_l", iv.var.ty.dtype) for iv in new_ivs]
    result = s_tir.SBlockRealize(list(realize.iter_values) + loop_vars, realize.predicate, flat)
    for iv, lv in reversed(list(zip(new_ivs, loop_vars))):
        result = tirx.For(lv, tirx.const(0, str(lv.ty.dtype)), iv.dom.extent, tirx.ForKind.SERIAL, result)
    return result


_MAX_EDGE = 8   # widest edge region split off a guarded window loop (see _partitioned)


def _simplified(store, ana):
    """`store` with its indices and loaded indices simplified (under `ana`'s constraints)."""
    def load(l):
        return tirx.BufferLoad(l.source, [ana.simplify(i) for i in l.indices])

    value = ana.simplify(tvm_ffi.structural_map(store.value, (_LOAD_TYPE, load)))
    return tirx.BufferStore(store.buffer, value, [ana.simplify(i) for i in store.indices])


def _window_free(store, var) -> bool:
    """No min/max/select that depends on `var` is left in `store` (its loads are affine in it)."""
    def hit(e):
        return tvm_ffi.VisitInterrupt(True) if _uses(e, var) else None

    kinds = [(tirx.Min, hit), (tirx.Max, hit), (tirx.Select, hit)]
    return (tvm_ffi.structural_walk(store.value, kinds) is None
            and all(tvm_ffi.structural_walk(i, kinds) is None for i in store.indices))


def _simplify_cond(cond, ana):
    """`cond` simplified, or a true constant when the analyzer proves it."""
    return tirx.const(True, "bool") if ana.can_prove(cond) else ana.simplify(cond)


def _init_nest(block, loops, predicate):
    """The loop nest of a spatial block that runs `block`'s init over its spatial iter vars."""
    fresh = {iv.var: tirx.Var(iv.var.name, iv.var.ty.dtype) for iv in block.iter_vars}
    rename = lambda x: tvm_ffi.structural_map(x, (tirx.Var, lambda v: fresh.get(v, v)))
    keep = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tirx.IterVar.DataPar]
    ivs = [tirx.IterVar(block.iter_vars[i].dom, fresh[block.iter_vars[i].var], tirx.IterVar.DataPar)
           for i in keep]
    init = s_tir.SBlock(ivs, [], [rename(w) for w in block.writes], block.name_hint + "_init",
                        rename(block.init))
    lvs = [tirx.Var(loops[i].loop_var.name, loops[i].loop_var.ty.dtype) for i in keep]
    nest = s_tir.SBlockRealize(lvs, predicate, init)
    for i, lv in reversed(list(zip(keep, lvs))):
        nest = tirx.For(lv, tirx.const(0, str(lv.ty.dtype)), loops[i].extent, tirx.ForKind.SERIAL, nest)
    return nest


def _partitioned(stmt, guards, lanes: int) -> list:
    """A top-level loop nest around a flattened window reduction, split along its innermost
    spatial loop into edge regions (guarded, as flattened) and an interior where the analyzer
    proves the guard and simplifies the window's min/max away: there the loads are affine in the
    loop var (a stride-1 conv's input gradient reads H[.., l - rx]), so the interior vectorizes
    with contiguous loads.  The regions are separate blocks writing disjoint parts of the output."""
    loops, s = [], stmt
    while isinstance(s, tirx.For):
        loops.append(s)
        s = s.body
    if not isinstance(s, s_tir.SBlockRealize) or s.block.name_hint not in guards:
        return [stmt]
    block = s.block
    store, cond, ana = guards[block.name_hint]
    # Canonical nest only: one loop per iter var, in order, from 0 to the domain's extent.
    if len(loops) != len(block.iter_vars) or not all(
            l.loop_var.same_as(b) and isinstance(l.min, tirx.IntImm) and l.min.value == 0
            and isinstance(iv.dom.min, tirx.IntImm) and iv.dom.min.value == 0
            and tvm_ffi.structural_equal(l.extent, iv.dom.extent)
            for l, b, iv in zip(loops, s.iter_values, block.iter_vars)):
        return [stmt]
    spatial = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tirx.IterVar.DataPar]
    if not spatial or not isinstance(block.iter_vars[spatial[-1]].dom.extent, tirx.IntImm):
        return [stmt]
    pos = spatial[-1]
    var, extent = block.iter_vars[pos].var, int(block.iter_vars[pos].dom.extent)
    conjuncts, todo = [], [cond]
    while todo:
        c = todo.pop()
        if isinstance(c, tirx.And):
            todo += [c.b, c.a]
        else:
            conjuncts.append(c)
    on_var = [c for c in conjuncts if _uses(c, var)]
    rest = [c for c in conjuncts if not _uses(c, var)]
    if not on_var:
        return [stmt]
    best = None
    for total in range(0, 2 * _MAX_EDGE + 1):
        for lo in range(0, min(total, _MAX_EDGE) + 1):
            hi = extent - (total - lo)
            if total - lo > _MAX_EDGE or 2 * (hi - lo) < extent:
                continue
            with ana.constraint_scope(tirx.all(var >= lo, var < hi)):
                if all(ana.can_prove(c) for c in on_var):
                    inner = _simplified(store, ana)
                    if _window_free(inner, var):
                        # Guards that do not depend on `var` stay (clamping only their loads).
                        if rest:
                            inner = _guarded(inner, tirx.all(*rest), ana)
                        best = (lo, hi, inner)
                        break
        if best:
            break
    if best is None:
        return [stmt]
    lo, hi, inner = best
    # The output is zeroed by one spatial block first, and the regions update it without an init
    # block of their own: a reduction block (with init) must be its buffer's only writer.
    out = [_init_nest(block, loops, s.predicate)]
    for start, stop, body, suffix in ((0, lo, None, "_lo"), (lo, hi, inner, ""),
                                      (hi, extent, None, "_hi")):
        if stop <= start:
            continue
        if body is None:
            # An edge keeps the guard; what the analyzer can decide on the edge's range (e.g. the
            # far side of the window's min/max) is simplified away.
            with ana.constraint_scope(tirx.all(var >= start, var < stop)):
                body = _guarded(_simplified(store, ana), _simplify_cond(cond, ana), ana)
        dt = str(var.ty.dtype)
        # Each block defines its own iter vars (TIR forbids defining a var twice).
        fresh = {iv.var: tirx.Var(iv.var.name, iv.var.ty.dtype) for iv in block.iter_vars}
        rename = lambda x: tvm_ffi.structural_map(x, (tirx.Var, lambda v: fresh.get(v, v)))
        ivs = [tirx.IterVar(iv.dom, fresh[iv.var], iv.iter_type) for iv in block.iter_vars]
        ivs[pos] = tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.const(start, dt), tirx.const(stop - start, dt)),
                                fresh[var], tirx.IterVar.DataPar)
        new_block = s_tir.SBlock(ivs, [rename(r) for r in block.reads],
                                 [rename(w) for w in block.writes], block.name_hint + suffix,
                                 rename(body), None, list(block.alloc_buffers),
                                 list(block.match_buffers), dict(block.annotations))
        out.append(_update_nest(new_block, loops, s.predicate, pos, start, stop - start, lanes))
    return out


def _update_nest(block, loops, predicate, pos, start, extent, lanes):
    """The loops of one region's update block, scheduled here: these blocks have no init (see
    _partitioned), which the schedule's parallel primitive rejects.  Order: outermost spatial loop
    parallel, other spatial loops, reduction loops, then the region's loop (`pos`, `extent`
    iterations from `start`) split into vector lanes when a factor divides it, or else (scalar)
    with the other spatial loops."""
    dt = str(block.iter_vars[pos].var.ty.dtype)
    lvs = [tirx.Var(l.loop_var.name, l.loop_var.ty.dtype) for l in loops]
    binds = list(lvs)
    factor = _vector_factor(extent, lanes) if lanes else None
    inner = []
    if factor and factor < extent:
        vo, vi = tirx.Var(lvs[pos].name + "_o", dt), tirx.Var(lvs[pos].name + "_v", dt)
        binds[pos] = vo * factor + vi
        inner = [(vo, extent // factor, tirx.ForKind.SERIAL), (vi, factor, tirx.ForKind.VECTORIZED)]
    elif factor:
        binds[pos] = lvs[pos]
        inner = [(lvs[pos], extent, tirx.ForKind.VECTORIZED)]
    else:
        binds[pos] = lvs[pos]
    if start:
        binds[pos] = binds[pos] + tirx.const(start, dt)
    kinds = [iv.iter_type for iv in block.iter_vars]
    # A scalar region keeps its loop outside the reductions, so each output element accumulates
    # in a register over consecutive iterations.
    order = ([i for i in range(len(loops)) if (i != pos or not inner) and kinds[i] == tirx.IterVar.DataPar]
             + [i for i in range(len(loops)) if kinds[i] != tirx.IterVar.DataPar])
    nest_loops = [(lvs[i], tirx.const(extent, dt) if i == pos else loops[i].extent,
                   tirx.ForKind.SERIAL) for i in order] + inner
    if nest_loops and order and kinds[order[0]] == tirx.IterVar.DataPar:
        nest_loops[0] = (nest_loops[0][0], nest_loops[0][1], tirx.ForKind.PARALLEL)
    nest = s_tir.SBlockRealize(binds, predicate, block)
    for var, ext, kind in reversed(nest_loops):
        nest = tirx.For(var, tirx.const(0, str(var.ty.dtype)), ext, kind, nest)
    return nest


def flatten_variable_reductions(func: tirx.PrimFunc, lanes: int = 16) -> tirx.PrimFunc:
    """Rewrite top-level blocks with nested variable-extent reductions (the windows that zero
    elimination deskews: extents are min/max expressions of the output index, e.g. a conv's
    input gradient) into flat reductions with constant, padded extents and a guard.  Nested, they
    run as a tiny loop per output element and per outer reduction step, and no loop inside the
    block can be reordered, unrolled or vectorized; flat, the spatial loops can go innermost."""
    root = func.body
    if not isinstance(root, s_tir.SBlockRealize):
        return func
    changed, guards = [], {}

    def visit(r):
        if r.same_as(root) or r.block.init is None:
            return r
        flat = _flatten_one(r, guards)
        if flat is None:
            return r
        changed.append(r.block.name_hint)
        return flat

    # structural_map runs bottom-up; nested update blocks have no init and are left alone.
    new_body = tvm_ffi.structural_map(root.block.body, (s_tir.SBlockRealize, visit))
    if not changed:
        return func
    if guards:
        stmts = list(new_body.seq) if isinstance(new_body, tirx.SeqStmt) else [new_body]
        parts = [_partitioned(st, guards, lanes) for st in stmts]
        new_body = tirx.SeqStmt([p for ps in parts for p in ps]) if len(stmts) > 1 or len(parts[0]) > 1 else new_body
    return func.with_body(s_tir.SBlockRealize(root.iter_values, root.predicate, s_tir.SBlock(
        root.block.iter_vars, root.block.reads, root.block.writes, root.block.name_hint, new_body,
        root.block.init, root.block.alloc_buffers, root.block.match_buffers, root.block.annotations)))


# ---------------------------------------------------------------------------------------------
# CPU


def _vector_factor(extent: int, lanes: int) -> Optional[int]:
    """A divisor of `extent` in [4, lanes], so the vector loop needs no tail: the largest multiple
    of 8 (whole machine vectors) if any, else the largest."""
    divisors = [f for f in range(min(extent, lanes), 3, -1) if extent % f == 0]
    return next((f for f in divisors if f % 8 == 0), divisors[0] if divisors else None)


def _heavy(info: _BlockInfo) -> bool:
    """Whether a block's body does real work besides a product of two loads: an expensive call,
    or reads of more than two buffers other than its output (inlined producers)."""
    inputs = []
    for r in info.reads:
        if not any(r.source.same_as(x) for x in inputs + [w.source for w in info.writes]):
            inputs.append(r.source)
    return info.expensive or len(inputs) > 2


def _cheap_along(info: _BlockInfo, var) -> bool:
    """Whether at most one input read depends on block var `var`: then the rest of the body (the
    heavy part) is invariant along it and is shared when its loop runs inside the reduction."""
    outs = [w.source for w in info.writes]
    deps = [r for r in info.reads if not any(r.source.same_as(o) for o in outs)
            and any(_uses(rng.min, var) or _uses(rng.extent, var) for rng in r.region)]
    return len(deps) <= 1


def _cpu_plan(info: _BlockInfo, lanes: int, need_vector: bool):
    """Plan for one block: [outer spatial fused+parallel] [reductions] [row tile] [vector lanes].
    With `need_vector`, a reduction block whose inner spatial loop cannot be vectorized fails the
    plan, so that the caller can vectorize its reduction instead (`_cpu_rfactor_plan`)."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        if not info.top_level:
            # Loops nested inside another block's loop nest: the enclosing block is parallel
            # already.  Decomposing still helps: it also initializes zero-extent reductions.
            if "R" in kinds:
                s.decompose_reduction(block, loops[kinds.index("R")])
            return
        if "O" in kinds:
            raise ValueError("loops that mix spatial and reduction iterators")
        spatial = [l for l, k in zip(loops, kinds) if k == "S"]
        reduction = [l for l, k in zip(loops, kinds) if k == "R"]
        inner, tile, moved = [], [], []
        # Multi-output reductions (argmax-style, whose combiner binds lets) are left scalar: TVM's
        # vectorizer gave wrong results for them once padding was inlined (a padded max pool's
        # argext block).
        if spatial and not info.has_children and len(info.writes) == 1:
            var = next((iv.var for iv, b in zip(info.iter_vars, info.bindings)
                        if _uses(b, s.get(spatial[-1]).loop_var)), None)
            extent = _const_extent(s, spatial[-1])
            factor = extent and _vector_factor(extent, lanes)
            if var is not None and factor and _contiguous(info, var):
                if factor < extent:
                    spatial[-1:] = s.split(spatial[-1], factors=[None, factor])
                inner = [spatial.pop()]
                if reduction and _heavy(info) and _cheap_along(info, var):
                    # Inner spatial loops go under the reduction loops (up to _ROW_LIMIT output
                    # elements, keeping a few outer iterations per core), so work in the body that
                    # does not depend on them (an elementwise gradient that differentiation inlined
                    # into a matmul or a conv weight gradient: exp, argmax selects, index
                    # arithmetic) is computed once per reduction step, not once per vector.
                    # Without such work, a shorter row keeps its accumulators in registers.
                    volume = factor
                    if factor < extent <= _ROW_LIMIT:
                        inner.insert(0, spatial.pop())
                        volume = extent
                    while volume == extent and len(spatial) >= 2:
                        e = _const_extent(s, spatial[-1])
                        outer = [_const_extent(s, l) for l in spatial[:-1]]
                        loop_var = s.get(spatial[-1]).loop_var
                        ivar = next((iv.var for iv, b in zip(info.iter_vars, info.bindings)
                                     if _uses(b, loop_var)), None)
                        if (e is None or volume * e > _ROW_LIMIT or None in outer
                                or math.prod(outer) < 4 or ivar is None
                                or not _cheap_along(info, ivar)):
                            break
                        volume *= e
                        moved.append(spatial[-1])
                        inner.insert(0, spatial.pop())
        if need_vector and reduction and not inner:
            raise ValueError("inner spatial loop is not vectorizable")
        if inner and reduction and len(spatial) >= 2:
            # Register tile: a few rows share each reduction step's vector loads.
            extent = _const_extent(s, spatial[-1])
            if extent and extent % 4 == 0 and extent >= 8:
                spatial[-1:] = s.split(spatial[-1], factors=[None, 4])
                tile = [spatial.pop()]
        if not spatial:
            spatial = [s.add_unit_loop(block)]
        s.reorder(*spatial, *reduction, *tile, *inner)
        # A scalar inner spatial loop stays out of the fused parallel loop, so the block does not
        # recompute every index with div/mod from one fused counter (3x slower on an argmax pool).
        if not inner and len(spatial) > 2:
            spatial = spatial[:-1]
        outer = s.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        s.parallel(outer)
        if tile:
            s.unroll(tile[0])
        for loop in moved:
            if _const_extent(s, loop) <= 8:
                s.unroll(loop)
        if inner:
            s.vectorize(inner[-1])
        if reduction and info.has_init:
            s.decompose_reduction(block, reduction[0])

    return plan


# Register tile of a matmul-like block (see _cpu_matmul_plan): at most this many vector
# accumulators (AVX2 has 16 ymm registers; one more holds the broadcast operand), and rows per tile.
_MAX_ACCUMULATORS = 12
_MAX_TILE_ROWS = 8
_VECTOR_BYTES = 32
_L1_BYTES = 32 * 1024
_MIN_PACKED_TILES = 8   # column tiles (the parallel loop) needed to pack a matmul's B panels


def _loads(stmt) -> list:
    found = []
    tvm_ffi.structural_walk(stmt, (_LOAD_TYPE, lambda l: found.append(l)))
    return found


def _matmul_tile(rows: int, cols: int, vec: int) -> Optional[tuple[int, int, int]]:
    """(rows r, columns, lanes l) of a register tile for a `rows` x `cols` output: r rows of m
    vectors of l lanes each (columns = m * l), both dividing their extents (no tails).  A vector
    of l lanes takes u = ceil(l / vec) machine registers and instructions; per reduction step the
    tile does r*m*u FMAs for r broadcasts and m*u loads, so the tile with the most useful lanes
    per instruction within _MAX_ACCUMULATORS registers wins.  Lanes are whole machine vectors
    (l = vec), or when `cols` has no such divisor, a divisor below 2*vec (wider vectors that are
    not a multiple of the machine's come out slow from LLVM)."""
    best, best_key = None, None
    widths = [vec] if cols % vec == 0 else [l for l in range(2 * vec - 1, 1, -1) if cols % l == 0]
    for l in widths:
        u = -(-l // vec)
        for m in range(1, _MAX_ACCUMULATORS // u + 1):
            if cols % (l * m):
                continue
            for r in range(1, min(rows, _MAX_TILE_ROWS) + 1):
                if rows % r or r * m * u > _MAX_ACCUMULATORS:
                    continue
                key = (r * m * l / (r * m * u + m * u + r), r * m * l)
                if best_key is None or key > best_key:
                    best, best_key = (r, l * m, l), key
    return best if best and best_key[1] >= 2 * vec else None


def _hoisted_factor(stmt, buffer_map):
    """For a top-level loop nest around a sum-reduction block C[.., j] += a * b, where `a` does
    not depend on the output's last index j and is expensive (an exp/log, or three or more
    loads: an elementwise gradient that differentiation inlined into a matmul) or reads b's
    buffer, the statements
    [F = a over a's own iterators, the block reading F instead of a] plus F's buffer; else None.
    Inlined, `a` would be recomputed for every tile of j columns in the register-tiled plan; as
    its own block it is computed once per element, vectorized."""
    loops, s = [], stmt
    while isinstance(s, tirx.For):
        loops.append(s)
        s = s.body
    if not isinstance(s, s_tir.SBlockRealize):
        return None
    block = s.block
    store = block.body
    if (block.init is None or not isinstance(store, tirx.BufferStore) or block.alloc_buffers
            or block.match_buffers or len(loops) != len(block.iter_vars)
            or not (isinstance(s.predicate, tirx.IntImm) and s.predicate.value == 1)):
        return None
    for l, b, iv in zip(loops, s.iter_values, block.iter_vars):
        if (l.kind != tirx.ForKind.SERIAL or l.thread_binding is not None or not l.loop_var.same_as(b)
                or not isinstance(l.min, tirx.IntImm) or l.min.value != 0
                or not isinstance(iv.dom.min, tirx.IntImm) or iv.dom.min.value != 0
                or not isinstance(iv.dom.extent, tirx.IntImm)):
            return None
    value, out = store.value, store.buffer
    if not isinstance(value, tirx.Add):
        return None
    own = lambda e: isinstance(e, _LOAD_TYPE) and e.source.same_as(out)   # noqa: E731
    rhs = value.b if own(value.a) else value.a if own(value.b) else None
    if not isinstance(rhs, tirx.Mul) or not store.indices or not isinstance(store.indices[-1], tirx.Var):
        return None
    jvar = store.indices[-1]
    uses_j = [_uses(rhs.a, jvar), _uses(rhs.b, jvar)]
    if uses_j.count(True) != 1:
        return None
    a, b = (rhs.b, rhs.a) if uses_j[0] else (rhs.a, rhs.b)
    loads, b_loads = _loads(a), _loads(b)
    # Reading b's buffer too (Xᵀ·diag(s)·X) keeps the plan from packing b's column panel alone.
    aliased = any(l.source.same_as(m.source) for l in loads for m in b_loads)
    if (not (_has_expensive_call(a) or len(loads) >= 3 or aliased)
            or any(l.source.same_as(out) for l in loads) or not b_loads):
        return None
    used = [iv for iv in block.iter_vars if _uses(a, iv.var)]
    if not used:
        return None
    # F's last dimension: a reduction iterator, so that each row of the matmul's register tile
    # streams F contiguously (in a plan with many column tiles, F is read once per tile and
    # written once); then the iterator that indexes other than the last dimension of the fewest
    # loads in `a` (then of the most loads in the last dimension), so that the block computing
    # F reads contiguously along it.
    def rank(iv):
        strided = sum(any(_uses(x, iv.var) for x in l.indices[:-1]) for l in loads)
        return (iv.iter_type == tirx.IterVar.CommReduce, -strided,
                sum(bool(l.indices) and _uses(l.indices[-1], iv.var) for l in loads))

    inner = max(used, key=rank)
    used = [iv for iv in used if not iv.same_as(inner)] + [inner]
    factor = tirx.decl_buffer([iv.dom.extent for iv in used], str(a.ty.dtype),
                              name=block.name_hint + "_factor")
    fresh = {iv.var: tirx.Var(iv.var.name, iv.var.ty.dtype) for iv in used}
    f_ivs = [tirx.IterVar(iv.dom, fresh[iv.var], tirx.IterVar.DataPar) for iv in used]
    f_body = tirx.BufferStore(factor, tvm_ffi.structural_map(a, (tirx.Var, lambda v: fresh.get(v, v))),
                              [fresh[iv.var] for iv in used])
    bmap = {**buffer_map, factor: factor}
    f_block = s_tir.SBlock(f_ivs, [], [], block.name_hint + "_factor", f_body)
    reads, writes = s_tir.analysis.get_sblock_read_write_region(f_block, bmap)
    f_block = s_tir.SBlock(f_ivs, reads, writes, block.name_hint + "_factor", f_body)
    lvs = [tirx.Var(iv.var.name + "_f", iv.var.ty.dtype) for iv in used]
    f_nest = s_tir.SBlockRealize(lvs, tirx.const(True, "bool"), f_block)
    for iv, lv in reversed(list(zip(used, lvs))):
        f_nest = tirx.For(lv, tirx.const(0, str(lv.ty.dtype)), iv.dom.extent, tirx.ForKind.SERIAL, f_nest)
    load = tirx.BufferLoad(factor, [iv.var for iv in used])
    new_rhs = tirx.Mul(load, b) if not uses_j[0] else tirx.Mul(b, load)
    new_value = tirx.Add(value.a, new_rhs) if own(value.a) else tirx.Add(new_rhs, value.b)
    new_store = tirx.BufferStore(out, new_value, list(store.indices))
    tmp = s_tir.SBlock(list(block.iter_vars), [], [], block.name_hint, new_store, block.init)
    reads, _ = s_tir.analysis.get_sblock_read_write_region(tmp, bmap)
    reads = [r for r in reads if not r.source.same_as(out)]
    new_block = s_tir.SBlock(list(block.iter_vars), reads, list(block.writes), block.name_hint,
                             new_store, block.init, [], [], dict(block.annotations))
    nest = s_tir.SBlockRealize(list(s.iter_values), s.predicate, new_block)
    for l in reversed(loops):
        nest = tirx.For(l.loop_var, l.min, l.extent, l.kind, nest)
    return [f_nest, nest], factor


def hoist_invariant_factors(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the expensive factors of matmul-like reductions computed by blocks of their
    own (see _hoisted_factor)."""
    root = func.body
    if not isinstance(root, s_tir.SBlockRealize):
        return func
    body = root.block.body
    stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    # In 0.27 a buffer is itself the variable that the access-region analysis maps.
    buffer_map = {b: b for b in list(func.params) + list(root.block.alloc_buffers)}
    out, allocs = [], list(root.block.alloc_buffers)
    for st in stmts:
        hoisted = _hoisted_factor(st, buffer_map)
        if hoisted is None:
            out.append(st)
        else:
            out += hoisted[0]
            allocs.append(hoisted[1])
    if len(allocs) == len(root.block.alloc_buffers):
        return func
    return func.with_body(s_tir.SBlockRealize(root.iter_values, root.predicate, s_tir.SBlock(
        root.block.iter_vars, root.block.reads, root.block.writes, root.block.name_hint,
        tirx.SeqStmt(out), root.block.init, allocs, root.block.match_buffers,
        root.block.annotations)))


def _cpu_matmul_plan(info: _BlockInfo):
    """Register-tiled plan for a matmul-like block: a reduction whose innermost spatial iterator j
    is contiguous in the output and in the operand(s) that read it, and a second spatial
    iterator i that no read indexed by j uses (C[i, j] = sum_k A[i, k] * B[k, j], transposed
    A, batched, weight gradients).  Loop nest: [outer spatial, j tiles, i tiles] fused and
    parallel, reductions, then an i x j register tile (rows unrolled, columns vectorized) that
    accumulates in a local buffer, written back once per tile: each reduction step loads a few
    vectors of B and broadcasts a few elements of A for rows x vectors FMAs."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        if (not info.top_level or info.has_children or len(info.writes) != 1 or not info.has_init
                or "O" in kinds or "R" not in kinds):
            raise ValueError("not a plain top-level reduction")
        spatial = [l for l, k in zip(loops, kinds) if k == "S"]
        reduction = [l for l, k in zip(loops, kinds) if k == "R"]
        if len(spatial) < 2:
            raise ValueError("fewer than two spatial loops")

        def var_of(loop):
            lv = s.get(loop).loop_var
            vs = [iv.var for iv, b in zip(info.iter_vars, info.bindings) if _uses(b, lv)]
            if len(vs) != 1:
                raise ValueError("loop feeds several iter vars")
            return vs[0]

        jvar, ivar = var_of(spatial[-1]), var_of(spatial[-2])
        cols, rows = _const_extent(s, spatial[-1]), _const_extent(s, spatial[-2])
        if not cols or not rows or not _contiguous(info, jvar):
            raise ValueError("inner spatial loop is not contiguous")
        out = info.writes[0].source
        store = s.get(block).body
        reads = [l for l in _loads(store) if not l.source.same_as(out)]
        along_j = [l for l in reads if any(_uses(x, jvar) for x in l.indices)]
        along_i = [l for l in reads if any(_uses(x, ivar) for x in l.indices)]
        rvars = [iv.var for iv in info.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        if (not along_j or not along_i or any(a.same_as(b) for a in along_j for b in along_i)
                or not all(any(_uses(x, r) for x in l.indices for r in rvars) for l in along_j)):
            raise ValueError("not matmul-like")
        # Reads along j other than the last index would be gathers (checked by _contiguous on
        # the regions; the loads themselves are checked here too).
        for l in along_j:
            if any(_uses(x, jvar) for x in l.indices[:-1]):
                raise ValueError("strided read along j")
        if _heavy(info):
            # Work in the body besides the product (an inlined elementwise gradient) would be
            # redone for every column tile; _cpu_plan keeps whole rows under the reduction.
            raise ValueError("heavy body")
        dtype = out.dtype
        vec = max(1, _VECTOR_BYTES * 8 // tvm.runtime.DataType(str(dtype)).bits)
        tile = _matmul_tile(rows, cols, vec)
        if tile is None:
            raise ValueError("no register tile divides the output")
        tr, tc, lanes = tile
        jo, ji = s.split(spatial[-1], factors=[None, tc])
        io, ii = s.split(spatial[-2], factors=[None, tr])
        outer = [*spatial[:-2], jo, io]
        s.reorder(*outer, *reduction, ii, ji)
        # Pack B's panel (all of k for one tile of columns) contiguously per column tile when
        # it overflows L1 and many row tiles reuse it: its rows are then consecutive, not a whole
        # row of B apart (1000x2000x1000: 62 -> 41 ms).  The column tiles alone must then give
        # enough parallel work.
        depth = math.prod(_const_extent(s, l) or 0 for l in reduction)
        tiles = math.prod(_const_extent(s, l) or 0 for l in outer[:-1])
        elem_bytes = tvm.runtime.DataType(str(dtype)).bits // 8
        # (Not when the rows operand reads the same buffer, as in Xᵀ·diag(s)·X: the cache would
        # copy all of it per column tile.)
        if (len(along_j) == 1 and depth * tc * elem_bytes > _L1_BYTES and rows // tr >= 4
                and tiles >= _MIN_PACKED_TILES
                and not any(l.source.same_as(along_j[0].source) for l in along_i)):
            pfused = s.fuse(*outer[:-1]) if len(outer) > 2 else outer[0]
            s.parallel(pfused)
            fused = io
            index = next(n for n, r in enumerate(s.get(block).reads)
                         if r.source.same_as(along_j[0].source))
            packed = s.cache_read(block, index, "global", consumer_blocks=[block])
            s.compute_at(packed, pfused)
            s.vectorize(s.get_loops(packed)[-1])
        else:
            fused = s.fuse(*outer)
            s.parallel(fused)
        wb = s.cache_write(block, 0, "local")
        s.reverse_compute_at(wb, fused)
        wb_loops = s.get_loops(wb)[1:]
        if len(wb_loops) >= 2:
            s.vectorize(wb_loops[-1])
        s.unroll(ii)
        if tc > lanes:
            # At most one or two machine vectors per operation: LLVM legalizes a wide vector
            # (e.g. 40 lanes) poorly, where unrolled 8-lane operations keep every accumulator in
            # a register (5 to 10 times faster).
            jm, ji = s.split(ji, factors=[None, lanes])
            s.unroll(jm)
        s.vectorize(ji)
        s.decompose_reduction(block, reduction[0])

    return plan


def _cpu_rfactor_tile_plan(info: _BlockInfo):
    """Register-tiled dot products, for matmul-like blocks whose operands are both contiguous
    along the reduction, not along the output's inner axis (C[i, j] = sum_k A[i, k] * B[j, k],
    a dense layer's forward pass): an r x c tile of outputs keeps r*c vector accumulators over
    machine-vector chunks of k (r + c vector loads for r*c FMAs per chunk) in a local partial-sum
    buffer, summed across lanes once per output at the end."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        if (not info.top_level or info.has_children or len(info.writes) != 1 or not info.has_init
                or "O" in kinds or "R" not in kinds or _heavy(info)):
            raise ValueError("not a plain top-level reduction")
        spatial = [l for l, k in zip(loops, kinds) if k == "S"]
        reduction = [l for l, k in zip(loops, kinds) if k == "R"]
        if len(spatial) < 2:
            raise ValueError("fewer than two spatial loops")
        kvar = next((iv.var for iv, b in zip(info.iter_vars, info.bindings)
                     if _uses(b, s.get(reduction[-1]).loop_var)), None)
        vec = max(1, _VECTOR_BYTES * 8 // tvm.runtime.DataType(str(info.writes[0].source.dtype)).bits)
        depth = _const_extent(s, reduction[-1])
        rows, cols = _const_extent(s, spatial[-2]), _const_extent(s, spatial[-1])
        if kvar is None or not depth or not rows or not cols or not _contiguous(info, kvar, output_dim=False):
            raise ValueError("inner reduction loop is not vectorizable")
        if depth % vec:
            # Chunks of k narrower than a machine vector (partial-sum vectors wider than one
            # came out twice as slow).
            widths = [l for l in range(vec - 1, 3, -1) if depth % l == 0]
            if not widths:
                raise ValueError("no vector width divides the reduction")
            vec = widths[0]
        regs = -(-vec // max(1, _VECTOR_BYTES * 8 // tvm.runtime.DataType(str(info.writes[0].source.dtype)).bits))
        out = info.writes[0].source
        reads = [l for l in _loads(s.get(block).body) if not l.source.same_as(out)]
        ivar = next(iv.var for iv, b in zip(info.iter_vars, info.bindings)
                    if _uses(b, s.get(spatial[-2]).loop_var))
        jvar = next(iv.var for iv, b in zip(info.iter_vars, info.bindings)
                    if _uses(b, s.get(spatial[-1]).loop_var))
        for l in reads:
            if any(_uses(x, ivar) for x in l.indices) and any(_uses(x, jvar) for x in l.indices):
                raise ValueError("a read along both tile axes")
        best, key = None, None
        for r in range(1, 5):
            for c in range(1, 5):
                if rows % r or cols % c or r * c * regs > _MAX_ACCUMULATORS:
                    continue
                k = (r * c / (r + c), r * c)
                if key is None or k > key:
                    best, key = (r, c), k
        r, c = best
        if r * c < 4:
            raise ValueError("no register tile divides the output")
        ko, ki = s.split(reduction[-1], factors=[None, vec])
        jo, ji = s.split(spatial[-1], factors=[None, c])
        io, ii = s.split(spatial[-2], factors=[None, r])
        outer = [*spatial[:-2], io, jo]
        s.reorder(*outer, *reduction[:-1], ko, ii, ji, ki)
        fused = s.fuse(*outer)
        rf = s.rfactor(ki, factor_axis=len(info.writes[0].region))
        s.parallel(fused)
        s.compute_at(rf, fused)
        s.set_scope(rf, 0, "local")
        rf_info = _info_of(s, s.get(rf).name_hint)
        rf_loops = s.get_loops(rf)[1:]
        rf_kinds = _loop_kinds(s, rf, rf_info)[1:]
        # The rf block's spatial loops, by the dimension of the partial-sum buffer they index.
        write = rf_info.writes[0]
        dims = []
        for loop, kind in zip(rf_loops, rf_kinds):
            if kind != "S":
                continue
            lv = s.get(loop).loop_var
            ivs = [iv.var for iv, b in zip(rf_info.iter_vars, rf_info.bindings) if _uses(b, lv)]
            dim = next(d for d, rng in enumerate(write.region) if any(_uses(rng.min, v) for v in ivs))
            dims.append((dim, loop))
        dims.sort(key=lambda t: t[0])
        tile_loops = [l for _, l in dims]
        rf_reduction = [l for l, k in zip(rf_loops, rf_kinds) if k == "R"]
        s.reorder(*rf_reduction, *tile_loops)
        for l in tile_loops[:-1]:
            if _const_extent(s, l) and _const_extent(s, l) > 1:
                s.unroll(l)
        s.vectorize(tile_loops[-1])
        s.decompose_reduction(rf, rf_reduction[0])
        s.decompose_reduction(block, s.get_loops(block)[1])

    return plan


def _cpu_rfactor_plan(info: _BlockInfo, lanes: int):
    """Vectorize a reduction along its innermost reduction loop, for blocks whose inner spatial
    loop is strided in memory (e.g. a dot product over the last axis of both operands): split that
    loop by the vector width and rfactor the lanes into a small per-element partial-sum buffer,
    computed inside the parallel spatial loop."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        if (not info.top_level or info.has_children or len(info.writes) > 1 or "O" in kinds
                or "R" not in kinds):
            raise ValueError("not a plain top-level reduction")
        spatial = [l for l, k in zip(loops, kinds) if k == "S"]
        reduction = [l for l, k in zip(loops, kinds) if k == "R"]
        var = next((iv.var for iv, b in zip(info.iter_vars, info.bindings)
                    if _uses(b, s.get(reduction[-1]).loop_var)), None)
        extent = _const_extent(s, reduction[-1])
        factor = extent and _vector_factor(extent, lanes)
        if not factor or var is None or not _contiguous(info, var, output_dim=False):
            raise ValueError("inner reduction loop is not vectorizable")
        ko, ki = s.split(reduction[-1], factors=[None, factor])
        s.reorder(*spatial, *reduction[:-1], ko, ki)
        if not spatial:
            spatial = [s.add_unit_loop(block)]
        outer = s.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        # Lanes last in the partial-sum buffer, so its vector loads and stores are contiguous.
        rf = s.rfactor(ki, factor_axis=len(info.writes[0].region))
        s.parallel(outer)
        s.compute_at(rf, outer)
        rf_loops = s.get_loops(rf)[1:]
        # Under `outer`, the only spatial loop of the partial-sum block is the lanes loop.
        rf_kinds = _loop_kinds(s, rf, _info_of(s, s.get(rf).name_hint))[1:]
        lanes_loop = rf_loops[rf_kinds.index("S")]
        rf_reduction = [l for l, k in zip(rf_loops, rf_kinds) if k == "R"]
        s.reorder(*rf_reduction, lanes_loop)
        s.vectorize(lanes_loop)
        s.decompose_reduction(rf, rf_reduction[0])
        s.decompose_reduction(block, s.get_loops(block)[1])

    return plan


def _cpu_fallback_plan(info: _BlockInfo, fuse: bool = True):
    """Smaller plan when the full one does not apply: parallel outer spatial loops only (fused,
    or without `fuse` the outermost one)."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        n = 0
        while n < len(kinds) and kinds[n] == "S":
            n += 1
        if not info.top_level or n == 0:
            raise ValueError("nothing to parallelize")
        n = n if fuse else 1
        s.parallel(s.fuse(*loops[:n]) if n > 1 else loops[0])

    return plan


def schedule_cpu(func: tirx.PrimFunc, vectorize: bool = True) -> tirx.PrimFunc:
    """Default CPU schedule of `func` (every block; the thread count comes from the target's
    num-cores at compile time).  `vectorize=False` keeps every loop scalar: LLVM codegen has no
    vector form of some intrinsics (e.g. sinh), which only shows when compiling."""
    # 64-byte vectors of float32 (LLVM splits them on narrower machines); 0 lanes = no vectors.
    lanes = 16 if vectorize else 0
    try:
        sch = s_tir.Schedule(flatten_variable_reductions(func, lanes))
    except _PLAN_ERRORS:
        sch = None
    try:
        sch = sch or s_tir.Schedule(func)
    except _PLAN_ERRORS:
        # The schedule checks well-formedness more strictly than compilation does (e.g. a let
        # variable that create_prim_func binds in two blocks), so such functions stay serial.
        return func
    sch = inline_injective(sch)
    if vectorize:
        try:
            sch = s_tir.Schedule(hoist_invariant_factors(sch.mod["main"]))
        except _PLAN_ERRORS:
            pass
    for info in block_infos(sch.mod["main"]):
        plans = (*((_cpu_matmul_plan(info), _cpu_rfactor_tile_plan(info)) if vectorize else ()),
                 _cpu_plan(info, lanes, True), _cpu_rfactor_plan(info, lanes),
                 _cpu_plan(info, lanes, False), _cpu_fallback_plan(info))
        for plan in plans if not info.negative_div else (_cpu_fallback_plan(info, fuse=False),):
            after = _try(sch, plan)
            if after is not sch:
                sch = after
                break
    return sch.mod["main"]


# ---------------------------------------------------------------------------------------------
# CUDA


def _thread_bound(sch: s_tir.Schedule, block) -> bool:
    """Whether `block` already runs inside a thread-bound loop (its own or an ancestor's)."""
    sref = sch.get_sref(block).parent
    while sref is not None:
        stmt = sref.stmt
        if isinstance(stmt, tirx.For) and stmt.thread_binding is not None:
            return True
        sref = sref.parent
    return False


def _gpu_bind_plan(info: _BlockInfo, threads: int):
    """Fuse the leading spatial loops into blockIdx.x x threadIdx.x; reductions stay per thread."""

    def plan(s: s_tir.Schedule):
        block = s.get_sblock(info.name)
        if _thread_bound(s, block):
            return
        kinds = _loop_kinds(s, block, info)
        loops = s.get_loops(block)
        spatial = [l for l, k in zip(loops, kinds) if k == "S"]
        rest = [l for l, k in zip(loops, kinds) if k != "S"]
        if not spatial:
            spatial = [s.add_unit_loop(block)]
        elif rest:
            s.reorder(*spatial, *rest)
        fused = s.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        bx, tx = s.split(fused, factors=[None, threads])
        s.bind(bx, "blockIdx.x")
        s.bind(tx, "threadIdx.x")
        reduction = [l for l, k in zip(rest, kinds[len(spatial):]) if k == "R"]
        if reduction and not info.has_children:
            s.decompose_reduction(block, reduction[0])

    return plan


def _with_root(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """func with its body block inside a root block.  create_prim_func makes the block of a lone
    extern op (e.g. a scatter-add gradient) the function body itself, where no schedule primitive
    can reach it."""
    body = func.body
    if not isinstance(body, s_tir.SBlockRealize) or body.block.name_hint == "root":
        return func
    root = s_tir.SBlock([], [], [], "root", body)
    return func.with_body(s_tir.SBlockRealize([], tirx.const(True, "bool"), root))


def schedule_gpu(func: tirx.PrimFunc, target: tvm.target.Target,
                 cross_thread: bool = True) -> tirx.PrimFunc:
    """GPU schedule: dlight's default rules for the whole function, then explicit thread binding
    for every top-level block that they leave unbound (dlight gives up on functions whose
    blocks it cannot normalize, e.g. nested variable-extent reductions).  An extern block without
    loops of its own (a scatter-add) runs in one thread.

    cross_thread=False leaves out the rules that reduce across threads: TVM lowers those only for
    reducers it recognizes, not for tuple reducers such as the argmax that max/min gradients
    reuse; `build` retries with it when lowering fails."""
    reducing = [dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction()]
    rules = [dlight.gpu.Matmul(), *(reducing if cross_thread else []), dlight.gpu.Fallback()]
    mod = tvm.IRModule({"main": _with_root(func)})
    try:
        with target:
            mod = dlight.ApplyDefaultSchedule(*rules)(mod)
    except _PLAN_ERRORS:
        pass   # keep the unscheduled function; every block is bound below
    sch = s_tir.Schedule(mod["main"])
    if not sch.mod["main"].attrs or "tirx.is_scheduled" not in sch.mod["main"].attrs:
        sch = inline_injective(sch)
    for info in block_infos(sch.mod["main"]):
        if info.top_level:
            sch = _try(sch, _gpu_bind_plan(info, _GPU_THREADS))
    unbound = [i.name for i in block_infos(sch.mod["main"]) if i.top_level and not _thread_bound(sch, sch.get_sblock(i.name))]
    if unbound:
        raise RuntimeError(f"no GPU schedule for blocks {unbound}; they would run on the host")
    return sch.mod["main"]


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
