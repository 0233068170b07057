"""The rule protocol and the driver that picks one rule per block.

A rule first says whether it applies to a block, and why not (`plan` returns a `Decline` with the
reason, or a plan: the decisions it will carry out), before it transforms anything; `apply` then
carries the plan out on a copy of the schedule.  The driver tries the rules in order and keeps the
first that applies.  Only TVM's `ScheduleError` from `apply` means the rule did not apply after
all: the driver warns (naming the block, the rule and TVM's reason) and falls back to the next
rule.  Any other exception is a bug in the rule and propagates.  Every choice is recorded, with
the reasons of the rules that declined, as `Choice` values.
"""
from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass

from tvm import s_tir

from .analysis import BlockInfo


@dataclass(frozen=True)
class Decline:
    """A rule does not apply to a block, because of `reason`."""
    reason: str


@dataclass(frozen=True)
class Choice:
    """The rule that scheduled `block` (None: no rule applied, the block keeps its loops), and
    (rule, reason) for each rule tried before it."""
    block: str
    rule: str | None
    declined: tuple = ()

    def describe(self) -> str:
        lines = [f"{self.block}: {self.rule or 'unscheduled'}"]
        lines += [f"    not {name}: {reason}" for name, reason in self.declined]
        return "\n".join(lines)


class ScheduleRule(abc.ABC):
    """A schedule for one kind of block.  `name` is what reports and tests see.  `atomic`: apply
    is one schedule primitive, which checks before it changes anything, so the driver need not
    work on a copy (copying the schedule costs time linear in the function, per block)."""
    name: str = ""
    atomic: bool = False

    @abc.abstractmethod
    def plan(self, sch: s_tir.Schedule, info: BlockInfo, config):
        """The plan for `info`'s block in `sch`, or a Decline.  Reads `sch`, never changes it."""

    @abc.abstractmethod
    def apply(self, sch: s_tir.Schedule, info: BlockInfo, plan, config) -> None:
        """Carry out `plan` on `sch`."""


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return next((line for line in text if "ScheduleError" in line or "Error" in line), text[0] if text else "")


def schedule_block(sch: s_tir.Schedule, info: BlockInfo, rules, config,
                   warn: bool = True) -> tuple[s_tir.Schedule, Choice]:
    """`sch` after the first rule in `rules` that applies to `info`'s block, and the Choice.
    `warn=False` records TVM's refusals without a warning, for rules whose refusal is an
    ordinary outcome rather than a fallback (inlining: the block stays materialized)."""
    declined = []
    for rule in rules:
        plan = rule.plan(sch, info, config)
        if isinstance(plan, Decline):
            declined.append((rule.name, plan.reason))
            continue
        trial = sch if rule.atomic else sch.copy()
        try:
            rule.apply(trial, info, plan, config)
        except s_tir.ScheduleError as err:
            reason = _first_line(err)
            if warn:
                warnings.warn(f"schedule: block {info.name!r}: rule {rule.name} planned but TVM "
                              f"refused it ({reason}); falling back to the next rule", stacklevel=2)
            declined.append((rule.name, "ScheduleError: " + reason))
            continue
        return trial, Choice(info.name, rule.name, tuple(declined))
    return sch, Choice(info.name, None, tuple(declined))


@dataclass(frozen=True)
class Scheduled:
    """A scheduled PrimFunc and the rule chosen for each of its blocks (inlined blocks included)."""
    func: object
    choices: tuple = ()

    @property
    def rules(self) -> dict:
        """{block name: rule name (None: unscheduled)}."""
        return {c.block: c.rule for c in self.choices}

    def report(self) -> str:
        """One block a line with its rule, and below it why each earlier rule declined."""
        return "\n".join(c.describe() for c in self.choices)
