"""The PyTorch twins of the models of benchmarks/models_defs.py, without TVM.

Each function takes a model's sizes and returns its loss as a function of torch tensors in the
order of the model's inputs; tensors it makes itself go on the device of its inputs.  They live
apart from the TE models so that benchmarks/gpu_check.py can carry this file to a GPU machine
that has PyTorch but no TVM, and rebuild each model's PyTorch step there from its sizes.
"""
from __future__ import annotations


def gpt(B, S, D, H, V):
    import torch
    import torch.nn.functional as F
    hd, n = D // H, B * S

    def loss(ids, tgt, wte, wpe, g0, c0, g1, c1, g2, c2, wqkv, bqkv, wo, bo, w1, b1, w2, b2, whead):
        x = (F.embedding(ids.long(), wte) + wpe).reshape(n, D)
        qkv = F.linear(F.layer_norm(x, (D,), g0, c0), wqkv, bqkv).reshape(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
        scores = qkv[0] @ qkv[1].transpose(-1, -2) * (1.0 / hd ** 0.5)
        mask = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
        att = torch.softmax(scores.masked_fill(~mask, -1e9), -1) @ qkv[2]
        x1 = x + F.linear(att.permute(0, 2, 1, 3).reshape(n, D), wo, bo)
        x2 = x1 + F.linear(F.gelu(F.linear(F.layer_norm(x1, (D,), g1, c1), w1, b1)), w2, b2)
        return F.cross_entropy(F.linear(F.layer_norm(x2, (D,), g2, c2), whead), tgt.long())

    return loss


def _bn(x, g, b):
    import torch.nn.functional as F
    return F.batch_norm(x, None, None, g, b, training=True, eps=1e-5)


def _head(x, tgt, fc, fcb):
    import torch.nn.functional as F
    return F.cross_entropy(F.linear(x.mean((2, 3)), fc, fcb), tgt.long())


def resnet():
    import torch.nn.functional as F

    def loss(x, tgt, *ws):
        h = x
        for b in range(2):
            c1, g1, b1, c2, g2, b2 = ws[6 * b:6 * b + 6]
            y = F.relu(_bn(F.conv2d(h, c1, padding=1), g1, b1))
            h = F.relu(_bn(F.conv2d(y, c2, padding=1), g2, b2) + h)
        return _head(h, tgt, *ws[12:])

    return loss


def mobilenet(E):
    import torch.nn.functional as F

    def loss(x, tgt, we, ge, be, wd, gd, bd, wp, gp, bp, fc, fcb):
        y = F.relu6(_bn(F.conv2d(x, we), ge, be))
        y = F.relu6(_bn(F.conv2d(y, wd, padding=1, groups=E), gd, bd))
        return _head(x + _bn(F.conv2d(y, wp), gp, bp), tgt, fc, fcb)

    return loss


def lstm(T, B, I, Hd):
    """torch.nn.LSTM (its fused cell) with the given weights, a zero second bias."""
    import torch
    from torch.func import functional_call
    cell = torch.nn.LSTM(I, Hd)

    def loss(*args):
        x, (wx, wh, b) = torch.stack(args[:T]), args[T:]
        params = {"weight_ih_l0": wx, "weight_hh_l0": wh, "bias_ih_l0": b, "bias_hh_l0": torch.zeros_like(b)}
        out, _ = functional_call(cell.to(x.device), params, (x,))
        return (out[-1] ** 2).sum() / B

    return loss


def bilateral(N, HW):
    """grid_sample with align_corners=False and border padding: HDRNet's slicing layer."""
    import torch
    import torch.nn.functional as F

    def loss(grid, guide, target):
        lin = (torch.arange(HW, dtype=torch.float32, device=guide.device) + 0.5) / HW * 2 - 1
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        coords = torch.stack([xx.expand(N, HW, HW), yy.expand(N, HW, HW), guide * 2 - 1], -1)
        out = F.grid_sample(grid, coords[:, None], mode="bilinear", padding_mode="border", align_corners=False)
        return ((out[:, :, 0] - target) ** 2).mean()

    return loss
