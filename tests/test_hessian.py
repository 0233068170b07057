"""Second derivatives (README, "Hessians and Jacobians of gradients"): `ad.hessian` and
`ad.jacobian` of gradients, checked in float64.

Every case compiles ONE module (`ad.build`) holding the gradients of a scalar loss L and the
requested second-derivative tensors.  The reference is the central finite difference of the
*compiled gradient*, element by element: for every element e of the second input b,

    H[..., e] ≈ (grad_a(b + h·e) − grad_a(b − h·e)) / 2h,

so no second compile is needed, and shapes stay tiny.  Where a closed form is easy (logistic
regression, least squares, matrix factorization) the Hessian is also compared with it.

Compactness (no materialized 4th-order tensor where the math does not need one) is checked on
the graph walked with `ops_post_order` and on `ad.work` bounds, see the tests at the end.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm_ffi
from tvm import te, tirx, topi
from tvm.ir import Call

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import ops_post_order, placeholders, same_tensor

F64 = "float64"
RTOL, ATOL_REL, STEP = 1e-6, 1e-7, 1e-5


def _ph(shape, name):
    return te.placeholder(shape, F64, name=name)


def _total(t: te.Tensor, name: str = "L") -> te.Tensor:
    """Σ of every element of t, as a 0-d tensor."""
    axes = [te.reduce_axis((0, int(s)), name=f"r{i}") for i, s in enumerate(t.shape)]
    return te.compute((), lambda: te.sum(t(*[a.var for a in axes]), axis=axes), name=name)


def _softplus(e):
    return te.log(tirx.const(1.0, F64) + te.exp(e))


def _compiled_pairs(L, pairs, via):
    """(module, placeholders, wrt inputs, second-derivative tensors).  The module's outputs are
    the gradients of L w.r.t. every first input of `pairs`, then one tensor per pair."""
    params = placeholders([L])
    firsts = []
    for a, _ in pairs:
        if not any(same_tensor(a, f) for f in firsts):
            firsts.append(a)
    grads = list(ad.differentiate(L, firsts))
    seconds = []
    for a, b in pairs:
        if via == "hessian":
            seconds.append(ad.hessian(L, a, None if same_tensor(b, a) else b))
        else:   # Jacobian of the gradient tensor
            seconds.append(ad.jacobian(grads[[same_tensor(f, a) for f in firsts].index(True)], b))
    fn = ad.build(grads + seconds, params)
    return fn, params, firsts, grads, seconds


def check_second(L, pairs, gens=None, via="hessian", seed=0, closed=None, symmetric=True):
    """Check d²L / da db for every (a, b) in `pairs` against central differences of the compiled
    gradient.  `gens` maps a placeholder to gen(rng, shape) -> float64 array; `closed(values)`,
    if given (values: placeholder name -> array), returns one closed-form array per pair (or None to skip one).  Returns the analytic
    second derivatives and the input values."""
    fn, params, firsts, grads, seconds = _compiled_pairs(L, pairs, via)
    rng = np.random.default_rng(seed)
    gens = gens or {}
    values = []
    for p in params:
        shape = tuple(int(s) for s in p.shape)
        gen = next((g for t, g in gens.items() if same_tensor(t, p)), None)
        values.append(np.asarray(gen(rng, shape) if gen else rng.standard_normal(shape), F64))
    out = fn(*values)
    n = len(firsts)
    analytic = out[n:]
    for (a, b), t, h in zip(pairs, seconds, analytic):
        want = tuple(int(s) for s in a.shape) + tuple(int(s) for s in b.shape)
        assert tuple(int(s) for s in t.shape) == want and h.shape == want, (h.shape, want)
        assert np.all(np.isfinite(h))

    kb = {}
    for _, b in pairs:
        kb[b.name] = next(k for k, p in enumerate(params) if same_tensor(p, b))
    numeric = {}
    for bname, k in kb.items():
        xv = values[k]
        cols = {}
        for idx in np.ndindex(*xv.shape):
            diffs = []
            for sign in (1.0, -1.0):
                vals = list(values)
                p = xv.copy()
                p[idx] += sign * STEP
                vals[k] = p
                diffs.append(fn(*vals)[:n])
            cols[idx] = [(gp - gm) / (2 * STEP) for gp, gm in zip(*diffs)]
        numeric[bname] = (xv.shape, cols)

    for (a, b), h in zip(pairs, analytic):
        shape_b, cols = numeric[b.name]
        ia = [same_tensor(f, a) for f in firsts].index(True)
        num = np.zeros(h.shape)
        for idx, col in cols.items():
            num[(Ellipsis,) + idx] = col[ia]
        scale = max(1.0, float(np.max(np.abs(num))))
        np.testing.assert_allclose(h, num, rtol=RTOL * 10, atol=1e-6 * scale,
                                   err_msg=f"d2{L.name}/d{a.name} d{b.name} vs finite differences")
        if symmetric and same_tensor(a, b):
            d = len(a.shape)
            perm = list(range(d, 2 * d)) + list(range(d))
            np.testing.assert_allclose(h, np.transpose(h, perm), rtol=1e-10, atol=1e-12 * scale,
                                       err_msg=f"d2{L.name}/d{a.name}2 is not symmetric")
    if closed is not None:
        for (a, b), h, ref in zip(pairs, analytic, closed({p.name: v for p, v in zip(params, values)})):
            if ref is not None:
                np.testing.assert_allclose(h, ref, rtol=1e-10, atol=1e-10,
                                           err_msg=f"d2{L.name}/d{a.name} d{b.name} vs closed form")
    return analytic, values


# -- the functions ----------------------------------------------------------------------------------


def logistic_regression(n=7, d=4):
    X, y, w = _ph((n, d), "X"), _ph((n,), "y"), _ph((d,), "w")
    k = te.reduce_axis((0, d), name="k")
    z = te.compute((n,), lambda i: te.sum(X[i, k] * w[k], axis=k), name="z")
    loss = te.compute((n,), lambda i: _softplus(z[i]) - y[i] * z[i], name="loss")
    return _total(loss), X, y, w


def least_squares(n=6, d=3):
    A, b, x = _ph((n, d), "A"), _ph((n,), "b"), _ph((d,), "x")
    k = te.reduce_axis((0, d), name="k")
    Ax = te.compute((n,), lambda i: te.sum(A[i, k] * x[k], axis=k), name="Ax")
    r = te.compute((n,), lambda i: Ax[i] - b[i], name="r")
    sq = te.compute((n,), lambda i: r[i] * r[i], name="sq")
    return _total(sq), A, b, x


def matrix_factorization(m=4, n=5, rank=2):
    T, U, V = _ph((m, n), "T"), _ph((m, rank), "U"), _ph((n, rank), "V")
    k = te.reduce_axis((0, rank), name="k")
    P = te.compute((m, n), lambda i, j: te.sum(U[i, k] * V[j, k], axis=k), name="P")
    E = te.compute((m, n), lambda i, j: T[i, j] - P[i, j], name="E")
    sq = te.compute((m, n), lambda i, j: E[i, j] * E[i, j], name="sq")
    return _total(sq), T, U, V


def mlp(n=3, d=3, h=4, c=2, act="tanh"):
    """L = Σ softplus(W2 · act(W1 x + b1)) − y·out: the Hessian w.r.t. the first layer."""
    x, W1, b1, W2, y = _ph((n, d), "x"), _ph((h, d), "W1"), _ph((h,), "b1"), _ph((c, h), "W2"), _ph((n, c), "y")
    kd = te.reduce_axis((0, d), name="kd")
    xw = te.compute((n, h), lambda i, j: te.sum(x[i, kd] * W1[j, kd], axis=kd), name="xw")
    z1 = te.compute((n, h), lambda i, j: xw[i, j] + b1[j], name="z1")
    a1 = te.compute((n, h), lambda i, j: te.tanh(z1[i, j]) if act == "tanh" else _softplus(z1[i, j]), name="a1")
    kh = te.reduce_axis((0, h), name="kh")
    z2 = te.compute((n, c), lambda i, j: te.sum(a1[i, kh] * W2[j, kh], axis=kh), name="z2")
    loss = te.compute((n, c), lambda i, j: _softplus(z2[i, j]) - y[i, j] * z2[i, j], name="loss")
    return _total(loss), x, W1, b1, W2, y


def softmax_xent(n=3, d=3, c=4, log=True):
    X, W, Y = _ph((n, d), "X"), _ph((d, c), "W"), _ph((n, c), "Y")
    k = te.reduce_axis((0, d), name="k")
    logits = te.compute((n, c), lambda i, j: te.sum(X[i, k] * W[k, j], axis=k), name="logits")
    if log:
        lp = topi.nn.log_softmax(logits)
    else:
        sm = topi.nn.softmax(logits, axis=-1)
        lp = te.compute((n, c), lambda i, j: te.log(sm[i, j]), name="logp")
    nll = te.compute((n, c), lambda i, j: -Y[i, j] * lp[i, j], name="nll")
    return _total(nll), X, W, Y


def conv_sq(C=2, H=4, W=4, K=2):
    x, w = _ph((1, C, H, W), "x"), _ph((K, C, 3, 3), "w")
    conv = topi.nn.conv2d(x, w, strides=1, padding=1, dilation=1)
    sq = te.compute(conv.shape, lambda *i: conv(*i) * conv(*i), name="sq")
    return _total(sq), x, w


# -- numeric tests ----------------------------------------------------------------------------------


def test_logistic_regression_hessian_matches_closed_form_and_fd():
    L, X, y, w = logistic_regression()

    def closed(v):
        Xv, wv = v["X"], v["w"]
        s = 1.0 / (1.0 + np.exp(-(Xv @ wv)))
        return [Xv.T @ np.diag(s * (1 - s)) @ Xv]

    check_second(L, [(w, w)], gens={y: lambda r, s: r.integers(0, 2, s).astype(F64)}, closed=closed)


def test_least_squares_jacobian_of_gradient():
    L, A, b, x = least_squares()
    check_second(L, [(x, x)], via="jacobian", closed=lambda v: [2 * v["A"].T @ v["A"]])


def test_matrix_factorization_hessian_wrt_U_is_fourth_order():
    L, T, U, V = matrix_factorization()

    def closed(v):
        Uv, Vv = v["U"], v["V"]
        m, r = Uv.shape
        return [2 * np.einsum("ij,ab->iajb", np.eye(m), Vv.T @ Vv)]

    (h,), _ = check_second(L, [(U, U)], closed=closed)
    assert h.ndim == 4


def test_matrix_factorization_cross_term_U_V():
    L, T, U, V = matrix_factorization(m=3, n=4, rank=2)

    def closed(v):
        Tv, Uv, Vv = v["T"], v["U"], v["V"]
        E = Tv - Uv @ Vv.T
        r = Uv.shape[1]
        # d/dV_jb of dL/dU_ia = -2 Σ_j E_ij V_ja  is  2 U_ib V_ja - 2 E_ij δ_ab
        return [2 * np.einsum("ib,ja->iajb", Uv, Vv) - 2 * np.einsum("ij,ab->iajb", E, np.eye(r))]

    check_second(L, [(U, V)], closed=closed)


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_mlp_first_layer_hessian(act):
    L, x, W1, b1, W2, y = mlp(act=act)
    # W1 is (4, 3): a (4, 3, 4, 3) Hessian; also the cross term with the second layer.
    pairs = [(W1, W1), (W1, W2)] if act == "tanh" else [(W1, W1)]
    check_second(L, pairs, gens={y: lambda r, s: r.uniform(0, 1, s)})


def test_softmax_cross_entropy_log_softmax():
    L, X, W, Y = softmax_xent(log=True)
    check_second(L, [(W, W)], gens={Y: lambda r, s: np.eye(s[1])[r.integers(0, s[1], s[0])]})


def test_softmax_cross_entropy_softmax_jacobian_of_gradient():
    L, X, W, Y = softmax_xent(log=False)
    check_second(L, [(W, W)], via="jacobian",
                 gens={Y: lambda r, s: np.eye(s[1])[r.integers(0, s[1], s[0])]})


def test_conv2d_sum_of_squares():
    """d²/dx² and d²/dx dw go through the input gradient's padded window sums (padding.py) in
    both passes."""
    L, x, w = conv_sq()
    check_second(L, [(w, w), (x, w), (x, x)])


def _separated(rng, shape):
    """Well-separated values (no near-ties for max), with random signs of the order."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) / n + rng.uniform(0, 0.05 / n, n)).reshape(shape) * 4


@pytest.mark.parametrize("wrt", ["A", "w"])
def test_max_reduction_second_derivative_reuses_argmax(wrt):
    """m_i = max_k A[i,k]·w[k]; L = Σ m² + tanh(m).  The gradient reuses the forward argmax; its
    second derivative goes through that reuse (a select on the argmax index).  With respect to w,
    read as w[k] at the data-dependent argmax k, the inner gradient must stay a reduction (no
    scatter-add extern, which has no derivative)."""
    n, d = 4, 3
    A, w = _ph((n, d), "A"), _ph((d,), "w")
    k = te.reduce_axis((0, d), name="k")
    m = te.compute((n,), lambda i: te.max(A[i, k] * w[k], axis=k), name="m")
    f = te.compute((n,), lambda i: m[i] * m[i] + te.tanh(m[i]), name="f")
    L = _total(f)
    x = A if wrt == "A" else w

    def closed(v):
        Av, wv = v["A"], v["w"]
        P = Av * wv
        kk = np.argmax(P, axis=1)
        mv = P[np.arange(n), kk]
        f2 = 2 - 2 * np.tanh(mv) * (1 - np.tanh(mv) ** 2)
        H = np.zeros((d, d) if wrt == "w" else (n, d, n, d))
        for i in range(n):
            if wrt == "w":
                H[kk[i], kk[i]] += f2[i] * Av[i, kk[i]] ** 2
            else:
                H[i, kk[i], i, kk[i]] = f2[i] * wv[kk[i]] ** 2
        return [H]

    check_second(L, [(x, x)], gens={A: _separated, w: lambda r, s: r.uniform(0.5, 1.5, s)}, closed=closed)


def test_max_pool_second_derivative():
    x = _ph((1, 1, 4, 4), "x")
    pool = topi.nn.pool2d(x, kernel=(2, 2), stride=(2, 2), dilation=(1, 1), padding=(0, 0, 0, 0),
                          pool_type="max")
    f = te.compute(pool.shape, lambda *i: te.exp(pool(*i)) * pool(*i), name="f")
    check_second(_total(f), [(x, x)], via="jacobian", gens={x: _separated})


def test_reduction_with_where():
    n, d = 4, 4
    X, w = _ph((n, d), "X"), _ph((d,), "w")
    k = te.reduce_axis((0, d), name="k")
    s = te.compute((n,), lambda i: te.sum(X[i, k] * w[k] * w[k], axis=k, where=k <= i), name="s")
    f = te.compute((n,), lambda i: te.tanh(s[i]), name="f")
    check_second(_total(f), [(w, w), (X, w)])


def test_select_and_if_then_else_relu_like():
    n, d = 6, 3
    A, x = _ph((n, d), "A"), _ph((d,), "x")
    k = te.reduce_axis((0, d), name="k")
    z = te.compute((n,), lambda i: te.sum(A[i, k] * x[k], axis=k), name="z")
    zero = tirx.const(0.0, F64)
    relu = te.compute((n,), lambda i: tirx.Select(z[i] > zero, z[i], zero), name="relu")
    leaky = te.compute((n,), lambda i: te.if_then_else(z[i] > zero, z[i] * z[i], 0.1 * te.exp(z[i])), name="leaky")
    f = te.compute((n,), lambda i: relu[i] * relu[i] + leaky[i], name="f")

    def closed(v):
        Av, xv = v["A"], v["x"]
        zv = Av @ xv
        dd = np.where(zv > 0, 2.0 + 2.0, 0.1 * np.exp(zv))
        return [Av.T @ np.diag(dd) @ Av]

    def values_away_from_kinks(v):
        zv = v["A"] @ v["x"]
        assert np.min(np.abs(zv)) > 1e-3 and np.any(zv > 0) and np.any(zv < 0)
        return closed(v)

    check_second(_total(f), [(x, x)], closed=values_away_from_kinks, seed=3)


def test_zero_and_one_dimensional_inputs():
    n = 3
    s, v = _ph((), "s"), _ph((n,), "v")
    k = te.reduce_axis((0, n), name="k")
    q = te.compute((), lambda: te.sum(v[k] * v[k] * v[k], axis=k), name="q")
    L = te.compute((), lambda: s() * s() * q() + te.sin(s()), name="L")
    check_second(L, [(s, s), (s, v), (v, v), (v, s)])
    # a (1,)-shaped input: the Hessian is (1, 1)
    u = _ph((1,), "u")
    L1 = te.compute((), lambda: te.exp(u[0]) * u[0], name="L1")
    (h,), (uv,) = check_second(L1, [(u, u)])
    np.testing.assert_allclose(h, [[np.exp(uv[0]) * (uv[0] + 2)]], rtol=1e-10)


def test_hessian_rejects_non_scalar_output():
    L, X, y, w = logistic_regression()
    z = L.op.input_tensors[0]
    with pytest.raises(ad.DifferentiationError):
        ad.hessian(z, w)


# -- compactness: no materialized higher-order tensor where the math does not need one ------------


def _computed(H):
    """(name, shape) of every computed tensor (ComputeOp or ExternOp) that H's graph materializes,
    after one more round of zero elimination (differentiate already runs it; this must not undo it)."""
    H = ad.passes.eliminate_zeros(H)
    out = []
    for op in ops_post_order([H]):
        if not isinstance(op, te.PlaceholderOp):
            out.extend((t.name, tuple(int(s) for s in t.shape)) for t in
                       (op.output(i) for i in range(op.num_outputs)))
    return H, out


def _calls(e, name: str) -> bool:
    found = []
    tvm_ffi.structural_walk(e, (Call, lambda c: found.append(c) if getattr(c.op, "name", "") == name else None))
    return bool(found)


def _big(H, computed, ndim):
    """Materialized tensors with at least `ndim` dims other than H and its additive terms (zero
    elimination gives each term of a sum with different conditions a tensor of H's shape)."""
    shape = tuple(int(s) for s in H.shape)
    return [(name, s) for name, s in computed
            if len(s) >= ndim and name != H.name and not (name.startswith(H.name + "_t") and s == shape)]


def test_logistic_regression_hessian_is_one_reduction():
    """H = Xᵀ·diag(s(1−s))·X: one (d, d) reduction over n, plus O(n·d) elementwise work.
    Bound: work ≤ n·d² + 4·n·d + n (the product itself, plus at most four passes over X-sized
    and n-sized tensors); nothing with 3 or more dims is materialized."""
    n, d = 50, 10
    L, X, y, w = logistic_regression(n, d)
    H, computed = _computed(ad.hessian(L, w))
    assert _big(H, computed, 3) == []
    wk = ad.work(H)
    assert wk.iterations <= n * d * d + 4 * n * d + n, ad.explain(H)
    # Factor hoisting: the weight s(1−s) is computed once per sample, not per (feature, sample).
    exps = {op.name: int(np.prod([int(s) for s in op.output(0).shape])) for op in ops_post_order([H])
            if isinstance(op, te.ComputeOp) and _calls(op.body[0], "tirx.exp")}
    assert exps and max(exps.values()) <= n, exps


def test_matrix_factorization_hessian_is_compact():
    """d²‖T − U Vᵀ‖²/dU² = δ_ik · M_ijl with M_ijl = Σ_n 2·V[n,j]·V[n,l] (the head's ones of
    d‖·‖²/dP keep the i).  Compact: no 4-D tensor but H, and the sum over n runs only where
    i == k: work ≤ 2·|H| + 2·m·r²·n + m·n, against |H|·n + 4·m²·r·n = 21600 for the Jacobian of
    the gradient built through (m, r, m, n) adjoints."""
    m, n, r = 6, 50, 2
    L, T, U, V = matrix_factorization(m, n, r)
    H, computed = _computed(ad.hessian(L, U))
    size = (m * r) ** 2
    wk = ad.work(H)
    assert _big(H, computed, 4) == [] and wk.iterations <= 2 * size + 2 * m * r * r * n + m * n, \
        (wk, _big(H, computed, 4))


def test_mlp_first_layer_hessian_is_compact():
    """H[a,b,c,e] = Σ_n x[n,b]·x[n,e]·S[n,a,c] with S of shape (n, h, h).  Asserted: no compute
    tensor with 4 or more dims except H (and its terms), and work ≤ 2·|H|·n + 2·n·h²·c + 10·n·h·(d + c)."""
    n, d, h, c = 8, 3, 4, 2
    L, x, W1, b1, W2, y = mlp(n, d, h, c)
    H, computed = _computed(ad.hessian(L, W1))
    wk = ad.work(H)
    size = (h * d) ** 2
    assert _big(H, computed, 4) == [] and \
        wk.iterations <= 2 * size * n + 2 * n * h * h * c + 10 * n * h * (d + c), (wk, _big(H, computed, 4))
