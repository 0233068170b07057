"""Benchmark cases: each builds a TE graph and the same computation in PyTorch.

A case is a function(quick) -> Case.  `out` is the TE output, `wrt` the placeholders whose
gradients are measured, `inputs` all placeholders in call order, and `torch_fn(*tensors)` the
PyTorch forward on tensors in the same order.  `train` cases instead give a full training step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from tvm import te, tirx, topi

import tvm_autodiff as ad


@dataclass
class Case:
    out: te.Tensor
    wrt: list
    inputs: list
    torch_fn: Callable
    # For a training step: TE tensors (loss, *updated weights) replacing the plain gradient.
    step: Optional[list] = None
    labels: list = field(default_factory=list)   # inputs that are one-hot labels, not data


def _ph(name, *shape):
    return te.placeholder(shape, name=name)


def dense(quick):
    n, i, o = (8, 64, 64) if quick else (32, 1000, 1000)
    x, w, b = _ph("X", n, i), _ph("W", o, i), _ph("b", o)
    import torch.nn.functional as F
    return Case(topi.nn.dense(x, w, b), [x, w, b], [x, w, b], lambda x, w, b: F.linear(x, w, b))


def _conv(quick, xs, ws, stride, pad):
    if quick:
        xs, ws = (2, 3, 12, 12), (4, 3, ws[2], ws[3])
    x, w = _ph("X", *xs), _ph("W", *ws)
    import torch.nn.functional as F
    return Case(topi.nn.conv2d(x, w, strides=stride, padding=pad, dilation=1), [x, w], [x, w],
                lambda x, w: F.conv2d(x, w, stride=stride, padding=pad))


def conv_3x3(quick):
    return _conv(quick, (32, 17, 28, 28), (19, 17, 3, 3), 1, 0)


def conv_5x5_s3(quick):
    return _conv(quick, (32, 17, 58, 58), (19, 17, 5, 5), 3, 1)


def _pool(quick, kind):
    x = _ph("X", *((2, 4, 8, 8) if quick else (32, 64, 100, 100)))
    import torch.nn.functional as F
    fn = F.avg_pool2d if kind == "avg" else F.max_pool2d
    return Case(topi.nn.pool2d(x, kernel=(2, 2), stride=(2, 2), dilation=(1, 1), padding=(0, 0, 0, 0),
                               pool_type=kind), [x], [x], lambda x: fn(x, 2, 2))


def avg_pool(quick):
    return _pool(quick, "avg")


def max_pool(quick):
    return _pool(quick, "max")


def _softmax(quick, log):
    n, i, o = (4, 16, 32) if quick else (60, 100, 1000)
    x, w = _ph("X", n, i), _ph("W", o, i)
    import torch
    import torch.nn.functional as F
    te_fn, t_fn = (topi.nn.log_softmax, torch.log_softmax) if log else (topi.nn.softmax, torch.softmax)
    return Case(te_fn(topi.nn.dense(x, w)), [x, w], [x, w], lambda x, w: t_fn(F.linear(x, w), -1))


def softmax(quick):
    return _softmax(quick, False)


def log_softmax(quick):
    return _softmax(quick, True)


def flatten(quick):
    x = _ph("X", *((2, 4, 5, 5) if quick else (32, 100, 20, 25)))
    return Case(topi.nn.flatten(x), [x], [x], lambda x: x.flatten(1))


def layer_norm(quick):
    n, d = (8, 32) if quick else (32 * 128, 256)
    x, g, b = _ph("X", n, d), _ph("gamma", d), _ph("beta", d)
    import torch.nn.functional as F
    return Case(topi.nn.layer_norm(x, g, b, axis=[1]), [x, g, b], [x, g, b],
                lambda x, g, b: F.layer_norm(x, (d,), g, b))


def lenet_step(quick, lr=0.01):
    """One SGD step of a LeNet-5-style net on 28x28 images: conv5-relu-pool, conv5-relu-pool,
    dense-relu, dense-relu, dense, softmax cross-entropy."""
    n = 4 if quick else 32
    shapes = {"c1": (6, 1, 5, 5), "c2": (16, 6, 5, 5), "f1": (120, 256), "b1": (120,),
              "f2": (84, 120), "b2": (84,), "f3": (10, 84), "b3": (10,)}
    x, y = _ph("X", n, 1, 28, 28), _ph("labels", n, 10)
    ws = {k: _ph(k, *s) for k, s in shapes.items()}

    def pool(t):
        return topi.nn.pool2d(t, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), pool_type="max")

    h = pool(topi.nn.relu(topi.nn.conv2d(x, ws["c1"], 1, 0, 1)))
    h = topi.nn.flatten(pool(topi.nn.relu(topi.nn.conv2d(h, ws["c2"], 1, 0, 1))))
    h = topi.nn.relu(topi.nn.dense(h, ws["f1"], ws["b1"]))
    h = topi.nn.relu(topi.nn.dense(h, ws["f2"], ws["b2"]))
    logp = topi.nn.log_softmax(topi.nn.dense(h, ws["f3"], ws["b3"]))
    r, q = te.reduce_axis((0, n), "r"), te.reduce_axis((0, 10), "q")
    loss = te.compute((1,), lambda _: te.sum(-logp[r, q] * y[r, q] / n, axis=[r, q]), name="loss")
    weights = list(ws.values())
    one = te.compute((1,), lambda _: tirx.const(1.0, "float32"), name="one")   # d loss / d loss
    grads = ad.differentiate(loss, weights, head=one)
    new = [_sgd(w, g, lr) for w, g in zip(weights, grads)]

    def torch_fn(x, labels, c1, c2, f1, b1, f2, b2, f3, b3):
        import torch.nn.functional as F
        h = F.max_pool2d(F.relu(F.conv2d(x, c1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, c2)), 2).flatten(1)
        h = F.relu(F.linear(F.relu(F.linear(h, f1, b1)), f2, b2))
        return -(F.log_softmax(F.linear(h, f3, b3), -1) * labels).sum().reshape(1) / x.shape[0]

    return Case(loss, weights, [x, y, *weights], torch_fn, step=[loss, *new], labels=[y])


def _sgd(w, g, lr):
    return te.compute(w.shape, lambda *i: w(*i) - lr * g(*i), name=w.name + "_new")


CASES = {f.__name__: f for f in (dense, conv_3x3, conv_5x5_s3, avg_pool, max_pool, softmax,
                                 log_softmax, flatten, layer_norm, lenet_step)}
