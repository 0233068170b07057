"""The public API (README, "API"): Jacobians, 0-d and symbolic shapes, inputs=None, zero gradients,
adjoints of intermediates, manual overrides, extern ops, and the error messages."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, tirx, topi

import tvm_autodiff as ad
from gradcheck import Harness, check_grad, check_jacobian, make_values, positive

F64 = "float64"


def ph(shape, name, dtype=F64):
    return te.placeholder(shape, dtype, name=name)


# -- full Jacobians (head=None) ------------------------------------------------------------------------

def test_jacobian_elementwise():
    A = ph((2, 3), "A")
    Y = te.compute((2, 3), lambda i, j: te.sin(A[i, j]) * A[i, j], name="Y")
    check_jacobian(Y, A)


def test_jacobian_matmul():
    A, B = ph((2, 3), "A"), ph((3, 2), "B")
    k = te.reduce_axis((0, 3), name="k")
    Y = te.compute((2, 2), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="Y")
    check_jacobian(Y, A)
    check_jacobian(Y, B)


def test_jacobian_softmax_and_max():
    X = ph((2, 3), "X")
    check_jacobian(topi.nn.softmax(X), X)
    k = te.reduce_axis((0, 3), name="k")
    M = te.compute((2,), lambda i: te.max(X[i, k] * X[i, k], axis=k), name="M")
    check_jacobian(M, X, gens={X: positive})


def test_jacobian_index_map():
    A = ph((4,), "A")
    Y = te.compute((3, 2), lambda i, j: A[i + j] * A[3 - i], name="Y")
    check_jacobian(Y, A)


def test_jacobian_is_gradient_contract():
    """ad.jacobian and ad.gradient(head=None) agree: shape output.shape + input.shape."""
    A = ph((2, 3), "A")
    Y = te.compute((3,), lambda j: A[0, j] * A[1, j], name="Y")
    J = ad.jacobian(Y, A)
    assert [int(s) for s in J.shape] == [3, 2, 3]
    (G,) = ad.gradient(Y, [A])
    assert [int(s) for s in G.shape] == [3, 2, 3]
    check_jacobian(Y, A, jac=G)


# -- shapes ------------------------------------------------------------------------------------------

def test_zero_dim_output():
    A = ph((3, 4), "A")
    k, l = te.reduce_axis((0, 3), name="k"), te.reduce_axis((0, 4), name="l")
    S = te.compute((), lambda: te.sum(te.exp(A[k, l]) * A[k, l], axis=[k, l]), name="S")
    check_grad(S, [A])


def test_zero_dim_output_jacobian_is_gradient():
    A = ph((3,), "A")
    k = te.reduce_axis((0, 3), name="k")
    S = te.compute((), lambda: te.sum(A[k] * A[k], axis=k), name="S")
    J = ad.jacobian(S, A)
    assert [int(s) for s in J.shape] == [3]
    check_jacobian(S, A)


def test_zero_dim_input():
    s, A = ph((), "s"), ph((4,), "A")
    Y = te.compute((4,), lambda i: A[i] * s() + te.exp(s()), name="Y")
    check_grad(Y, [s, A])


def test_symbolic_shape_elementwise():
    n = te.var("n")
    A, B = ph((n,), "A"), ph((n,), "B")
    Y = te.compute((n,), lambda i: te.exp(A[i]) * B[i] + A[i] * A[i], name="Y")
    check_grad(Y, [A, B], sizes=[{n: 3}, {n: 7}], full=True)


def test_symbolic_shape_reduction_and_index_map():
    n = te.var("n")
    A = ph((n, 4), "A")
    k = te.reduce_axis((0, n), name="k")
    S = te.compute((4,), lambda j: te.sum(A[k, j] * A[n - 1 - k, j], axis=k), name="S")
    res = ad.differentiate(S, [A])
    assert len(res[0].shape) == 3  # the Jacobian (4, n, 4) stays symbolic
    check_grad(S, [A], sizes=[{n: 2}, {n: 5}], full=True)


# -- inputs, zero gradients, adjoints -------------------------------------------------------------------

def test_inputs_none_means_all_float_placeholders():
    A, B, I = ph((3,), "A"), ph((3,), "B"), ph((3,), "I", "int32")
    Y = te.compute((3,), lambda i: A[i] * B[i] + I[i].astype(F64), name="Y")
    res = ad.differentiate(Y)
    assert [x.name for x in res.inputs] == ["A", "B"]
    assert len(res) == 2
    h = Harness(Y)  # inputs=None as well
    vals = make_values(h.params, np.random.default_rng(0))
    head = np.random.default_rng(1).standard_normal(3)
    _, (dA, dB), _ = h.run(vals, head)
    a, b = vals[h.index(A)], vals[h.index(B)]
    np.testing.assert_allclose(dA, head * b)
    np.testing.assert_allclose(dB, head * a)


def test_unused_input_gets_zeros():
    A, U = ph((3,), "A"), ph((2, 5), "U")
    Y = te.compute((3,), lambda i: A[i] * 2.0, name="Y")
    H = ph((3,), "H")
    dA, dU = ad.differentiate(Y, [A, U], H)
    assert [int(s) for s in dU.shape] == [2, 5]
    f = ad.build([dA, dU], [A, U, H])
    ga, gu = f(np.ones(3), np.ones((2, 5)), np.arange(3.0))
    np.testing.assert_allclose(ga, 2 * np.arange(3.0))
    np.testing.assert_array_equal(gu, np.zeros((2, 5)))
    # With head=None the zero Jacobian has shape output.shape + input.shape.
    (J,) = ad.differentiate(Y, [U])
    assert [int(s) for s in J.shape] == [3, 2, 5]


def test_gradient_of_output_wrt_itself_is_head():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: te.exp(A[i]), name="Y")
    H = ph((3,), "H")
    res = ad.differentiate(Y, [A], H)
    f = ad.build([res.adjoints[Y]], [A, H])
    np.testing.assert_allclose(f(np.zeros(3), np.arange(3.0))[0], np.arange(3.0))


def _adjoint_graph():
    A, W = ph((3, 4), "A"), ph((4,), "W")
    C = te.compute((3, 4), lambda i, j: te.exp(A[i, j]) * W[j], name="C")
    D = te.compute((3, 4), lambda i, j: C[i, j] * C[i, j], name="D")
    k = te.reduce_axis((0, 4), name="k")
    E = te.compute((3,), lambda i: te.sum(te.sin(C[i, k]) + D[i, k], axis=k), name="E")
    return A, W, C, D, E


def test_adjoint_of_intermediate_matches_gradient_wrt_it():
    """adjoints[C] equals the gradient of the loss with C cut loose as an input."""
    A, W, C, D, E = _adjoint_graph()
    h = Harness(E, [A, W], extra=lambda res: [res.adjoints[C], C])
    rng = np.random.default_rng(0)
    vals = make_values(h.params, rng)
    head = rng.standard_normal(3)
    _, _, (dC, c) = h.run(vals, head)
    # The same graph downstream of C, with C a placeholder: its gradient w.r.t. Cp, checked by FD.
    Cp = ph((3, 4), "Cp")
    Dp = te.compute((3, 4), lambda i, j: Cp[i, j] * Cp[i, j], name="Dp")
    k = te.reduce_axis((0, 4), name="k")
    Ep = te.compute((3,), lambda i: te.sum(te.sin(Cp[i, k]) + Dp[i, k], axis=k), name="Ep")
    hp = check_grad(Ep, [Cp])
    _, (dCp,), _ = hp.run([c], head)
    np.testing.assert_allclose(dC, dCp, rtol=1e-12)
    np.testing.assert_allclose(dC, head[:, None] * (np.cos(c) + 2 * c), rtol=1e-12)


def test_adjoint_summands_sum_to_adjoint():
    A, W, C, D, E = _adjoint_graph()
    Hd = ph((3,), "H")
    res = ad.differentiate(E, [A, W], Hd)
    parts = res.adjoint_summands[C]
    assert sorted(t.name for t in parts) == ["D", "E"]
    f = ad.build([res.adjoints[C], parts[D], parts[E]], [A, W, Hd])
    rng = np.random.default_rng(0)
    total, pd, pe = f(rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(3))
    np.testing.assert_allclose(total, pd + pe, rtol=1e-12)
    assert np.abs(pd).sum() > 0 and np.abs(pe).sum() > 0


def test_gradients_is_list_like():
    A, W, C, D, E = _adjoint_graph()
    res = ad.differentiate(E, [A, W])
    dA, dW = res
    assert len(res) == 2 and res[0] is dA and list(res) == [dA, dW]
    assert "dA" in repr(res)


# -- manual overrides and extern ops ---------------------------------------------------------------------

def test_manual_override_matches_automatic():
    """Override the matmul edge C <- A by hand (dA = H · Bᵀ): the same numbers as the automatic rule."""
    A, B = ph((3, 4), "A"), ph((4, 2), "B")
    k = te.reduce_axis((0, 4), name="k")
    C = te.compute((3, 2), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    L = te.compute((3, 2), lambda i, j: te.tanh(C[i, j]), name="L")
    calls = []

    def matmul_vjp(out, inp, head):
        calls.append((out.name, inp.name))
        n = te.reduce_axis((0, 2), name="n")
        return te.compute((3, 4), lambda i, kk: te.sum(head[i, n] * B[kk, n], axis=n), name="dA_manual")

    h_auto = check_grad(L, [A, B])
    h_man = check_grad(L, [A, B], manual={(C, A): matmul_vjp})
    assert calls == [("C", "A")]
    rng = np.random.default_rng(3)
    a, b, head = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    for g_auto, g_man in zip(h_auto.run([a, b], head)[1], h_man.run([a, b], head)[1]):
        np.testing.assert_allclose(g_auto, g_man, rtol=1e-10)


def test_manual_wildcards():
    A, B = ph((4,), "A"), ph((4,), "B")
    C = te.compute((4,), lambda i: A[i] * B[i], name="C")
    Y = te.compute((4,), lambda i: C[i] * 3.0, name="Y")
    seen = []

    def any_input(out, inp, head):   # (C, None): every input of C
        seen.append(inp.name)
        other = B if inp.name == "A" else A
        return te.compute((4,), lambda i: head[i] * other[i], name="d" + inp.name + "_manual")

    check_grad(Y, [A, B], manual={(C, None): any_input})
    assert sorted(seen) == ["A", "B"]
    seen.clear()

    def scale_head(out, inp, head):  # (None, C): whatever consumes C
        seen.append(out.name)
        return te.compute((4,), lambda i: head[i] * 3.0, name="dC_manual")

    check_grad(Y, [A, B], manual={(None, C): scale_head})
    assert seen == ["Y"]


def test_manual_wrong_value_is_used_not_ignored():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: te.exp(A[i]), name="Y")
    H = ph((3,), "H")
    wrong = {(Y, A): lambda out, inp, head: te.compute((3,), lambda i: head[i] * 7.0, name="seven")}
    (dA,) = ad.differentiate(Y, [A], H, manual=wrong)
    f = ad.build(dA, [A, H])
    np.testing.assert_allclose(f(np.zeros(3), np.ones(3)), np.full(3, 7.0))


def test_manual_unused_entry_warns():
    A, B = ph((3,), "A"), ph((3,), "B")
    Y = te.compute((3,), lambda i: A[i] * 2.0, name="Y")
    Z = te.compute((3,), lambda i: B[i] * 2.0, name="Z")
    with pytest.warns(UserWarning, match=r"\(Z, B\).*never used"):
        ad.differentiate(Y, [A], manual={(Z, B): lambda out, inp, head: head})


def test_manual_wrong_shape_is_an_error():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: A[i] * 2.0, name="Y")
    bad = {(Y, A): lambda out, inp, head: te.compute((4,), lambda i: tirx.const(0.0, F64), name="bad")}
    with pytest.raises(ad.DifferentiationError, match=r"manual entry for \(Y, A\).*shape"):
        ad.differentiate(Y, [A], manual=bad)


@tvm.register_global_func("tvm_autodiff_tests.double", override=True)
def _packed_double(a, b):
    b.copyfrom(a.numpy() * 2.0)


def _extern_graph():
    X = ph((4,), "X")
    E = te.extern((4,), [X], lambda ins, outs: tirx.call_packed("tvm_autodiff_tests.double", ins[0], outs[0]),
                  name="double", dtype=F64)
    Y = te.compute((4,), lambda i: te.exp(E[i]) * X[i], name="Y")
    return X, E, Y


def test_extern_op_with_manual_entry():
    X, E, Y = _extern_graph()

    def double_vjp(out, inp, head):
        return te.compute((4,), lambda i: head[i] * 2.0, name="ddouble")

    # The forward (extern included) runs inside ad.build, so the finite differences see it.
    check_grad(Y, [X], manual={(E, X): double_vjp}, full=True,
               reference=lambda x: np.exp(2 * x) * x)


def test_extern_op_without_manual_entry_is_an_error():
    X, E, Y = _extern_graph()
    with pytest.raises(ad.DifferentiationError) as err:
        ad.differentiate(Y, [X])
    msg = str(err.value)
    assert "ExternOp" in msg and "'double'" in msg and "manual=" in msg


def test_scatter_gradient_differentiated_again_names_the_way_out():
    """A gather's adjoint becomes a scatter-add extern (no derivative); differentiating it again
    says so and names scatter=False, with which the second derivative is right."""
    X, I = ph((5,), "X"), ph((3,), "I", "int32")
    Y = te.compute((3,), lambda i: X[I[i]] * X[I[i]] * X[I[i]], name="Y")
    H = ph((3,), "H")
    (dX,) = ad.differentiate(Y, [X], H)
    with pytest.raises(ad.DifferentiationError, match=r"ExternOp.*scatter-add.*scatter=False"):
        ad.jacobian(dX, X)
    (dX,) = ad.differentiate(Y, [X], H, scatter=False)
    J = ad.jacobian(dX, X)
    x, idx, h = np.arange(1.0, 6.0), np.array([4, 0, 4], "int32"), np.array([1.0, 2.0, 3.0])
    want = np.zeros((5, 5))
    for i, hi in zip(idx, h):
        want[i, i] += 6 * x[i] * hi      # d/dx (3 x² h)
    np.testing.assert_allclose(ad.build(J, [X, I, H])(x, idx, h), want)


def test_extern_op_not_on_the_path_needs_no_entry():
    X, E, Y = _extern_graph()
    A = ph((4,), "A")
    Z = te.compute((4,), lambda i: E[i] * A[i], name="Z")
    H = ph((4,), "H")
    (dA,) = ad.differentiate(Z, [A], H)
    f = ad.build([Z, dA], [X, A, H])
    x, a, h = np.arange(4.0), np.ones(4), np.full(4, 0.5)
    z, da = f(x, a, h)
    np.testing.assert_allclose(z, 2 * x)
    np.testing.assert_allclose(da, h * 2 * x)


# -- error messages -----------------------------------------------------------------------------------

def test_error_head_wrong_shape():
    A = ph((3, 4), "A")
    Y = te.compute((3, 4), lambda i, j: A[i, j] * 2.0, name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"head 'H' has shape \[4, 3\].*\[3, 4\]"):
        ad.differentiate(Y, [A], ph((4, 3), "H"))


def test_error_head_wrong_dtype():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: A[i] * 2.0, name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"head 'H' has dtype float32.*float64"):
        ad.differentiate(Y, [A], ph((3,), "H", "float32"))


def test_head_with_prefix():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: A[i] * A[i], name="Y")
    H = ph((2, 3), "H")
    (dA,) = ad.differentiate(Y, [A], H)
    assert [int(s) for s in dA.shape] == [2, 3]
    f = ad.build(dA, [A, H])
    a, h = np.arange(3.0), np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(f(a, h), h * 2 * a)


def test_error_integer_input():
    A, I = ph((3,), "A"), ph((3,), "I", "int32")
    Y = te.compute((3,), lambda i: A[I[i] % 3] * 2.0, name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"integer|'I'.*int32"):
        ad.differentiate(Y, [I])
    with pytest.raises(ad.DifferentiationError, match=r"'I'"):
        ad.gradient(Y, [A, I])


def test_error_non_tensor_output():
    A = ph((3,), "A")
    for bad in (A(0), 3.0, [A]):
        with pytest.raises(ad.DifferentiationError, match=r"te.Tensor"):
            ad.differentiate(bad, [A])


def test_error_unknown_intrinsic_names_it():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: tirx.call_pure_extern(F64, "my_special_fn", A[i]), name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"call_pure_extern|my_special_fn") as err:
        ad.differentiate(Y, [A])
    assert "'Y'" in str(err.value) and "manual=" in str(err.value)


# -- installation into tvm, TVM 0.19 contract ---------------------------------------------------------

def test_installed_into_tvm():
    assert tvm.differentiate is ad.differentiate
    assert te.gradient is ad.gradient


def test_gradient_tvm019_contract():
    A, B = ph((3, 4), "A"), ph((4,), "B")
    Y = te.compute((3, 4), lambda i, j: A[i, j] * B[j], name="Y")
    H = ph((3, 4), "H")
    grads = te.gradient(Y, [A, B], head=H)
    assert isinstance(grads, list) and len(grads) == 2
    assert all(isinstance(g, te.Tensor) for g in grads)
    assert [int(s) for s in grads[1].shape] == [4]
    f = ad.build(grads, [A, B, H])
    rng = np.random.default_rng(0)
    a, b, h = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((3, 4))
    da, db = f(a, b, h)
    np.testing.assert_allclose(da, h * b)
    np.testing.assert_allclose(db, (h * a).sum(0))
    # head=None: the Jacobian, output.shape + input.shape.
    (J,) = te.gradient(Y, [B])
    assert [int(s) for s in J.shape] == [3, 4, 4]


def test_float32_gradcheck_api():
    A = ph((5,), "A", "float32")
    Y = te.compute((5,), lambda i: te.tanh(A[i]) * A[i], name="Y")
    check_grad(Y, [A], full=True)
    check_jacobian(Y, A)


# -- the checker itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("full", [True, False])
def test_gradcheck_detects_a_wrong_gradient(full):
    A = ph((3, 4), "A")
    Y = te.compute((3, 4), lambda i, j: te.exp(A[i, j]), name="Y")
    off = {(Y, A): lambda out, inp, head: te.compute((3, 4), lambda i, j: head[i, j] * out[i, j] * 1.001,
                                                     name="dA_off")}
    check_grad(Y, [A], manual={(Y, A): lambda out, inp, head: te.compute(
        (3, 4), lambda i, j: head[i, j] * out[i, j], name="dA_ok")}, full=full)
    with pytest.raises(AssertionError):
        check_grad(Y, [A], manual=off, full=full)
