"""Phase splitting: a sum whose eliminated form reads an output axis v through v div s and
v mod s is eliminated again once per phase of v, where it is a plain stride-1 window.

The input gradient of a stride-s convolution is

    dX[v] = Σ_{y, k} [v = s·y + k] · H[y] · W[k]
          = Σ_{r ∈ D(v)} H[(v + a) div s − r] · W[(v + a) mod s + s·r]      (eliminated)

(the taps of pixel v are those congruent to v modulo s).  Consecutive v read H at repeated
addresses, a gather across vector lanes, and the extent of D(v) changes from one v to the next,
so no schedule vectorizes or tiles v.  For a constant phase p and v = s·q + p the bracket is
[s·q + p = s·y + k], whose solutions y = q − t, k = p + s·t have a constant range of t: the sum

    T_p[q] = Σ_t H[q − t] · W[p + s·t]

is an ordinary window of constant extent (a stride-1 correlation; zero elimination pads H where
q − t leaves it, passes/padding.py).  The rewrite, for the output axes v_d (constant extent N_d)
that the eliminated form reads only through divisions by constants (s_d: the least m that makes
(c·(m·q + p) + e) div b = (c·m / b)·q + (c·p + e) div b for each term (c·v_d + e) div b), is

    T_P[…, q_d, …] = the sum at v_d = s_d·q_d + P_d, eliminated,  for each P ∈ Π_d [0, s_d)
    Y[…, v_d, …]   = T_{(v_d mod s_d)_d}[…, v_d div s_d, …]

over q_d ∈ [0, ⌈N_d / s_d⌉) for every phase (rounded up along the innermost axis, `_points`): a
phase with fewer points computes the raw sum past the end of Y too, which reads nothing out of bounds (the bracket keeps y and k in range), and Y
never reads it.  Exact: Y's values are unchanged.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

import numpy as np
import tvm
import tvm_ffi
from tvm import sym, te, tirx

from tvm_autodiff.ir.expr import evaluate, free_vars
from tvm_autodiff.ir.graph import compute_op, make_compute
from tvm_autodiff.ir.reductions import reduction_at

# Most phases per axis (the lcm of its divisors) and in all: each phase is a kernel of its own.
MAX_PHASES = 4
MAX_PHASE_KERNELS = 16
# The innermost axis of a phase is rounded up to whole vectors of this many lanes (`_points`).
ROW_MULTIPLE = 8
# Most iterations of the phases (with their padding and rounded rows) per iteration of the
# unsplit sum: strided conv gradients measured 1.5-1.8x, for reads that vectorize (11 -> 0.3 ms).
MAX_PHASE_WORK = 2.0
# Most points at which `_work` evaluates a sum's extents.
MAX_ENUMERATED = 1 << 16


def _divisions(r: tirx.Reduce) -> list:
    """The (dividend, divisor) of every floor division and modulo in the reduction r: its sources,
    condition and reduce-axis bounds."""
    exprs = [*r.source, r.condition, *(e for rv in r.axis for e in (rv.dom.min, rv.dom.extent))]
    found = []
    for e in exprs:
        for kind in (tirx.FloorDiv, tirx.FloorMod):
            tvm_ffi.structural_walk(e, (kind, lambda d: found.append((d.a, d.b))))
    return found


def phases(axis: list, r: tirx.Reduce) -> dict:
    """{position d: s_d} of the output axes (IterVars `axis`) that the reduction r reads through
    divisions by constants (module docstring)."""
    axes = [iv.var for iv in axis]
    moduli: dict = {}
    refused: set = set()
    for a, b in _divisions(r):
        used = [d for d, v in enumerate(axes) if v in free_vars(a)]
        coefs = list(sym.detect_linear_equation(a, axes)) if used else []
        if used and (not isinstance(b, tirx.IntImm) or b.value <= 1 or not coefs):
            refused.update(used)
            continue
        for d in used:
            if isinstance(coefs[d], tirx.IntImm):   # (c·(m·q + p) + e) div b = c·m/b·q + (c·p + e) div b
                moduli[d] = math.lcm(moduli.get(d, 1), b.value // math.gcd(coefs[d].value, b.value))
            else:
                refused.add(d)
    split = {d: s for d, s in moduli.items() if d not in refused and 1 < s <= MAX_PHASES
             and isinstance(axis[d].dom.extent, tirx.IntImm) and axis[d].dom.extent.value > s}
    return split if math.prod(split.values()) <= MAX_PHASE_KERNELS else {}


def _points(n: int, s: int, last: bool) -> int:
    """The q extent of every phase: ⌈n / s⌉, and along the innermost axis rounded up to a multiple
    of ROW_MULTIPLE where that costs at most half as much again: the register tiles take column
    counts that split into whole 8-lane vectors (README, "Schedules as rules"); a stride-2 3x3
    input gradient with phases of 17 columns took 1.4 ms, with 24 columns 0.3 ms."""
    q = -(-n // s)
    rounded = -(-q // ROW_MULTIPLE) * ROW_MULTIPLE
    return rounded if last and q > ROW_MULTIPLE and 2 * rounded <= 3 * q else q


def _phase_tensor(raw: te.ComputeOp, split: dict, phase: dict, eliminate: Callable) -> te.Tensor:
    """T_P of the module docstring: the raw sum `raw` at v_d = s_d·q_d + P_d, eliminated."""
    extents = [iv.dom.extent for iv in raw.axis]
    shape = [tirx.const(_points(n.value, split[d], last=d == len(extents) - 1), str(n.ty.dtype))
             if d in split else n for d, n in enumerate(extents)]

    def body(*idx):
        at = [split[d] * x + phase[d] if d in split else x for d, x in enumerate(idx)]
        ranges = {x: tvm.ir.Range.from_min_extent(0, n) for x, n in zip(idx, shape)}
        return reduction_at(raw, at, ranges)

    name = raw.name + "_p" + "".join(str(phase[d]) for d in sorted(split))
    t = make_compute(name, shape, body)
    new = eliminate(t.op)
    if new is None:
        return t
    return new if isinstance(new, te.Tensor) else compute_op(name, "", None, t.op.axis, new).output(0)


def _interleave(op, split: dict, tensors: dict):
    """Y's body: T_{(v_d mod s_d)}[…, v_d div s_d, …], as selects over the phases."""
    v = [iv.var for iv in op.axis]
    at = [tirx.floordiv(x, split[d]) if d in split else x for d, x in enumerate(v)]
    dims = sorted(split)

    def pick(n: int, phase: tuple):
        if n == len(dims):
            return tensors[phase](*at)
        d = dims[n]
        value = pick(n + 1, phase + (split[d] - 1,))
        for p in reversed(range(split[d] - 1)):
            value = tirx.Select(tirx.floormod(v[d], split[d]) == p, pick(n + 1, phase + (p,)), value)
        return value

    return pick(0, ())


def split_phases(op: te.ComputeOp, bodies: list, eliminated, eliminate: Callable) -> Optional[list]:
    """Y's new body (module docstring) for the sum op with raw bodies `bodies`, whose eliminated
    bodies are `eliminated`, or None when no axis splits.  `eliminate(op)` eliminates a phase's
    sum: new bodies, a tensor that replaces it, or None."""
    if not (isinstance(eliminated, list) and len(eliminated) == 1 and isinstance(eliminated[0], tirx.Reduce)):
        return None
    split = phases(list(op.axis), eliminated[0])
    if not split:
        return None
    raw = compute_op(op.name, op.tag, op.attrs, op.axis, bodies)
    dims = sorted(split)
    tensors = {}
    for phase in itertools.product(*(range(split[d]) for d in dims)):
        t = _phase_tensor(raw, split, dict(zip(dims, phase)), eliminate)
        if not _window(t):
            return None
        tensors[phase] = t
    if _phase_work(list(tensors.values()), raw) > MAX_PHASE_WORK * _work(op, eliminated[0]):
        # A dilated window (v = y + d·k) divides v by d too, but its phases read the head at
        # stride d and pad the kernel to the head's extent: 2.5x the work on a 10x10 image.
        return None
    return [_interleave(op, split, tensors)]


def _window(t: te.Tensor) -> bool:
    """Whether the phase's sum came out as one reduction of constant extents."""
    op = t.op
    return (isinstance(op, te.ComputeOp) and isinstance(op.body[0], tirx.Reduce)
            and all(isinstance(rv.dom.extent, tirx.IntImm) for rv in op.body[0].axis))


def _volume(extents) -> int:
    """The product of the constant extents (a symbolic one, such as a batch, counts as 1 on both
    sides of the work comparison)."""
    return math.prod(e.value if isinstance(e, tirx.IntImm) else 1 for e in extents)


def _phase_work(tensors: list, raw: te.ComputeOp) -> int:
    """Iterations of the phases' sums and of the tensors that their elimination made (padded
    heads): each sum's points times its box, each new tensor's points."""
    made = {t.op for ph in tensors for t in ph.op.input_tensors} - {t.op for t in raw.input_tensors}
    return (sum(_volume(ph.shape) * _volume(rv.dom.extent for rv in ph.op.body[0].axis) for ph in tensors)
            + sum(_volume(op.output(0).shape) for op in made if isinstance(op, te.ComputeOp)))


def _work(op, r: tirx.Reduce) -> int:
    """The eliminated sum's iterations: the product of its reduce extents summed over its points,
    evaluated at once over every value of the output axes that the extents read (at most
    MAX_ENUMERATED points; beyond, or for symbolic ones, each extent counts with its analyzer
    bound)."""
    used = [iv for iv in op.axis if any(iv.var in free_vars(rv.dom.extent) for rv in r.axis)]
    volume = _volume(iv.dom.extent for iv in op.axis)
    if not all(isinstance(iv.dom.extent, tirx.IntImm) for iv in used) or _volume(iv.dom.extent for iv in used) > MAX_ENUMERATED:
        ana = sym.Analyzer()
        for iv in op.axis:
            ana.bind(iv.var, iv.dom)
        return volume * math.prod(max(ana.const_int_bound(rv.dom.extent).max_value, 0) for rv in r.axis)
    grid = np.meshgrid(*(np.arange(iv.dom.extent.value) for iv in used), indexing="ij")
    cols = {iv.var: g.ravel() for iv, g in zip(used, grid)}
    per_point = np.ones(max(1, _volume(iv.dom.extent for iv in used)), dtype=np.int64)
    for rv in r.axis:
        per_point = per_point * np.maximum(evaluate(rv.dom.extent, cols.__getitem__), 0)
    return volume // _volume(iv.dom.extent for iv in used) * int(per_point.sum())
