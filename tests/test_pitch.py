"""Row-pitch flattening (passes/pitch.py): window sums over rows that are not whole vectors run
over one flat row.  Values against the unflattened graph (float64, differentially), PyTorch and
the unscheduled build; the structure (which ops are flattened, the rule that tiles them) counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import sym, te, tirx, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.expr import tensor_loads
from tvm_autodiff.ir.graph import ops_post_order
from tvm_autodiff.passes.pitch import flatten_rows

F64 = "float64"


def _conv(n, c, f, size, k, stride=1, dtype=F64):
    x = te.placeholder((n, c, size, size), dtype, name="x")
    w = te.placeholder((f, c, k, k), dtype, name="w")
    y = topi.nn.conv2d(x, w, stride, k // 2, 1)
    h = te.placeholder(y.shape, dtype, name="h")
    dx, dw = ad.differentiate(y, [x, w], head=h)
    return [x, w, h], [y, dx, dw]


def _flat(tensors) -> list:
    return sorted(op.name for op in ops_post_order(tensors) if op.name.endswith("_rows"))


def _data(inputs, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(d) for d in t.shape]) for t in inputs]


def _torch(x, w, h, stride, pad):
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)
    y.backward(torch.from_numpy(h))
    return [y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()]


@pytest.mark.parametrize("size,k,c,f", [(10, 3, 8, 8), (14, 3, 8, 8), (13, 1, 64, 64), (20, 5, 4, 8)])
def test_flattened_convolution_and_gradients_match_torch(size, k, c, f):
    """Forward (output form), input gradient (output form, over the padded head) and weight
    gradient (reduction form) of a stride-1 convolution, flattened and built with the default
    schedule, against PyTorch float64 and against the same graph unflattened."""
    inputs, outs = _conv(2, c, f, size, k)
    flat = flatten_rows(outs)
    assert {"conv2d_nchw_rows", "h_rows"} <= set(_flat(flat)), _flat(flat)   # forward, weight gradient
    data = _data(inputs, size * 10 + k)
    got = ad.build(outs, inputs)(*data)
    plain = ad.build(outs, inputs, schedule=None)(*data)   # the unscheduled build is not flattened
    for g, p, t in zip(got, plain, _torch(*data, 1, k // 2)):
        np.testing.assert_allclose(g, t, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(g, p, rtol=1e-11, atol=1e-11)


def test_whole_vector_rows_and_wasteful_pitches_stay():
    """32 columns are whole vectors already; 7 columns with a 3x3 window would flatten to a pitch
    of 9 (1.29 times the work, over MAX_PITCH_WASTE); a strided window's rows are no flat row."""
    for size, k, stride in ((32, 3, 1), (7, 3, 1), (13, 3, 2)):
        _, outs = _conv(2, 8, 8, size, k, stride)
        assert [n for n in _flat(flatten_rows(outs)) if "conv2d" in n] == [], (size, k, stride)


def test_symbolic_batch_stays_and_builds():
    """A symbolic batch leaves the extents unknown: nothing is flattened, and the build is right
    for the batch it gets (against PyTorch float64)."""
    n = te.var("n")
    x, w = te.placeholder((n, 8, 10, 10), F64, name="x"), te.placeholder((8, 8, 3, 3), F64, name="w")
    y = topi.nn.conv2d(x, w, 1, 1, 1)
    h = te.placeholder(y.shape, F64, name="h")
    dx, dw = ad.differentiate(y, [x, w], head=h)
    assert _flat(flatten_rows([y, dx, dw])) == []
    data = [np.random.default_rng(3).standard_normal(s) for s in ((2, 8, 10, 10), (8, 8, 3, 3), (2, 8, 10, 10))]
    for g, t in zip(ad.build([y, dx, dw], [x, w, h])(*data), _torch(*data, 1, 1)):
        np.testing.assert_allclose(g, t, rtol=1e-11, atol=1e-11)


def test_flattened_ops_get_whole_vector_tiles():
    """The flat forward and weight gradient of a 3x3 convolution over 28 columns: the forward's
    flat row (28 x 30 = 840 = 105 vectors of 8) gets the matmul tile, the weight gradient's flat
    reduction the dot tile; values against PyTorch (float32)."""
    inputs, outs = _conv(2, 8, 16, 28, 3, dtype="float32")
    m = ad.build(outs, inputs)
    assert m.rules["conv2d_nchw_rows"] == "matmul-tile", m.explain()
    assert m.rules["dw_from_conv2d_nchw"] == "dot-tile", m.explain()
    data = [a.astype("float32") for a in _data(inputs, 1)]
    for g, t in zip(m(*data), _torch(*[a.astype(np.float64) for a in data], 1, 1)):
        np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-3)


def test_copies_are_shared():
    """The forward and the weight gradient read the padded input the same way: one flat copy."""
    _, outs = _conv(2, 8, 16, 28, 3)
    flat = flatten_rows(outs)
    copies = [op for op in ops_post_order(flat) if op.name == "pad_temp_rows"]
    assert len(copies) == 1


def test_extra_reads_stay_inside_the_copy():
    """The longest flat read of each flattened sum ends inside its copy: the reads at the cropped
    columns wrap into the next row, never past the buffer."""
    _, outs = _conv(1, 8, 8, 10, 3)
    assert _flat(flatten_rows(outs))
    for op in ops_post_order(flatten_rows(outs)):
        if not (isinstance(op, te.ComputeOp) and isinstance(op.body[0], tirx.Reduce)):
            continue
        for load in [l for l in tensor_loads(op.body[0].source[0]) if l.args[0].op.name.endswith("_rows")]:
            bound = _max_index(load.args[-1], op)
            assert bound < int(load.args[0].shape[-1]), (op.name, bound)


def _max_index(idx, op):
    ana = sym.Analyzer()
    for iv in list(op.axis) + list(op.body[0].axis):
        ana.bind(iv.var, tvm.ir.Range.from_min_extent(iv.dom.min, iv.dom.extent))
    return ana.const_int_bound(idx).max_value
