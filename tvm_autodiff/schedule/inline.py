"""Inlining rules: injective blocks into their consumers, and injective output blocks into their
one injective producer.

Inlining removes a buffer and a loop nest; it is skipped wherever it would compute a value more
than once, since the consumer evaluates the producer's expression at each of its loads, in each
of its iterations (`tvm_autodiff.scheduled_work` counts this: tests/test_scheduled_work.py).  So a
producer stays materialized when a consumer runs more iterations than the producer has elements
(it reads elements more than once: a broadcast, a window, the divisor of an average pool's
adjoint read under every window position), when its consumers load it more than once (along a
chain of such ops, `t = t·t/2 + t`, or the steps of a recurrence, the code would also grow by
that factor per op; materialized, the TIR stays linear in the size of the graph), and, when it
calls an expensive function (exp, log, ...), whenever a volume is symbolic.  A producer whose value
is a single load or a constant costs nothing to repeat and is inlined anyway, unless a pass made
it to be stored (the MATERIALIZE attribute: a transposed operand).  TVM's own refusal
(ScheduleError) leaves the block materialized, as an ordinary outcome.
"""
from __future__ import annotations

from tvm import s_tir, tirx

from ..ir.graph import MATERIALIZE
from ..tir.nodes import LOAD_TYPE, loads, uses
from .analysis import block_infos, store_loads
from .rule import Decline, ScheduleRule, schedule_block


def _leaf_value(body) -> bool:
    """Whether a block's body stores a single load or a constant (inlining it anywhere costs no
    code)."""
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, (LOAD_TYPE, tirx.IntImm, tirx.FloatImm))


class ComputeInline(ScheduleRule):
    """compute_inline of an injective, non-output block, unless a consumer would recompute it
    (module docstring)."""
    name = "inline"
    atomic = True

    def __init__(self, volumes: dict):
        self.volumes = volumes     # block name -> iterations, of the blocks before inlining

    def plan(self, sch, info, config):
        if not info.injective:
            return Decline("not injective")
        if info.is_output:
            return Decline("writes an output")
        if len(info.writes) != 1:
            return Decline("does not write exactly one buffer (an extern block)")
        pv = self.volumes[info.name]
        # One lookup: get_sblock searches the whole function by name.
        rv = sch.get_sblock(info.name)
        if MATERIALIZE in sch.get(rv).annotations:
            return Decline("a pass made it to be stored (a transposed operand, passes/transpose.py)")
        leaf = _leaf_value(sch.get(rv).body)
        consumers = [sch.get(c) for c in sch.get_consumers(rv)]
        for c in consumers:
            cv = self.volumes.get(c.name_hint)
            if info.expensive and (cv is None or pv is None):
                return Decline(f"expensive, and consumer {c.name_hint} may read it more than once "
                               "per element")
            if not leaf and cv is not None and pv is not None and cv > pv:
                return Decline(f"consumer {c.name_hint} reads it {cv / pv:.3g} times per element: "
                               "inlining would recompute it")
        if not leaf:
            buffer = info.writes[0].source
            reads = sum(1 for c in consumers for l in loads(c.body) if l.source.same_as(buffer))
            if reads > 1:
                return Decline(f"its consumers load it {reads} times: inlining would copy it into "
                               "each load")
        return rv

    def apply(self, sch, info, plan, config):
        sch.compute_inline(plan)     # the block's RV: the rule is atomic, so plan saw this schedule


class ReverseInline(ScheduleRule):
    """reverse_compute_inline of a top-level injective output block into its one injective
    producer (the output is then written by the producer's loop nest)."""
    name = "reverse-inline"
    atomic = True

    def __init__(self, injective: dict):
        self.injective = injective   # block name -> whether it is injective, before inlining

    def plan(self, sch, info, config):
        if not (info.injective and info.is_output and info.top_level):
            return Decline("not a top-level injective output block")
        producers = sch.get_producers(sch.get_sblock(info.name))
        if len(producers) != 1 or not self.injective.get(sch.get(producers[0]).name_hint, True):
            return Decline("does not have exactly one injective producer")
        if len(sch.get_consumers(producers[0])) != 1:
            # TVM would merge it anyway and leave the other consumers reading a buffer that no
            # longer exists (docs/tvm-0.27.md, "reverse_compute_inline ignores other consumers").
            return Decline("its producer has other consumers")
        # Each output element must come from one producer element: reverse_compute_inline
        # crashes on a block with an iter var that no index of the producer's buffer uses
        # (docs/tvm-0.27.md, "reverse_compute_inline crashes on broadcast axes").
        written = [w.source for w in sch.get(producers[0]).writes]
        reads = [l for l in store_loads(sch, info) if any(l.source.same_as(b) for b in written)]
        if any(not all(any(uses(i, iv.var) for i in l.indices) for iv in info.iter_vars) for l in reads):
            return Decline("an iter var does not index the producer's buffer (a broadcast)")
        if len(reads) > 1 and not _leaf_value(sch.get(producers[0]).body):
            return Decline(f"it loads its producer {len(reads)} times: merging would copy the "
                           "producer into each load")
        return True

    def apply(self, sch, info, plan, config):
        sch.reverse_compute_inline(sch.get_sblock(info.name))


def inline_injective(sch: s_tir.Schedule, config=None) -> tuple[s_tir.Schedule, dict]:
    """`sch` with the inlining rules applied (module docstring), and {block name: Choice} for
    every block the rules considered."""
    infos = block_infos(sch.mod["main"])
    choices = {}
    rule = ComputeInline({i.name: i.volume() for i in infos})
    for info in infos:
        if info.injective and not info.is_output:
            sch, choices[info.name] = schedule_block(sch, info, [rule], config, warn=False)
    rule = ReverseInline({i.name: i.injective for i in infos})
    for info in infos:
        if info.injective and info.is_output and info.top_level:
            sch, choices[info.name] = schedule_block(sch, info, [rule], config, warn=False)
    return sch, choices
