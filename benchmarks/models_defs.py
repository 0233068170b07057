"""The models of benchmarks/models.py, each written twice: the ordinary topi/te way, and in PyTorch.

A model function(quick) returns a `Model`: the TE loss, all placeholders in call order, the ones
whose gradients a training step computes, the data (numpy, in call order), and the same loss in
PyTorch on tensors in that order (from benchmarks/models_torch.py, which does not import TVM).
Losses are scalars (shape () or (1,)), so a step is the loss and the gradient of its sum with
respect to every weight.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from tvm import te, tirx, topi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models_torch  # noqa: E402  (benchmarks/ is not a package)
from ops import lenet_step  # noqa: E402


@dataclass
class Model:
    loss: te.Tensor
    inputs: list
    wrt: list
    data: list
    shape: str   # the sizes, for the report
    torch_loss: Callable
    # (function of models_torch.py, its sizes) that made torch_loss, for benchmarks/gpu_check.py
    twin: Optional[tuple] = None
    kernels: str = "auto"   # build(kernels=...)
    rtol: float = 1e-3      # the check's tolerance (benchmarks/models.py); looser only with a reason


def _torch(name, **sizes) -> dict:
    """Model's torch_loss and twin fields for the PyTorch twin models_torch.<name>(**sizes)."""
    return {"torch_loss": getattr(models_torch, name)(**sizes), "twin": (name, sizes)}


def _rng():
    return np.random.default_rng(0)


class _Params:
    """Weight placeholders and their initial values, in creation order."""

    def __init__(self):
        self.ph, self.val, self.rng = [], [], _rng()

    def __call__(self, name, *shape, scale=None, const=None):
        """A placeholder filled with `const`, or normal with standard deviation `scale`
        (default 1 / sqrt(fan-in), so that activations keep their size through the layers)."""
        p = te.placeholder(shape, name=name)
        if const is not None:
            v = np.full(shape, const, "float32")
        else:
            std = scale if scale is not None else 1 / math.sqrt(np.prod(shape[1:]) or 1)
            v = (self.rng.standard_normal(shape) * std).astype("float32")
        self.ph.append(p)
        self.val.append(v)
        return p


def _cross_entropy(logits, target, classes):
    """Mean of -log_softmax(logits)[i, target[i]], with the target as a one-hot mask."""
    n = int(logits.shape[0])
    logp = topi.nn.log_softmax(logits)
    hot = topi.one_hot(target, tirx.const(1.0, "float32"), tirx.const(0.0, "float32"), classes, -1, "float32")
    r, q = te.reduce_axis((0, n), "r"), te.reduce_axis((0, classes), "q")
    return te.compute((), lambda: te.sum(-logp[r, q] * hot[r, q] / n, axis=[r, q]), name="loss")


def _labels(n, classes, name="target"):
    return te.placeholder((n,), "int32", name=name), _rng().integers(0, classes, n).astype("int32")


# -- GPT-style decoder block -----------------------------------------------------------------------


def gpt(quick):
    """Token + position embedding (take), pre-LN attention with a causal mask (batch_matmul,
    softmax), pre-LN GELU(erf) MLP, final layer norm, LM head, cross-entropy on the next tokens."""
    B, S, D, H, V = (2, 16, 32, 4, 50) if quick else (16, 128, 256, 4, 2000)
    hd, n = D // H, B * S
    ids = te.placeholder((B, S), "int32", name="ids")
    tgt, tgt_v = _labels(n, V)
    w = _Params()
    wte, wpe = w("wte", V, D, scale=0.1), w("wpe", S, D, scale=0.1)
    ln = [(w(f"ln{i}_g", D, const=1.0), w(f"ln{i}_b", D, const=0.0)) for i in range(3)]
    wqkv, bqkv, wo, bo = w("Wqkv", 3 * D, D), w("bqkv", 3 * D, const=0.0), w("Wo", D, D), w("bo", D, const=0.0)
    w1, b1, w2, b2 = w("W1", 4 * D, D), w("b1", 4 * D, const=0.0), w("W2", D, 4 * D), w("b2", D, const=0.0)
    whead = w("Whead", V, D)

    emb = topi.take(wte, topi.reshape(ids, (n,)), axis=0)
    x = te.compute((n, D), lambda i, j: emb[i, j] + wpe[i % S, j], name="x")

    def norm(t, k):
        return topi.nn.layer_norm(t, ln[k][0], ln[k][1], axis=[1])

    qkv = topi.nn.dense(norm(x, 0), wqkv, bqkv)

    def head(part):   # (n, 3D) -> (B*H, S, hd)
        return te.compute((B * H, S, hd), lambda bh, s, e: qkv[(bh // H) * S + s, part * D + (bh % H) * hd + e],
                          name="qkv" + "qkv"[part])

    q, k, v = head(0), head(1), head(2)
    scores = topi.nn.batch_matmul(q, k)
    scale = 1.0 / math.sqrt(hd)
    masked = te.compute(scores.shape, lambda b, i, j: tirx.Select(j <= i, scores[b, i, j] * scale,
                                                                   tirx.const(-1e9, "float32")), name="masked")
    att = topi.nn.batch_matmul(topi.nn.softmax(masked), v, transpose_b=False)
    merged = te.compute((n, D), lambda i, j: att[(i // S) * H + j // hd, i % S, j % hd], name="merged")
    x1 = topi.add(x, topi.nn.dense(merged, wo, bo))
    u = topi.nn.dense(norm(x1, 1), w1, b1)
    gelu = te.compute(u.shape, lambda i, j: 0.5 * u[i, j] * (1.0 + te.erf(u[i, j] * (1 / math.sqrt(2)))),
                      name="gelu")
    x2 = topi.add(x1, topi.nn.dense(gelu, w2, b2))
    loss = _cross_entropy(topi.nn.dense(norm(x2, 2), whead), tgt, V)
    ids_v = _rng().integers(0, V, (B, S)).astype("int32")

    ln_flat = [t for pair in ln for t in pair]
    weights = [wte, wpe, *ln_flat, wqkv, bqkv, wo, bo, w1, b1, w2, b2, whead]
    order = {p: i for i, p in enumerate(w.ph)}
    return Model(loss, [ids, tgt, *weights], weights, [ids_v, tgt_v, *(w.val[order[p]] for p in weights)],
                 f"B{B} S{S} D{D} H{H} V{V}", **_torch("gpt", B=B, S=S, D=D, H=H, V=V))


# -- convolutional blocks --------------------------------------------------------------------------


def _batch_norm(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm over (N, H, W): batch mean and biased batch variance."""
    N, C, H, W = (int(d) for d in x.shape)
    count = float(N * H * W)
    mean = topi.divide(topi.sum(x, axis=[0, 2, 3], keepdims=True), count)
    cen = topi.subtract(x, mean)
    var = topi.divide(topi.sum(topi.multiply(cen, cen), axis=[0, 2, 3], keepdims=True), count)
    inv = topi.rsqrt(topi.add(var, eps))
    return te.compute(x.shape, lambda n, c, h, w: cen[n, c, h, w] * inv[0, c, 0, 0] * gamma[c] + beta[c],
                      name="bn")


def _classifier_head(x, w, classes, n):
    """Global average pool, dense, cross-entropy: the placeholders (target, fc, fc_b) and the loss."""
    tgt, tgt_v = _labels(n, classes)
    fc, fcb = w("fc", classes, int(x.shape[1])), w("fc_b", classes, const=0.0)
    pooled = topi.nn.flatten(topi.nn.global_pool(x, "avg"))
    return tgt, tgt_v, fc, fcb, _cross_entropy(topi.nn.dense(pooled, fc, fcb), tgt, classes)


def resnet(quick):
    """Two ResNet basic blocks (conv3x3-BN-relu-conv3x3-BN, identity shortcut, relu) with
    training-mode batch norm, then global pool, dense and cross-entropy."""
    N, C, HW = (2, 8, 8) if quick else (16, 64, 28)
    x = te.placeholder((N, C, HW, HW), name="x")
    w = _Params()
    blocks = [[w(f"conv{b}{i}", C, C, 3, 3) for i in (1, 2)] for b in range(2)]
    bns = [[(w(f"bn{b}{i}_g", C, const=1.0), w(f"bn{b}{i}_b", C, const=0.0)) for i in (1, 2)] for b in range(2)]
    h = x
    for (c1, c2), ((g1, b1), (g2, b2)) in zip(blocks, bns):
        y = topi.nn.relu(_batch_norm(topi.nn.conv2d_nchw(h, c1, 1, 1, 1), g1, b1))
        y = _batch_norm(topi.nn.conv2d_nchw(y, c2, 1, 1, 1), g2, b2)
        h = topi.nn.relu(topi.add(y, h))
    tgt, tgt_v, fc, fcb, loss = _classifier_head(h, w, 10, N)

    weights = [t for b in range(2) for i in range(2) for t in (blocks[b][i], *bns[b][i])] + [fc, fcb]
    order = {p: i for i, p in enumerate(w.ph)}
    xv = _rng().standard_normal((N, C, HW, HW)).astype("float32")
    return Model(loss, [x, tgt, *weights], weights, [xv, tgt_v, *(w.val[order[p]] for p in weights)],
                 f"({N}, {C}, {HW}, {HW})", **_torch("resnet"))


def mobilenet(quick):
    """A MobileNet-v2 inverted residual block (expansion 6): 1x1 expand-BN-relu6, 3x3 depthwise-BN-
    relu6, 1x1 project-BN, residual; then global pool, dense and cross-entropy."""
    N, C, HW = (2, 8, 8) if quick else (16, 32, 28)
    E = 6 * C
    x = te.placeholder((N, C, HW, HW), name="x")
    w = _Params()
    we, (ge, be) = w("expand", E, C, 1, 1), (w("bn_e_g", E, const=1.0), w("bn_e_b", E, const=0.0))
    wd, (gd, bd) = w("depthwise", E, 1, 3, 3), (w("bn_d_g", E, const=1.0), w("bn_d_b", E, const=0.0))
    wp, (gp, bp) = w("project", C, E, 1, 1), (w("bn_p_g", C, const=1.0), w("bn_p_b", C, const=0.0))
    y = topi.clip(_batch_norm(topi.nn.conv2d_nchw(x, we, 1, 0, 1), ge, be), 0.0, 6.0)
    y = topi.clip(_batch_norm(topi.nn.depthwise_conv2d_nchw(y, wd, 1, 1, 1), gd, bd), 0.0, 6.0)
    h = topi.add(x, _batch_norm(topi.nn.conv2d_nchw(y, wp, 1, 0, 1), gp, bp))
    tgt, tgt_v, fc, fcb, loss = _classifier_head(h, w, 10, N)

    xv = _rng().standard_normal((N, C, HW, HW)).astype("float32")
    return Model(loss, [x, tgt, *w.ph], list(w.ph), [xv, tgt_v, *w.val], f"({N}, {C}, {HW}, {HW})",
                 **_torch("mobilenet", E=E))


# -- LSTM ------------------------------------------------------------------------------------------


def lstm(quick, T):
    """An LSTM layer (gate order i, f, g, o as in torch.nn.LSTM) unrolled T steps from zero state,
    one input placeholder per step (so that the steps are identical kernels); loss = mean over the
    batch of |h_T|².  PyTorch runs torch.nn.LSTM (its fused cell) with the same weights."""
    B, I, Hd = (4, 8, 8) if quick else (32, 64, 128)
    xs = [te.placeholder((B, I), name=f"x{t}") for t in range(T)]
    w = _Params()
    wx, wh, b = w("Wx", 4 * Hd, I), w("Wh", 4 * Hd, Hd), w("b", 4 * Hd, scale=0.1)
    h = c = topi.full((B, Hd), "float32", 0.0)

    def gate(g, q):
        return topi.strided_slice(g, [0, q * Hd], [B, (q + 1) * Hd])

    for x in xs:
        g = topi.add(topi.nn.dense(x, wx, b), topi.nn.dense(h, wh))
        c = topi.add(topi.multiply(topi.sigmoid(gate(g, 1)), c),
                     topi.multiply(topi.sigmoid(gate(g, 0)), topi.tanh(gate(g, 2))))
        h = topi.multiply(topi.sigmoid(gate(g, 3)), topi.tanh(c))
    loss = topi.divide(topi.sum(topi.multiply(h, h)), float(B))
    rng = _rng()
    xv = [rng.standard_normal((B, I)).astype("float32") for _ in range(T)]
    return Model(loss, [*xs, *w.ph], list(w.ph), [*xv, *w.val], f"B{B} I{I} H{Hd} T{T}",
                 **_torch("lstm", T=T, B=B, I=I, Hd=Hd))


# -- bilateral-grid slicing (HDRNet) ---------------------------------------------------------------


def bilateral(quick):
    """HDRNet's slicing layer: out[n, c, y, x] is the trilinear interpolation of grid[n, c] at
    ((x + .5) GW / W - .5, (y + .5) GH / H - .5, guide[n, y, x] D - .5), with indices clamped to the
    grid (torch's grid_sample with align_corners=False and border padding computes the same).  The
    depth index is data-dependent.  Loss: mean squared error against a target image; gradients
    with respect to the grid and the guide."""
    N, C, D, G, HW = (1, 3, 4, 4, 16) if quick else (4, 12, 8, 16, 256)
    grid = te.placeholder((N, C, D, G, G), name="grid")
    guide = te.placeholder((N, HW, HW), name="guide")
    target = te.placeholder((N, C, HW, HW), name="target")

    def clamp(i, n):
        return tirx.max(tirx.min(i, n - 1), 0)

    def sliced(n, c, y, x):
        gx = (x.astype("float32") + 0.5) * (G / HW) - 0.5
        gy = (y.astype("float32") + 0.5) * (G / HW) - 0.5
        gz = guide[n, y, x] * float(D) - 0.5
        fx, fy, fz = te.floor(gx), te.floor(gy), te.floor(gz)
        ix, iy, iz = fx.astype("int32"), fy.astype("int32"), fz.astype("int32")
        wx, wy, wz = gx - fx, gy - fy, gz - fz
        total = tirx.const(0.0, "float32")
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    weight = ((wx if dx else 1.0 - wx) * (wy if dy else 1.0 - wy) * (wz if dz else 1.0 - wz))
                    total = total + weight * grid[n, c, clamp(iz + dz, D), clamp(iy + dy, G), clamp(ix + dx, G)]
        return total

    out = te.compute((N, C, HW, HW), sliced, name="sliced")
    diff = topi.subtract(out, target)
    loss = topi.divide(topi.sum(topi.multiply(diff, diff)), float(N * C * HW * HW))

    rng = _rng()
    data = [rng.standard_normal((N, C, D, G, G)).astype("float32"), rng.random((N, HW, HW)).astype("float32"),
            rng.standard_normal((N, C, HW, HW)).astype("float32")]
    # rtol: the float32 loss, a sum of 3.1 million squares, is 2.4e-3 (relative) off the float64
    # one (PyTorch's 4e-8); the gradients agree to 5e-7.
    return Model(loss, [grid, guide, target], [grid, guide], data,
                 f"grid ({N}, {C}, {D}, {G}, {G}), image {HW}x{HW}", **_torch("bilateral", N=N, HW=HW), rtol=5e-3)


# -- LeNet (benchmarks/ops.py) ---------------------------------------------------------------------


def lenet(quick):
    """The LeNet step of benchmarks/ops.py (its loss and weights; the SGD update left out, as in
    every model here)."""
    case = lenet_step(quick)
    rng, data = _rng(), []
    for t in case.inputs:
        shape = [int(d) for d in t.shape]
        if t in case.labels:   # one-hot labels, as benchmarks/run.py makes them
            data.append(np.eye(shape[1], dtype="float32")[rng.integers(0, shape[1], shape[0])])
        else:
            data.append(rng.standard_normal(shape).astype("float32"))
    return Model(case.out, case.inputs, case.wrt, data, f"({int(case.inputs[0].shape[0])}, 1, 28, 28)",
                 torch_loss=lambda *t: case.torch_fn(*t).sum())


MODELS = {"gpt": gpt, "resnet": resnet, "lstm_T4": lambda q: lstm(q, 4), "lstm_T16": lambda q: lstm(q, 16),
          "lstm_T32": lambda q: lstm(q, 32), "mobilenet": mobilenet, "lenet": lenet, "bilateral": bilateral}
