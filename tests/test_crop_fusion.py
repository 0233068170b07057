"""Crop fusion (passes/crop.py): a reduction that only a shifted copy reads is computed on the
copy's grid.  Values are checked against the unfused graph and against PyTorch float64; the
work is counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tvm import te, tirx, topi

import tvm_autodiff as ad
from tvm_autodiff.counting import op_iterations
from tvm_autodiff.ir.graph import ops_post_order
from tvm_autodiff.passes import fuse_crops

F64 = "float64"


def _window_sum():
    """R[u] = Σ_{r < 3} A[u + r] over u ∈ [0, 10), and Y[v] = R[v + 1] over v ∈ [0, 8)."""
    A = te.placeholder((12,), F64, name="A")
    r = te.reduce_axis((0, 3), name="r")
    R = te.compute((10,), lambda u: te.sum(A[u + r], axis=r), name="R")
    return A, R, te.compute((8,), lambda v: R[v + 1], name="Y")


def test_a_shifted_copy_becomes_the_reduction():
    A, R, Y = _window_sum()
    fused = fuse_crops(Y)
    assert fused.name == "Y" and isinstance(fused.op.body[0], tirx.Reduce)
    assert [op.name for op in ops_post_order([fused]) if isinstance(op, te.ComputeOp)] == ["Y"]
    assert op_iterations(fused.op) == 8 * 3   # R's work was 10 * 3
    a = np.random.default_rng(0).standard_normal(12)
    np.testing.assert_allclose(ad.build(fused, [A])(a), [a[v + 1:v + 4].sum() for v in range(8)], rtol=1e-14)


def test_a_reduction_read_twice_stays():
    A, R, Y = _window_sum()
    Z = te.compute((8,), lambda v: Y[v] + R[v], name="Z")
    assert fuse_crops(Z).same_as(Z)
    # An output that is also read by the copy must stay as well.
    out = fuse_crops([Y, R])
    assert out[0].same_as(Y) and out[1].same_as(R)


def test_non_constant_shifts_stay():
    A, R, _ = _window_sum()
    Y = te.compute((5,), lambda v: R[2 * v], name="Y")
    assert fuse_crops(Y).same_as(Y)


@pytest.mark.parametrize("stride,kernel", [(1, 3), (1, 5), (1, 1)])
def test_a_padded_conv_input_gradient_runs_on_the_input_grid(stride, kernel):
    """differentiate fuses the crop of a padded conv: dX is a reduction over X's grid, matching
    PyTorch float64, with work no more than the sum over X's grid of the taps it really has.
    (A strided conv's input gradient is split by phase instead, tests/test_phase_split.py.)"""
    X = te.placeholder((2, 3, 9, 9), F64, name="X")
    W = te.placeholder((4, 3, kernel, kernel), F64, name="W")
    Y = topi.nn.conv2d(X, W, stride, kernel // 2, 1)
    H = te.placeholder(Y.shape, F64, name="H")
    (dX,) = ad.differentiate(Y, [X], head=H)
    assert isinstance(dX.op.body[0], tirx.Reduce)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, kernel, kernel))
    h = rng.standard_normal([int(d) for d in Y.shape])
    got = ad.build(dX, [X, W, H])(x, w, h)
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=stride, padding=kernel // 2).backward(torch.from_numpy(h))
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert ad.work(dX).per_op["dX_from_pad_temp"] <= 2 * 3 * 9 * 9 * 4 * kernel * kernel
