"""Expression helpers shared by the front end, the passes and the analysis tools.

Predicates (`is_float`, `is_const`), the variables and tensor reads of an expression, variable
substitution, and simplification of expressions that may read tensors.
"""
from __future__ import annotations

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


_EVAL = {tirx.Add: lambda a, b: a + b, tirx.Sub: lambda a, b: a - b, tirx.Mul: lambda a, b: a * b,
         tirx.FloorDiv: lambda a, b: a // b, tirx.FloorMod: lambda a, b: a % b,
         tirx.Min: min, tirx.Max: max, tirx.LT: lambda a, b: a < b, tirx.LE: lambda a, b: a <= b,
         tirx.GT: lambda a, b: a > b, tirx.GE: lambda a, b: a >= b, tirx.EQ: lambda a, b: a == b,
         tirx.NE: lambda a, b: a != b, tirx.And: lambda a, b: a and b, tirx.Or: lambda a, b: a or b}


def evaluate(e, env: dict) -> int:
    """Integer (or boolean) index expression e at the point env ({Var: int}); KeyError for a node
    it does not know, such as a tensor read."""
    if isinstance(e, tirx.IntImm):
        return e.value
    if isinstance(e, tirx.Var):
        return env[e]
    if isinstance(e, tirx.Select):
        return evaluate(e.true_value if evaluate(e.condition, env) else e.false_value, env)
    if isinstance(e, tirx.Not):
        return not evaluate(e.a, env)
    return _EVAL[type(e)](evaluate(e.a, env), evaluate(e.b, env))


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
