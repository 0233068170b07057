"""Exact reduction domains with isl, for zero elimination.

A term  Σ_{k ∈ R(i)} select(c(i, k), v, 0)  only contributes on the integer set

    S(i) = { k ∈ Z^n : min_d(i) <= k_d < min_d(i) + extent_d(i),  c(i, k) },

with the outer variables i as parameters ranging over their own box C.  Splitting c into its
Presburger part (affine comparisons with floordiv/floormod by constants, under and/or/not) and
the other atoms A (tensor loads, products, floats, ...), S = S_isl ∩ A, and isl gives exactly:

    D          = { i ∈ C : S_isl(i) ≠ ∅ }                       (outer_cond = gist(D, C))
    lo_d(i)    = min { k_d : k ∈ S_isl(i) },  hi_d(i) = max ...  (i ∈ D; piecewise quasi-affine)
    B(i)       = Π_d [lo_d(i), hi_d(i)]                          (the bounding box)
    residual   = gist(S_isl, B ∧ D) ∧ A                          (S = B ∩ residual on D)

so Σ_{k ∈ R} select(c, v, 0) = select(outer_cond, Σ_{k ∈ B} select(residual, v, 0), 0) for i ∈ C.
Outer-only atoms of A are lifted into outer_cond instead of the residual.

A variable may have no range (the solver's fresh variables range over all of Z): its bounds then
come from c alone.  When S_isl(i) is unbounded for some i ∈ C (the real bounds sit in atoms of A),
there is no box, and `reduction_domain` says so with None.  Symbolic shape variables (free
variables in neither list) are parameters without a range, so a bound such as k < b stays exact
in b instead of being clipped to a placeholder range.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache, reduce
from math import lcm
from typing import Optional, Sequence

import islpy as isl
import tvm_ffi
from tvm import sym, tirx
from tvm.ir import Expr, Range, Var

from tvm_autodiff.ir.expr import FALSE, TRUE, cast, is_const

__all__ = ["AxisBound", "ReductionDomain", "reduction_domain", "to_isl", "from_isl_set",
           "from_isl_pw_aff", "isl_names"]

_CMP = {tirx.EQ: "=", tirx.NE: "!=", tirx.LT: "<", tirx.LE: "<=", tirx.GT: ">", tirx.GE: ">="}
_NEGATED = {tirx.EQ: tirx.NE, tirx.NE: tirx.EQ, tirx.LT: tirx.GE, tirx.LE: tirx.GT,
            tirx.GT: tirx.LE, tirx.GE: tirx.LT}


@dataclass(frozen=True)
class AxisBound:
    """var ranges over [lo, lo + extent); lo and extent depend on the outer variables only."""
    var: Var
    lo: Expr
    extent: Expr


@dataclass(frozen=True)
class ReductionDomain:
    """S(i) = {k in the box of `axes` : residual} when outer_cond holds, else ∅ (module doc)."""
    axes: tuple[AxisBound, ...]
    outer_cond: Expr
    residual: Expr
    empty: bool


# ------------------------------------------------------------------------- TVM -> isl

class _NotPresburger(Exception):
    """The expression has a node isl cannot represent."""


def _is_int(e) -> bool:
    return str(e.ty.dtype).startswith(("int", "uint"))


def isl_names(vars: Sequence[Var], params: Sequence[Var]) -> dict:
    """{Var: isl identifier}: positional names, so that equal domains over different Var objects
    (or Vars sharing a name_hint) print the same isl string and share the cache."""
    names = {v: f"k{n}" for n, v in enumerate(vars)}
    names.update({v: f"p{n}" for n, v in enumerate(params)})
    return names


def _aff_str(e, names: dict) -> str:
    """e in isl's quasi-affine syntax, or _NotPresburger."""
    if not _is_int(e):
        raise _NotPresburger
    if isinstance(e, tirx.IntImm):
        return f"{e.value}" if e.value >= 0 else f"(0 - {-e.value})"
    if isinstance(e, Var):
        if e not in names:
            raise _NotPresburger
        return names[e]
    if isinstance(e, tirx.Cast):     # int -> int casts: the value is the same when nothing overflows
        return _aff_str(e.value, names)
    if isinstance(e, (tirx.Add, tirx.Sub)):
        op = "+" if isinstance(e, tirx.Add) else "-"
        return f"({_aff_str(e.a, names)} {op} {_aff_str(e.b, names)})"
    if isinstance(e, tirx.Mul):
        # isl reads a product only as a bare integer literal times an expression
        for c, x in ((e.a, e.b), (e.b, e.a)):
            if isinstance(c, tirx.IntImm):
                return f"({c.value}*{_aff_str(x, names)})"
        raise _NotPresburger
    if isinstance(e, (tirx.FloorDiv, tirx.FloorMod)):
        if not isinstance(e.b, tirx.IntImm) or e.b.value <= 0:
            raise _NotPresburger
        a = _aff_str(e.a, names)
        return f"floor({a} / {e.b.value})" if isinstance(e, tirx.FloorDiv) else f"({a} mod {e.b.value})"
    if isinstance(e, (tirx.Min, tirx.Max)):
        f = "min" if isinstance(e, tirx.Min) else "max"
        return f"{f}({_aff_str(e.a, names)}, {_aff_str(e.b, names)})"
    raise _NotPresburger


def _node(e):
    """e itself: `a == b` and `a != b` in Python give lazy EqualOp/NotEqualOp wrappers."""
    return e.asobject() if hasattr(e, "asobject") else e


def _bool_str(e, names: dict, negate: bool = False) -> str:
    """The condition e (or ¬e) in isl syntax, negations pushed down to the comparisons."""
    e = _node(e)
    if isinstance(e, tirx.Not):
        return _bool_str(e.a, names, not negate)
    if isinstance(e, (tirx.And, tirx.Or)):
        conj = isinstance(e, tirx.And) != negate
        a, b = _bool_str(e.a, names, negate), _bool_str(e.b, names, negate)
        return f"({a} {'and' if conj else 'or'} {b})"
    if isinstance(e, tirx.IntImm) and str(e.ty.dtype) == "bool":
        return "(0 = 0)" if bool(e.value) != negate else "(1 = 0)"
    cls = type(e)
    if cls in _CMP:
        if negate:
            cls = _NEGATED[cls]
        return f"({_aff_str(e.a, names)} {_CMP[cls]} {_aff_str(e.b, names)})"
    raise _NotPresburger


def _conjuncts(e, negate: bool = False) -> list:
    """Top-level conjuncts of e (or ¬e), each as a TVM bool."""
    e = _node(e)
    if isinstance(e, tirx.Not):
        return _conjuncts(e.a, not negate)
    if isinstance(e, tirx.And) and not negate:
        return _conjuncts(e.a) + _conjuncts(e.b)
    if isinstance(e, tirx.Or) and negate:
        return _conjuncts(e.a, True) + _conjuncts(e.b, True)
    return [tirx.Not(e) if negate else e]


def to_isl(cond, vars: Sequence[Var], params: Sequence[Var]) -> tuple[isl.Set, list]:
    """(S, atoms) with cond == S ∧ ⋀ atoms: S = {[vars] : Presburger conjuncts of cond} over the
    parameters `params` (named by isl_names), atoms the other conjuncts, unchanged.  A conjunct
    is taken whole: an Or with one non-Presburger atom inside is an atom."""
    parts, atoms = _split(cond, isl_names(vars, params))
    return isl.Set(_set_str(parts, len(vars), len(params))), atoms


def _split(cond, names: dict) -> tuple[list, list]:
    """(isl strings of the Presburger conjuncts of cond, the other conjuncts)."""
    parts, atoms = [], []
    for c in _conjuncts(cond):
        try:
            parts.append(_bool_str(c, names))
        except _NotPresburger:
            atoms.append(c)
    return parts, atoms


def _set_str(parts: list, n_vars: int, n_params: int) -> str:
    params = ", ".join(f"p{n}" for n in range(n_params))
    dims = ", ".join(f"k{n}" for n in range(n_vars))
    return f"[{params}] -> {{ [{dims}] : {' and '.join(parts) or '0 = 0'} }}"


# ------------------------------------------------------------------------- isl -> TVM

def _rational(val) -> Fraction:
    return Fraction(str(val))


def _form(aff) -> dict:
    """aff as {term: Fraction}; terms ('k', pos), ('p', name), ('div', pos), and 1 (constant)."""
    form = {1: _rational(aff.get_constant_val())}
    for kind, tag in ((isl.dim_type.in_, "k"), (isl.dim_type.param, "p"), (isl.dim_type.div, "div")):
        for pos in range(aff.dim(kind)):
            c = _rational(aff.get_coefficient_val(kind, pos))
            if c:
                form[(tag, aff.get_dim_name(kind, pos) if tag == "p" else pos)] = c
    return form


class _Emitter:
    """Builds TVM integer exprs of dtype `dtype` from isl affine expressions; isl's set dims are
    `vars` (by position) and its parameters `params` (by isl_names name)."""

    def __init__(self, vars, params, dtype):
        self.dtype = dtype
        self.vars = list(vars)
        self.params = {f"p{n}": v for n, v in enumerate(params)}

    def _var(self, v):
        return cast(v, self.dtype)

    def _sum(self, form: dict, aff):
        """Σ c·term for an integer-coefficient form; a div term is floor(inner) = floordiv(N, m)."""
        total = tirx.const(form.get(1, 0), self.dtype)
        for term, c in form.items():
            if term == 1:
                continue
            tag, key = term
            if tag == "k":
                x = self._var(self.vars[key])
            elif tag == "p":
                x = self._var(self.params[key])
            else:
                numer, m = self.scaled(aff.get_div(key))
                x = tirx.floordiv(numer, tirx.const(m, self.dtype))
            total = total + x * tirx.const(int(c), self.dtype)
        return total

    def scaled(self, aff):
        """(N, m) with aff == N / m, N a TVM expr with integer coefficients, m > 0."""
        form = _form(aff)
        m = reduce(lcm, (c.denominator for c in form.values()), 1)
        return self._sum({t: c * m for t, c in form.items()}, aff), m

    def value(self, aff):
        """The integer value of an integer-valued aff (a floordiv that divides exactly)."""
        numer, m = self.scaled(aff)
        return numer if m == 1 else tirx.floordiv(numer, tirx.const(m, self.dtype))

    def constraint(self, con):
        numer, _ = self.scaled(con.get_aff())     # scaling by m > 0 keeps the sign
        zero = tirx.const(0, self.dtype)
        return numer == zero if con.is_equality() else numer >= zero


def from_isl_set(s: isl.Set, vars, params, dtype: str):
    """The TVM bool expr of s: an Or of basic sets, each an And of constraints, with isl's
    existentials (divs) as floordiv.  Callers simplify (which folds `x - m·(x // m)` into x % m)."""
    s = s.coalesce().compute_divs()
    if s.is_empty():
        return FALSE
    em = _Emitter(vars, params, dtype)
    clauses = [[em.constraint(c) for c in b.get_constraints()] for b in s.get_basic_sets()]
    return reduce(tirx.Or, [tirx.all(*c) if c else TRUE for c in clauses])


def from_isl_pw_aff(pa: isl.PwAff, vars, params, dtype: str, context: isl.Set | None = None):
    """The TVM expr of a piecewise quasi-affine pa, valid on pa's domain intersected with the
    parameter set `context` (default: all of it): a max or a min of the pieces' affine
    expressions when pa is one there, else nested Selects on the pieces' domains."""
    exact = pa if context is None else pa.intersect_params(context)
    pieces = (pa if context is None else pa.gist_params(context)).coalesce().get_pieces()
    em = _Emitter(vars, params, dtype)
    affs = []
    for _, aff in pieces:
        if not any(aff.plain_is_equal(a) for a in affs):
            affs.append(aff)
    if len(affs) == 1:
        return em.value(affs[0])
    whole = [isl.PwAff.from_aff(a).intersect_domain(exact.domain()) for a in affs]
    for combine, fold in ((isl.PwAff.max, tirx.max), (isl.PwAff.min, tirx.min)):
        if reduce(combine, whole).ne_set(exact).is_empty():
            return reduce(fold, [em.value(a) for a in affs])
    expr = em.value(pieces[-1][1])
    for dom, aff in reversed(pieces[:-1]):
        expr = tirx.Select(from_isl_set(dom, vars, params, dtype), em.value(aff), expr)
    return expr


# ------------------------------------------------------------------------- the domain

@dataclass(frozen=True)
class _Analysis:
    empty: bool
    bounded: bool           # S_isl(i) is finite for every i ∈ C
    domain: isl.Set         # D, on the parameters
    outer: isl.Set          # gist(D, C)
    lo: tuple               # PwAff per dim, on D
    hi: tuple
    extent: tuple
    residual: isl.Set       # gist(S, B ∧ D)


@lru_cache(maxsize=4096)
def _analyze(set_str: str, context_str: str) -> _Analysis:
    """The isl part of reduction_domain for S (set_str) and the parameter box C (context_str)."""
    context = isl.Set(context_str).params()
    s = isl.Set(set_str).intersect_params(context)
    dom = s.params()
    if dom.is_empty():
        return _Analysis(True, True, dom, dom, (), (), (), s)
    if not s.is_bounded():   # isl's dim_min/dim_max fail on an unbounded optimum
        return _Analysis(False, False, dom, dom, (), (), (), s)
    n = s.dim(isl.dim_type.set)
    lo, hi, sides = [], [], []
    for d in range(n):
        proj = s.project_out(isl.dim_type.set, d + 1, n - d - 1).project_out(isl.dim_type.set, 0, d)
        lo.append(proj.dim_min(0))
        hi.append(proj.dim_max(0))
        # B_d = {k : lexmin <= k <= lexmax}: the points above the least and below the greatest
        above = proj.lexmin().apply(isl.Map("{ [a] -> [x] : x >= a }"))
        below = proj.lexmax().apply(isl.Map("{ [a] -> [x] : x <= a }"))
        sides.append(above.intersect(below))
    box = reduce(isl.Set.flat_product, sides) if sides else isl.Set.universe(s.get_space())
    extent = tuple((h - l).add_constant_val(1) for l, h in zip(lo, hi))
    residual = s.gist(box.intersect_params(dom))
    return _Analysis(False, True, dom, dom.gist(context), tuple(lo), tuple(hi), extent, residual)


def _range_parts(triples, names) -> list:
    """isl constraints min <= v < min + extent (none for a variable without a range), or
    _NotPresburger."""
    parts = []
    for v, lo, ext in triples:
        if lo is None:
            continue
        lo_s = _aff_str(lo, names)
        parts.append(f"{lo_s} <= {names[v]} < {lo_s} + {_aff_str(ext, names)}")
    return parts


def _int_vars(exprs) -> list:
    """The free integer Vars of exprs, in first-seen order."""
    seen = {}
    for e in exprs:
        tvm_ffi.structural_walk(e, (Var, lambda v: seen.setdefault(v, None) if _is_int(v) else None))
    return list(seen)


def reduction_domain(reduce_vars, outer_vars, cond) -> Optional[ReductionDomain]:
    """The exact domain of Σ_k select(cond, ·, 0) (module docstring); None when it has no
    bounding box (a reduce variable without a range that cond does not bound either).

    reduce_vars, outer_vars: sequences of (Var, min, extent); min and extent may depend on the
    outer variables, and a reduce variable's are None when it ranges over all integers.  Free
    integer variables of cond that are in neither list are treated as unbounded outer variables.
    Ranges isl cannot represent give the trivial domain (the given ranges as the box, cond as the
    residual), or None when a reduce variable has no range."""
    cond = _node(cond)
    red = [v for v, _, _ in reduce_vars]
    given = [v for v, _, _ in outer_vars]
    exprs = [cond] + [e for _, lo, ext in [*reduce_vars, *outer_vars] for e in (lo, ext) if e is not None]
    known = set(red) | set(given)
    params = given + [v for v in _int_vars(exprs) if v not in known]
    names = isl_names(red, params)
    dtype = "int64" if any(str(v.ty.dtype) == "int64" for v in red + params) else "int32"
    ana = sym.Analyzer()
    for v, lo, ext in outer_vars:
        ana.bind(v, Range.from_min_extent(lo, ext))

    def trivial():
        if any(lo is None for _, lo, _ in reduce_vars):
            return None
        return ReductionDomain(tuple(AxisBound(v, lo, ext) for v, lo, ext in reduce_vars),
                               TRUE, cond, False)

    try:
        ranges = _range_parts(reduce_vars, names)
        context = _set_str(_range_parts(outer_vars, names), 0, len(params))
    except _NotPresburger:
        return trivial()
    parts, atoms = _split(cond, names)
    a = _analyze(_set_str(ranges + parts, len(red), len(params)), context)
    return _build(a, reduce_vars, params, atoms, dtype, ana) if a.bounded else None


def _build(a: _Analysis, reduce_vars, params, atoms, dtype, ana) -> ReductionDomain:
    """TVM exprs for the analysis a; atoms mentioning no reduce variable join outer_cond."""
    red = [v for v, _, _ in reduce_vars]
    if a.empty:
        axes = tuple(AxisBound(v, tirx.const(0, str(v.ty.dtype)) if lo is None else lo,
                               tirx.const(0, str(v.ty.dtype))) for v, lo, _ in reduce_vars)
        return ReductionDomain(axes, FALSE, FALSE, True)
    red_set = set(red)
    has_red = [any(v in red_set for v in _int_vars([c])) for c in atoms]
    inner = [c for c, r in zip(atoms, has_red) if r]
    outer = [c for c, r in zip(atoms, has_red) if not r]
    axes = []
    for v, lo, hi, ext in zip(red, a.lo, a.hi, a.extent):
        lo_e = from_isl_pw_aff(lo, red, params, dtype, a.domain)
        if ext.gist_params(a.domain).coalesce().n_piece() == 1:
            ext_e = from_isl_pw_aff(ext, red, params, dtype, a.domain)
        else:   # a piecewise extent reads better as hi - lo + 1
            ext_e = from_isl_pw_aff(hi, red, params, dtype, a.domain) - lo_e + tirx.const(1, dtype)
        vt = str(v.ty.dtype)
        axes.append(AxisBound(v, ana.simplify(cast(lo_e, vt)), ana.simplify(cast(ext_e, vt))))
    # Atoms stay unsimplified: the Analyzer cannot hash the tensors that loads refer to.
    outer_cond = _conjoin(ana.simplify(from_isl_set(a.outer, red, params, dtype)), outer)
    residual = _conjoin(ana.simplify(from_isl_set(a.residual, red, params, dtype)), inner)
    return ReductionDomain(tuple(axes), outer_cond, residual, False)


def _conjoin(cond, atoms: list):
    """cond ∧ ⋀ atoms, without a redundant `True ∧`."""
    if not atoms:
        return cond
    return tirx.all(*atoms) if is_const(cond, True) else tirx.all(cond, *atoms)
