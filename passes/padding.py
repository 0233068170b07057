"""Window sums over a zero-padded tensor instead of shrunken, outer-dependent ranges.

The adjoint of a window read (a convolution's input gradient, a stride-1 pool's) is, after the
index equations are solved,

    Y[k] = Σ_{r ∈ [0, R)} [0 ≤ k − r < N] · T[k − r] · W[r]

where the bracket only says that the read T[k − r] is in bounds.  Shrinking r's range to
[max(0, k − N + 1), min(R − 1, k)] makes the loop bounds depend on k, which no schedule
vectorizes without guards.  Padding T with zeros is the other exact rewrite:

    Y[k] = Σ_{r ∈ [0, R)} Tp[k − r + p] · W[r],     Tp[q] = [p ≤ q < N + p] · T[q − p]

a fixed box over an affine read: the "full convolution" that frameworks use for the input
gradient.  It does the box's work instead of the windows' (for a kernel R on N outputs, (N + R −
1)·R instead of N·R per axis), so it is taken only where that overhead is small.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import tvm
import tvm_ffi
from tvm import sym, tirx
from tvm.ir import Call

from tvm_autodiff.ir.expr import free_vars, is_const, reads, simplify, substitute, tensor_loads
from tvm_autodiff.ir.graph import make_compute, same_tensor

from .factor import product
from .nonzero import same

# Largest padded/unpadded volume of the padded tensor: bounds the box's extra work (the windows
# of a 5x5 kernel on a 12x12 gradient pad 8x8 to 16x16, ratio 4).
MAX_PAD_RATIO = 4.0
# Longest box side along a padded axis: beyond a window's few taps the exact shrunken ranges are
# worth their guards.
_MAX_EXTENT = 64


def _bound(atom) -> Optional[tuple[object, str, object]]:
    """(e, 'lo', b) for e >= b, (e, 'hi', b) for e < b, in any of TIR's spellings; else None."""
    if isinstance(atom, tirx.GE):
        return atom.a, "lo", atom.b
    if isinstance(atom, tirx.LE):
        return atom.b, "lo", atom.a
    if isinstance(atom, tirx.LT):
        return atom.a, "hi", atom.b
    if isinstance(atom, tirx.GT):
        return atom.b, "hi", atom.a
    return None


def _in_bounds(atom, load) -> bool:
    """Whether atom is 0 <= idx_d or idx_d < shape_d for an index idx_d of load."""
    bound = _bound(atom)
    if bound is None:
        return False
    e, side, b = bound
    if reads(e):
        return False
    for idx, ext in zip(load.args[1:], load.args[0].shape):
        if same(e, idx):
            return is_const(b, 0) if side == "lo" else same(b, ext) or (
                isinstance(b, tirx.IntImm) and isinstance(ext, tirx.IntImm) and b.value == ext.value)
    return False



def _unit_bound(atom):
    """c·t + b >= 0 (or > 0) on one variable t, with constants c != 0 and b, as t >= k or t < k;
    any other atom as it is."""
    diff = _difference(atom)
    if diff is None or len(free_vars(diff[0])) != 1:
        return atom
    (t,) = free_vars(diff[0])
    coefs = list(sym.detect_linear_equation(diff[0], [t]))
    if not coefs or not all(isinstance(c, tirx.IntImm) for c in coefs) or coefs[0].value == 0:
        return atom
    c, b = coefs[0].value, coefs[1].value - (1 if diff[1] else 0)   # c·t + b >= 0
    dtype = str(t.ty.dtype)
    if c > 0:
        return tirx.GE(t, tirx.const(-(b // c), dtype))          # t >= ceil(-b / c)
    return tirx.LT(t, tirx.const(b // -c + 1, dtype))            # t <= floor(b / -c)


def _box(atoms: list, red: list) -> tuple[dict, list]:
    """({var: (lo, hi)} for the reduce variables, tightened by the atoms that bound one of them by
    a constant; the other atoms).  A variable without a range (a fresh one of the solver) starts
    from (-inf, inf)."""
    box = {v: (-math.inf, math.inf) if lo is None else (lo.value, lo.value + ext.value) for v, lo, ext in red
           if lo is None or isinstance(lo, tirx.IntImm) and isinstance(ext, tirx.IntImm)}
    rest = []
    for a in atoms:
        bound = _bound(a)
        if bound is None or not isinstance(bound[2], tirx.IntImm) or not any(bound[0].same_as(v) for v in box):
            rest.append(a)
            continue
        v = next(v for v in box if bound[0].same_as(v))
        lo, hi = box[v]
        box[v] = (max(lo, bound[2].value), hi) if bound[1] == "lo" else (lo, min(hi, bound[2].value))
    return box, rest


def _unit_steps(idx, vars: list) -> bool:
    """idx is affine in vars with coefficients 0 or ±1 (a plain, undilated window)."""
    coefs = list(sym.detect_linear_equation(idx, vars))
    return bool(coefs) and all(isinstance(c, tirx.IntImm) and abs(c.value) <= 1 for c in coefs[:-1])


def _guarded_read(atoms: list, value, red_vars: set):
    """(T[idx], atoms on outer variables only) when every atom on a reduce variable is an
    in-bounds check of the one read T[idx] of value, a factor of it (a zero read must zero the
    summand, as the bracket did: T[..], not exp(T[..])); else None."""
    on_red = [a for a in atoms if free_vars(a) & red_vars]
    if not on_red:
        return None
    loads = tensor_loads(value)
    load = next((l for l in loads if _in_bounds(on_red[0], l)), None)
    if load is None or not all(_in_bounds(a, load) for a in on_red):
        return None
    if sum(same_tensor(l.args[0], load.args[0]) for l in loads) != 1:
        return None   # another read of T would not be guarded by these atoms
    if not any(f.same_as(load) for f in product(value).values):
        return None
    return load, [a for a in atoms if not free_vars(a) & red_vars]


def _pads(load, ana, box_vars: list) -> Optional[list]:
    """[(before, after)] zeros per axis of T for the read T[idx] over the ranges bound in ana;
    None where an axis would need padding but has a symbolic extent or a dilated index.  An axis
    that the read provably stays inside (a symbolic batch, read at an outer variable) needs none."""
    pads = []
    for idx, n in zip(load.args[1:], load.args[0].shape):
        if ana.can_prove(idx >= 0) and ana.can_prove(idx < n):
            pads.append((0, 0))
            continue
        if not isinstance(n, tirx.IntImm):
            return None   # no constant padding of a symbolic axis that the read may leave
        b = ana.const_int_bound(idx)
        pads.append((max(0, -b.min_value), max(0, b.max_value - (n.value - 1))))
        if pads[-1] != (0, 0) and not _unit_steps(idx, box_vars):
            # A dilated window: the work target of README's "Work of gradients" (≤ 3x forward,
            # dilated convs on 10x10 included) holds for the exact ranges only.
            return None
    return pads


def _difference(atom):
    """(d, strict) with the atom saying d >= 0 (strict: d > 0), for a comparison; else None."""
    bound = _bound(atom)
    if bound is None:
        return None
    e, side, b = bound
    return (e - b, False) if side == "lo" else (b - e, True)


def _offset(atoms: list, v, outer_vars: list):
    """a(i), affine in the outer variables with integer coefficients, when an atom is c·v - c·a(i)
    + b >= 0 (or > 0) for constants c != 0 and b and some outer variable in a; else None."""
    for atom in atoms:
        diff = _difference(atom)
        if diff is None or v not in free_vars(diff[0]):
            continue
        coefs = list(sym.detect_linear_equation(diff[0], [v] + outer_vars))
        if not coefs or not all(isinstance(c, tirx.IntImm) for c in coefs) or coefs[0].value == 0:
            continue
        c = coefs[0].value
        if all(k.value == 0 for k in coefs[1:-1]) or any(k.value % c for k in coefs[1:-1]):
            continue
        return functools.reduce(lambda x, y: x + y, [(-k.value // c) * o for k, o in zip(coefs[1:-1], outer_vars)
                                                      if k.value])
    return None


def _recentered(atoms: list, value, outer: list, red: list):
    """(atoms, value, red) with each fresh variable f of the solver (one without a range) that an
    atom ties to the outer variables as c·(f - a(i)) + b >= 0 replaced by t + a(i), t a fresh
    variable too; None when there is none.

    Once the phase of a strided window is a constant (passes/phase.py), the solver leaves its
    taps as 0 <= s·(q + f) + p < K for the head's index -f: an extent that depends on the output q
    through the head's bounds at the edges.  Centred, t = f + q has the constant range of the
    taps, and 0 <= q - t < n is the head's in-bounds check, which padding turns into a padded
    read.  (The variables of a plain window keep their ranges: centring one would pad the kernel
    instead of the head.)"""
    outer_vars = [v for v, _, _ in outer]
    sub, new_red = {}, []
    for v, lo, ext in red:
        a = _offset(atoms, v, outer_vars) if lo is None else None
        if a is None:
            new_red.append((v, lo, ext))
            continue
        t = tirx.Var(v.name + "_c", str(v.ty.dtype))
        sub[v] = t + a
        new_red.append((t, None, None))
    if not sub:
        return None
    return [simplify(substitute(x, sub)) for x in atoms], simplify(substitute(value, sub)), new_red


def padded_window(atoms: list, value, outer: list, red: list) -> Optional[tuple[object, list]]:
    """(value', box) with Σ_{red} [∧ atoms] · value == Σ_{box} value' when, besides constant
    bounds on single reduce variables (which make the box) and conditions that the output's own
    ranges imply, every atom is an in-bounds check of one read T[idx] of value; value' reads the
    zero-padded Tp instead.  None when the atoms say more, when an axis of T that needs padding
    has a symbolic extent, or when padding would more than MAX_PAD_RATIO-fold T.

    outer, red: [(var, min, extent)] (red may hold the solver's fresh variables, without a range;
    outer extents may be symbolic); box: [(var, min, extent)] with constant bounds.  Where the
    solver's variables give no such box, they are centred on the outer ones (`_recentered`) and
    tried once more."""
    found = _padded(atoms, value, outer, red)
    if found is not None:
        return found
    centred = _recentered(atoms, value, outer, red)
    return None if centred is None else _padded(centred[0], centred[1], outer, centred[2])


def _padded(atoms: list, value, outer: list, red: list) -> Optional[tuple[object, list]]:
    """`padded_window` for the variables as they are."""
    bounds, atoms = _box([_unit_bound(a) for a in atoms], red)
    if len(bounds) != len(red) or any(hi <= lo or math.isinf(hi - lo) for lo, hi in bounds.values()):
        return None
    guarded = _guarded_read(atoms, value, {v for v, _, _ in red})
    if guarded is None:
        return None
    load, outer_atoms = guarded
    box = [(v, tirx.const(bounds[v][0], str(v.ty.dtype)), tirx.const(bounds[v][1] - bounds[v][0], str(v.ty.dtype)))
           for v, _, _ in red]
    ana = sym.Analyzer()
    for v, lo, ext in outer + box:
        ana.bind(v, tvm.ir.Range.from_min_extent(lo, ext))
    pads = _pads(load, ana, [v for v, _, _ in box])
    if pads is None or not any(lo or hi for lo, hi in pads):
        return None
    padded_vars = set().union(*(free_vars(i) for i, p in zip(load.args[1:], pads) if p != (0, 0)))
    if any(bounds[v][1] - bounds[v][0] > _MAX_EXTENT for v in padded_vars if v in bounds):
        # Only the sides of padded axes count: a convolution's input gradient sums its 128
        # output channels whole either way.
        return None
    shape = load.args[0].shape
    grown = [(n.value + lo + hi, n.value) for n, (lo, hi) in zip(shape, pads) if lo or hi]
    if math.prod(g for g, _ in grown) > MAX_PAD_RATIO * math.prod(n for _, n in grown):
        return None
    if not all(ana.can_prove(a) for a in outer_atoms):
        # A condition on the output alone (the phase of a strided window) would leave the box
        # summed where it fails; the exact path shrinks the sum to a point there.
        return None
    return _read_padded(value, load, pads), box


def _read_padded(value, load, pads: list):
    """value with the read T[idx] replaced by Tp[idx + before], Tp being T with `pads` zeros."""
    tensor = load.args[0]

    def body(*q):
        inside = [tirx.all(x >= lo, x < lo + n.value) for x, n, (lo, hi) in zip(q, tensor.shape, pads) if lo or hi]
        src = tensor(*[x - lo for x, (lo, _) in zip(q, pads)])
        return tirx.Select(tirx.all(*inside), src, tirx.const(0, str(tensor.dtype))) if inside else src

    # The padded axes have constant extents (`_pads`); the others keep T's, symbolic or not.
    padded = [n.value + lo + hi if lo or hi else n for n, (lo, hi) in zip(tensor.shape, pads)]
    tp = make_compute(f"{tensor.op.name}_pad", padded, body)
    new_load = tp(*[idx + lo for idx, (lo, _) in zip(load.args[1:], pads)])
    return tvm_ffi.structural_map(value, (Call, lambda c: new_load if c.same_as(load) else c))
