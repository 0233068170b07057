"""Random tensor expressions (hypothesis): zero elimination keeps gradients unchanged, and both the
naive and the optimized gradients match finite differences.

Each example is a chain of 1-3 `te.compute`s over one or two float64 placeholders.  Bodies mix
reads through random index maps (affine with strides and offsets, diagonals A[i, i], reversals
A[n-1-i], div/mod maps A[(a*i + b)//d], A[x % d], reshape-like flat reads A[i*W + j], windows
s*i + k over reduce variables), padding-like guards if_then_else(idx >= 0 && idx < n, T[idx], 0),
selects on index conditions, products of two reads and intrinsics (exp, tanh, sigmoid, sqrt of a
positive value), under sum reductions over 0-2 axes.

An example is generated as plain data first (index maps are small trees), so every index range is
computed exactly by enumerating the (tiny) loop box: placeholders get the shape max index + 1,
reads of intermediates that may leave the tensor get an explicit guard.  One module per example
holds the forward output, the naive gradients (optimize=False) and the optimized gradients for a
random head H (L = Σ H·out); the finite differences reuse that module's forward output.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import te, tirx

import tvm_autodiff as ad
from gradcheck import run_poisoned
from tvm_autodiff.ir.graph import placeholders

F64 = "float64"
ZERO = tirx.const(0.0, F64)

# -- index trees: ("v", name) ("c", int) ("+", a, b) ("-", a, b) ("*", int, a) ("//", a, d) ("%", a, d)
# -- conditions:  ("<", a, b) ("<=", a, b) ("==", a, b) ("and", p, q) ("or", p, q) ("not", p)


def ev(t, env: dict) -> int:
    op = t[0]
    if op == "v":
        return env[t[1]]
    if op == "c":
        return t[1]
    if op == "+":
        return ev(t[1], env) + ev(t[2], env)
    if op == "-":
        return ev(t[1], env) - ev(t[2], env)
    if op == "*":
        return t[1] * ev(t[2], env)
    if op == "//":
        return ev(t[1], env) // t[2]        # Python floor division == TVM floordiv
    if op == "%":
        return ev(t[1], env) % t[2]         # Python modulo == TVM floormod
    raise ValueError(op)


def to_te(t, vars: dict):
    op = t[0]
    if op == "v":
        return vars[t[1]]
    if op == "c":
        return tirx.const(t[1], "int32")
    if op == "+":
        return to_te(t[1], vars) + to_te(t[2], vars)
    if op == "-":
        return to_te(t[1], vars) - to_te(t[2], vars)
    if op == "*":
        return t[1] * to_te(t[2], vars)
    if op == "//":
        return tirx.floordiv(to_te(t[1], vars), t[2])
    if op == "%":
        return tirx.floormod(to_te(t[1], vars), t[2])
    if op == "<":
        return to_te(t[1], vars) < to_te(t[2], vars)
    if op == "<=":
        return to_te(t[1], vars) <= to_te(t[2], vars)
    if op == "==":
        return tirx.EQ(to_te(t[1], vars), to_te(t[2], vars))
    if op == "and":
        return tirx.And(to_te(t[1], vars), to_te(t[2], vars))
    if op == "or":
        return tirx.Or(to_te(t[1], vars), to_te(t[2], vars))
    if op == "not":
        return tirx.Not(to_te(t[1], vars))
    raise ValueError(op)


def show(t) -> str:
    op = t[0]
    if op in ("v", "c"):
        return str(t[1])
    if op == "*":
        return f"{t[1]}*{show(t[2])}"
    if op == "not":
        return f"!({show(t[1])})"
    if op in ("//", "%"):
        return f"({show(t[1])} {op} {t[2]})"
    return f"({show(t[1])} {op} {show(t[2])})"


# -- the example, as data -------------------------------------------------------------------------


@dataclass
class Read:
    src: tuple          # ("ph", n) or ("comp", n)
    idx: list           # index trees, one per dimension of the source


@dataclass
class Layer:
    shape: tuple        # output extents
    red: tuple          # reduce extents
    body: tuple         # value tree: ("read", Read) ("un", name, a) ("bin", op, a, b)
                        #             ("sel", cond, a, b | None) ("scale", float, a)
    reads: list = field(default_factory=list)

    def vars(self):
        return ([(f"o{d}", n) for d, n in enumerate(self.shape)]
                + [(f"r{d}", n) for d, n in enumerate(self.red)])

    def box(self):
        names = [v for v, _ in self.vars()]
        for pt in itertools.product(*[range(n) for _, n in self.vars()]):
            yield dict(zip(names, pt))


@dataclass
class Example:
    ranks: list         # rank of each placeholder
    layers: list

    def describe(self) -> str:
        lines = [f"placeholders ranks {self.ranks}"]
        for n, L in enumerate(self.layers):
            lines.append(f"T{n}{list(L.shape)} = sum over {list(L.red)}: {show_value(L.body)}")
        return "\n".join(lines)


def show_value(v) -> str:
    k = v[0]
    if k == "read":
        r = v[1]
        name = f"P{r.src[1]}" if r.src[0] == "ph" else f"T{r.src[1]}"
        return f"{name}[{', '.join(show(i) for i in r.idx)}]"
    if k == "un":
        return f"{v[1]}({show_value(v[2])})"
    if k == "bin":
        return f"({show_value(v[2])} {v[1]} {show_value(v[3])})"
    if k == "sel":
        return f"select({show(v[1])}, {show_value(v[2])}, {show_value(v[3]) if v[3] else 0})"
    if k == "scale":
        return f"{v[1]}*{show_value(v[2])}"
    raise ValueError(k)


# -- strategies -------------------------------------------------------------------------------------


@st.composite
def index_tree(draw, vars):
    """One index expression over `vars` [(name, extent)]; always >= 0 except 'shift'."""
    name, ext = draw(st.sampled_from(vars))
    kind = draw(st.sampled_from(["affine", "affine", "affine", "reverse", "div", "mod", "shift",
                                 "flat", "const"]))

    def affine():
        t = ("v", name)
        a = draw(st.integers(1, 3))
        if a > 1:
            t = ("*", a, t)
        others = [v for v in vars if v[0] != name]
        if others and draw(st.booleans()):
            w, _ = draw(st.sampled_from(others))
            t = ("+", t, ("*", draw(st.integers(1, 2)), ("v", w)))
        off = draw(st.integers(0, 2))
        return ("+", t, ("c", off)) if off else t

    if kind == "affine":
        return affine()
    if kind == "reverse":
        return ("-", ("c", ext - 1 + draw(st.integers(0, 1))), ("v", name))
    if kind == "div":
        return ("//", affine(), draw(st.integers(2, 3)))
    if kind == "mod":
        return ("%", affine(), draw(st.integers(2, 3)))
    if kind == "shift":      # padding-like: i - s, guarded below by i - s >= 0
        return ("-", ("v", name), ("c", draw(st.integers(1, 2))))
    if kind == "flat":       # reshape-like: i * W + j over a flattened source
        others = [v for v in vars if v[0] != name]
        if not others:
            return affine()
        w, wext = draw(st.sampled_from(others))
        return ("+", ("*", wext, ("v", name)), ("v", w))
    return ("c", draw(st.integers(0, 1)))


@st.composite
def condition(draw, vars):
    name, ext = draw(st.sampled_from(vars))
    kind = draw(st.sampled_from(["ge", "lt", "lt2", "parity", "eq"]))
    if kind == "ge":          # padding-like i >= s
        c = ("<=", ("c", draw(st.integers(1, max(1, ext - 1)))), ("v", name))
    elif kind == "lt":
        c = ("<", ("v", name), ("c", draw(st.integers(1, max(1, ext - 1)))))
    elif kind == "lt2":
        w, _ = draw(st.sampled_from(vars))
        c = ("<", ("v", name), ("+", ("v", w), ("c", draw(st.integers(0, 1)))))
    elif kind == "parity":
        w, _ = draw(st.sampled_from(vars))
        c = ("==", ("%", ("+", ("v", name), ("v", w)), 2), ("c", 0))
    else:
        w, _ = draw(st.sampled_from(vars))
        c = ("==", ("v", name), ("v", w))
    combine = draw(st.sampled_from([None, None, "and", "or", "not"]))
    if combine == "not":
        return ("not", c)
    if combine:
        return (combine, c, draw(condition(vars)))
    return c


@st.composite
def read(draw, vars, state, layer_no):
    """A read of a placeholder (new or existing) or an earlier compute."""
    options = []
    if layer_no > 0:
        options += [("comp", layer_no - 1)] * 2 + [("comp", n) for n in range(layer_no - 1)]
    options += [("ph", n) for n in range(len(state["ranks"]))]
    if len(state["ranks"]) < 2:
        options += [("ph", len(state["ranks"]))] * 2
    src = draw(st.sampled_from(options))
    if src[0] == "ph":
        if src[1] == len(state["ranks"]):
            state["ranks"].append(draw(st.integers(1, 2)))
        rank = state["ranks"][src[1]]
    else:
        rank = len(state["shapes"][src[1]])
    idx = [draw(index_tree(vars)) for _ in range(rank)]
    if rank == 2 and draw(st.integers(0, 5)) == 0:    # diagonal A[e, e]
        idx[1] = idx[0]
    return Read(src, idx)


@st.composite
def value(draw, vars, state, layer_no, depth):
    kind = "read" if depth == 0 else draw(st.sampled_from(
        ["read", "read", "un", "bin", "bin", "mul", "sel", "scale"]))
    if kind == "read":
        return ("read", draw(read(vars, state, layer_no)))
    sub = lambda: draw(value(vars, state, layer_no, depth - 1))  # noqa: E731
    if kind == "un":
        return ("un", draw(st.sampled_from(["exp", "tanh", "sigmoid", "sqrt", "square"])), sub())
    if kind == "bin":
        return ("bin", draw(st.sampled_from(["+", "-", "*"])), sub(), sub())
    if kind == "mul":         # a product of two reads
        return ("bin", "*", ("read", draw(read(vars, state, layer_no))),
                ("read", draw(read(vars, state, layer_no))))
    if kind == "sel":
        other = sub() if draw(st.booleans()) else None
        return ("sel", draw(condition(vars)), sub(), other)
    return ("scale", draw(st.sampled_from([0.5, -1.5, 2.0])), sub())


@st.composite
def examples(draw):
    state = {"ranks": [], "shapes": []}
    layers = []
    for n in range(draw(st.integers(1, 3))):
        rank = draw(st.integers(1, 2))
        shape = tuple(draw(st.integers(2, 4 if rank == 1 else 3)) for _ in range(rank))
        red = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.sampled_from([0, 1, 1, 2]))))
        L = Layer(shape, red, None)
        L.body = draw(value(L.vars(), state, n, draw(st.integers(0, 2))))
        layers.append(L)
        state["shapes"].append(shape)
    return Example(state["ranks"], layers)


# -- building ---------------------------------------------------------------------------------------


def _reads_of(v, out):
    if v[0] == "read":
        out.append(v[1])
    else:
        for part in v[1:]:
            if isinstance(part, tuple) and part and part[0] in ("read", "un", "bin", "sel", "scale"):
                _reads_of(part, out)
    return out


def placeholder_shapes(ex: Example) -> list:
    """Each placeholder's shape: per dimension, the largest index any read can produce, plus one."""
    hi = [[0] * r for r in ex.ranks]
    for L in ex.layers:
        reads = [r for r in _reads_of(L.body, []) if r.src[0] == "ph"]
        for env in L.box():
            for r in reads:
                for d, t in enumerate(r.idx):
                    hi[r.src[1]][d] = max(hi[r.src[1]][d], ev(t, env))
    return [tuple(h + 1 for h in hs) for hs in hi]


def guards(L: Layer, r: Read, shape) -> list:
    """Conditions that keep r's indices inside `shape` over L's box: idx >= 0 where an index can
    be negative, idx < n where it can reach n (padding-like reads)."""
    out = []
    for d, t in enumerate(r.idx):
        vals = [ev(t, env) for env in L.box()]
        if min(vals) < 0:
            out.append(("<=", ("c", 0), t))
        if max(vals) >= shape[d]:
            out.append(("<", t, ("c", shape[d])))
    return out


UNARY = {
    "exp": lambda x: te.exp(x * 0.3),
    "tanh": te.tanh,
    "sigmoid": te.sigmoid,
    "sqrt": lambda x: te.sqrt(x * x + 1.0),
    "square": lambda x: x * x,
}


def build_te(ex: Example):
    phs = [te.placeholder(s, F64, name=f"P{n}") for n, s in enumerate(placeholder_shapes(ex))]
    comps = []
    for n, L in enumerate(ex.layers):
        raxes = [te.reduce_axis((0, e), name=f"r{d}") for d, e in enumerate(L.red)]
        comps.append(te.compute(L.shape, _body_fn(L, raxes, phs, comps), name=f"T{n}"))
    return comps[-1]


def _body_fn(L: Layer, raxes, phs, comps):
    """fcompute for layer L (te.compute rejects keyword-default closures)."""
    def fbody(*outer):
        vars = {f"o{d}": v for d, v in enumerate(outer)}
        vars.update({f"r{d}": rv.var for d, rv in enumerate(raxes)})

        def val(v):
            k = v[0]
            if k == "read":
                r = v[1]
                T = phs[r.src[1]] if r.src[0] == "ph" else comps[r.src[1]]
                load = T(*[to_te(t, vars) for t in r.idx])
                g = guards(L, r, [int(s) for s in T.shape])
                if not g:
                    return load
                cond = to_te(g[0], vars)
                for c in g[1:]:
                    cond = tirx.And(cond, to_te(c, vars))
                return te.if_then_else(cond, load, ZERO)
            if k == "un":
                return UNARY[v[1]](val(v[2]))
            if k == "bin":
                a, b = val(v[2]), val(v[3])
                return a + b if v[1] == "+" else a - b if v[1] == "-" else a * b
            if k == "sel":
                return tirx.Select(to_te(v[1], vars), val(v[2]), val(v[3]) if v[3] else ZERO)
            if k == "scale":
                return val(v[2]) * v[1]
            raise ValueError(k)

        body = val(L.body)
        return te.sum(body, axis=raxes) if raxes else body
    return fbody


# -- the property --------------------------------------------------------------------------------------


def check_example(ex: Example, seed: int = 0):
    out = build_te(ex)
    inputs = placeholders([out])
    H = te.placeholder(out.shape, F64, name="H")
    naive = list(ad.differentiate(out, inputs, head=H, optimize=False))
    opt = list(ad.differentiate(out, inputs, head=H, optimize=True))
    f = ad.build([out] + naive + opt, inputs + [H], schedule=None)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(tuple(int(d) for d in x.shape)) for x in inputs]
    h = rng.standard_normal(tuple(int(d) for d in out.shape))
    res = run_poisoned(f, *xs, h)     # unwritten outputs read as NaN
    n = len(inputs)
    y, g0, g1 = res[0], res[1:1 + n], res[1 + n:]
    assert np.all(np.isfinite(y))
    # passes on == passes off
    for x, a, b in zip(inputs, g0, g1):
        scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=f"d{x.name}: passes on vs off\n{ex.describe()}")
    # both against central finite differences along a random direction (all inputs at once)
    vs = [rng.standard_normal(x.shape) for x in xs]
    eps = 1e-6

    def loss(vals):
        return float(np.sum(h * f(*vals, h)[0]))
    num = (loss([x + eps * v for x, v in zip(xs, vs)]) - loss([x - eps * v for x, v in zip(xs, vs)])) / (2 * eps)
    for name, gs in (("naive", g0), ("optimized", g1)):
        ana = sum(float(np.sum(g * v)) for g, v in zip(gs, vs))
        scale = sum(float(np.sum(np.abs(g * v))) for g, v in zip(gs, vs))
        assert abs(ana - num) <= 1e-7 + 1e-5 * max(scale, abs(num)), (
            f"{name} gradient: <g, v> = {ana!r}, finite differences {num!r}\n{ex.describe()}")


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(examples())
def test_random_expressions(ex):
    check_example(ex)
