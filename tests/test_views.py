"""Views (ir.graph.is_view): composed when one reads another (passes/views.py), and repeated in
every kernel that reads them instead of being kernels of their own (tvm_autodiff/kernels.py).
Values against numpy; the partition counted."""
from __future__ import annotations

import numpy as np
from tvm import te, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import is_view, ops_post_order
from tvm_autodiff.kernels import partition
from tvm_autodiff.passes import compose_views, transpose_columns

F64 = "float64"


def test_a_view_of_a_view_reads_the_source():
    """slice(transpose(X)) + 1: the slice reads X itself, and the transpose is gone."""
    x = te.placeholder((6, 4), F64, name="X")
    y = topi.add(topi.strided_slice(topi.transpose(x), [1, 2], [3, 6]), 1.0)
    composed = compose_views(y)
    names = [op.name for op in ops_post_order([composed])]
    assert "T_transpose" not in names and "T_strided_slice" in names, names
    xv = np.arange(24.0).reshape(6, 4)
    np.testing.assert_array_equal(ad.build(composed, [x], schedule=None)(xv), xv.T[1:3, 2:6] + 1)


def test_is_view():
    x = te.placeholder((6, 4), F64, name="X")
    assert is_view(topi.strided_slice(x, [1, 0], [3, 4]).op) and is_view(topi.full((2,), F64, 0.0).op)
    assert not is_view(topi.reshape(x, (24,)).op)          # division in its indices
    assert not is_view(topi.exp(x).op) and not is_view(topi.sum(x, axis=0).op)


def test_views_are_repeated_in_the_kernels_that_read_them():
    """Two slices of X, each read by two kernels (row sums, as an LSTM's gate slices are read by
    the forward and by the backward): no kernel is a slice, and each slice is in the two kernels
    that read it.  The built values are numpy's."""
    x = te.placeholder((8, 8), F64, name="X")
    a, b = topi.strided_slice(x, [0, 0], [8, 4]), topi.strided_slice(x, [0, 4], [8, 8])
    ys = [topi.sum(topi.exp(a), axis=1), topi.sum(topi.tanh(a) * topi.sin(b), axis=1),
          topi.sum(topi.sigmoid(b), axis=1)]
    kernels = partition(ys)
    assert len(kernels) == 3 and all(not is_view(k.root) for k in kernels)
    slices = [sum(op.name.startswith("T_strided_slice") for op in k.ops) for k in kernels]
    assert slices == [1, 2, 1], [[op.name for op in k.ops] for k in kernels]
    xv = np.random.default_rng(0).standard_normal((8, 8))
    av, bv = xv[:, :4], xv[:, 4:]
    expected = [np.exp(av).sum(1), (np.tanh(av) * np.sin(bv)).sum(1), (1 / (1 + np.exp(-bv))).sum(1)]
    for got, want in zip(ad.build(ys, [x], kernels="many")(xv), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_outputs_and_stored_copies_stay_kernels():
    """A view that is an output is computed by its own kernel; a transpose that a pass made to be
    stored (passes/transpose.py) is not repeated."""
    x = te.placeholder((8, 8), F64, name="X")
    s = topi.strided_slice(x, [0, 0], [8, 4])
    kernels = partition([topi.exp(s), s])
    assert sum(k.root.name == "T_strided_slice" for k in kernels) == 1
    w = te.placeholder((64, 32), "float32", name="W")
    ys = [topi.nn.dense(te.placeholder((128, 32), "float32", name=f"x{i}"), w) for i in range(2)]
    stored = [k for k in partition(transpose_columns(ys)) if k.root.name == "W_T"]
    assert len(stored) == 1
