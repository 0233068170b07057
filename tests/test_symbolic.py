"""Symbolic (dynamic) shapes keep zero elimination.

* Every symbolic-shape variant of the op table (tests/op_table.py, `SYMBOLIC_IDS`: the case with
  one dimension a `te.var`): the optimized gradient's work under the bindings that make it the
  static case is the static case's, within 10%, and `explain` without bindings names the one to
  pass (`test_symbolic_work`); and on the same data its
  values are those of the static case's optimized gradient, one unscheduled `ad.build` holding
  both (`test_symbolic_values`).  tests/test_passes.py compares that static gradient with the
  naive one (zero elimination off) on every case, so the symbolic one agrees with it too.
* dense with a symbolic batch, scheduled (`ad.build`'s default schedule): one compiled kernel at
  several batch sizes against numpy, with the static case's work at each.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from tvm import te, topi

import tvm_autodiff as ad
from gradcheck import make_values, normal, run_poisoned
from op_table import SYMBOLIC_IDS, case, symbolic
from tvm_autodiff.ir.graph import placeholders

TOLERANCE = 0.10      # |symbolic work / static work - 1|, at most

def _tols(dtype: str) -> dict:
    """Both gradients compute the same sums, possibly in another order."""
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 1e-6}


class Variant:
    """One symbolic variant: the static case and the symbolic graph with their optimized
    gradients, each for a head placeholder H of its output's shape."""

    def __init__(self, cid: str):
        self.static = case(cid).build()
        self.dynamic, self.bindings = symbolic(cid)
        self.head_s, self.head_d = (te.placeholder(b.out.shape, str(b.out.dtype), name="H")
                                    for b in (self.static, self.dynamic))
        self.opt_s = list(ad.differentiate(self.static.out, self.static.inputs, head=self.head_s))
        self.opt_d = list(ad.differentiate(self.dynamic.out, self.dynamic.inputs, head=self.head_d))


@functools.lru_cache(maxsize=None)
def variant(cid: str) -> Variant:
    return Variant(cid)


@pytest.mark.parametrize("cid", SYMBOLIC_IDS)
def test_symbolic_work(cid):
    v = variant(cid)
    static = ad.work(v.opt_s).iterations
    dynamic = ad.work(v.opt_d, bindings=v.bindings).iterations
    assert abs(dynamic - static) <= TOLERANCE * static, f"{cid}: symbolic {dynamic} vs static {static}"
    # explain never raises on a symbolic graph: it names the bindings to pass.
    (dim,) = v.bindings
    assert ad.explain(v.opt_d).startswith(f"symbolic dimensions {dim} are unbound")


@pytest.mark.parametrize("cid", SYMBOLIC_IDS)
def test_symbolic_values(cid):
    v = variant(cid)
    params_s, params_d = placeholders([v.static.out]), placeholders([v.dynamic.out])
    assert [t.name for t in params_s] == [t.name for t in params_d]
    fn = ad.build(v.opt_s + v.opt_d, params_s + [v.head_s] + params_d + [v.head_d], schedule=None)
    rng = np.random.default_rng(7)
    dtype = str(v.static.out.dtype)
    values = make_values(params_s, rng, v.static.check.get("gens"))
    head = np.asarray(normal(rng, tuple(int(d) for d in v.static.out.shape), dtype), dtype)
    res = run_poisoned(fn, *values, head, *values, head)
    n = len(v.static.inputs)
    for x, want, got in zip(v.static.inputs, res[:n], res[n:]):
        assert np.all(np.isfinite(got)), f"{cid}: d{x.name} (symbolic) is not finite"
        np.testing.assert_allclose(got, want, **_tols(str(x.dtype)),
                                   err_msg=f"{cid}: d{x.name}, symbolic vs static")


def _dense(batch):
    """dense(X, W) + c with X (batch, 64), W (32, 64); the gradients w.r.t. W and c for a head H."""
    X, W, c = (te.placeholder(s, name=n) for s, n in (((batch, 64), "X"), ((32, 64), "W"), ((32,), "c")))
    Y = topi.nn.dense(X, W, c)
    H = te.placeholder(Y.shape, name="H")
    return [X, H], list(ad.differentiate(Y, [W, c], head=H))


@pytest.fixture(scope="module")
def symbolic_dense():
    """The gradients of `_dense` at a symbolic batch b, and one scheduled kernel for any b."""
    inputs, grads = _dense(te.var("b"))
    return grads, ad.build(grads, inputs)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_symbolic_dense_scheduled_at_several_batches(symbolic_dense, batch):
    grads, fn = symbolic_dense
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 64)).astype("float32")
    h = rng.standard_normal((batch, 32)).astype("float32")
    dw, dc = fn(x, h)
    np.testing.assert_allclose(dw, h.T @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dc, h.sum(0), rtol=1e-5, atol=1e-5)
    static = ad.work(_dense(batch)[1])
    assert ad.work(grads, bindings={"b": batch}) == static
    assert static.per_op[grads[0].op.name] == 32 * 64 * batch     # dW: one sum over the batch


def test_dimension_expressions_bind_from_arrays():
    """An input whose dimension is n + 3 binds n (= 4 for 7 elements), which the kernel takes as a
    hidden parameter; the output of length 2n is sized from it.  Values and the gradient (for the
    head h[i] = i + 1: dX[j] = 2 (h[2j - 6] + h[2j - 5]) for j >= 3, else 0) against numpy, with
    the default schedule."""
    n = te.var("n")
    X = te.placeholder((n + 3,), name="X")
    Y = te.compute((2 * n,), lambda i: X[i // 2 + 3] * 2.0, name="Y")
    head = te.compute(Y.shape, lambda i: (i + 1).astype("float32"), name="h")
    (dX,) = ad.differentiate(Y, [X], head=head)
    fn = ad.build([Y, dX], [X])
    x = np.arange(7, dtype="float32")
    y, dx = fn(x)
    np.testing.assert_array_equal(y, 2 * np.repeat(x[3:], 2))
    h = np.arange(1, 9, dtype="float32")
    np.testing.assert_array_equal(dx, np.concatenate([np.zeros(3), 2 * (h[0::2] + h[1::2])]))


@pytest.mark.parametrize("shapes, message", [
    (((4,), (4,)), r"input 'Z': its dimension n \+ 1 is 5 with n = 4, but the array has shape \(4,\)"),
    (((4,), (3,)), r"input 'Z': its dimension n \+ 1 is 5 with n = 4"),
])
def test_dimension_expressions_that_disagree_are_refused(shapes, message):
    n = te.var("n")
    X, Z = te.placeholder((n,), name="X"), te.placeholder((n + 1,), name="Z")
    Y = te.compute((n,), lambda i: X[i] + Z[i + 1], name="Y")
    fn = ad.build([Y], [X, Z], schedule=None)
    with pytest.raises(ValueError, match=message):
        fn(*(np.zeros(s, "float32") for s in shapes))


def test_dimension_that_binds_nothing_is_refused():
    """n·n does not determine n linearly: the error names the input and the way out."""
    n = te.var("n")
    X = te.placeholder((n * n,), name="X")
    Y = te.compute((n * n,), lambda i: X[i] * 2.0, name="Y")
    fn = ad.build([Y], [X], schedule=None)
    with pytest.raises(ValueError, match=r"input 'X': its dimension n \* n cannot be bound .* "
                                         r"pass an input that has the variable itself"):
        fn(np.zeros(9, "float32"))
