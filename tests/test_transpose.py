"""Column-operand transposition (passes/transpose.py): A·Bᵀ sums read a stored transposed copy of
B and get the matmul tile.  Values against numpy and PyTorch; structure and rules counted."""
from __future__ import annotations

import numpy as np
import torch
from tvm import te, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import MATERIALIZE, ops_post_order
from tvm_autodiff.passes.transpose import transpose_columns


def _transposed(tensors) -> list:
    return [op for op in ops_post_order(tensors) if op.name.endswith("_T") and MATERIALIZE in op.attrs]


def _rand(*shape):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype("float32")


def test_dense_reads_a_stored_transpose():
    """x·Wᵀ (256 rows, 64 columns): one stored W_T, kept by the inlining rule, and the matmul tile."""
    x, w = te.placeholder((256, 96), name="x"), te.placeholder((64, 96), name="W")
    y = topi.nn.dense(x, w)
    assert [op.name for op in _transposed([transpose_columns(y)])] == ["W_T"]
    m = ad.build(y, [x, w])
    assert m.rules["W_T"] != "inline" and m.rules["T_matmul_NT"] == "matmul-tile", m.explain()
    xv, wv = _rand(256, 96), _rand(64, 96)
    np.testing.assert_allclose(m(xv, wv), xv @ wv.T, rtol=1e-4, atol=1e-4)


def test_batched_q_kt():
    """Attention's Q·Kᵀ per batch (a batch_matmul with transpose_b): K_T is per batch element."""
    q, k = te.placeholder((4, 64, 32), name="q"), te.placeholder((4, 64, 32), name="k")
    s = topi.nn.batch_matmul(q, k)
    flat = transpose_columns(s)
    assert [list(op.output(0).shape) for op in _transposed([flat])] == [[4, 32, 64]]
    qv, kv = _rand(4, 64, 32), _rand(4, 64, 32)
    np.testing.assert_allclose(ad.build(s, [q, k])(qv, kv), qv @ kv.transpose(0, 2, 1), rtol=1e-4, atol=1e-4)


def test_stays_where_it_does_not_pay():
    """Columns that are not whole vectors (10), or too few rows of A per copied element (16 rows
    of work per element of W, under MIN_WORK_PER_COPY), keep the dot tile's form."""
    for rows, cols in ((256, 10), (16, 64)):
        x, w = te.placeholder((rows, 96), name="x"), te.placeholder((cols, 96), name="W")
        assert _transposed([transpose_columns(topi.nn.dense(x, w))]) == []


def test_one_copy_for_every_sum_that_reads_b():
    """Eight steps with one weight (as an unrolled recurrence): each step alone is too small to pay
    for the copy (32 rows), all together they share one W_T.  Values against numpy."""
    w = te.placeholder((64, 96), name="W")
    xs = [te.placeholder((32, 96), name=f"x{t}") for t in range(8)]
    ys = [topi.nn.dense(x, w) for x in xs]
    assert len(_transposed(transpose_columns(ys))) == 1
    assert _transposed([transpose_columns(ys[0])]) == []
    wv, xv = _rand(64, 96), [_rand(32, 96) + t for t in range(8)]
    for got, x in zip(ad.build(ys, [w, *xs])(wv, *xv), xv):
        np.testing.assert_allclose(got, x @ wv.T, rtol=1e-4, atol=1e-3)


def test_dense_layer_gradients_match_torch():
    """A dense layer's loss and both gradients, built with the transposed forward, against
    PyTorch (float64)."""
    x, w = te.placeholder((128, 48), "float64", name="x"), te.placeholder((32, 48), "float64", name="W")
    y = topi.nn.dense(x, w)
    loss = topi.sum(y * y)
    dx, dw = ad.differentiate(loss, [x, w])
    assert _transposed(transpose_columns([loss, dx, dw]))
    xv, wv = np.random.default_rng(0).standard_normal((128, 48)), np.random.default_rng(1).standard_normal((32, 48))
    got = ad.build([loss, dx, dw], [x, w])(xv, wv)
    xt, wt = torch.from_numpy(xv).requires_grad_(), torch.from_numpy(wv).requires_grad_()
    ref = (xt @ wt.T).pow(2).sum()
    ref.backward()
    for g, t in zip(got, [ref.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()]):
        np.testing.assert_allclose(g, t, rtol=1e-12, atol=1e-10)
