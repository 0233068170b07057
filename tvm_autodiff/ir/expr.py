"""Expression helpers shared by the front end, the passes and the analysis tools.

Predicates (`is_float`, `is_const`), the variables and tensor reads of an expression, variable
substitution, and simplification of expressions that may read tensors.
"""
from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var

from .graph import is_load

TRUE = tirx.const(True, "bool")
FALSE = tirx.const(False, "bool")


def is_float(x) -> bool:
    """Whether `x` (an expression, a te.Tensor or a dtype) is of a floating-point type."""
    if isinstance(x, te.Tensor):
        dtype = x.dtype
    elif isinstance(x, tvm.ir.Expr):
        dtype = x.ty.dtype
    else:
        dtype = x
    return str(dtype).startswith(("float", "bfloat"))


def is_const(e, value) -> bool:
    """Whether `e` is the integer, boolean or float constant `value`."""
    return isinstance(e, (tirx.IntImm, tirx.FloatImm)) and e.value == value


def cast(e, dtype: str):
    """`e` as `dtype` (itself when it has that dtype already)."""
    return e if str(e.ty.dtype) == str(dtype) else tirx.Cast(str(dtype), e)


def free_vars(e) -> set:
    """The variables that occur in `e` (bound ones included); empty for None."""
    found: set = set()
    if e is not None:
        tvm_ffi.structural_walk(e, (Var, found.add))
    return found


def _trunc_div(a, b):
    return np.fix(np.true_divide(a, b)).astype(np.int64)


# Rules: (expr, evaluate) -> value.  Integers stay Python ints until a numpy column comes in.
_EVAL = {
    tirx.IntImm: lambda e, ev: e.value,
    tirx.Add: lambda e, ev: ev(e.a) + ev(e.b),
    tirx.Sub: lambda e, ev: ev(e.a) - ev(e.b),
    tirx.Mul: lambda e, ev: ev(e.a) * ev(e.b),
    tirx.FloorDiv: lambda e, ev: ev(e.a) // ev(e.b),  # Python and numpy round down, like TIR's floordiv
    tirx.FloorMod: lambda e, ev: ev(e.a) % ev(e.b),
    tirx.Div: lambda e, ev: _trunc_div(ev(e.a), ev(e.b)),
    tirx.Mod: lambda e, ev: ev(e.a) - _trunc_div(ev(e.a), ev(e.b)) * ev(e.b),
    tirx.Min: lambda e, ev: np.minimum(ev(e.a), ev(e.b)),
    tirx.Max: lambda e, ev: np.maximum(ev(e.a), ev(e.b)),
    tirx.Cast: lambda e, ev: ev(e.value),
    tirx.Select: lambda e, ev: np.where(ev(e.condition), ev(e.true_value), ev(e.false_value)),
    Call: lambda e, ev: np.where(ev(e.args[0]), ev(e.args[1]), ev(e.args[2])),  # if_then_else
    tirx.EQ: lambda e, ev: np.equal(ev(e.a), ev(e.b)),
    tirx.NE: lambda e, ev: np.not_equal(ev(e.a), ev(e.b)),
    tirx.LT: lambda e, ev: np.less(ev(e.a), ev(e.b)),
    tirx.LE: lambda e, ev: np.less_equal(ev(e.a), ev(e.b)),
    tirx.GT: lambda e, ev: np.greater(ev(e.a), ev(e.b)),
    tirx.GE: lambda e, ev: np.greater_equal(ev(e.a), ev(e.b)),
    tirx.And: lambda e, ev: np.logical_and(ev(e.a), ev(e.b)),
    tirx.Or: lambda e, ev: np.logical_or(ev(e.a), ev(e.b)),
    tirx.Not: lambda e, ev: np.logical_not(ev(e.a)),
}


def evaluate(expr, lookup):
    """The value of an integer (or boolean) index expression, with each variable's value given by
    `lookup(var)`: an int, or a numpy array for a column of points (the result is then an array
    over them).  KeyError for a node it does not know: a tensor read, a call other than
    if_then_else."""
    if isinstance(expr, Var):
        return lookup(expr)
    rule = _EVAL.get(type(expr))
    if rule is None or (isinstance(expr, Call) and expr.op.name != "prim.if_then_else"):
        raise KeyError(type(expr).__name__)
    value = rule(expr, lambda e: evaluate(e, lookup))
    return int(value) if np.ndim(value) == 0 else value


def tensor_loads(e) -> list:
    """The tensor reads T[idx] in `e` (te tensor_load calls), once per read."""
    found = []
    tvm_ffi.structural_walk(e, (Call, lambda c: found.append(c) if is_load(c) else None))
    return found


def reads(e) -> list:
    """The tensors that `e` reads, once per read."""
    return [c.args[0] for c in tensor_loads(e)]


def loads_only(e) -> bool:
    """Whether every call in e is a tensor read: loads and arithmetic, nothing like exp."""
    hit = tvm_ffi.structural_walk(e, (Call, lambda c: None if is_load(c) else tvm_ffi.VisitInterrupt(True)))
    return hit is None


def flatten(e, kind) -> list:
    """The operands of a tree of `kind` nodes (tirx.Add: the summands, tirx.And: the conjuncts),
    left to right."""
    out, todo = [], [e]
    while todo:
        x = todo.pop()
        if isinstance(x, kind):
            todo += [x.b, x.a]
        else:
            out.append(x)
    return out


def add_all(terms):
    """The sum of a non-empty iterable of expressions, added left to right."""
    terms = iter(terms)
    total = next(terms)
    for t in terms:
        total = total + t
    return total


def substitute(expr, vmap: dict):
    """`expr` with free variables replaced by `vmap` (Var -> expr)."""
    if not vmap:
        return expr
    return tvm_ffi.structural_map(expr, (Var, lambda v: vmap.get(v, v)))


def simplify(expr, ana=None):
    """tvm.sym.Analyzer simplification of an expression that may read tensors, with integer
    divisions in the form TVM compiles correctly (`positive_divisions`).  `ana`: an analyzer
    with the variables' ranges bound, which then simplify too (default: a fresh one).

    The analyzer hashes subexpressions and TVM cannot hash a te.Tensor (docs/tvm-0.27.md,
    "expressions that read tensors cannot be hashed"), so reads are swapped for opaque pure calls
    `__load<n>(idx...)` while simplifying and swapped back afterwards."""
    tensors: list = []

    def hide(c):
        if not is_load(c):
            return c
        tensors.append(c.args[0])
        return tirx.call_pure_extern(str(c.ty.dtype), f"__load{len(tensors) - 1}", *c.args[1:])

    def reveal(c):
        name = c.args[0].value if c.op.name == "tirx.call_pure_extern" else ""
        if not name.startswith("__load"):
            return c
        return tensors[int(name[6:])](*c.args[1:])

    ana = tvm.sym.Analyzer() if ana is None else ana
    hidden = positive_divisions(ana.simplify(tvm_ffi.structural_map(expr, (Call, hide))), ana)
    return tvm_ffi.structural_map(hidden, (Call, reveal))


def _negative_leading(a) -> bool:
    """a is linear in its variables with no positive and some negative coefficient (-i - 1)."""
    variables = list(tvm.tirx.analysis.undefined_vars(a))
    coefs = list(tvm.sym.detect_linear_equation(a, variables)) if variables else []
    if not coefs:
        return False
    signs = [c.value for c in coefs[:-1] if isinstance(c, tirx.IntImm)]
    return len(signs) == len(variables) and max(signs) <= 0 and min(signs) < 0


def positive_divisions(expr, ana):
    """expr with each integer a // d and a % d (d constant) rewritten so that d > 0 and a has no
    negative leading coefficients, using (c > 0)

        a // -c = (-a) // c                 a % -c = -((-a) % c)
        n // c  = -((c - 1 - n) // c)       n % c  = c - 1 - (c - 1 - n) % c     (n = -i - 1 ...)

    The analyzer's canonical form likes `k // -3` and `(0 - i - 1) // 3`; TVM 0.27 miscompiles
    the first after loop fusion (docs/tvm-0.27.md, "negative divisors after loop fusion").
    Divisions of offset numerators as load indices are miscompiled too, whatever their form
    (docs/tvm-0.27.md, "iter-map miscompiles offset divisions"): `build` guards those
    (`tvm_autodiff.guard_indices`)."""
    def normalized(e):
        a, d = e.a, e.b
        if not isinstance(d, tirx.IntImm) or is_float(e):
            return None
        sign = 1
        if d.value < 0:
            a, d, sign = ana.simplify(0 - a), tirx.const(-d.value, str(d.ty.dtype)), -1
        n = ana.simplify(d - 1 - a) if _negative_leading(a) else None
        return a, d, sign, n

    def div(e):
        parts = normalized(e)
        if parts is None:
            return e
        a, d, _, n = parts   # floor(a / -c) = floor(-a / c): the sign only moves into a
        return tirx.floordiv(a, d) if n is None else 0 - tirx.floordiv(n, d)

    def mod(e):
        parts = normalized(e)
        if parts is None:
            return e
        a, d, sign, n = parts
        m = tirx.floormod(a, d) if n is None else d - 1 - tirx.floormod(n, d)
        return m if sign > 0 else 0 - m

    return tvm_ffi.structural_map(tvm_ffi.structural_map(expr, (tirx.FloorDiv, div)), (tirx.FloorMod, mod))
