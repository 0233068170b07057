"""A readable infix printer for TE expressions.

TVM's own printer shows a tensor read as `T.tensor_load(metadata["te.Tensor"][0], i, k)` (and logs a
warning each time), which says nothing about *which* tensor is read.  `format_expr` prints it as
`A[i, k]`, and reductions as `sum(k in [0, 8): ...)`.
"""
from __future__ import annotations

from tvm import sym, tirx
from tvm.ir import Call, Var

from tvm_autodiff.ir.expr import is_const, is_float
from tvm_autodiff.ir.graph import is_load
from tvm_autodiff.ir.reductions import ELEMENTWISE_KINDS, reducer_kind

# Binary operators: node type -> (symbol, precedence).  Higher binds tighter.
_BINARY = {
    tirx.Or: ("||", 1), tirx.And: ("&&", 2),
    tirx.EQ: ("==", 3), tirx.NE: ("!=", 3), tirx.LT: ("<", 3), tirx.LE: ("<=", 3),
    tirx.GT: (">", 3), tirx.GE: (">=", 3),
    tirx.Add: ("+", 4), tirx.Sub: ("-", 4),
    tirx.Mul: ("*", 5), tirx.FloorDiv: ("//", 5), tirx.FloorMod: ("%", 5),
}
_FUNCTIONS = {tirx.Min: "min", tirx.Max: "max", tirx.Mod: "truncmod"}
_ATOM = 9
_ANALYZER = sym.Analyzer()


def format_expr(expr) -> str:
    """`expr` as infix text: loads as `A[i, k]`, `select(c, a, b)`, `exp(x)`, `sum(k in [0, 8): ...)`."""
    return _fmt(expr)[0]


def _fmt(e) -> tuple[str, int]:
    """(text, precedence of its top operator), so that parents add only the parentheses needed."""
    t = type(e)
    if t in _BINARY:
        sym, prec = _BINARY[t]
        # Arithmetic is left-associative: only the right operand needs parentheses at equal
        # precedence.  Comparisons do not chain as in Python, so both sides get them.
        left = prec + 1 if prec == 3 else prec
        return f"{_wrap(e.a, left)} {sym} {_wrap(e.b, prec + 1)}", prec
    if t is tirx.Div:
        if is_float(e):
            return f"{_wrap(e.a, 5)} / {_wrap(e.b, 6)}", 5
        # On integers Div truncates, unlike Python's `/` and `//`: name it.
        return f"truncdiv({format_expr(e.a)}, {format_expr(e.b)})", _ATOM
    if t in _FUNCTIONS:
        return f"{_FUNCTIONS[t]}({format_expr(e.a)}, {format_expr(e.b)})", _ATOM
    if isinstance(e, tirx.IntImm):
        return (str(bool(e.value)) if str(e.ty.dtype) == "bool" else str(e.value)), _ATOM
    if isinstance(e, tirx.FloatImm):
        return repr(e.value), _ATOM
    if isinstance(e, Var):
        return e.name, _ATOM
    if t is tirx.Not:
        return f"!{_wrap(e.a, 6)}", 6
    if t is tirx.Select:
        return f"select({_args([e.condition, e.true_value, e.false_value])})", _ATOM
    if t is tirx.Cast:
        return f"{e.ty.dtype}({format_expr(e.value)})", _ATOM
    if t is tirx.Let:
        return f"(let {e.var.name} = {format_expr(e.value)} in {format_expr(e.body)})", _ATOM
    if isinstance(e, Call):
        if is_load(e):
            return f"{e.args[0].name}[{_args(e.args[1:])}]", _ATOM
        return f"{e.op.name.rsplit('.', 1)[-1]}({_args(e.args)})", _ATOM
    if t is tirx.Reduce:
        return _fmt_reduce(e), _ATOM
    return str(e), _ATOM  # rare nodes (Ramp, Shuffle, ...): TVM's own text


def _fmt_reduce(r) -> str:
    kind = reducer_kind(r.combiner, r.value_index)
    name = kind if kind in ELEMENTWISE_KINDS else "reduce"
    if len(r.combiner.result) > 1:  # a tuple reducer (argmax): say which value this body is
        name = f"reduce[{r.value_index}]"
    axes = ", ".join(format_range(iv) for iv in r.axis)
    cond = "" if is_const(r.condition, True) else f" where {format_expr(r.condition)}"
    init = f", init={_args(r.init)}" if len(r.init) else ""
    return f"{name}({axes}{cond}: {_args(r.source)}{init})"


def format_range(iv) -> str:
    """An IterVar as `k in [lo, hi)`."""
    dom = iv.dom
    return f"{iv.var.name} in [{format_expr(dom.min)}, {format_expr(_ANALYZER.simplify(dom.min + dom.extent))})"


def _wrap(e, prec: int) -> str:
    text, p = _fmt(e)
    return f"({text})" if p < prec else text


def _args(exprs) -> str:
    return ", ".join(format_expr(a) for a in exprs)
