"""Relax op cases for tests/test_relax_ops.py: each newly covered op's gradient, as data.

A case is (op name, the Relax call on float64 parameters, their shapes, the same function in torch
or None, the input range).  Index arguments are constants inside the call (numpy, shared with the
torch function).  `torch=None` means finite differences.  For tuple outputs `fields` names the
output fields that the loss uses (the others get relax.zeros gradients).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tvm import relax

R = relax.op
N = R.nn
F64 = "float64"


def const(a, dtype=F64):
    return relax.const(np.asarray(a, dtype), dtype)


def ints(a, dtype="int64"):
    return relax.const(np.asarray(a, dtype), dtype)


@dataclass
class Case:
    op: str
    relax: Callable
    shapes: list
    torch: Optional[Callable] = None
    low: float = -2.0
    high: float = 2.0
    fields: tuple = ()
    name: str = ""
    dtype: str = F64      # float32 where Relax refuses float64 (the norms' type inference)
    tol: float = 0.0      # 0: the test's default for the dtype and reference

    @property
    def id(self):
        return self.name or self.op.replace("relax.", "")


IDX_GE = np.array([[0, 2, 1, 3], [3, 0, 0, 1], [2, 1, 3, 0]], "int64")     # (3, 4) into axis 1 of (3, 4)
IDX_ND = np.array([[0, 1], [2, 3], [1, 0]], "int64")                       # (3, 2) into (3, 4)
TORCH_RS = dict(mode="bilinear", align_corners=False)
ROI = [0, 0.6, 0.7, 3.2, 3.9]          # batch index, then a box inside the 5 x 5 image
DQ = np.array([[1, -3, 4, 2], [0, 5, -2, 7], [3, 3, -1, 0]], "int8")


def _t(a):
    return torch.from_numpy(np.asarray(a))


def _attention_ref(q, k, v, causal=False):
    """relax attention is (batch, seq, heads, dim); torch's sdpa is (batch, heads, seq, dim)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal)
    return out.transpose(1, 2)


CASES = [
    # unary float ops
    Case("relax.acos", R.acos, [(3, 4)], torch.acos, -0.9, 0.9),
    Case("relax.acosh", R.acosh, [(3, 4)], torch.acosh, 1.2, 3.0),
    Case("relax.asin", R.asin, [(3, 4)], torch.asin, -0.9, 0.9),
    Case("relax.asinh", R.asinh, [(3, 4)], torch.asinh),
    Case("relax.atan", R.atan, [(3, 4)], torch.atan),
    Case("relax.atanh", R.atanh, [(3, 4)], torch.atanh, -0.9, 0.9),
    Case("relax.cosh", R.cosh, [(3, 4)], torch.cosh),
    Case("relax.sinh", R.sinh, [(3, 4)], torch.sinh),
    Case("relax.tan", R.tan, [(3, 4)], torch.tan, -1.2, 1.2),
    Case("relax.erf", R.erf, [(3, 4)], torch.erf),
    Case("relax.rsqrt", R.rsqrt, [(3, 4)], torch.rsqrt, 0.3, 2.0),
    Case("relax.square", R.square, [(3, 4)], torch.square),
    Case("relax.floor", R.floor, [(3, 4)], torch.floor),
    Case("relax.ceil", R.ceil, [(3, 4)], torch.ceil),
    Case("relax.round", R.round, [(3, 4)], torch.round),
    Case("relax.trunc", R.trunc, [(3, 4)], torch.trunc),
    Case("relax.sign", R.sign, [(3, 4)], torch.sign),
    Case("relax.nn.gelu", N.gelu, [(3, 4)], F.gelu),
    Case("relax.nn.gelu_tanh", N.gelu_tanh, [(3, 4)], lambda x: F.gelu(x, approximate="tanh")),
    Case("relax.nn.selu", N.selu, [(3, 4)], F.selu),
    Case("relax.nn.softplus", lambda x: N.softplus(x, beta=1.5, threshold=2.0), [(3, 4)],
         lambda x: F.softplus(x, beta=1.5, threshold=2.0)),
    Case("relax.nn.leakyrelu", lambda x: N.leakyrelu(x, 0.1), [(3, 4)], lambda x: F.leaky_relu(x, 0.1)),
    Case("relax.clip", lambda x: R.clip(x, relax.prim_value(-0.5), relax.prim_value(0.7)), [(3, 4)],
         lambda x: torch.clamp(x, -0.5, 0.7)),
    Case("relax.nn.dropout", lambda x: N.dropout(x, 0.0), [(3, 4)], lambda x: (x,), fields=(0,)),
    # binary float ops
    Case("relax.atan2", R.atan2, [(3, 4), (3, 4)], torch.atan2),
    Case("relax.log_add_exp", R.log_add_exp, [(3, 4), (4,)], torch.logaddexp),
    Case("relax.floor_mod", R.floor_mod, [(3, 4), (3, 4)], None, 0.6, 2.0),
    Case("relax.mod", R.mod, [(3, 4), (3, 4)], None, 0.6, 2.0),
    Case("relax.floor_divide", R.floor_divide, [(3, 4), (3, 4)], lambda a, b: torch.floor(a / b), 0.6, 2.0),
    Case("relax.outer", R.outer, [(3,), (4,)], torch.outer),
    Case("relax.nn.prelu", lambda x, a: N.prelu(x, a, 1), [(2, 3, 4), (3,)], F.prelu),
    # reductions
    Case("relax.max", lambda x: R.max(x, axis=1), [(3, 4)], lambda x: torch.amax(x, 1)),
    Case("relax.min", lambda x: R.min(x, axis=[0]), [(3, 4)], lambda x: torch.amin(x, 0)),
    Case("relax.prod", lambda x: R.prod(x, axis=1, keepdims=True), [(3, 4)], lambda x: torch.prod(x, 1, keepdim=True)),
    Case("relax.std", lambda x: R.std(x, axis=1), [(3, 4)], lambda x: torch.std(x, 1, correction=0)),
    # shapes and indexing
    Case("relax.squeeze", lambda x: R.squeeze(x, [1]), [(3, 1, 4)], lambda x: x.squeeze(1)),
    Case("relax.flatten", R.flatten, [(2, 3, 2)], torch.flatten),
    Case("relax.nn.batch_flatten", N.batch_flatten, [(2, 3, 2)], lambda x: x.flatten(1)),
    Case("relax.tile", lambda x: R.tile(x, [2, 1, 3]), [(3, 2)], lambda x: x.repeat(2, 1, 3)),
    Case("relax.repeat", lambda x: R.repeat(x, 2, axis=1), [(3, 2)], lambda x: x.repeat_interleave(2, 1)),
    Case("relax.flip", lambda x: R.flip(x, 1), [(3, 4)], lambda x: x.flip(1)),
    Case("relax.tril", lambda x: R.tril(x, 0), [(4, 4)], torch.tril),
    Case("relax.stack", lambda a, b: R.stack([a, b], axis=1), [(3, 4), (3, 4)], lambda a, b: torch.stack([a, b], 1)),
    Case("relax.einsum", lambda a, b: R.einsum([a, b], "ij,jk->ik"), [(3, 4), (4, 2)], lambda a, b: a @ b),
    Case("relax.strided_slice", lambda x: R.strided_slice(x, [0, 1], [1, 3], [3, 0], [1, -1]), [(3, 4)],
         lambda x: x[1:3, :][:, [3, 2, 1]]),
    Case("relax.gather_elements", lambda x: R.gather_elements(x, ints(IDX_GE), axis=1), [(3, 4)],
         lambda x: torch.gather(x, 1, _t(IDX_GE))),
    Case("relax.gather_nd", lambda x: R.gather_nd(x, ints(IDX_ND)), [(3, 4)],
         lambda x: x[_t(IDX_ND[:, 0]), _t(IDX_ND[:, 1])]),
    Case("relax.index_tensor", lambda x: R.index_tensor(x, relax.Tuple([ints([2, 0, 2])])), [(3, 4)],
         lambda x: x[_t(np.array([2, 0, 2]))]),
    Case("relax.reverse_sequence", lambda x: R.reverse_sequence(x, ints([2, 4, 1]), 1, 0), [(3, 4)], None),
    Case("relax.nn.pad", lambda x: N.pad(x, [0, 0, 1, 2]), [(3, 4)], lambda x: F.pad(x, (1, 2))),
    Case("relax.nn.pad", lambda x: N.pad(x, [0, 0, 1, 2], "reflect"), [(3, 4)], lambda x: F.pad(x[None], (1, 2), mode="reflect")[0],
         name="nn.pad-reflect"),
    Case("relax.slice_scatter", lambda x, s: R.slice_scatter(x, s, 1, 3, 1, axis=1), [(3, 4), (3, 2)], None),
    # normalization
    Case("relax.nn.layer_norm", lambda x, g, b: N.layer_norm(x, g, b, [-1]), [(3, 4), (4,), (4,)],
         lambda x, g, b: F.layer_norm(x, (4,), g, b), dtype="float32"),
    Case("relax.nn.group_norm", lambda x, g, b: N.group_norm(x, g, b, 2, 1, [2, 3]), [(2, 4, 2, 3), (4,), (4,)],
         lambda x, g, b: F.group_norm(x, 2, g, b), dtype="float32"),
    Case("relax.nn.instance_norm", lambda x, g, b: N.instance_norm(x, g, b, 1, [2, 3]), [(2, 3, 2, 3), (3,), (3,)],
         lambda x, g, b: F.instance_norm(x, weight=g, bias=b), dtype="float32"),
    Case("relax.nn.rms_norm", lambda x, w: N.rms_norm(x, w, [-1]), [(3, 4), (4,)],
         lambda x, w: F.rms_norm(x, (4,), w, eps=1e-5), tol=1e-6),   # topi: float32 inside
    Case("relax.nn.batch_norm", lambda x, g, b: N.batch_norm(x, g, b, const(np.zeros(3)), const(np.ones(3)), 1, training=True),
         [(4, 3, 2), (3,), (3,)], lambda x, g, b: (F.batch_norm(x, None, None, g, b, training=True),), fields=(0,)),
    # convolutions and pools
    Case("relax.nn.conv1d", lambda x, w: N.conv1d(x, w, strides=2, padding=1, dilation=1), [(2, 3, 7), (4, 3, 3)],
         lambda x, w: F.conv1d(x, w, stride=2, padding=1)),
    Case("relax.nn.conv3d", lambda x, w: N.conv3d(x, w, padding=1), [(1, 2, 3, 3, 3), (2, 2, 2, 2, 2)],
         lambda x, w: F.conv3d(x, w, padding=1)),
    Case("relax.nn.conv1d_transpose", lambda x, w: N.conv1d_transpose(x, w, strides=2, padding=1), [(1, 3, 4), (3, 2, 3)],
         lambda x, w: F.conv_transpose1d(x, w, stride=2, padding=1)),
    Case("relax.nn.conv2d_transpose", lambda x, w: N.conv2d_transpose(x, w, strides=2, padding=1), [(1, 2, 3, 3), (2, 3, 3, 3)],
         lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1)),
    Case("relax.nn.conv3d_transpose", lambda x, w: N.conv3d_transpose(x, w, strides=2), [(1, 2, 2, 2, 2), (2, 1, 2, 2, 2)],
         lambda x, w: F.conv_transpose3d(x, w, stride=2)),
    Case("relax.nn.max_pool1d", lambda x: N.max_pool1d(x, 3, 2, 1), [(2, 2, 7)], lambda x: F.max_pool1d(x, 3, 2, 1)),
    Case("relax.nn.max_pool3d", lambda x: N.max_pool3d(x, 2, 2), [(1, 2, 4, 4, 4)], lambda x: F.max_pool3d(x, 2, 2)),
    Case("relax.nn.avg_pool1d", lambda x: N.avg_pool1d(x, 3, 2, 1, count_include_pad=True), [(2, 2, 7)],
         lambda x: F.avg_pool1d(x, 3, 2, 1)),
    Case("relax.nn.avg_pool3d", lambda x: N.avg_pool3d(x, 2, 2), [(1, 2, 4, 4, 4)], lambda x: F.avg_pool3d(x, 2, 2)),
    Case("relax.nn.adaptive_avg_pool1d", lambda x: N.adaptive_avg_pool1d(x, 3), [(2, 2, 7)],
         lambda x: F.adaptive_avg_pool1d(x, 3)),
    Case("relax.nn.adaptive_avg_pool2d", lambda x: N.adaptive_avg_pool2d(x, (2, 3)), [(1, 2, 5, 7)],
         lambda x: F.adaptive_avg_pool2d(x, (2, 3))),
    Case("relax.nn.adaptive_avg_pool3d", lambda x: N.adaptive_avg_pool3d(x, (2, 1, 2)), [(1, 2, 3, 3, 4)],
         lambda x: F.adaptive_avg_pool3d(x, (2, 1, 2))),
    # attention
    Case("relax.nn.attention", N.attention, [(1, 3, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4)], _attention_ref),
    Case("relax.nn.attention", lambda q, k, v: N.attention(q, k, v, causal_mask="TopLeft"),
         [(1, 3, 2, 4), (1, 3, 2, 4), (1, 3, 2, 4)], lambda q, k, v: _attention_ref(q, k, v, True), name="nn.attention-causal"),
    Case("relax.nn.attention_bias", lambda q, k, v, b: N.attention_bias(q, k, v, b),
         [(1, 3, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4), (1, 2, 3, 5)], None),
    # images
    Case("relax.image.resize2d", lambda x: R.image.resize2d(x, (5, 6), method="linear", coordinate_transformation_mode="half_pixel"),
         [(1, 2, 3, 4)], lambda x: F.interpolate(x, (5, 6), **TORCH_RS), tol=1e-5),   # topi: float32 coordinates
    Case("relax.image.resize3d", lambda x: R.image.resize3d(x, (3, 4, 4), method="linear", coordinate_transformation_mode="half_pixel"),
         [(1, 1, 2, 3, 3)], lambda x: F.interpolate(x, (3, 4, 4), mode="trilinear", align_corners=False), tol=1e-5),
    Case("relax.image.grid_sample", lambda x, g: R.image.grid_sample(x, g, align_corners=True), [(1, 2, 3, 4), (1, 2, 3, 2)],
         lambda x, g: F.grid_sample(x, g.permute(0, 2, 3, 1), align_corners=True), -0.9, 0.9),
    # more shapes, reductions and vision
    Case("relax.collapse_sum_to", lambda x: R.collapse_sum_to(x, (1, 4)), [(3, 4)], lambda x: x.sum(0, keepdim=True)),
    Case("relax.collapse_sum_like", R.collapse_sum_like, [(3, 4), (4,)], lambda x, y: x.sum(0) + 0 * y),
    Case("relax.meshgrid", lambda a, b: R.meshgrid([a, b]), [(3,), (4,)],
         lambda a, b: torch.meshgrid(a, b, indexing="ij"), fields=(0, 1)),
    Case("relax.median", lambda x: R.median(x, axis=1), [(3, 5)], lambda x: (torch.median(x, 1).values,), fields=(0,)),
    Case("relax.eye_like", R.eye_like, [(3, 3)], lambda x: torch.eye(3, dtype=x.dtype) + 0 * x),
    Case("relax.image.affine_grid", lambda t: R.image.affine_grid(t, (3, 4)), [(1, 2, 3)], None),
    Case("relax.vision.roi_align", lambda x: R.vision.roi_align(x, const([ROI]), (2, 2), 1.0, 2), [(1, 2, 5, 5)], None),
    Case("relax.vision.roi_pool", lambda x: R.vision.roi_pool(x, const([ROI]), (2, 2), 1.0), [(1, 2, 5, 5)], None),
    Case("relax.dequantize", lambda sc: R.dequantize(ints(DQ, "int8"), sc, ints([0, 1, -1, 2], "int8"), axis=-1),
         [(4,)], lambda sc: (_t(DQ.astype(F64)) - torch.tensor([0., 1., -1., 2.], dtype=torch.float64)) * sc,
         0.5, 2.0, dtype="float32"),
    Case("relax.vision.multibox_transform_loc", R.vision.multibox_transform_loc, [(1, 2, 4), (1, 16), (1, 4, 4)],
         None, 0.1, 0.9, fields=(0, 1)),
]
