"""Conventions at the points where a derivative is not unique (ties, kinks, 0·∞), and NaN and inf.

Where PyTorch 2.13 fixes a value and matching it is cheap, we match it, and the tests pin the
numbers (closed forms, float64; finite differences where the function is differentiable).  Where
we keep another convention, or where TVM's own forward semantics differ, the test pins what we
do and the docstring says so:

- elementwise max/min: ties split 0.5/0.5 (torch.maximum/minimum); a tie with a constant gives 0,
  so relu'(0) = 0 (torch.relu) and clip's bounds give 0 (torch.clamp gives 1 there: kept);
- abs'(0) = 0, copysign'(0, y) = 0, atan2 at the origin 0, pow at a zero base as PyTorch;
- max/min reductions: with output axes the first extremal index (torch.max(dim), max_pool; but
  torch.amax(dim) would spread: kept), to a 0-d tensor shared evenly (x.max());
- TVM computes max(a, b) as a > b ? a : b, so NaN does not propagate as in PyTorch; gradients
  follow the forward's choice, with and without zero elimination.
"""
from __future__ import annotations

import numpy as np
import pytest
from tvm import sym, te, tirx, topi

import tvm_autodiff as ad
from gradcheck import check_grad, uniform

F64 = "float64"
NAN, INF = np.nan, np.inf


def ph(shape, name, dtype=F64):
    return te.placeholder(shape, dtype, name=name)


def value_and_grads(out, inputs, values, head, optimize=True):
    """[out, d(Σ head·out)/d input...] for the placeholders `inputs` (in that order) = `values`."""
    H = ph(out.shape, "H", str(out.dtype))
    grads = ad.differentiate(out, inputs, H, optimize=optimize)
    return ad.build([out, *grads], [*inputs, H])(*values, np.asarray(head, str(out.dtype)))


def elementwise(fn, n, *arrays):
    """Y[i] = fn(A[i], B[i], ...) over 1-d float64 placeholders of len(arrays[0])."""
    args = [ph((len(arrays[0]),), "AB"[k]) for k in range(n)]
    return te.compute(args[0].shape, lambda i: fn(*[a[i] for a in args]), name="Y"), args


# -- elementwise ties and kinks ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max", "min"])
def test_elementwise_ties_split_evenly(name):
    """torch.maximum/minimum: at a == b each operand gets half of the head."""
    a = np.array([1.0, 2.0, -3.0, 0.0, INF])
    b = np.array([1.0, 1.0, 5.0, 0.0, INF])
    h = np.array([2.0, 3.0, 5.0, -4.0, 1.0])
    Y, (A, B) = elementwise(te.max if name == "max" else te.min, 2, a)
    _, da, db = value_and_grads(Y, [A, B], [a, b], h)
    a_wins = a > b if name == "max" else a < b
    tie = a == b
    np.testing.assert_array_equal(da, h * (a_wins + 0.5 * tie))
    np.testing.assert_array_equal(db, h * (~a_wins & ~tie) + 0.5 * h * tie)


def test_max_of_a_tensor_with_itself_is_the_identity():
    """max(A, A): the two halves of the tie add up to the whole head."""
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: te.max(A[i], A[i]), name="Y")
    h = np.array([1.0, -2.0, 3.0])
    _, da = value_and_grads(Y, [A], [np.array([0.5, 0.5, -1.0])], h)
    np.testing.assert_array_equal(da, h)


@pytest.mark.parametrize("fn, expected", [
    # torch.relu'(0) = 0; max(c, x) with the constant first: the same.
    (topi.nn.relu, [0.0, 0.0, 1.0]),
    (lambda X: te.compute(X.shape, lambda i: te.max(tirx.const(0.0, F64), X[i]), name="Y"), [0.0, 0.0, 1.0]),
    (lambda X: te.compute(X.shape, lambda i: te.min(X[i], tirx.const(0.0, F64)), name="Y"), [1.0, 0.0, 0.0]),
    # torch.abs'(0) = sign(0) = 0.
    (topi.abs, [-1.0, 0.0, 1.0]),
    # leaky_relu and prelu are select(x > 0, x, αx): α at 0, as torch's leaky_relu.
    (lambda X: topi.nn.leaky_relu(X, 0.25), [0.25, 0.25, 1.0]),
    # clip(x, 0, 1) = max(min(x, 1), 0): 0 at both bounds, where torch.clamp passes the gradient
    # (its mask is lo <= x <= hi).  Kept: torch.relu and torch.clamp(min=0) disagree at 0, and
    # relu is the common case.
    (lambda X: topi.clip(X, 0.0, 1.0), [0.0, 0.0, 0.0]),
])
def test_kinks_at_zero(fn, expected):
    X = ph((3,), "X")
    _, dx = value_and_grads(fn(X), [X], [np.array([-1.0, 0.0, 1.0])], np.ones(3))
    np.testing.assert_array_equal(dx, expected)


def test_clip_inside_and_outside():
    x = np.array([-2.0, 0.0, 0.25, 1.0, 3.0])
    X = ph((5,), "X")
    _, dx = value_and_grads(topi.clip(X, 0.0, 1.0), [X], [x], np.full(5, 2.0))
    np.testing.assert_array_equal(dx, [0.0, 0.0, 2.0, 0.0, 0.0])


def test_copysign_at_zero_and_negative_zero():
    """d/dx copysign(x, y) = sign(x)·sign(y), read off the sign bits (y = -0.0 is negative), and 0
    at x = 0 (PyTorch: copysign(x, y)/x, masked at x = 0); 0 with respect to y."""
    a = np.array([0.0, -0.0, 1.0, -1.0, 2.0, 3.0])
    b = np.array([1.0, -1.0, -1.0, 2.0, -0.0, 0.0])
    Y, (A, B) = elementwise(tirx.copysign, 2, a)
    y, da, db = value_and_grads(Y, [A, B], [a, b], np.ones(6))
    np.testing.assert_array_equal(y, np.copysign(a, b))
    np.testing.assert_array_equal(da, [0.0, 0.0, -1.0, -1.0, -1.0, 1.0])
    np.testing.assert_array_equal(db, np.zeros(6))


def test_atan2_at_the_origin():
    """PyTorch's atan2 gradient is 0 at (0, 0), where x/(x²+y²) is 0/0; elsewhere the formula."""
    y = np.array([0.0, 1.0, -2.0])
    x = np.array([0.0, 1.0, 0.5])
    Y, (A, B) = elementwise(tirx.atan2, 2, y)
    _, dy, dx = value_and_grads(Y, [A, B], [y, x], np.ones(3))
    r2 = x[1:] ** 2 + y[1:] ** 2
    np.testing.assert_allclose(dy, [0.0, *(x[1:] / r2)], rtol=1e-15)
    np.testing.assert_allclose(dx, [0.0, *(-y[1:] / r2)], rtol=1e-15)


# -- pow at a zero base ------------------------------------------------------------------------------

def test_pow_at_zero_base_matches_pytorch():
    """PyTorch 2.13: d/dx x^y at x = 0 is 0 for y = 0 (masked), y·0^(y-1) otherwise (∞ for
    0 < y < 1, 1 for y = 1, 0 for y > 1, -∞ for y < 0); d/dy is 0 for x = 0, y ≥ 0, else
    x^y·log x (-∞ for y < 0).  The plain formula gave NaN for dx(0, 0) and dy(0, y ≥ 0)."""
    y = np.array([0.0, 0.5, 1.0, 2.0, 3.0, -1.0, 0.0, 2.0])
    x = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0])
    P, (X, Y) = elementwise(te.power, 2, x)
    p, dx, dy = value_and_grads(P, [X, Y], [x, y], np.ones(8))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(p, np.power(x, y))
    np.testing.assert_array_equal(dx, [0.0, INF, 1.0, 0.0, 0.0, -INF, 0.0, 6.0])
    np.testing.assert_allclose(dy, [0.0, 0.0, 0.0, 0.0, 0.0, -INF, np.log(2.0), 9 * np.log(3.0)],
                               rtol=1e-15)


def _pow_at_zero(exponents):
    """P = X^Y with X = 0 and Y = `exponents` in every row."""
    X, Y = ph((2, 4), "X"), ph((2, 4), "Y")
    P = te.compute((2, 4), lambda i, j: te.power(X[i, j], Y[i, j]), name="P")
    gens = {X: lambda rng, shape, dtype: np.zeros(shape, dtype),
            Y: lambda rng, shape, dtype: np.tile(np.array(exponents, dtype), (shape[0], 1))}
    return P, X, Y, gens


def test_pow_at_zero_base_finite_differences_in_x():
    """x^y at x = 0 is differentiable in x for y ∈ {0, 1, 2, 3} (central differences reach x < 0,
    fine for integer y)."""
    P, X, Y, gens = _pow_at_zero([0.0, 1.0, 2.0, 3.0])
    check_grad(P, [X], gens=gens, full=True)


def test_pow_at_zero_base_finite_differences_in_y():
    """0^y = 0 for every y > 0, so d/dy is 0 there."""
    P, X, Y, gens = _pow_at_zero([0.5, 1.0, 2.0, 3.0])
    check_grad(P, [Y], gens=gens, full=True)


def test_pow_near_zero_base_finite_differences():
    X, Y = ph((3, 4), "X"), ph((3, 4), "Y")
    P = te.compute((3, 4), lambda i, j: te.power(X[i, j], Y[i, j]), name="P")
    check_grad(P, [X, Y], gens={X: uniform(1e-3, 0.05), Y: uniform(-1.0, 2.0)}, full=True)


def test_pow_with_constant_exponent_or_base_at_zero():
    """x³ and 2ˣ fold the zero-base conditions away: d(x³) = 3x², d(2ˣ) = 2ˣ·log 2, also at 0."""
    X = ph((3,), "X")
    x = np.array([0.0, -1.0, 2.0])
    _, d3 = value_and_grads(topi.power(X, 3.0), [X], [x], np.ones(3))
    _, d2 = value_and_grads(te.compute((3,), lambda i: te.power(tirx.const(2.0, F64), X[i])), [X], [x],
                            np.ones(3))
    np.testing.assert_array_equal(d3, 3 * x * x)
    np.testing.assert_allclose(d2, 2.0 ** x * np.log(2.0), rtol=1e-15)


# -- max/min reductions: ties --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max", "min"])
def test_full_reduction_spreads_ties_evenly(name):
    """x.max() / x.min() over all axes (a 0-d result): the tied extrema share the head."""
    X = ph((3, 4), "X")
    Y = topi.max(X) if name == "max" else topi.min(X)
    sign = 1.0 if name == "max" else -1.0
    for x in (np.ones((3, 4)), sign * np.array([[1.0, 3, 3, 0], [3, 1, 2, 3], [0, 0, 0, 0]])):
        y, dx = value_and_grads(Y, [X], [x], 2.0)
        ext = x.max() if name == "max" else x.min()
        assert y == ext
        np.testing.assert_array_equal(dx, 2.0 * (x == ext) / np.sum(x == ext))


def test_full_reduction_where_shares_among_the_selected():
    """where= leaves the masked elements out of the tie: values [3, 3, 3, 1] with k > 0."""
    X = ph((4,), "X")
    k = te.reduce_axis((0, 4), "k")
    Y = te.compute((), lambda: te.max(X[k], axis=k, where=k > 0), name="Y")
    _, dx = value_and_grads(Y, [X], [np.array([3.0, 3.0, 3.0, 1.0])], 1.0)
    np.testing.assert_array_equal(dx, [0.0, 0.5, 0.5, 0.0])


def test_full_reduction_ties_cost_no_more_than_the_argmax():
    """The tie count is one pass over X, as the argmax of a row reduction is: with the forward in the
    same build, the value, the count (or argmax) and the gradient each cost |X|.  (The full
    reduction's gradient alone reads the forward value, one pass more than the argmax one.)"""
    X = ph((8, 10), "X")
    for Y in (topi.max(X), topi.max(X, axis=1)):
        (dX,) = ad.differentiate(Y, [X], ph(Y.shape, "H"))
        assert ad.work([Y, dX]).iterations == 3 * 80


def test_full_reduction_hessian_of_square():
    """L = max(X)², dL = 2·max·share, d²L = 2·share·shareᵀ (PyTorch's double backward of x.max())."""
    X = ph((4,), "X")
    M = topi.max(X)
    L = te.compute((), lambda: M() * M(), name="L")
    f = ad.build(ad.hessian(L, X), [X])
    np.testing.assert_array_equal(f(np.array([1.0, 3.0, 2.0, 0.0])), 2.0 * np.diag([0, 1.0, 0, 0]))
    share = np.array([0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(f(np.array([3.0, 3.0, 2.0, 0.0])), 2.0 * np.outer(share, share))


def test_row_reduction_and_max_pool_ties_go_to_the_first_index():
    """torch.max(dim) and max_pool2d route a tie to one index, the first; so do we (torch.amax(dim)
    would spread it)."""
    X = ph((1, 1, 4, 4), "X")
    P = topi.nn.pool2d(X, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max")
    h = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    _, dx = value_and_grads(P, [X], [np.zeros((1, 1, 4, 4))], h)
    expected = np.zeros((4, 4))
    expected[::2, ::2] = h[0, 0]
    np.testing.assert_array_equal(dx[0, 0], expected)


# -- NaN: TVM's forward semantics -------------------------------------------------------------------

def test_tvm_forward_max_min_return_the_second_operand_when_unordered():
    """TVM's max(a, b) is a > b ? a : b, min(a, b) is a < b ? a : b: with a NaN operand the result is
    b, so relu(NaN) = max(NaN, 0) = 0 and clip(NaN, lo, hi) = hi, where PyTorch gives NaN; abs(NaN)
    is NaN.  A max reduction accumulates max(acc, x), so a NaN survives only as the last element."""
    a, b = np.array([NAN, 1.0, NAN]), np.array([1.0, NAN, NAN])
    Ymax, (A, B) = elementwise(te.max, 2, a)
    Ymin = te.compute((3,), lambda i: te.min(A[i], B[i]), name="Z")
    mx, mn = ad.build([Ymax, Ymin], [A, B])(a, b)
    np.testing.assert_array_equal(mx, [1.0, NAN, NAN])
    np.testing.assert_array_equal(mn, [1.0, NAN, NAN])
    X = ph((3,), "X")
    relu, clip, absx = ad.build([topi.nn.relu(X), topi.clip(X, -1.0, 1.0), topi.abs(X)], [X])(
        np.array([NAN, -2.0, 2.0]))
    np.testing.assert_array_equal(relu, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(clip, [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(absx, [NAN, 2.0, 2.0])
    R = ph((3, 3), "R")
    rows = ad.build(topi.max(R, axis=1), [R])(np.array([[NAN, 1, 2], [1, NAN, 2], [1, 2, NAN]]))
    np.testing.assert_array_equal(rows, [2.0, 2.0, NAN])


def test_tvm_float_comparisons_with_nan_are_all_false():
    """TVM compiles a != b as an ordered comparison (false at NaN) and its simplifier rewrites
    not(a < b) as b <= a and folds x != x to false; so no comparison, negated or not, holds at NaN
    (isnan is the one test that does)."""
    x = te.var("x", F64)
    assert sym.Analyzer().simplify(x != x).value == 0
    a, b = np.array([NAN, 1.0]), np.array([1.0, NAN])
    Y, (A, B) = elementwise(lambda x, y: tirx.Select(x != y, 1.0, 0.0) + tirx.Select(tirx.Not(x < y), 2.0, 0.0),
                            2, a)
    np.testing.assert_array_equal(ad.build(Y, [A, B])(a, b), [0.0, 0.0])


# -- NaN: our gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("optimize", [False, True])
def test_nan_gradients_follow_the_forward_choice(optimize):
    """relu(NaN) = 0 is a constant: gradient 0.  abs'(NaN) = 0 (PyTorch's sign(NaN) = 0).  A row
    max routes the head to the element the forward returned: the max when NaN came earlier, the
    NaN when it came last (as torch.max(dim) does with any NaN)."""
    X = ph((3,), "X")
    h = np.array([2.0, 3.0, 5.0])
    x = np.array([NAN, -1.0, 1.0])
    _, drelu = value_and_grads(topi.nn.relu(X), [X], [x], h, optimize)
    _, dabs = value_and_grads(topi.abs(X), [X], [x], h, optimize)
    np.testing.assert_array_equal(drelu, [0.0, 0.0, 5.0])
    np.testing.assert_array_equal(dabs, [0.0, -3.0, 5.0])
    R = ph((3, 3), "R")
    r = np.array([[NAN, 1, 2], [1, NAN, 2], [1, 2, NAN]])
    _, dr = value_and_grads(topi.max(R, axis=1), [R], [r], h, optimize)
    np.testing.assert_array_equal(dr, [[0, 0, 2.0], [0, 0, 3.0], [0, 0, 5.0]])


@pytest.mark.parametrize("optimize", [False, True])
def test_long_row_max_gradient_goes_to_the_first_tie(optimize):
    """Rows of LONG_REDUCTION points or more find the position as the first tie of the forward
    max (frontend/reducers.py): ties go to the first, a NaN that the forward returned gets it."""
    from tvm_autodiff.frontend.reducers import LONG_REDUCTION
    n = 2 * LONG_REDUCTION
    r = np.random.default_rng(3).uniform(-1, 0, (4, n))
    r[0, [5, 9, 70]] = 2.0                    # tie: the first (5) gets the head
    r[1, n - 1] = NAN                         # NaN last: the forward returns it
    r[2, 0], r[2, 40] = NAN, 3.0              # NaN first: the forward returns the max (40)
    R = ph((4, n), "R")
    y, dr = value_and_grads(topi.max(R, axis=1), [R], [r], np.array([2.0, 3.0, 5.0, 7.0]), optimize)
    want = np.zeros_like(r)
    want[0, 5], want[1, n - 1], want[2, 40], want[3, np.argmax(r[3])] = 2.0, 3.0, 5.0, 7.0
    assert y[0] == 2.0 and np.isnan(y[1]) and y[2] == 3.0
    np.testing.assert_array_equal(dr, want)


@pytest.mark.parametrize("optimize", [False, True])
def test_nan_full_reduction_shares_among_the_nans(optimize):
    """x.max() with a NaN result: PyTorch's mask is isnan(x), shared evenly; so is ours."""
    X = ph((2, 3), "X")
    x = np.array([[1.0, NAN, 3.0], [2.0, 0.0, NAN]])
    y, dx = value_and_grads(topi.max(X), [X], [x], 4.0, optimize)
    assert np.isnan(y)
    np.testing.assert_array_equal(dx, [[0, 2.0, 0], [0, 0, 2.0]])


# Zero elimination (passes/nonzero.py) must not lift the negation of a float comparison: TVM's
# simplifier turns not(x > 0) into x <= 0, false at NaN (test_tvm_float_comparisons_with_nan_are_all_false).
@pytest.mark.parametrize("optimize", [False, True])
def test_nan_leaky_relu_gradient_is_alpha(optimize):
    """leaky_relu = select(x > 0, x, αx): at NaN the forward takes αx, PyTorch's gradient is α."""
    X = ph((2,), "X")
    _, dx = value_and_grads(topi.nn.leaky_relu(X, 0.25), [X], [np.array([NAN, -1.0])], np.ones(2), optimize)
    np.testing.assert_array_equal(dx, [0.25, 0.25])


@pytest.mark.parametrize("optimize", [False, True])
def test_nan_elementwise_max_gradient_goes_to_the_returned_operand(optimize):
    """max(a, b) returns b when a or b is NaN, and its gradient goes to b."""
    a, b = np.array([NAN, 2.0]), np.array([1.0, NAN])
    Y, (A, B) = elementwise(te.max, 2, a)
    _, da, db = value_and_grads(Y, [A, B], [a, b], np.ones(2), optimize)
    np.testing.assert_array_equal(da, [0.0, 0.0])
    np.testing.assert_array_equal(db, [1.0, 1.0])


# -- inf --------------------------------------------------------------------------------------------

def test_softmax_and_log_softmax_with_minus_inf_entries():
    """Masked logits (-inf) get gradient 0 through softmax and the head itself through
    log_softmax (its softmax factor is 0), as in PyTorch."""
    X = ph((2, 4), "X")
    x = np.array([[0.5, -INF, 1.0, -INF], [2.0, 1.0, -INF, 0.0]])
    h = np.array([[1.0, 2, 3, 4], [-1, 0.5, 2, 1]])
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    _, ds = value_and_grads(topi.nn.softmax(X), [X], [x], h)
    _, dl = value_and_grads(topi.nn.log_softmax(X), [X], [x], h)
    np.testing.assert_allclose(ds, p * (h - (p * h).sum(1, keepdims=True)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dl, h - p * h.sum(1, keepdims=True), rtol=1e-12)


def test_inf_values():
    """relu(inf)' = 1; a full max over [inf, inf, 1] shares between the two infs."""
    X = ph((3,), "X")
    x = np.array([INF, INF, 1.0])
    _, drelu = value_and_grads(topi.nn.relu(X), [X], [x], np.ones(3))
    y, dmax = value_and_grads(topi.max(X), [X], [x], 1.0)
    np.testing.assert_array_equal(drelu, [1.0, 1.0, 1.0])
    assert y == INF
    np.testing.assert_array_equal(dmax, [0.5, 0.5, 0.0])
