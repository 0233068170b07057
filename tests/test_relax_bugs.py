"""The Relax bugs of TVM 0.27.0.post1 met on the way (README, "Relax bugs"): each a minimal repro
that pins TVM's behaviour, and the workaround of tvm_autodiff.relax where there is one.  A repro
that starts failing means TVM fixed the bug: update the README table."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, tirx
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.op._op_gradient import mean_grad
from tvm.relax.training import loss as relax_loss
from tvm.relax.training import optimizer as relax_optimizer
from tvm.relax.training.utils import AppendLoss

import tvm_autodiff.relax as ar
from tvm_autodiff.relax.fixes import wrap_negative_take


def _param(shape, name="w", dtype="float32"):
    return relax.Var(name, relax.TensorType(shape, dtype))


def _run_main(mod, *arrays):
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays])[0].numpy()


def test_adam_dtype_is_a_primtype_and_our_adam_works():
    params = [_param((3,))]
    with pytest.raises(ValueError, match="Could not convert T.float32 to a NumPy dtype"):
        relax_optimizer.Adam(0.01).init(params)
    state = ar.Adam(0.01).init(params).state
    assert [str(s.dtype) for s in state] == ["int64", "float32", "float32", "float32", "float32"]


def _symbolic(name: str, reshape: bool):
    """name(x (n, 4), w (4,)) = x * w, then reshaped to (4n,) and summed if `reshape`."""
    n = tirx.Var("n", "int64")
    x, w = _param((n, 4), "x"), _param((4,))
    bb = relax.BlockBuilder()
    with bb.function(name, [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.multiply(x, w))
            if reshape:
                y = bb.emit(relax.op.sum(relax.op.reshape(y, relax.ShapeExpr([n * 4]))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), n


def test_append_loss_refuses_equal_symbolic_types():
    """AppendLoss compares the backbone's output type (n, 4) with the loss parameter's (n, 4, the
    same variable) and calls them different."""
    mod, n = _symbolic("backbone", reshape=False)
    ty = relax.TensorType((n, 4), "float32")
    with pytest.raises(tvm.error.InternalError, match="which is different"):
        AppendLoss("backbone", relax_loss.MSELoss()(ty, ty), 1, "backbone_loss")(mod)


def test_gradient_pass_fails_on_a_symbolic_reshape_whoever_differentiates_reshape():
    """The KeyError is the pass's own: it comes with TVM's reshape gradient and with ours."""
    for override in ([], ["relax.reshape"]):
        ar.register_gradients(override=override)
        mod, _ = _symbolic("main", reshape=True)
        with pytest.raises(KeyError, match="key is not in Map"):
            relax.transform.Gradient("main", require_grads=[mod["main"].params[1]])(mod)


def test_tvm_mean_gradient_needs_static_shapes_ours_does_not():
    n = tirx.Var("n", "int64")
    x = _param((n, 4), "x")
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.mean(relax.op.multiply(x, x)))
        bb.emit_func_output(out)
    mod = bb.get()
    # TVM's rule itself, called directly (an earlier test may have overridden the registration).
    call = relax.BlockBuilder().normalize(relax.op.mean(x))
    with pytest.raises(TypeError, match="int"):
        mean_grad(relax.Var("y", call.ty), call, relax.Var("g", call.ty), relax.BlockBuilder())
    ar.register_gradients(override=["relax.mean"])
    vm = relax.VirtualMachine(tvm.compile(ar.Gradient("main")(mod), "llvm"), tvm.cpu())
    a = np.arange(12, dtype="float32").reshape(3, 4)
    _, (g,) = vm["main_adjoint"](tvm.runtime.tensor(a))
    np.testing.assert_allclose(g.numpy(), 2 * a / a.size, rtol=1e-6)


class _LastRow(nn.Module):
    def forward(self, x):
        return x[:, -1, :] * 2.0


def test_negative_take_is_miscompiled_and_wrap_negative_take_fixes_it():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    mod = from_exported_program(torch.export.export(_LastRow(), (torch.from_numpy(x),)))
    assert "R.take(x, R.const(-1" in mod["main"].script(show_meta=False)
    expected = x[:, -1, :] * 2
    assert not np.allclose(_run_main(mod, x), expected)          # reads out of bounds
    np.testing.assert_allclose(_run_main(wrap_negative_take(mod), x), expected)


def test_batch_norm_without_ep_decomposition_shifts_its_arguments():
    """run_ep_decomposition=False maps aten.batch_norm to _batch_norm_legit_no_training with its
    arguments shifted: epsilon is read from momentum and training is always True.  The default
    (True) is right."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.3).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 2, 2)
    expected = bn(x).detach().numpy()
    for decompose, right in ((True, True), (False, False)):
        mod = from_exported_program(torch.export.export(bn, (x,)), run_ep_decomposition=decompose)
        assert np.allclose(_run_main(mod, x.numpy()), expected, atol=1e-5) == right
        if not decompose:
            assert "epsilon=0.29999" in mod["main"].script(show_meta=False)


def test_tvm_take_gradient_needs_1d_indices_ours_does_not():
    x = _param((5, 3), "x")
    indices = relax.const(np.array([[0, 4], [4, 2]], "int64"))
    # TVM's take gradient emits take_backward, whose legalization asserts 1-d indices.
    bb = relax.BlockBuilder()
    head = _param((2, 2, 3), "head")
    with bb.function("main", [x, head]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.grad.take_backward(head, x, indices, 0))
        bb.emit_func_output(out)
    with pytest.raises(AssertionError):
        tvm.compile(bb.get(), "llvm")
    ar.register_gradients(override=["relax.take"])
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sum(relax.op.take(x, indices, axis=0)))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(ar.Gradient("main")(bb.get()), "llvm"), tvm.cpu())
    _, (g,) = vm["main_adjoint"](tvm.runtime.tensor(np.ones((5, 3), "float32")))
    np.testing.assert_array_equal(g.numpy(), np.array([1, 0, 1, 0, 2], "float32")[:, None].repeat(3, 1))
