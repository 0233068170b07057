"""The gradients read the forward graph's own tensors: the passes rewrite only backward ops, so a
training step ([loss, *gradients]) computes every forward value once.  A training-mode batch
norm's mean, shape (1, C, 1, 1), used to be hoisted to a (C,) copy, and every forward op after it
(the next convolutions) was then computed twice."""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import models  # noqa: E402  (benchmarks/ is not a package)
import tvm_autodiff as ad  # noqa: E402
from tvm import te  # noqa: E402
from tvm_autodiff.ir.graph import ops_post_order  # noqa: E402


def _conv_ops(tensors):
    return [op for op in ops_post_order(tensors) if isinstance(op, te.ComputeOp) and op.name == "conv2d_nchw"]


def test_resnet_step_computes_each_forward_conv_once():
    model, outputs, _ = models.prepare("resnet", quick=True)
    forward = _conv_ops([model.loss])
    assert len(forward) == 4
    step = _conv_ops(outputs)
    assert len(step) == 4 and all(any(op.same_as(f) for f in forward) for op in step)
    compiled = ad.build(outputs, model.inputs, kernels="many")
    calls = sum(n for k, n in compiled.calls.items() if "conv2d_nchw" in
                {r.split("/", 1)[1] for r in compiled.rules if r.startswith(k + "/")})
    assert calls == 4
    ours = compiled(*model.data)
    ref = models.setup("resnet", True, 1)[3]()
    for got, want in zip(ours, ref):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=model.rtol, atol=1e-5 + model.rtol * np.abs(want).max())
