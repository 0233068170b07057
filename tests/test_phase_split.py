"""Phase splitting (passes/phase.py): a strided window's adjoint is eliminated once per phase of
the output, where it is a padded stride-1 window.  Values are checked against the unsplit
elimination, the naive gradient and PyTorch float64; the structure and the work are counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tvm import te, tirx, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import compute_op, ops_post_order, rebuild
from tvm_autodiff.passes import eliminate_zeros
from tvm_autodiff.passes.eliminate import eliminate_reduction
from tvm_autodiff.passes.phase import MAX_PHASE_WORK

F64 = "float64"


def _phases(tensors) -> list:
    return sorted(op.name for op in ops_post_order(tensors) if "_p" in op.name and op.name[-1].isdigit()
                  and isinstance(op, te.ComputeOp) and isinstance(op.body[0], tirx.Reduce))


def _conv(x, w, stride, padding, dilation=1):
    X = te.placeholder(x, F64, name="X")
    W = te.placeholder(w, F64, name="W")
    return X, W, topi.nn.conv2d(X, W, stride, padding, dilation)


def _torch_grad(x, w, h, stride, padding, dilation=1):
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=stride, padding=padding,
                               dilation=dilation).backward(torch.from_numpy(h))
    return xt.grad.numpy()


@pytest.mark.parametrize("size,stride,kernel", [(9, 2, 3), (10, 2, 3), (11, 3, 5), (12, 3, 3), (9, 2, 1), (13, 2, 5)])
def test_strided_input_gradient_splits_into_constant_windows(size, stride, kernel):
    """Every phase is one sum of constant extents, and the interleaved gradient matches PyTorch
    float64 (ragged sizes included: the phases' extra points are never read).  A 1x1 kernel has
    one tap per phase or none: its gradient is a strided copy, split or not."""
    X, W, Y = _conv((2, 3, size, size), (4, 3, kernel, kernel), stride, kernel // 2)
    H = te.placeholder(Y.shape, F64, name="H")
    (dX,) = ad.differentiate(Y, [X], head=H)
    phases = [op for op in ops_post_order([dX]) if op.name in _phases([dX])]
    assert (1 if kernel > 1 else 0) <= len(phases) <= stride * stride
    assert all(isinstance(rv.dom.extent, tirx.IntImm) for op in phases for rv in op.body[0].axis)
    rng = np.random.default_rng(size)
    x, w = rng.standard_normal((2, 3, size, size)), rng.standard_normal((4, 3, kernel, kernel))
    h = rng.standard_normal([int(d) for d in Y.shape])
    got = ad.build(dX, [X, W, H])(x, w, h)
    np.testing.assert_allclose(got, _torch_grad(x, w, h, stride, kernel // 2), rtol=1e-12, atol=1e-12)


def test_many_output_channels_still_split():
    """72 output channels, summed whole by the input gradient, more than padding.py's longest
    padded box side (64): only the taps' sides count, so the phases still come out as constant
    windows (with 128 channels at (16, 64, 28, 28) the unsplit gradient took 237 ms, split 6 ms).
    Values against PyTorch float64."""
    from tvm_autodiff.passes.padding import _MAX_EXTENT
    X, W, Y = _conv((2, 2, 9, 9), (_MAX_EXTENT + 8, 2, 3, 3), 2, 1)
    H = te.placeholder(Y.shape, F64, name="H")
    (dX,) = ad.differentiate(Y, [X], head=H)
    phases = [op for op in ops_post_order([dX]) if op.name in _phases([dX])]
    assert len(phases) == 4
    assert all(isinstance(rv.dom.extent, tirx.IntImm) for op in phases for rv in op.body[0].axis)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 2, 9, 9)), rng.standard_normal((_MAX_EXTENT + 8, 2, 3, 3))
    h = rng.standard_normal([int(d) for d in Y.shape])
    got = ad.build(dX, [X, W, H])(x, w, h)
    np.testing.assert_allclose(got, _torch_grad(x, w, h, 2, 1), rtol=1e-12, atol=1e-12)


def test_split_and_unsplit_eliminations_agree():
    """The same reduction eliminated with phases=False (one sum over the whole grid, reading the
    head through divisions) and with phases, on the same data."""
    X, W, Y = _conv((1, 2, 11, 11), (3, 2, 3, 3), 2, 1)
    H = te.placeholder(Y.shape, F64, name="H")
    (naive,) = ad.differentiate(Y, [X], head=H, optimize=False)
    dpad = next(op for op in ops_post_order([naive]) if op.name.startswith("dpad"))
    split = eliminate_reduction(dpad, list(dpad.body))
    plain = eliminate_reduction(dpad, list(dpad.body), phases=False)
    assert isinstance(plain[0], tirx.Reduce) and not isinstance(split[0], tirx.Reduce)
    a = compute_op("split", "", None, dpad.axis, split).output(0)
    b = compute_op("plain", "", None, dpad.axis, plain).output(0)
    rng = np.random.default_rng(0)
    w, h = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal([int(d) for d in Y.shape])
    got_a, got_b = ad.build([a, b], [W, H], schedule=None)(w, h)
    np.testing.assert_allclose(got_a, got_b, rtol=1e-13, atol=1e-13)
    assert np.abs(got_b).max() > 0


def test_dilated_windows_stay_unsplit():
    """A dilation divides the output index by d in the window's bounds too, but its phases would
    read the head at stride d and pad the kernel: more than MAX_PHASE_WORK times the work."""
    X, W, Y = _conv((1, 2, 10, 10), (3, 2, 3, 3), 1, 1, dilation=3)
    H = te.placeholder(Y.shape, F64, name="H")
    (dX,) = ad.differentiate(Y, [X], head=H)
    assert _phases([dX]) == []


def test_the_phase_split_keeps_work_within_its_limit():
    """Work of the split gradient (phases, their padded heads, the interleave) against the work of
    the unsplit one, on a stride-2 3x3 conv of a 16x16 image."""
    X, W, Y = _conv((2, 4, 16, 16), (4, 4, 3, 3), 2, 1)
    H = te.placeholder(Y.shape, F64, name="H")
    (naive,) = ad.differentiate(Y, [X], head=H, optimize=False)
    split = ad.work(eliminate_zeros(naive)).iterations
    plain = ad.work(_unsplit(naive)).iterations
    assert _phases([eliminate_zeros(naive)]) and split <= MAX_PHASE_WORK * plain + 2 * 4 * 16 * 16


def _unsplit(t):
    out, _ = rebuild([t], lambda op, bodies: eliminate_reduction(op, bodies, phases=False))
    return out[0]


def test_symbolic_batch_splits_too():
    """The batch may be symbolic (only the split axes need constant extents)."""
    b = te.var("b")
    X = te.placeholder((b, 3, 11, 11), F64, name="X")
    W = te.placeholder((4, 3, 3, 3), F64, name="W")
    Y = topi.nn.conv2d(X, W, 2, 1, 1)
    H = te.placeholder(Y.shape, F64, name="H")
    (dX,) = ad.differentiate(Y, [X], head=H)
    assert len(_phases([dX])) == 4
    rng = np.random.default_rng(0)
    x, w, h = rng.standard_normal((2, 3, 11, 11)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 6, 6))
    np.testing.assert_allclose(ad.build(dX, [X, W, H])(x, w, h), _torch_grad(x, w, h, 2, 1), rtol=1e-12, atol=1e-12)
