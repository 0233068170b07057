"""From an imported model to tvm.relax.training, with the workarounds that TVM 0.27 needs
(README, "Relax", the Relax bugs).

    need                                           here
    a "backbone" function + param_num/state_num    backbone(mod): from_exported_program's "main"
                                                   (its num_input attribute says where the
                                                   parameters start); a 1-tuple output unwrapped
    a model that computes its own loss             ModelLoss: the loss function is the identity
      (F.cross_entropy inside forward)
    Adam on float32 parameters                     Adam: relax.training's Adam keeps the dtype as a
                                                   PrimType, which np.ones((), dtype) refuses
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.training import loss, optimizer

from ..errors import DifferentiationError


def backbone(mod: tvm.IRModule, num_states: int = 0, func: str = "main") -> tvm.IRModule:
    """`mod` with `func` (imported with keep_params_as_input=True: inputs, then parameters) as
    SetupTrainer's "backbone", and the param_num/state_num attributes it reads."""
    f = mod[func]
    if f.attrs is None or "num_input" not in f.attrs:
        raise DifferentiationError(f"backbone: {func!r} has no num_input attribute; import the model "
                                   "with from_exported_program(..., keep_params_as_input=True)")
    num_input = int(f.attrs["num_input"])
    body, ret_ty = f.body, f.ret_ty
    if len(body.blocks) != 1 or not isinstance(body.blocks[0], relax.DataflowBlock):
        raise DifferentiationError(f"backbone: {func!r} must be one dataflow block, as SetupTrainer "
                                   f"requires (it has {len(body.blocks)} blocks)")
    if isinstance(ret_ty, relax.TupleType) and len(ret_ty.fields) == 1:
        # SetupTrainer wants one dataflow block, so the field is read inside it.
        ret_ty = ret_ty.fields[0]
        out_var = relax.Var("output", ret_ty)
        bindings = list(body.blocks[0].bindings) + [relax.VarBinding(out_var, relax.TupleGetItem(body.body, 0))]
        body = relax.SeqExpr([relax.DataflowBlock(bindings)], out_var)
    new = relax.Function(f.params, body, ret_ty, f.is_pure, f.attrs).with_attr("global_symbol", "backbone")
    out = tvm.IRModule({gv: g for gv, g in mod.functions.items() if gv.name_hint != func})
    out["backbone"] = new
    out = relax.transform.Normalize()(out)
    return out.with_attrs({"param_num": len(f.params) - num_input - num_states, "state_num": num_states})


class ModelLoss(loss.Loss):
    """The loss of a backbone that returns its loss itself: the appended loss is the identity."""

    def __init__(self):
        super().__init__("model_loss", 1, "none")

    def __call__(self, predictions) -> relax.Function:
        bb = relax.BlockBuilder()
        value = relax.Var("predictions", predictions)
        with bb.function(self._loss_name, [value]):
            with bb.dataflow():     # + 0: the identity, bound as the block's output
                out = bb.emit_output(relax.op.add(value, relax.const(0, str(predictions.dtype.dtype))))
            bb.emit_func_output(out)
        return bb.get()[self._loss_name]


class Adam(optimizer.Adam):
    """relax.training's Adam with its dtype kept as a string: the stock one passes a PrimType to
    np.ones, which raises "Could not convert T.float32 to a NumPy dtype"."""

    def _set_params_and_dtype(self, params) -> None:
        super()._set_params_and_dtype(params)
        self.dtype = str(self.dtype.dtype)
