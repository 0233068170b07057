"""Forward-mode derivative rules for TIR expressions: one table, one rule per node type or intrinsic.

`jvp(e, seed)` computes the tangent de = Σ_leaf ∂e/∂leaf · seed(leaf), where the leaves are tensor
reads and variables.  The reverse-mode front end seeds each read `X[f]` with the Iverson bracket
`[j == f]`, which turns the tangent into one row of the Jacobian; the pair-combiner rule of
reductions seeds the combiner's variables instead.

A rule is `rule(e, d) -> tangent | None`, where `d(sub)` differentiates a subexpression and `None`
stands for an exact zero (it keeps the output free of `0 * x` terms).  Integer and boolean
subexpressions (indices, comparisons) have derivative zero and are never visited.  Calls are looked
up in `CALL_RULES` by `call_key`; `register_rule` adds entries for the user's own intrinsics and
extern functions, in the spirit of JAX's `defjvp`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from tvm import sym, tirx
from tvm.ir import Call, Var

from tvm_autodiff.ir.expr import is_float
from tvm_autodiff.ir.graph import is_load

Tangent = Optional[object]


class NoDerivativeRule(Exception):
    """An expression node that has no derivative rule; the front end adds the op and tensor.
    `key` is the name to give `register_rule` when the node is a call, else None."""

    def __init__(self, what: str, key: Optional[str] = None):
        super().__init__(what)
        self.what, self.key = what, key


def const(value: float, like) -> tirx.FloatImm:
    return tirx.const(value, str(like.ty.dtype))


# Tangent arithmetic with None as an exact zero.
def add(a: Tangent, b: Tangent) -> Tangent:
    return b if a is None else a if b is None else a + b


def sub(a: Tangent, b: Tangent) -> Tangent:
    return a if b is None else -b if a is None else a - b


def scale(factor, t: Tangent) -> Tangent:
    return None if t is None else factor * t


def select(cond, a: Tangent, b: Tangent, like) -> Tangent:
    if a is None and b is None:
        return None
    zero = const(0.0, like)
    return tirx.Select(cond, zero if a is None else a, zero if b is None else b)


def _arg(i: int = 0) -> Callable:
    return lambda e: e.args[i]


def _unary(dfdx: Callable) -> Callable:
    """Rule for f(x): df = f'(x)·dx, with f'(x) written in terms of e = f(x) and x."""
    return lambda e, d: scale(dfdx(e, e.args[0]), d(e.args[0]))


def _zero(e, d) -> Tangent:
    return None


def _scale_unless(cond, factor, t: Tangent, like) -> Tangent:
    """factor·t, but exactly 0 where cond holds.  A cond that folds to a constant leaves no select:
    a constant exponent or base (x³, 2ˣ) keeps its plain derivative."""
    cond = sym.Analyzer().simplify(cond)
    if isinstance(cond, tirx.IntImm):
        return None if cond.value else scale(factor, t)
    return select(cond, None, scale(factor, t), like)


def _pow(e, d):
    """d(x^y) = y·x^(y-1)·dx + x^y·log(x)·dy, with PyTorch's values where the formula is 0·∞:
    the dx term is 0 for y = 0 (not 0·0⁻¹ = NaN at x = 0), and the dy term is 0 for x = 0, y ≥ 0
    (not 0·log 0 = NaN, or 1·log 0 = −∞ at y = 0).  Elsewhere at x = 0 the formula already gives
    PyTorch's values (±∞ for 0 < y < 1 and y < 0)."""
    x, y = e.args
    zero = const(0.0, e)
    return add(_scale_unless(y == zero, y * tirx.pow(x, y - const(1.0, y)), d(x), e),
               _scale_unless(tirx.And(x == zero, y >= zero), e * tirx.log(x), d(y), e))


def _atan2(e, d):
    # At the origin 0/0: PyTorch gives 0 there, and so do we.
    y, x = e.args
    r2 = x * x + y * y
    at_origin = r2 == const(0.0, r2)
    return sub(_scale_unless(at_origin, x / r2, d(y), e), _scale_unless(at_origin, y / r2, d(x), e))


def _hypot(e, d):
    a, b = e.args
    return add(scale(a / e, d(a)), scale(b / e, d(b)))


def _trunc_mod(a, b, d):
    # a mod b = a - b·trunc(a/b) (fmod, and truncmod on floats), and trunc is piecewise constant.
    return sub(d(a), scale(tirx.trunc(a / b), d(b)))


def _copysign(e, d):
    # copysign(x, y) = ±x with the sign of y: piecewise ±identity in x, constant in y.  The factor
    # is sign(x)·sign(y) read off the sign bits (so y = -0.0 counts as negative), and 0 at x = 0,
    # as PyTorch's copysign(x, y)/x there.
    x, y = e.args
    one = const(1.0, x)
    sign = tirx.copysign(one, x) * tirx.copysign(one, y)
    return _scale_unless(x == const(0.0, x), sign, d(x), e)


def _fma(e, d):
    a, b, c = e.args
    return add(add(scale(b, d(a)), scale(a, d(b))), d(c))


def _ldexp(e, d):
    x, n = e.args
    dx = d(x)
    return None if dx is None else tirx.ldexp(dx, n)


def _if_then_else(e, d):
    cond, a, b = e.args
    da, db = d(a), d(b)
    if da is None and db is None:
        return None
    zero = const(0.0, e)
    return tirx.if_then_else(cond, zero if da is None else da, zero if db is None else db)


def _fabs(e, d):
    # sign(x)·dx with sign(0) = 0 and sign(NaN) = 0, as PyTorch's abs backward.
    x = e.args[0]
    dx, zero = d(x), const(0.0, x)
    return select(x > zero, dx, select(x < zero, scale(const(-1.0, x), dx), None, e), e)


def _is_constant(e) -> bool:
    while isinstance(e, tirx.Cast):
        e = e.value
    return isinstance(e, (tirx.FloatImm, tirx.IntImm))


def _extremum(picks_a: Callable) -> Callable:
    """The rule of max (picks_a = >) or min (<).  TVM computes max(a, b) as a > b ? a : b, so a NaN
    operand yields b, and the tangent follows the same choice (tests/test_conventions.py; zero
    elimination loses it at NaN, a strict xfail there).  Ties split the tangent 0.5/0.5, as
    PyTorch's maximum/minimum do; a tie with a constant gives 0, as PyTorch's relu does at 0 (and
    unlike its clamp, whose bounds pass the gradient)."""
    def rule(e, d):
        a, b = e.a, e.b
        da, db = d(a), d(b)
        if _is_constant(b):    # max(x, c): select(x > c, dx, 0) is 0 at x = c already
            return select(picks_a(a, b), da, None, e)
        if _is_constant(a):    # max(c, x): 0 where c wins or ties
            return select(tirx.Or(picks_a(a, b), a == b), None, db, e)
        tie = scale(const(0.5, e), add(da, db))
        return select(a == b, tie, select(picks_a(a, b), da, db, e), e)
    return rule


LN2, LN10 = math.log(2.0), math.log(10.0)

CALL_RULES: dict[str, Callable] = {
    "tirx.exp": _unary(lambda e, x: e),
    "tirx.exp2": _unary(lambda e, x: e * const(LN2, e)),
    "tirx.exp10": _unary(lambda e, x: e * const(LN10, e)),
    "tirx.log": _unary(lambda e, x: const(1.0, x) / x),
    "prim.log2": _unary(lambda e, x: const(1.0 / LN2, x) / x),
    "tirx.log10": _unary(lambda e, x: const(1.0 / LN10, x) / x),
    "tirx.log1p": _unary(lambda e, x: const(1.0, x) / (x + const(1.0, x))),
    "tirx.sqrt": _unary(lambda e, x: const(0.5, e) / e),
    "tirx.rsqrt": _unary(lambda e, x: const(-0.5, e) * e * e * e),
    "tirx.sin": _unary(lambda e, x: tirx.cos(x)),
    "tirx.cos": _unary(lambda e, x: -tirx.sin(x)),
    "tirx.tan": _unary(lambda e, x: const(1.0, e) + e * e),
    "tirx.sinh": _unary(lambda e, x: tirx.cosh(x)),
    "tirx.cosh": _unary(lambda e, x: tirx.sinh(x)),
    "tirx.tanh": _unary(lambda e, x: const(1.0, e) - e * e),
    "tirx.asin": _unary(lambda e, x: tirx.rsqrt(const(1.0, x) - x * x)),
    "tirx.acos": _unary(lambda e, x: -tirx.rsqrt(const(1.0, x) - x * x)),
    "tirx.atan": _unary(lambda e, x: const(1.0, x) / (const(1.0, x) + x * x)),
    "tirx.asinh": _unary(lambda e, x: tirx.rsqrt(x * x + const(1.0, x))),
    "tirx.acosh": _unary(lambda e, x: tirx.rsqrt(x * x - const(1.0, x))),
    "tirx.atanh": _unary(lambda e, x: const(1.0, x) / (const(1.0, x) - x * x)),
    "tirx.erf": _unary(lambda e, x: const(2.0 / math.sqrt(math.pi), x) * tirx.exp(-(x * x))),
    "tirx.sigmoid": _unary(lambda e, x: e * (const(1.0, e) - e)),
    "tirx.fabs": _fabs,
    "tirx.pow": _pow,
    "tirx.atan2": _atan2,
    "tirx.hypot": _hypot,
    "tirx.fmod": lambda e, d: _trunc_mod(*e.args, d),
    "tirx.copysign": _copysign,
    "tirx.fma": _fma,
    "tirx.ldexp": _ldexp,
    "tirx.nextafter": lambda e, d: d(e.args[0]),
    "prim.if_then_else": _if_then_else,
    # Piecewise constant: derivative zero almost everywhere.
    "tirx.floor": _zero,
    "prim.ceil": _zero,
    "tirx.trunc": _zero,
    "tirx.round": _zero,
    "tirx.nearbyint": _zero,
}


def _div(e, d):
    da, db = d(e.a), d(e.b)
    # d(a/b) = da/b − (a/b)·db/b; keeping da/b apart lets zero elimination see da's condition.
    return sub(None if da is None else da / e.b, scale(e / e.b, db))


# Calls of these ops name the function they call in args[0].
EXTERN_OPS = ("tirx.call_pure_extern", "tirx.call_extern")


def call_key(e: Call) -> str:
    """The CALL_RULES key of a call: the Op name (`tirx.exp`), or for an extern call
    (`tirx.call_pure_extern("float32", "my_fn", x)`) the function name, `my_fn`."""
    return e.args[0].value if e.op.name in EXTERN_OPS else e.op.name


def register_rule(name: str, rule: Callable) -> Callable:
    """Add (or replace) the derivative rule of the intrinsic or extern function `name`.

    `name` is an Op name such as "tirx.exp" for an intrinsic, or the function name of an extern
    call: a rule registered as "my_fn" differentiates `tirx.call_pure_extern(dtype, "my_fn", ...)`
    and `tirx.call_extern(dtype, "my_fn", ...)`.  `rule(e, d)` gets the call `e` and a function
    `d(sub)` that returns the tangent of a subexpression (None: exactly zero), and returns the
    tangent of `e` (None: exactly zero).  The call's operands are `e.args`, for an extern call
    `e.args[1:]` (`e.args[0]` is the name), so for `my_cube(x) = x³`:

        register_rule("my_cube", lambda e, d: scale(3.0 * e.args[1] * e.args[1], d(e.args[1])))

    with `scale(c, t)` (this module) the product c·t that keeps None as zero.  Returns `rule`."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_rule needs a non-empty string as name, got {name!r}: an Op name "
                        "such as 'tirx.exp', or the function name of a call_pure_extern/call_extern.")
    if not callable(rule):
        raise TypeError(f"register_rule({name!r}, rule) needs a callable rule(e, d) -> tangent, got "
                        f"{type(rule).__name__}.")
    CALL_RULES[name] = rule
    return rule


def _call(e, d):
    if is_load(e):
        raise AssertionError("tensor reads are leaves")
    key = call_key(e)
    rule = CALL_RULES.get(key)
    if rule is None:
        what = "extern function" if e.op.name in EXTERN_OPS else "intrinsic"
        raise NoDerivativeRule(f"{what} {key!r}", key)
    return rule(e, d)


def _let(e, d):
    """d(let v = a in b) = let v = a, dv = da in db, where db sees dv as v's tangent.

    db mentions v (e.g. d sin(v) = cos(v)·dv), so it must stay inside v's binding."""
    dvalue = d(e.value)
    if dvalue is None:
        body = d.with_binding(e.var, None)(e.body)
        return None if body is None else tirx.Let(e.var, e.value, body)
    dvar = tirx.Var("d" + e.var.name, str(dvalue.ty.dtype))
    body = d.with_binding(e.var, dvar)(e.body)
    return None if body is None else tirx.Let(e.var, e.value, tirx.Let(dvar, dvalue, body))


NODE_RULES: dict[type, Callable] = {
    tirx.Add: lambda e, d: add(d(e.a), d(e.b)),
    tirx.Sub: lambda e, d: sub(d(e.a), d(e.b)),
    tirx.Mul: lambda e, d: add(scale(e.b, d(e.a)), scale(e.a, d(e.b))),
    tirx.Div: _div,
    # Float floordiv is floor(a/b): piecewise constant.
    tirx.FloorDiv: _zero,
    tirx.FloorMod: lambda e, d: sub(d(e.a), scale(tirx.floor(e.a / e.b), d(e.b))),
    tirx.Mod: lambda e, d: _trunc_mod(e.a, e.b, d),  # tirx.truncmod on floats
    tirx.Min: _extremum(lambda a, b: a < b),
    tirx.Max: _extremum(lambda a, b: a > b),
    tirx.Select: lambda e, d: select(e.condition, d(e.true_value), d(e.false_value), e),
    tirx.Cast: lambda e, d: None if (dv := d(e.value)) is None else tirx.Cast(str(e.ty.dtype), dv),
    tirx.Let: _let,
    tirx.FloatImm: _zero,
    Call: _call,
}


class _Differentiator:
    """d(e) with memoization on node identity (TIR exprs are DAGs: `sigmoid(x)` is reused)."""

    def __init__(self, seed: Callable, bindings: dict):
        self.seed, self.bindings, self.memo = seed, bindings, {}

    def with_binding(self, var, tangent) -> "_Differentiator":
        return _Differentiator(self.seed, {**self.bindings, var: tangent})

    def __call__(self, e) -> Tangent:
        if not is_float(e):
            return None
        key = hash(e)  # node identity; the memo keeps e alive so the address stays unique
        if key not in self.memo:
            self.memo[key] = (e, self._rule(e))
        return self.memo[key][1]

    def _rule(self, e) -> Tangent:
        if isinstance(e, Var):
            return self.bindings[e] if e in self.bindings else self.seed(e)
        if is_load(e):
            return self.seed(e)
        rule = NODE_RULES.get(type(e))
        if rule is None:
            raise NoDerivativeRule(f"expression node {type(e).__name__}")
        return rule(e, self)


def jvp(expr, seed: Callable) -> Tangent:
    """The tangent of `expr` given `seed(leaf)` (a tangent or None) for its reads and variables."""
    return _Differentiator(seed, {})(expr)
