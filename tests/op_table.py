"""The op table: the cases that test_ops, test_passes and test_cuda share, as data.

A case is an `OpCase`: an id (the pytest id in all three tests) and a builder that makes a fresh
TE graph on every call, `builder() -> (output, inputs[, check])`.  `check` holds the keyword
arguments of `gradcheck.check_grad` that the case needs: input generators (`gens`, keyed by
placeholder), tolerances (`rtol`, `atol`, `eps`), a numpy `reference` of the forward values, a
`numpy_forward` for outputs that TVM cannot compile, and `ties` ("max"/"min") for the exact-ties
check.  Elementwise rules come from the tables UNARY and BINARY (name, function, generators).

    CASES                 every case, in order
    IDS                   their ids
    case(cid).build()     Built(out, inputs, check) with fresh tensors
    differentiated(cid)   the case's gradients for a head placeholder H, with the passes off
                          (`naive`) and on (`opt`); cached, so test_passes and test_cuda share them
    SYMBOLIC_IDS          the cases with a symbolic-shape variant (`OpCase.dim`)
    symbolic(cid)         (Built, bindings): the case with that dimension a te.var, and the
                          bindings {name: size} under which it is the static case

A builder may take one keyword, `OpCase.dim`, that sizes a dimension (a batch, a row count or a
reduction length); its default is the static case, so `builder()` is unchanged, and the same
builder with a `te.var` gives the symbolic variant (tests/test_symbolic.py).
"""
from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
from tvm import te, tirx, topi

import tvm_autodiff as ad
from gradcheck import away_from_integers, distinct, integers, normal, positive, uniform, unit_open


class Built(NamedTuple):
    out: te.Tensor
    inputs: list
    check: dict          # check_grad keyword arguments (and "ties")


@dataclass(frozen=True)
class OpCase:
    id: str
    builder: Callable[..., tuple]
    dim: Optional[str] = None    # the builder's keyword sizing a dimension: a symbolic variant

    def build(self, **sizes) -> Built:
        built = self.builder(**sizes)
        return Built(built[0], list(built[1]), dict(built[2]) if len(built) > 2 else {})


CASES: list[OpCase] = []


def _add(cid: str, builder: Callable[..., tuple], dim: Optional[str] = None) -> None:
    CASES.append(OpCase(cid, builder, dim))


def _case(cid: str, dim: Optional[str] = None):
    """Register the decorated builder as case `cid` (with a symbolic variant in `dim`)."""
    def deco(fn):
        _add(cid, fn, dim)
        return fn
    return deco


F64, F32 = "float64", "float32"


def ph(shape, name, dtype=F64):
    return te.placeholder(shape, dtype, name=name)


def ew(fn, shape=(3, 4), dtype=F64, n=1):
    """Y = fn(A, B, ...) elementwise over `shape`."""
    args = [ph(shape, "AB"[k] if k < 2 else f"X{k}", dtype) for k in range(n)]
    out = te.compute(shape, lambda *i: fn(*[a(*i) for a in args]), name="Y")
    return out, args


# -- elementwise unary rules ---------------------------------------------------------------------------

UNARY = [
    ("exp", te.exp, normal), ("exp2", tirx.exp2, normal), ("exp10", tirx.exp10, uniform(-1, 1)),
    ("log", te.log, positive), ("log2", tirx.log2, positive), ("log10", tirx.log10, positive),
    ("log1p", tirx.log1p, uniform(-0.5, 2)), ("sqrt", te.sqrt, positive), ("rsqrt", tirx.rsqrt, positive),
    ("sin", tirx.sin, normal), ("cos", tirx.cos, normal), ("tan", tirx.tan, uniform(-1.2, 1.2)),
    ("sinh", tirx.sinh, normal), ("cosh", tirx.cosh, normal), ("tanh", te.tanh, normal),
    ("asin", tirx.asin, unit_open), ("acos", tirx.acos, unit_open), ("atan", tirx.atan, normal),
    ("asinh", tirx.asinh, normal), ("acosh", tirx.acosh, uniform(1.2, 3.0)),
    ("atanh", tirx.atanh, unit_open), ("erf", te.erf, normal), ("sigmoid", te.sigmoid, normal),
    ("fabs", tirx.abs, normal), ("te_abs", te.abs, normal),
    ("neg", lambda x: -x, normal), ("square", lambda x: x * x, normal),
    ("reciprocal", lambda x: 1.0 / x, positive),
    ("power_const", lambda x: te.power(x, 3.0), positive), ("const_power", lambda x: te.power(2.0, x), normal),
    # Piecewise constant (zero derivative), composed so the output still depends on x:
    ("floor", lambda x: tirx.floor(x) * x, away_from_integers()),
    ("ceil", lambda x: tirx.ceil(x) * x, away_from_integers()),
    ("trunc", lambda x: tirx.trunc(x) * x, away_from_integers()),
    ("round", lambda x: tirx.round(x) * x, away_from_integers()),
    ("nearbyint", lambda x: tirx.nearbyint(x) * x, away_from_integers()),
    ("floor_alone", lambda x: tirx.floor(x), away_from_integers()),
]


def _unary_builder(fn, gen, dtype):
    def build(n=3):
        out, args = ew(fn, shape=(n, 4), dtype=dtype)
        return out, args, {"gens": {args[0]: gen}}
    return build


# The elementwise cases with a symbolic row count: a sample (no reduction, nothing to eliminate).
_SYMBOLIC_ELEMENTWISE = ("exp", "log", "tanh", "sigmoid", "add", "mul", "div", "max", "pow", "select")

for _name, _fn, _gen in UNARY:
    _add(f"unary-{_name}", _unary_builder(_fn, _gen, F64), "n" if _name in _SYMBOLIC_ELEMENTWISE else None)
for _name, _fn, _gen in UNARY:
    if _name in ("exp", "log", "tanh", "sigmoid", "sqrt", "erf", "atan", "fabs"):
        _add(f"unary-{_name}-f32", _unary_builder(_fn, _gen, F32))


# -- elementwise binary rules --------------------------------------------------------------------------

BINARY = [
    ("add", lambda a, b: a + b, normal, normal), ("sub", lambda a, b: a - b, normal, normal),
    ("mul", lambda a, b: a * b, normal, normal), ("div", lambda a, b: a / b, normal, positive),
    ("min", lambda a, b: te.min(a, b), normal, normal), ("max", lambda a, b: te.max(a, b), normal, normal),
    ("pow", lambda a, b: te.power(a, b), positive, normal), ("atan2", tirx.atan2, normal, normal),
    ("hypot", tirx.hypot, normal, normal), ("logaddexp", tirx.logaddexp, normal, normal),
    ("truncmod", tirx.truncmod, uniform(2.1, 2.9), uniform(0.6, 0.65)),
    ("copysign", tirx.copysign, normal, normal),
    ("select", lambda a, b: tirx.Select(a > b, a * b, b * b - a), normal, normal),
    ("if_then_else", lambda a, b: te.if_then_else(a > 0.0, te.exp(a) * b, a - b), normal, normal),
    ("select_bool_logic", lambda a, b: tirx.Select(tirx.And(a > 0.0, tirx.Not(b < -0.5)), a * b, a),
     normal, normal),
    ("relu_chain", lambda a, b: te.max(a * b, 0.0) + te.min(a, 0.0) * b, normal, normal),
]


def _binary_builder(fn, ga, gb, dtype):
    def build(n=3):
        out, args = ew(fn, shape=(n, 4), dtype=dtype, n=2)
        kw = {"gens": {args[0]: ga, args[1]: gb}}
        if dtype == F32:
            kw["eps"] = 1e-3   # min/max: keep the steps away from the kinks
        return out, args, kw
    return build


for _name, _fn, _ga, _gb in BINARY:
    _add(f"binary-{_name}", _binary_builder(_fn, _ga, _gb, F64), "n" if _name in _SYMBOLIC_ELEMENTWISE else None)
for _name, _fn, _ga, _gb in BINARY:
    if _name in ("div", "mul", "pow", "max", "hypot"):
        _add(f"binary-{_name}-f32", _binary_builder(_fn, _ga, _gb, F32))


# Float floordiv / floormod / fmod: TVM 0.27 cannot compile their forward on llvm (floordiv/floormod
# assert integer operands in lowering, fmod has no llvm intrinsic; docs/tvm-0.27.md, "float
# floordiv does not compile"), but their gradients compile.  The finite differences use numpy's
# forward instead.
def _np_floordiv_case(node, np_fn, id):
    @_case(id)
    def build():
        A, B = ph((3, 4), "A"), ph((3, 4), "B")
        # (The gradient of node·A would contain node itself, which cannot be compiled.)
        Y = te.compute((3, 4), lambda i, j: node(A[i, j], B[i, j]) + A[i, j] * B[i, j], name="Y")
        return Y, [A, B], {"gens": {A: uniform(2.1, 2.9), B: uniform(0.6, 0.65)},
                           "numpy_forward": lambda a, b: np_fn(a, b) + a * b}


_np_floordiv_case(tirx.FloorDiv, lambda a, b: np.floor(a / b), "float-floordiv")
_np_floordiv_case(tirx.FloorMod, lambda a, b: a - b * np.floor(a / b), "float-floormod")
_np_floordiv_case(tirx.fmod, np.fmod, "float-fmod")


@_case("cast-f32-to-f64")
def _():
    A = ph((3, 4), "A", F32)
    B = ph((3, 4), "B")
    Y = te.compute((3, 4), lambda i, j: tirx.Cast(F64, A[i, j] * A[i, j]) * B[i, j], name="Y")
    return Y, [A, B], {"rtol": 1e-4, "atol": 1e-5, "eps": 1e-3}


@_case("cast-f64-to-f32")
def _():
    A = ph((3, 4), "A")
    Y = te.compute((3, 4), lambda i, j: te.exp(A[i, j].astype(F32)), name="Y")
    return Y, [A], {"eps": 1e-3}


@_case("let")
def _():
    A, B = ph((3, 4), "A"), ph((3, 4), "B")
    v = tirx.Var("v", F64)
    Y = te.compute((3, 4), lambda i, j: tirx.Let(v, A[i, j] * B[i, j], te.sin(v) * v + A[i, j]), name="Y")
    return Y, [A, B]


@_case("let-nested")
def _():
    A = ph((3, 4), "A")
    v, w = tirx.Var("v", F64), tirx.Var("w", F64)
    Y = te.compute((3, 4), lambda i, j: tirx.Let(v, te.exp(A[i, j]), tirx.Let(w, v * v, w / (v + 1.0))),
                   name="Y")
    return Y, [A]


@_case("integer-subexpressions")
def _():
    A = ph((6, 4), "A")
    Y = te.compute((6, 4), lambda i, j: A[i, j] * tirx.Cast(F64, (i * 3 + j) % 5)
                   + tirx.Select(tirx.Or(i > j, (i + j) % 2 == 0), A[(i + 1) % 6, j], tirx.const(0.0, F64)), name="Y")
    return Y, [A]


@_case("integer-placeholder-weights")
def _():
    A, K = ph((5,), "A"), ph((5,), "K", "int32")
    Y = te.compute((5,), lambda i: A[i] * K[i].astype(F64) + te.exp(A[i]) * tirx.Cast(F64, K[i] > 1), name="Y")
    return Y, [A], {"gens": {K: integers(-2, 4)}}


@_case("shared-subexpression")
def _():
    A = ph((4,), "A")
    s = lambda i: te.sigmoid(A[i])  # noqa: E731
    Y = te.compute((4,), lambda i: s(i) * s(i) + te.log(s(i)), name="Y")
    return Y, [A]


@_case("chain-of-ops", "n")
def _(n=3):
    A, B = ph((n, 4), "A"), ph((4,), "B")
    C = te.compute((n, 4), lambda i, j: A[i, j] * B[j], name="C")
    D = te.compute((n, 4), lambda i, j: te.tanh(C[i, j]) + C[i, j] * A[i, j], name="D")
    E = te.compute((n,), lambda i: D[i, 0] * D[i, 3] + C[i, 1], name="E")
    return E, [A, B]


# -- index maps -----------------------------------------------------------------------------------------

@_case("index-i+j", "n")
def _(n=4):
    A = ph((n + 3,), "A")
    return te.compute((n, 4), lambda i, j: A[i + j] * A[i + j], name="Y"), [A]


@_case("index-2i+j", "n")
def _(n=4):
    A = ph((2 * n + 2,), "A")
    return te.compute((n, 3), lambda i, j: te.exp(A[2 * i + j]), name="Y"), [A]


@_case("index-diagonal", "n")
def _(n=5):
    A = ph((n, n), "A")
    return te.compute((n,), lambda i: A[i, i] * 3.0, name="Y"), [A]


@_case("index-reverse", "n")
def _(n=10):
    A = ph((n,), "A")
    return te.compute((n,), lambda i: A[n - 1 - i] * A[i], name="Y"), [A]


@_case("index-min-clamp")
def _():
    A = ph((10,), "A")
    k = te.reduce_axis((0, 4), name="k")
    return te.compute((8,), lambda j: te.sum(A[te.min(j + k, 9)] * (k + 1.0), axis=k), name="Y"), [A]


@_case("index-transpose-sum", "n")
def _(n=4):
    A = ph((n, n), "A")
    return te.compute((n, n), lambda i, j: A[i, j] + A[j, i] * A[i, j], name="Y"), [A]


@_case("index-div-mod-reshape")
def _():
    A = ph((4, 3), "A")
    return te.compute((3, 4), lambda i, j: A[(i * 4 + j) // 3, (i * 4 + j) % 3] * (i + 1.0), name="Y"), [A]


@_case("index-broadcast-read", "n")
def _(n=3):
    A, B = ph((n, 1), "A"), ph((4,), "B")
    return te.compute((n, 4), lambda i, j: A[i, 0] * B[j], name="Y"), [A, B]


@_case("index-constant")
def _():
    A = ph((3, 4), "A")
    return te.compute((3, 4), lambda i, j: A[i, j] * A[0, 2], name="Y"), [A]


# -- reductions -------------------------------------------------------------------------------------------

def _red(kind, where=False, init=False, axes=1, dtype=F64):
    """Y[i] = reduce_k f(A[i, k]) for kind in sum/max/min/prod, optionally where=/init=; a numpy
    reference checks the forward values (TVM 0.27's create_prim_func would drop where/init:
    docs/tvm-0.27.md, "create_prim_func drops where= and init=")."""
    def build(n=3):
        shape = (n, 5) if axes == 1 else (n, 4, 3)
        A = ph(shape, "A", dtype)
        I = ph((n,), "I", dtype)
        ks = [te.reduce_axis((0, s), name=f"k{d}") for d, s in enumerate(shape[1:])]
        red = {"sum": te.sum, "max": te.max, "min": te.min,
               "prod": te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t), name="prod")}[kind]
        kw = {}
        cond_np = np.ones(shape[1:], bool)
        if where:
            kw["where"] = ks[0].var % 2 == 0 if axes == 1 else ks[0].var + ks[1].var < 4
            grid = np.indices(shape[1:])
            cond_np = grid[0] % 2 == 0 if axes == 1 else grid[0] + grid[1] < 4
        body = lambda i: (lambda v: v * v if kind == "sum" else v)(A[(i, *[k.var for k in ks])])  # noqa: E731
        if init:
            kw["init"] = None  # placeholder; set below per index
            Y = te.compute((n,), lambda i: red(body(i), axis=ks, init=I[i],
                                                **{k: v for k, v in kw.items() if k != "init"}), name="Y")
        else:
            Y = te.compute((n,), lambda i: red(body(i), axis=ks, **kw), name="Y")

        def reference(a, iv):
            v = a * a if kind == "sum" else a
            flat = v.reshape(len(v), -1)[:, cond_np.ravel()]
            r = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[kind](flat, axis=1)
            if init:
                r = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}[kind](iv, r)
            return r

        inputs = [A, I] if init else [A]
        gens = {A: distinct if kind in ("max", "min") else uniform(0.5, 1.5)}
        if init:
            gens[I] = uniform(0.5, 1.5) if kind != "max" else uniform(-1.5, -1.2)
        ref = reference if init else (lambda a, _i=None: reference(a, None))
        # The reference gets every placeholder; only A (and I) are read.
        return Y, inputs, {"gens": gens, "reference": ref}
    return build


for _kind in ("sum", "max", "min", "prod"):
    for _where, _init in itertools.product((False, True), (False, True)):
        _id = f"reduce-{_kind}" + ("-where" if _where else "") + ("-init" if _init else "")
        # Symbolic variants: the plain reduction and the one with both where= and init=.
        _add(_id, _red(_kind, _where, _init), "n" if _where == _init else None)
    _add(f"reduce-{_kind}-2axes", _red(_kind, axes=2), "n")
    _add(f"reduce-{_kind}-2axes-where", _red(_kind, where=True, axes=2), "n")
_add("reduce-sum-f32", _red("sum", dtype=F32))
_add("reduce-max-where-init-f32", _red("max", where=True, init=True, dtype=F32))


@_case("reduce-max-duplicated-reads", "n")
def _(n=3):
    # Every element is read twice (k // 2): the max is attained at two k, but the derivative of the
    # max w.r.t. A is still 1 (not 2): the tie goes to one k only.
    A = ph((n, 4), "A")
    k = te.reduce_axis((0, 8), name="k")
    return te.compute((n,), lambda i: te.max(A[i, k // 2], axis=k), name="Y"), [A], {"gens": {A: distinct}}


@_case("reduce-max-ties-first-index")
def _():
    A = ph((2, 4), "A")
    k = te.reduce_axis((0, 4), name="k")
    return te.compute((2,), lambda i: te.max(A[i, k], axis=k), name="Y"), [A], {"ties": "max"}


@_case("reduce-min-ties-first-index")
def _():
    A = ph((2, 4), "A")
    k = te.reduce_axis((0, 4), name="k")
    return te.compute((2,), lambda i: te.min(-A[i, k], axis=k), name="Y"), [A], {"ties": "min"}


def _argmax_reducer():
    def fcombine(x, y):
        pick = x[1] >= y[1]
        return tirx.Select(pick, x[0], y[0]), tirx.Select(pick, x[1], y[1])

    def fidentity(t0, t1):
        return tirx.const(-1, t0), tirx.min_value(t1)

    return te.comm_reducer(fcombine, fidentity, name="argmax")


@_case("reduce-argmax-pair-value", "n")
def _(n=3):
    A = ph((n, 5), "A")
    k = te.reduce_axis((0, 5), name="k")
    idx, val = te.compute((n,), lambda i: _argmax_reducer()((k.var, A[i, k] * 2.0), axis=k), name="AM")
    return val, [A], {"gens": {A: distinct}}


@_case("reduce-argmax-pair-both-outputs", "n")
def _(n=3):
    A = ph((n, 5), "A")
    k = te.reduce_axis((0, 5), name="k")
    idx, val = te.compute((n,), lambda i: _argmax_reducer()((k.var, te.exp(A[i, k])), axis=k), name="AM")
    Y = te.compute((n,), lambda i: val[i] * (idx[i].astype(F64) + 1.0), name="Y")
    return Y, [A], {"gens": {A: distinct}}


@_case("reduce-argmax-pair-where", "n")
def _(n=3):
    A = ph((n, 6), "A")
    k = te.reduce_axis((0, 6), name="k")
    idx, val = te.compute((n,), lambda i: _argmax_reducer()((k.var, A[i, k]), axis=k, where=k.var > 1),
                          name="AM")
    return val, [A], {"gens": {A: distinct},
                      "reference": lambda a: a[:, 2:].max(axis=1)}


def _logsumexp_reducer():
    return te.comm_reducer(lambda x, y: te.log(te.exp(x) + te.exp(y)), lambda t: tirx.min_value(t),
                           name="lse")


@_case("reduce-logsumexp-comm-reducer", "n")
def _(n=4):
    # The symbolic variant's reduction length is symbolic.
    A = ph((3, n), "A")
    k = te.reduce_axis((0, n), name="k")
    Y = te.compute((3,), lambda i: _logsumexp_reducer()(A[i, k], axis=k), name="Y")
    return Y, [A], {"reference": lambda a: np.log(np.exp(a).sum(1))}


@_case("reduce-logsumexp-where-init", "n")
def _(n=3):
    A, I = ph((n, 4), "A"), ph((n,), "I")
    k = te.reduce_axis((0, 4), name="k")
    Y = te.compute((n,), lambda i: _logsumexp_reducer()(A[i, k], axis=k, where=k.var < 3, init=I[i]), name="Y")
    return Y, [A, I], {"reference": lambda a, iv: np.logaddexp(iv, np.log(np.exp(a[:, :3]).sum(1)))}


@_case("reduce-sum-of-products-2axes", "n")
def _(n=4):
    # The symbolic variant's reduction length is symbolic.
    A, B = ph((3, n, 2), "A"), ph((n, 2), "B")
    k, l = te.reduce_axis((0, n), name="k"), te.reduce_axis((0, 2), name="l")
    Y = te.compute((3,), lambda i: te.sum(A[i, k, l] * B[k, l], axis=[k, l]), name="Y")
    return Y, [A, B]


@_case("reduce-offset-axis", "n")
def _(n=3):
    A = ph((n, 7), "A")
    k = te.reduce_axis((2, 6), name="k")
    Y = te.compute((n,), lambda i: te.max(A[i, k], axis=k), name="Y")
    return Y, [A], {"gens": {A: distinct}, "reference": lambda a: a[:, 2:6].max(1)}


@_case("reduce-max-then-sum-chain", "n")
def _(n=5):
    # The symbolic variant's reduction length is symbolic.
    A = ph((4, n), "A")
    k = te.reduce_axis((0, n), name="k")
    M = te.compute((4,), lambda i: te.max(A[i, k], axis=k), name="M")
    k2 = te.reduce_axis((0, n), name="k2")
    S = te.compute((4,), lambda i: te.sum(te.exp(A[i, k2] - M[i]), axis=k2), name="S")
    return S, [A], {"gens": {A: distinct}}


@_case("multi-output-elementwise", "n")
def _(n=3):
    A, B = ph((n, 4), "A"), ph((n, 4), "B")
    P, Q = te.compute((n, 4), lambda i, j: (A[i, j] * B[i, j], te.exp(A[i, j]) - B[i, j]), name="PQ")
    Y = te.compute((n, 4), lambda i, j: P[i, j] * Q[i, j] + Q[i, j], name="Y")
    return Y, [A, B]


@_case("multi-output-second-only")
def _():
    A = ph((3, 4), "A")
    P, Q = te.compute((3, 4), lambda i, j: (A[i, j] * 2.0, te.sin(A[i, j])), name="PQ")
    return Q, [A]


# -- topi ------------------------------------------------------------------------------------------------

def _conv2d_case(stride, dilation, kernel):
    def build(b=1):
        X, W = ph((b, 2, 7, 7), "X"), ph((3, 2, kernel, kernel), "W")
        Y = topi.nn.conv2d(X, W, strides=stride, padding=1, dilation=dilation)
        return Y, [X, W]
    return build


# The convolutions with a symbolic batch: padded windows (stride 1), strided, dilated (a sample:
# each symbolic build costs about half a second).
_SYMBOLIC_CONV = {(1, 1, 2), (1, 1, 3), (2, 1, 3), (1, 2, 3), (2, 2, 2), (3, 3, 3)}

for _s, _d, _k in itertools.product((1, 2, 3), repeat=3):
    _add(f"conv2d-s{_s}-d{_d}-k{_k}", _conv2d_case(_s, _d, _k), "b" if (_s, _d, _k) in _SYMBOLIC_CONV else None)


@_case("conv2d-f32", "b")
def _(b=1):
    X, W = ph((b, 2, 6, 6), "X", F32), ph((2, 2, 3, 3), "W", F32)
    return topi.nn.conv2d(X, W, strides=1, padding=1, dilation=1), [X, W]


@_case("conv2d-nhwc", "b")
def _(b=1):
    X, W = ph((b, 5, 5, 2), "X"), ph((3, 3, 2, 2), "W")
    return topi.nn.conv2d_nhwc(X, W, stride=1, padding=1, dilation=1), [X, W]


def _depthwise_case(size, kernel, stride, padding, dilation):
    def build(b=1):
        X, W = ph((b, 2, size, size), "X"), ph((2, 1, kernel, kernel), "W")
        return topi.nn.depthwise_conv2d_nchw(X, W, stride=stride, padding=padding, dilation=dilation), [X, W]
    return build


_add("depthwise-conv2d", _depthwise_case(6, 3, stride=2, padding=1, dilation=1), "b")
_add("depthwise-conv2d-dilated", _depthwise_case(7, 2, stride=1, padding=0, dilation=2), "b")


@_case("conv2d-transpose", "b")
def _(b=1):
    X, W = ph((b, 2, 4, 4), "X"), ph((2, 3, 3, 3), "W")
    return topi.nn.conv2d_transpose_nchw(X, W, (2, 2), (1, 1), F64, (1, 1)), [X, W]


@_case("dense", "n")
def _(n=3):
    x, w, b = ph((n, 5), "x"), ph((4, 5), "w"), ph((4,), "b")
    return topi.nn.dense(x, w, b), [x, w, b]


@_case("dense-f32", "n")
def _(n=3):
    x, w = ph((n, 5), "x", F32), ph((4, 5), "w", F32)
    return topi.nn.dense(x, w), [x, w]


@_case("matmul", "n")
def _(n=3):
    a, b = ph((n, 5), "a"), ph((5, 4), "b")
    return topi.matmul(a, b), [a, b]


@_case("matmul-transposed", "n")
def _(n=3):
    a, b = ph((5, n), "a"), ph((4, 5), "b")
    return topi.nn.matmul(a, b, transpose_a=True, transpose_b=True), [a, b]


@_case("batch-matmul", "n")
def _(n=2):
    a, b = ph((n, 3, 4), "a"), ph((n, 5, 4), "b")
    # With a symbolic batch, topi gives the output a batch variable of its own unless told.
    return topi.nn.batch_matmul(a, b, oshape=(n, 3, 5)), [a, b]


def _pool_case(kind, kernel, stride, dilation, padding):
    def build(b=1):
        X = ph((b, 2, 7, 7), "X")
        Y = topi.nn.pool2d(X, kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                           pool_type=kind, count_include_pad=False)
        return Y, [X], {"gens": {X: distinct}}
    return build


for _kind in ("max", "avg"):
    for _k, _s, _dl, _p in [((2, 2), (2, 2), (1, 1), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
                            ((2, 2), (1, 1), (2, 2), (0, 0, 0, 0)), ((3, 2), (2, 3), (2, 1), (1, 0, 1, 0))]:
        _add(f"pool2d-{_kind}-k{_k[0]}{_k[1]}-s{_s[0]}{_s[1]}-d{_dl[0]}{_dl[1]}-p{sum(_p)}",
             _pool_case(_kind, _k, _s, _dl, _p), "b")


@_case("global-pool-avg", "b")
def _(b=2):
    X = ph((b, 3, 4, 4), "X")
    return topi.nn.global_pool(X, "avg"), [X]


@_case("global-pool-max", "b")
def _(b=2):
    X = ph((b, 3, 3, 3), "X")
    return topi.nn.global_pool(X, "max"), [X], {"gens": {X: distinct}}


@_case("adaptive-pool-avg", "b")
def _(b=1):
    X = ph((b, 2, 5, 5), "X")
    return topi.nn.adaptive_pool(X, (2, 3), "avg"), [X]


@_case("adaptive-pool-max", "b")
def _(b=1):
    X = ph((b, 2, 5, 5), "X")
    return topi.nn.adaptive_pool(X, (2, 3), "max"), [X], {"gens": {X: distinct}}


@_case("reduce-prod-output-dependent-domain")
def _():
    # The reduce axis ranges over [0, i + 1): its domain depends on the output axis.
    A = ph((4, 4), "A")
    prod = te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t), name="prod")

    def body(i):
        k = te.reduce_axis((0, i + 1), name="k")
        return prod(A[i, k], axis=k)
    Y = te.compute((4,), body, name="Y")
    return Y, [A], {"gens": {A: uniform(0.5, 1.5)},
                    "reference": lambda a: np.array([a[i, :i + 1].prod() for i in range(4)])}


def _with_zeros(rng, shape, dtype):
    """Rows with no zero, one zero and two zeros (prod's gradient has a case for each)."""
    a = rng.uniform(0.5, 1.5, shape)
    a[1, 2] = a[2, 0] = a[2, 3] = 0.0
    return a.astype(dtype)


@_case("reduce-prod-zeros", "n")
def _(n=3):
    # d/dA[i,k] Π_k A[i,k] = Π_{k' != k} A[i,k']: P / A where no factor is zero, the product of the
    # others at a single zero, and 0 everywhere in a row with two zeros.
    A = ph((n, 4), "A")
    prod = te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t), name="prod")
    k = te.reduce_axis((0, 4), name="k")
    Y = te.compute((n,), lambda i: prod(A[i, k], axis=k), name="Y")
    return Y, [A], {"gens": {A: _with_zeros}, "reference": lambda a: a.prod(axis=1)}


@_case("softmax", "n")
def _(n=3):
    X = ph((n, 5), "X")
    return topi.nn.softmax(X, axis=-1), [X]


@_case("softmax-axis0-f32", "n")
def _(n=4):
    # The symbolic variant's softmax axis is symbolic.
    X = ph((n, 3), "X", F32)
    return topi.nn.softmax(X, axis=0), [X]


@_case("log-softmax", "n")
def _(n=3):
    X = ph((n, 5), "X")
    return topi.nn.log_softmax(X), [X]


@_case("layer-norm", "n")
def _(n=3):
    # topi's layer_norm supports float32 and float16 only.
    X, g, b = ph((n, 6), "X", F32), ph((6,), "g", F32), ph((6,), "b", F32)
    return topi.nn.layer_norm(X, g, b, axis=[1]), [X, g, b], {"eps": 3e-3}


@_case("reshape")
def _():
    X = ph((2, 3, 4), "X")
    Y = topi.reshape(X, (4, 6))
    return te.compute((4, 6), lambda i, j: Y[i, j] * Y[i, j], name="Z"), [X]


@_case("flatten", "b")
def _(b=2):
    X = ph((b, 2, 3, 2), "X")
    Y = topi.nn.flatten(X)
    return te.compute(Y.shape, lambda i, j: te.sin(Y[i, j]) * (j + 1.0), name="Z"), [X]


@_case("transpose", "n")
def _(n=2):
    X = ph((n, 3, 4), "X")
    Y = topi.transpose(X, (2, 0, 1))
    return te.compute(Y.shape, lambda a, b, c: Y[a, b, c] * (a * 3.0 + c), name="Z"), [X]


@_case("concatenate", "n")
def _(n=2):
    A, B = ph((n, 3), "A"), ph((4, 3), "B")
    return topi.concatenate([A, B, A], axis=0), [A, B]


@_case("concatenate-axis1", "n")
def _(n=2):
    A, B = ph((n, 3), "A"), ph((n, 2), "B")
    Y = topi.concatenate([A, B], axis=1)
    return te.compute(Y.shape, lambda i, j: Y[i, j] * Y[i, j], name="Z"), [A, B]


@_case("split")
def _():
    X = ph((6, 3), "X")
    a, b, c = topi.split(X, 3, axis=0)
    return te.compute((2, 3), lambda i, j: a[i, j] * c[i, j] + te.exp(b[i, j]), name="Z"), [X]


@_case("split-indices", "n")
def _(n=3):
    X = ph((n, 7), "X")
    a, b = topi.split(X, [2], axis=1)
    return te.compute((n, 2), lambda i, j: a[i, j] * b[i, j + 3], name="Z"), [X]


@_case("strided-slice")
def _():
    X = ph((5, 7), "X")
    Y = topi.strided_slice(X, [1, 0], [5, 7], [2, 3])
    return te.compute(Y.shape, lambda i, j: Y[i, j] * Y[i, j], name="Z"), [X]


@_case("take-clip", "n")
def _(n=4):
    # The symbolic variant has a symbolic number of indices.
    X, I = ph((5, 3), "X"), ph((n,), "I", "int32")
    Y = topi.take(X, I, axis=0, mode="clip")
    return te.compute(Y.shape, lambda i, j: Y[i, j] * Y[i, j], name="Z"), [X], {"gens": {I: integers(-2, 7)}}


@_case("take-flat-wrap")
def _():
    X, I = ph((3, 4), "X"), ph((2, 3), "I", "int32")
    return topi.take(X, I, mode="wrap"), [X], {"gens": {I: integers(0, 12)}}


@_case("pad", "b")
def _(b=1):
    X = ph((b, 2, 3, 3), "X")
    Y = topi.nn.pad(X, [0, 0, 1, 2], [0, 0, 2, 0], pad_value=0.5)
    return te.compute(Y.shape, lambda *i: Y(*i) * Y(*i), name="Z"), [X]


@_case("broadcast-arith", "n")
def _(n=3):
    A, B, C = ph((n, 1), "A"), ph((1, 4), "B"), ph((4,), "C")
    return topi.divide(topi.multiply(topi.add(A, B), C), topi.add(topi.exp(B), 1.0)), [A, B, C]


@_case("broadcast-subtract-power", "n")
def _(n=3):
    A, B = ph((2, n, 1), "A"), ph((n, 4), "B")
    return topi.power(topi.subtract(A, B), 2.0), [A, B]


@_case("einsum-matmul", "n")
def _(n=3):
    a, b = ph((n, 4), "a"), ph((4, 2), "b")
    return topi.einsum("ij,jk->ik", a, b), [a, b]


@_case("einsum-batched-trace", "n")
def _(n=2):
    a, b = ph((n, 3, 3), "a"), ph((n, 3), "b")
    return topi.einsum("bii,bj->bj", a, b), [a, b]


@_case("tensordot", "n")
def _(n=2):
    a, b = ph((n, 3, 4), "a"), ph((4, 3, 2), "b")
    return topi.tensordot(a, b, ((1, 2), (1, 0))), [a, b]


@_case("topi-activations", "n")
def _(n=3):
    X, S = ph((n, 4), "X"), ph((4,), "S")
    Y = topi.nn.leaky_relu(X, 0.1)
    Z = topi.nn.prelu(topi.tanh(Y), S, axis=1)
    return topi.sigmoid(topi.clip(Z, -0.8, 0.8)), [X, S], {"gens": {X: uniform(-2, 2)}}


@_case("topi-sum-max-reductions", "n")
def _(n=3):
    X = ph((n, 4, 2), "X")
    s = topi.sum(topi.exp(X), axis=(1, 2))
    m = topi.max(X, axis=1)
    return te.compute((n,), lambda i: s[i] * m[i, 0] + m[i, 1], name="Z"), [X], {"gens": {X: distinct}}


@_case("two-layer-convnet-cross-entropy", "batch")
def _(batch=2):
    x = ph((batch, 1, 6, 6), "x")
    w1, w2 = ph((2, 1, 3, 3), "w1"), ph((3, 2, 3, 3), "w2")
    fc, b = ph((4, 3 * 3 * 3), "fc"), ph((4,), "b")
    labels = ph((batch, 4), "labels")      # one-hot, not differentiated
    h1 = topi.nn.relu(topi.nn.conv2d(x, w1, strides=1, padding=1, dilation=1))
    h2 = topi.nn.relu(topi.nn.conv2d(h1, w2, strides=2, padding=1, dilation=1))
    logits = topi.nn.dense(topi.nn.flatten(h2), fc, b)
    logp = topi.nn.log_softmax(logits)
    n, c = te.reduce_axis((0, batch), name="n"), te.reduce_axis((0, 4), name="c")
    total = te.compute((), lambda: te.sum(-labels[n, c] * logp[n, c], axis=[n, c]), name="total")
    loss = te.compute((), lambda: total() / 2.0, name="loss")

    def onehot(rng, shape, dtype):
        return np.eye(shape[1], dtype=dtype)[rng.integers(0, shape[1], shape[0])]
    return loss, [x, w1, w2, fc, b], {"gens": {labels: onehot}}


# -- accessors ------------------------------------------------------------------------------------

IDS = [c.id for c in CASES]
_BY_ID = {c.id: c for c in CASES}
assert len(_BY_ID) == len(CASES), "duplicate op-table ids"


def case(cid: str) -> OpCase:
    return _BY_ID[cid]


class Differentiated:
    """One case's graph and its gradients for the head placeholder H of the output's shape, with
    the passes off (`naive`) and on (`opt`), one gradient per input."""

    def __init__(self, c: OpCase):
        self.out, self.inputs, self.check = c.build()
        self.dtype = str(self.out.dtype)
        self.head = te.placeholder(self.out.shape, self.dtype, name="H")
        self.naive = list(ad.differentiate(self.out, self.inputs, head=self.head, optimize=False))
        self.opt = list(ad.differentiate(self.out, self.inputs, head=self.head, optimize=True))


@functools.lru_cache(maxsize=None)
def differentiated(cid: str) -> Differentiated:
    return Differentiated(case(cid))


# -- symbolic-shape variants ----------------------------------------------------------------------

SYMBOLIC_IDS = [c.id for c in CASES if c.dim is not None]


def symbolic(cid: str) -> tuple[Built, dict]:
    """(the case built with its dimension `dim` a te.var named dim, {dim: size}): under these
    bindings the graph is the static `case(cid).build()`, the builder's default being that size."""
    c = case(cid)
    size = inspect.signature(c.builder).parameters[c.dim].default
    return c.build(**{c.dim: te.var(c.dim)}), {c.dim: size}
