"""Nonzeroness: where an expression can be nonzero, as a condition lifted to the top.

    nonzero(e) = (c, v)   with   e == select(c, v, 0)

Rules (c_x, v_x being the nonzeroness of x):

    select(q, a, 0)        -> (q ∧ c_a, v_a)          select(q, 0, b) -> (¬q ∧ c_b, v_b)
    select(q, a, b)        -> ((q ∧ c_a) ∨ (¬q ∧ c_b), select(q, a, b))
    select(q, a, b), q comparing floats -> (c_a ∨ c_b, select(q, a, b))   (¬q is not NaN-safe)
    a · b                  -> (c_a ∧ c_b, v_a · v_b)  a / b           -> (c_a, v_a / b)
    a ± b                  -> (c_a, v_a ± v_b)  if c_a ≡ c_b,  else (c_a ∨ c_b, a ± b)
    cast(a)                -> (c_a, cast(v_a))        0               -> (false, 0)
    let v = a in b         -> nonzero(b[v := a])
    anything else          -> (true, e)

`monomials` first distributes products over sums, so that each monomial's condition is a
conjunction of its factors' conditions; `disjoint_dnf` turns the remaining disjunctions into
disjoint conjunctions:  [a ∨ b] = [a] + [¬a ∧ b].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import tvm_ffi
from tvm import tirx
from tvm.ir import Call

from tvm_autodiff.ir.expr import FALSE, TRUE, is_const, is_float

MAX_TERMS = 64  # beyond this, distributing products over sums costs more than it saves


def zero_like(e):
    return tirx.const(0, str(e.ty.dtype))


def and_(a, b):
    if is_const(a, False) or is_const(b, False):
        return FALSE
    return b if is_const(a, True) else a if is_const(b, True) else tirx.And(a, b)


def or_(a, b):
    if is_const(a, True) or is_const(b, True):
        return TRUE
    return b if is_const(a, False) else a if is_const(b, False) else tirx.Or(a, b)


def not_(a):
    return FALSE if is_const(a, True) else TRUE if is_const(a, False) else tirx.Not(a)


def same(a, b) -> bool:
    """Structural equality; False where TVM cannot compare, as for reads of different tensors
    (docs/tvm-0.27.md, "expressions that read tensors cannot be hashed")."""
    try:
        return bool(tvm_ffi.structural_equal(a, b))
    except TypeError:
        return False


@dataclass(frozen=True)
class Nonzero:
    cond: object
    value: object


def _select_parts(e):
    """(q, a, b) for select(q, a, b) and if_then_else(q, a, b); None otherwise."""
    if isinstance(e, tirx.Select):
        return e.condition, e.true_value, e.false_value
    if isinstance(e, Call) and e.op.name == "prim.if_then_else":
        return tuple(e.args)
    return None


_COMPARISONS = (tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.EQ, tirx.NE)


def compares_floats(q) -> bool:
    """Whether condition q compares floats.  Its negation is then not a condition to lift: TVM's
    simplifier rewrites ¬(x > 0) as x <= 0, which is false at NaN where ¬(x > 0) is true
    (docs/tvm-0.27.md), so a lifted ¬q would drop the NaN lanes that select(q, a, b) sends to b."""
    hit = tvm_ffi.structural_walk(q, lambda x: tvm_ffi.VisitInterrupt(x)
                                  if isinstance(x, _COMPARISONS) and is_float(x.a) else None)
    return hit is not None


def _select(e) -> Nonzero:
    q, a, b = _select_parts(e)
    na, nb = nonzero(a), nonzero(b)
    if is_const(nb.cond, False):
        return Nonzero(and_(q, na.cond), na.value)
    if compares_floats(q):
        cond = na.cond if same(na.cond, nb.cond) else nb.cond if is_const(na.cond, False) \
            else or_(na.cond, nb.cond)
        return Nonzero(cond, e)
    if is_const(na.cond, False):
        return Nonzero(and_(not_(q), nb.cond), nb.value)
    return Nonzero(or_(and_(q, na.cond), and_(not_(q), nb.cond)), e)


def _additive(op: Callable) -> Callable:
    def rule(e):
        na, nb = nonzero(e.a), nonzero(e.b)
        if is_const(na.cond, False):
            return Nonzero(nb.cond, op(zero_like(e), nb.value))
        if is_const(nb.cond, False):
            return na
        if same(na.cond, nb.cond):
            return Nonzero(na.cond, op(na.value, nb.value))
        return Nonzero(or_(na.cond, nb.cond), e)
    return rule


def _mul(e):
    na, nb = nonzero(e.a), nonzero(e.b)
    return Nonzero(and_(na.cond, nb.cond), na.value * nb.value)


def _div(e):
    na = nonzero(e.a)
    return Nonzero(na.cond, na.value / e.b)


def _cast(e):
    n = nonzero(e.value)
    return Nonzero(n.cond, tirx.Cast(str(e.ty.dtype), n.value))


def _imm(e):
    return Nonzero(FALSE, e) if e.value == 0 else Nonzero(TRUE, e)


RULES = {
    tirx.Add: _additive(lambda a, b: a + b),
    tirx.Sub: _additive(lambda a, b: a - b),
    tirx.Mul: _mul,
    tirx.Div: _div,
    tirx.Cast: _cast,
    tirx.Select: _select,
    tirx.FloatImm: _imm,
    tirx.IntImm: _imm,
}


def _inline_let(e):
    """let v = a in b, as b[v := a]: a condition inside b may mention v."""
    return tvm_ffi.structural_map(e.body, (tirx.Var, lambda v: e.value if v.same_as(e.var) else v))


def nonzero(e) -> Nonzero:
    """(c, v) with e == select(c, v, 0); see the module docstring for the rules."""
    if isinstance(e, tirx.Let):
        return nonzero(_inline_let(e))
    rule = RULES.get(type(e))
    if rule is None and _select_parts(e) is not None:
        rule = _select
    return rule(e) if rule is not None else Nonzero(TRUE, e)


def _product(xs: list, ys: list, op: Callable) -> Optional[list]:
    if len(xs) * len(ys) > MAX_TERMS:
        return None
    return [op(x, y) for x in xs for y in ys]


def monomials(e) -> list:
    """Terms t_1..t_n with e == Σ t_n, and no sum under a product, a division or a select."""
    if isinstance(e, tirx.Let):
        return monomials(_inline_let(e))
    if isinstance(e, tirx.Add):
        return monomials(e.a) + monomials(e.b)
    if isinstance(e, tirx.Sub):
        return monomials(e.a) + [tirx.const(-1, str(e.ty.dtype)) * m for m in monomials(e.b)]
    if isinstance(e, tirx.Mul):
        return _product(monomials(e.a), monomials(e.b), lambda x, y: x * y) or [e]
    if isinstance(e, tirx.Div):
        return [m / e.b for m in monomials(e.a)]
    if isinstance(e, tirx.Cast):
        return [tirx.Cast(str(e.ty.dtype), m) for m in monomials(e.value)]
    parts = _select_parts(e)
    if parts is not None:
        q, a, b = parts
        if is_const(nonzero(b).cond, False):
            return [tirx.Select(q, m, zero_like(m)) for m in monomials(a)]
        if is_const(nonzero(a).cond, False):
            return [tirx.Select(q, zero_like(m), m) for m in monomials(b)]
    return [e]


def conjuncts(c) -> list:
    """The atoms of a conjunction."""
    if isinstance(c, tirx.And):
        return conjuncts(c.a) + conjuncts(c.b)
    return [] if is_const(c, True) else [c]


def conjunction(atoms: list):
    """⋀ atoms (true for none)."""
    return tirx.all(*atoms) if atoms else TRUE


def disjoint_dnf(c) -> list[list]:
    """Pairwise disjoint conjunctions (lists of atoms) whose union is c."""
    if isinstance(c, tirx.Or):
        rest = [[not_(c.a)] + d for d in disjoint_dnf(c.b)]
        return disjoint_dnf(c.a) + rest
    if isinstance(c, tirx.And):
        out = _product(disjoint_dnf(c.a), disjoint_dnf(c.b), lambda x, y: x + y)
        return out if out is not None else [[c]]
    if is_const(c, False):
        return []
    return [conjuncts(c)]
