"""`ad.register_rule`: derivative rules for the user's own intrinsics and extern functions, and the
reducer rule table beside the intrinsic table."""
from __future__ import annotations

import numpy as np
import pytest
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call

import tvm_autodiff as ad
from gradcheck import check_grad, positive
from tvm_autodiff.frontend import reducers, rules
from tvm_autodiff.ir.graph import rebuild
from tvm_autodiff.ir.reductions import REDUCER_KINDS

F64 = "float64"


@pytest.fixture(autouse=True)
def private_rule_table(monkeypatch):
    """Each test registers into its own copy of the intrinsic table."""
    monkeypatch.setattr(rules, "CALL_RULES", dict(rules.CALL_RULES))


def extern(name: str, x):
    return tirx.call_pure_extern(F64, name, x)


def test_extern_rule_checked_against_finite_differences():
    """cbrt (libm's cube root, which LLVM links) as a user extern, with d cbrt(x) = dx / (3 cbrt(x)²):
    compiled and compared with central finite differences of the compiled forward."""
    ad.register_rule("cbrt", lambda e, d: rules.scale(rules.const(1.0 / 3.0, e) / (e * e), d(e.args[1])))
    A, B = te.placeholder((3, 4), F64, name="A"), te.placeholder((4,), F64, name="B")
    Y = te.compute((3, 4), lambda i, j: extern("cbrt", A[i, j] * B[j]) * A[i, j], name="Y")
    check_grad(Y, [A, B], gens={A: positive, B: positive}, full=True,
               reference=lambda a, b: np.cbrt(a * b) * a)


def _replace_extern(tensors, name: str, fn):
    """The graph of `tensors` with every call of extern `name` replaced by fn(arg), so that it
    compiles."""
    def visit(c):
        if c.op.name == "tirx.call_pure_extern" and c.args[0].value == name:
            return fn(c.args[1])
        return c
    out, _ = rebuild(tensors, lambda op, bodies: [tvm_ffi.structural_map(b, (Call, visit)) for b in bodies])
    return out


def test_extern_rule_for_a_function_llvm_does_not_know():
    """my_cube(x) = x³ with the rule 3x²·dx: the gradient graph is plain TE over A and the head;
    with my_cube replaced by x·x·x it compiles, and it matches 3a²·h (and tanh's chain rule)."""
    ad.register_rule("my_cube", lambda e, d: rules.scale(3.0 * e.args[1] * e.args[1], d(e.args[1])))
    A, H = te.placeholder((5,), F64, name="A"), te.placeholder((5,), F64, name="H")
    Y = te.compute((5,), lambda i: te.tanh(extern("my_cube", A[i])), name="Y")
    (dA,) = ad.differentiate(Y, [A], H)
    (dA,) = _replace_extern([dA], "my_cube", lambda x: x * x * x)
    rng = np.random.default_rng(0)
    a, h = rng.uniform(-1, 1, 5), rng.standard_normal(5)
    got = ad.build(dA, [A, H])(a, h)
    np.testing.assert_allclose(got, h * (1 - np.tanh(a ** 3) ** 2) * 3 * a ** 2, rtol=1e-12)


def test_intrinsics_are_keyed_by_op_name():
    """A rule registered under an Op name replaces the built-in one (here a deliberately doubled
    d exp), and call_key names externs by their function and intrinsics by their Op."""
    ad.register_rule("tirx.exp", lambda e, d: rules.scale(2.0 * e, d(e.args[0])))
    A, H = te.placeholder((4,), F64, name="A"), te.placeholder((4,), F64, name="H")
    Y = te.compute((4,), lambda i: te.exp(A[i]), name="Y")
    (dA,) = ad.differentiate(Y, [A], H)
    a, h = np.linspace(-1, 1, 4), np.arange(1.0, 5.0)
    np.testing.assert_allclose(ad.build(dA, [A, H])(a, h), 2 * np.exp(a) * h, rtol=1e-12)
    assert rules.call_key(te.exp(A[0])) == "tirx.exp"
    assert rules.call_key(extern("my_fn", A[0])) == "my_fn"
    assert rules.call_key(tirx.call_extern(F64, "my_fn", A[0])) == "my_fn"


def test_missing_rule_names_register_rule():
    A = te.placeholder((3,), F64, name="A")
    Y = te.compute((3,), lambda i: extern("my_special_fn", A[i]), name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"register_rule\('my_special_fn', rule\)") as err:
        ad.differentiate(Y, [A])
    assert "extern function 'my_special_fn'" in str(err.value) and "manual=" in str(err.value)


@pytest.mark.parametrize("name,fn,match", [
    ("", lambda e, d: None, "non-empty string"),
    (None, lambda e, d: None, "non-empty string"),
    ("my_fn", 3.0, "callable"),
])
def test_register_rule_checks_its_arguments(name, fn, match):
    with pytest.raises(TypeError, match=match):
        ad.register_rule(name, fn)


def _combiner(reducer, X, dtypes=1):
    k = te.reduce_axis((0, 4), name="k")
    if dtypes == 1:
        return te.compute((3,), lambda i: reducer(X[i, k], axis=k), name="R").op.body[0].combiner
    out = te.compute((3,), lambda i: reducer((k.var, X[i, k]), axis=k), name="R")
    return out[0].op.body[0].combiner


def test_one_classification_of_combiners_and_one_reducer_rule_per_kind():
    assert set(reducers.REDUCER_RULES) == set(REDUCER_KINDS)
    X = te.placeholder((3, 4), F64, name="X")
    pick = lambda x, y: x[1] >= y[1]  # noqa: E731
    argmax = te.comm_reducer(lambda x, y: (tirx.Select(pick(x, y), x[0], y[0]), tirx.Select(pick(x, y), x[1], y[1])),
                             lambda t0, t1: (tirx.const(-1, t0), tirx.min_value(t1)), name="argmax")
    sum_max = te.comm_reducer(lambda x, y: (x[0] + y[0], tirx.max(x[1], y[1])),
                              lambda t0, t1: (tirx.const(0, t0), tirx.min_value(t1)), name="sum_max")
    lse = te.comm_reducer(lambda x, y: te.log(te.exp(x) + te.exp(y)), lambda t: tirx.min_value(t), name="lse")
    sum_from_5 = te.comm_reducer(lambda x, y: x + y, lambda t: tirx.const(5, t), name="sum5")
    kind = ad.ir.reductions.reducer_kind
    assert [kind(_combiner(r, X)) for r in (te.sum, te.max, te.min)] == ["sum", "max", "min"]
    assert kind(_combiner(te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t)), X)) == "prod"
    assert [kind(_combiner(argmax, X, 2), v) for v in (0, 1)] == ["selection", "selection"]
    assert [kind(_combiner(sum_max, X, 2), v) for v in (0, 1)] == ["sum", "max"]
    assert kind(_combiner(lse, X)) == "generic"
    assert kind(_combiner(sum_from_5, X)) == "generic"   # a sum needs the identity 0
