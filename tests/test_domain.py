"""Exact reduction domains (passes/domain.py) against brute-force enumeration of point sets."""
import itertools
import random

import pytest
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var

from tvm_autodiff.ir.expr import is_const
from tvm_autodiff.passes import domain
from tvm_autodiff.passes.domain import from_isl_set, reduction_domain, to_isl

c = tirx.const

# ------------------------------------------------------------------ a tiny evaluator

_OPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%",
        tirx.EQ: "==", tirx.NE: "!=", tirx.LT: "<", tirx.LE: "<=", tirx.GT: ">", tirx.GE: ">=",
        tirx.And: "and", tirx.Or: "or"}


def _py(e, names):
    """Python source for an integer/bool TVM expr (floordiv/floormod are Python's // and %)."""
    e = e.asobject() if hasattr(e, "asobject") else e
    if isinstance(e, tirx.IntImm):
        return str(bool(e.value)) if str(e.ty.dtype) == "bool" else str(e.value)
    if isinstance(e, Var):
        return names[e]
    if type(e) in _OPS:
        return f"({_py(e.a, names)} {_OPS[type(e)]} {_py(e.b, names)})"
    if isinstance(e, (tirx.Min, tirx.Max)):
        return f"{'min' if isinstance(e, tirx.Min) else 'max'}({_py(e.a, names)}, {_py(e.b, names)})"
    if isinstance(e, tirx.Not):
        return f"(not {_py(e.a, names)})"
    if isinstance(e, tirx.Select):
        return f"({_py(e.true_value, names)} if {_py(e.condition, names)} else {_py(e.false_value, names)})"
    if isinstance(e, tirx.Cast):
        return _py(e.value, names)
    raise TypeError(type(e).__name__)


def compile_expr(e, variables):
    """A Python function of `variables` (in order) computing e."""
    names = {v: f"x{n}" for n, v in enumerate(variables)}
    return eval(f"lambda {', '.join(names.values())}: {_py(e, names)}")  # noqa: S307 (test helper)


def brute_force(red, outer, cond):
    """{outer values: set of reduce points satisfying cond within the original ranges}."""
    rv, ov = [v for v, _, _ in red], [v for v, _, _ in outer]
    f = compile_expr(cond, ov + rv)
    lo = [compile_expr(lo, ov) for _, lo, _ in red]
    ext = [compile_expr(e, ov) for _, _, e in red]
    out = {}
    for i in itertools.product(*[range(lo.value, lo.value + e.value) for _, lo, e in outer]):
        ranges = [range(l(*i), l(*i) + x(*i)) for l, x in zip(lo, ext)]
        out[i] = {k for k in itertools.product(*ranges) if f(*i, *k)}
    return out


def check_domain(red, outer, cond, exact=True):
    """reduction_domain(red, outer, cond) describes exactly the enumerated sets; with exact, the
    outer condition is exactly nonemptiness and the box is tight."""
    dom = reduction_domain(red, outer, cond)
    rv, ov = [v for v, _, _ in red], [v for v, _, _ in outer]
    truth = brute_force(red, outer, cond)
    assert [a.var for a in dom.axes] == rv
    if dom.empty:
        assert not any(truth.values())
        return dom
    if exact:
        assert any(truth.values()), "not marked empty although it is"
    outer_ok = compile_expr(dom.outer_cond, ov)
    residual = compile_expr(dom.residual, ov + rv)
    los = [compile_expr(a.lo, ov) for a in dom.axes]
    exts = [compile_expr(a.extent, ov) for a in dom.axes]
    for i, points in truth.items():
        if not outer_ok(*i):
            assert not points, f"outer_cond false at {i} but points {points}"
            continue
        if exact:
            assert points, f"outer_cond true at {i} but no points"
        box = [range(lo(*i), lo(*i) + ext(*i)) for lo, ext in zip(los, exts)]
        got = {k for k in itertools.product(*box) if residual(*i, *k)}
        assert got == points, f"at outer {i}"
        if exact:
            for d, r in enumerate(box):
                assert min(k[d] for k in points) == r.start and max(k[d] for k in points) == r.stop - 1
    return dom


# ------------------------------------------------------------------ random cases

def _lin(rng, vs):
    terms = [rng.choice([-2, -1, 1, 2]) * v for v in rng.sample(vs, rng.randint(1, min(3, len(vs))))]
    return sum(terms[1:], terms[0]) + rng.randint(-3, 3)


def _atom(rng, rv, ov):
    vs = rv + ov
    kind = rng.randrange(7)
    cmp = rng.choice([tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.EQ, tirx.NE])
    if kind <= 1:
        return cmp(_lin(rng, vs), _lin(rng, vs))
    if kind == 2:
        return cmp(tirx.floordiv(_lin(rng, vs), rng.choice([2, 3])), _lin(rng, vs))
    if kind == 3:
        d = rng.choice([2, 3])
        return rng.choice([tirx.EQ, tirx.NE, tirx.LT])(tirx.floormod(_lin(rng, vs), d), rng.randrange(d))
    if kind == 4:   # j == 2k + 1
        a, b = rng.choice(vs), rng.choice(rv)
        return tirx.EQ(a, rng.choice([1, 2, 3]) * b + rng.randint(-1, 1))
    if kind == 5:   # strided window  s·i <= j - k < s·i + K
        i = rng.choice(ov) if ov else c(0)
        j, k = (rng.sample(rv, 2) if len(rv) > 1 else [rv[0], c(0)])
        s, width = rng.choice([1, 2]), rng.randint(1, 3)
        return tirx.all(s * i <= j - k, j - k < s * i + width)
    return tirx.Not(cmp(_lin(rng, vs), _lin(rng, vs)))


def _conj(rng, rv, ov):
    return tirx.all(*[_atom(rng, rv, ov) for _ in range(rng.randint(1, 3))])


def random_case(seed):
    rng = random.Random(seed)
    ov = [tirx.Var(f"i{n}", "int32") for n in range(rng.randint(0, 2))]
    rv = [tirx.Var(f"k{n}", "int32") for n in range(rng.randint(1, 3))]
    outer = [(v, c(0), c(rng.randint(1, 4))) for v in ov]
    red = []
    for v in rv:
        lo = c(rng.randint(-1, 1))
        if ov and rng.random() < 0.2:    # a window that moves with an outer variable
            lo = rng.choice(ov) + lo
        red.append((v, lo, c(rng.randint(1, 5))))
    cond = _conj(rng, rv, ov)
    if rng.random() < 0.3:
        cond = tirx.Or(cond, _conj(rng, rv, ov))
    return red, outer, cond


@pytest.mark.parametrize("seed", range(200))
def test_random_against_enumeration(seed):
    check_domain(*random_case(seed))


def test_random_cases_cover_both_outcomes():
    doms = [reduction_domain(*random_case(seed)) for seed in range(200)]
    assert 10 < sum(d.empty for d in doms) < 190
    assert sum(not is_const(d.residual, True) for d in doms if not d.empty) > 10


# ------------------------------------------------------------------ unit tests

def test_conv_window_bounds_are_min_max():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    red, outer = [(k, c(0), c(3))], [(i, c(0), c(10))]
    dom = check_domain(red, outer, tirx.all(i - k >= 0, i - k < 8))
    (ax,) = dom.axes
    assert isinstance(ax.lo, tirx.Max)
    found = []
    tvm_ffi.structural_walk(ax.extent, (tirx.Min, found.append))
    assert found and is_const(dom.residual, True) and is_const(dom.outer_cond, True)


def test_two_dim_conv_window_stride_2():
    i, k, j = (tirx.Var(n, "int32") for n in "ikj")
    red, outer = [(k, c(0), c(3)), (j, c(0), c(9))], [(i, c(0), c(4))]
    dom = check_domain(red, outer, tirx.all(2 * i <= j - k, j - k < 2 * i + 1))
    assert str(dom.axes[0].extent) == "3"


def test_div_gives_aligned_block():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    dom = check_domain([(k, c(0), c(12))], [(i, c(0), c(3))], tirx.floordiv(k, 4) == i)
    (ax,) = dom.axes
    assert isinstance(ax.extent, tirx.IntImm) and ax.extent.value == 4
    assert [compile_expr(ax.lo, [i])(v) for v in range(3)] == [0, 4, 8]
    assert is_const(dom.residual, True) and is_const(dom.outer_cond, True)


def test_mod_stays_in_residual_as_floormod():
    k = tirx.Var("k", "int32")
    dom = check_domain([(k, c(0), c(10))], [], tirx.floormod(k, 3) == 1)
    assert dom.axes[0].lo.value == 1 and dom.axes[0].extent.value == 7
    found = []
    tvm_ffi.structural_walk(dom.residual, (tirx.FloorMod, found.append))
    assert found


def test_outer_condition_is_lifted():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    dom = check_domain([(k, c(0), c(10))], [(i, c(0), c(6))], k > i + 5)
    assert not is_const(dom.outer_cond, True)
    assert compile_expr(dom.outer_cond, [i])(3) and not compile_expr(dom.outer_cond, [i])(4)


def test_non_isl_atoms():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    A = te.placeholder((10,), "int32", name="A")
    inner = A[i] == k
    either = tirx.Or(k < 3, A[k] > 0)          # an Or with a load inside is kept whole
    dom = reduction_domain([(k, c(0), c(10))], [(i, c(0), c(4))],
                           tirx.all(inner, k < i + 3, either, i * i < 5, A[i] > 1))
    assert not dom.empty
    assert compile_expr(dom.axes[0].extent, [i])(2) == 5     # the Presburger part still bounds k

    def loads(e):
        out = []
        tvm_ffi.structural_walk(e, (Call, lambda x: out.append(x) if x.op.name == "te.tensor_load" else None))
        return out
    assert len(loads(dom.residual)) == 2 and len(loads(dom.outer_cond)) == 1
    found = []
    tvm_ffi.structural_walk(dom.residual, (tirx.Or, found.append))
    assert found
    found = []
    tvm_ffi.structural_walk(dom.outer_cond, (tirx.Mul, found.append))   # i*i < 5 is outer-only
    assert found


def test_non_affine_atom_enumerated():
    i, k, j = (tirx.Var(n, "int32") for n in "ikj")
    red, outer = [(k, c(0), c(4)), (j, c(0), c(4))], [(i, c(0), c(3))]
    check_domain(red, outer, tirx.all(k * j < 3 + i, k >= i), exact=False)


def test_infeasible_is_empty():
    i, k, j = (tirx.Var(n, "int32") for n in "ikj")
    red, outer = [(k, c(0), c(10)), (j, c(0), c(10))], [(i, c(0), c(4))]
    dom = check_domain(red, outer, tirx.all(k + j > 12 + 2 * i, k < 3, tirx.floormod(j, 2) == 0))
    assert dom.empty
    assert reduction_domain([(k, c(0), c(5))], [], tirx.all(2 * k == 2 * tirx.floordiv(k, 2) + 1)).empty


def test_int64_and_mixed_dtypes():
    i, k = tirx.Var("i", "int64"), tirx.Var("k", "int64")
    dom = reduction_domain([(k, c(0, "int64"), c(12, "int64"))], [(i, c(0, "int64"), c(3, "int64"))],
                           tirx.floordiv(k, 4) == i)
    assert str(dom.axes[0].lo.ty.dtype) == "int64" and str(dom.axes[0].extent.ty.dtype) == "int64"
    k32 = tirx.Var("k", "int32")
    dom = check_domain([(k32, c(0), c(12))], [(i, c(0, "int64"), c(3, "int64"))],
                       tirx.floordiv(k32.astype("int64"), 4) == i)
    assert str(dom.axes[0].lo.ty.dtype) == "int32"


def test_same_name_vars_are_distinct():
    a, b = tirx.Var("k", "int32"), tirx.Var("k", "int32")
    check_domain([(a, c(0), c(6)), (b, c(0), c(6))], [], tirx.all(a == 2 * b + 1))


def test_unknown_free_var_is_a_parameter():
    k, n = tirx.Var("k", "int32"), tirx.Var("n", "int32")
    dom = reduction_domain([(k, c(0), c(10))], [], tirx.all(k < n))
    for nv in range(-2, 13):
        ok = compile_expr(dom.outer_cond, [n])(nv)
        count = compile_expr(dom.axes[0].extent, [n])(nv) if ok else 0
        assert count == max(0, min(nv, 10))


def test_piecewise_bound_without_min_max_uses_select():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    # hi(i) = 9 if i is even else 8: not a min or max of the two pieces
    cond = tirx.Or(tirx.floormod(i, 2) == 0, k < 9)
    dom = check_domain([(k, c(0), c(10))], [(i, c(0), c(4))], cond)
    found = []
    tvm_ffi.structural_walk(dom.axes[0].extent, (tirx.Select, found.append))
    assert found


def test_to_isl_round_trip():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    A = te.placeholder((10,), "int32", name="A")
    cond = tirx.all(tirx.floormod(k + i, 3) != 1, tirx.Not(tirx.Or(k > 2 * i + 4, k < 0)), A[k] > 0)
    s, atoms = to_isl(cond, [k], [i])
    assert len(atoms) == 1
    back = compile_expr(from_isl_set(s, [k], [i], "int32"), [i, k])
    want = compile_expr(tirx.all(tirx.floormod(k + i, 3) != 1, k <= 2 * i + 4, k >= 0), [i, k])
    assert all(back(a, b) == want(a, b) for a in range(-3, 5) for b in range(-5, 15))


def test_isl_analysis_is_cached_across_var_objects():
    def run():
        i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
        return reduction_domain([(k, c(0), c(17))], [(i, c(0), c(5))], tirx.floordiv(k, 3) == i + 1)
    run()
    hits = domain._analyze.cache_info().hits
    run()
    assert domain._analyze.cache_info().hits == hits + 1


def test_no_reduce_vars_left():
    """Every reduce variable solved away: only the outer condition remains."""
    i = tirx.Var("i", "int32")
    dom = reduction_domain([], [(i, c(0), c(6))], tirx.all(i > 2, tirx.floormod(i, 2) == 0))
    assert dom.axes == () and is_const(dom.residual, True)
    assert [compile_expr(dom.outer_cond, [i])(v) for v in range(6)] == [v == 4 for v in range(6)]
    assert reduction_domain([], [(i, c(0), c(6))], i > 7).empty


def test_non_presburger_range_gives_the_trivial_domain():
    i, k = tirx.Var("i", "int32"), tirx.Var("k", "int32")
    cond = tirx.all(k < 2 * i, tirx.floormod(k, 2) == 0)
    dom = reduction_domain([(k, c(0), i * i)], [(i, c(0), c(4))], cond)
    assert not dom.empty and isinstance(dom.axes[0].extent, tirx.Mul) and dom.residual.same_as(cond)
    check_domain([(k, c(0), i * i)], [(i, c(0), c(4))], cond, exact=False)
