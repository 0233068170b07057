"""Which Relax ops with a TE legalization have a gradient (README, "Relax", op coverage).

    class                  meaning
    NOT_DIFFERENTIABLE     no float tensor input reaches a float output: nothing to differentiate
                           (the rule passes no_grad, or the op never meets the Gradient pass)
    NO_TE_LEGALIZATION     the FLegalize of TVM 0.27 fails (the forward does not build either)
    LEFTOVERS              differentiable in principle, but the rule cannot: the reason says why
    everything else        differentiable: a TVM gradient, or this package's rule (verified by
                           tests/relax_op_table.py)
"""
from __future__ import annotations

from .register import TVM_GRADIENTS, candidates

_CREATION = "creates a tensor from scalars (no tensor input)"
_INTEGER = "integer or boolean inputs and outputs"
_INDEX_OUT = "integer or boolean output (piecewise constant in its float input)"
_METADATA = "reads tensor metadata, not values"
_DISTRIBUTED = "distributed communication (packed functions), not a computation"

NOT_DIFFERENTIABLE = {
    "relax.arange": _CREATION, "relax.eye": _CREATION, "relax.hamming_window": _CREATION,
    "relax.argmax": _INDEX_OUT, "relax.argmin": _INDEX_OUT, "relax.bucketize": _INDEX_OUT,
    "relax.isfinite": _INDEX_OUT, "relax.isinf": _INDEX_OUT, "relax.isnan": _INDEX_OUT,
    "relax.quantize": _INDEX_OUT, "relax.size": _METADATA, "relax.shape_to_tensor": _METADATA,
    "relax.one_hot": "integer indices in; on/off values are scalar attributes",
    "relax.bitwise_and": _INTEGER, "relax.bitwise_not": _INTEGER, "relax.bitwise_or": _INTEGER,
    "relax.bitwise_xor": _INTEGER, "relax.left_shift": _INTEGER, "relax.right_shift": _INTEGER,
    "relax.logical_and": _INTEGER, "relax.logical_not": _INTEGER, "relax.logical_or": _INTEGER,
    "relax.logical_xor": _INTEGER,
    "relax.vision.get_valid_counts": "counts and indices of boxes above a threshold",
    "relax.vision.all_class_non_max_suppression": "selected box indices (integer output)",
    **{f"relax.inspect.{n}": _METADATA for n in ("tensor_byte_offset", "tensor_dtype_bits", "tensor_dtype_code",
                                                "tensor_dtype_lanes", "tensor_elem_offset", "tensor_ndim",
                                                "tensor_shape_i", "tensor_stride_i")},
    **{n: _DISTRIBUTED for n in ("relax.ccl.allgather", "relax.ccl.allreduce", "relax.ccl.broadcast_from_worker0",
                                 "relax.ccl.scatter_from_worker0", "relax.dist.redistribute_replica_to_shard")},
}

_EXTERN = "the legalization builds a te.extern kernel (DifferentiationError; register a manual gradient)"
LEFTOVERS = {
    "relax.scatter_elements": _EXTERN, "relax.scatter_nd": _EXTERN, "relax.index_put": _EXTERN,
    "relax.layout_transform": "the legalization adds a hand-written PrimFunc (DifferentiationError)",
    "relax.dynamic_strided_slice": "output shape computed at run time (no static or symbolic shape to build "
                                   "a placeholder from)",
    "relax.vision.non_max_suppression": "topi builds its kernel with the IR builder (te.extern, no TE body)",
}

NO_TE_LEGALIZATION = {
    "relax.nn.pixel_shuffle": "the legalization calls topi.nn.pixel_shuffle, which TVM 0.27 does not have",
    "relax.nn.attention_var_len": "the legalization raises 'Legalization of attention_var_len op is not "
                                  "supported yet'",
}


def coverage(verified) -> dict:
    """{"differentiable": ops with a working TE legalization, "tvm": ops with TVM's gradient (and
    not in `verified`), "ours": `verified` ops (tested with this package's rule), "leftovers":
    {op: reason}, "unclassified": differentiable ops in no class}."""
    ops = [n for n in candidates() if n not in NOT_DIFFERENTIABLE and n not in NO_TE_LEGALIZATION]
    tvm_ops = [n for n in ops if n in TVM_GRADIENTS and n not in verified]
    ours = [n for n in ops if n in set(verified)]
    classified = set(tvm_ops) | set(ours) | set(LEFTOVERS)
    return {"differentiable": ops, "tvm": tvm_ops, "ours": ours,
            "leftovers": {n: LEFTOVERS[n] for n in ops if n in LEFTOVERS},
            "unclassified": [n for n in ops if n not in classified]}
