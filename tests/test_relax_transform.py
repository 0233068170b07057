"""What the gradient rule meets (tuple outputs, integer inputs, non-TE legalizations, symbolic
batch), the one-call pass, registration, and no forward recomputation in the kernels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax, tirx

import tvm_autodiff as ad
import tvm_autodiff.relax as ar
from tvm_autodiff.ir.graph import ops_post_order

R = relax.op


def _var(name, shape, dtype="float32"):
    return relax.Var(name, relax.TensorType(shape, dtype))


def _module(params, body):
    """main(params) = sum(body(*params)) as a one-dataflow-block module."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit(body(bb, *params))
            loss = bb.emit_output(R.sum(out))
        bb.emit_func_output(loss)
    return bb.get()


def _run(mod, *arrays, func="main_adjoint"):
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    loss, grads = vm[func](*[tvm.runtime.tensor(a) for a in arrays])
    return float(loss.numpy()), [g.numpy() for g in grads]


def _kernel(call, *shapes):
    return ar.rule.gradient_te(relax.BlockBuilder().normalize(call(*[_var(f"x{i}", s) for i, s in enumerate(shapes)])))


@pytest.mark.parametrize("call", [R.max, R.min, lambda x: R.max(x, axis=[0, 1])], ids=["max", "min", "max-axes"])
def test_kernel_reads_orig_var_where_the_gradient_reads_the_forward_output(call):
    """A full max/min reduction's gradient compares x with the maximum (ties share): the kernel
    reads orig_var for it, and costs exactly the forward's work less than rebuilding it."""
    kernel = _kernel(call, (3, 4))
    grad_ops = set(ops_post_order(kernel.grads))
    assert kernel.stand_ins[0].op in grad_ops and kernel.forward[0].op not in grad_ops
    rebuilding = ad.differentiate(kernel.forward[0], kernel.inputs, head=kernel.heads[0])
    assert ad.work(kernel.grads).iterations + ad.work(kernel.forward).iterations == \
        ad.work(list(rebuilding)).iterations


@pytest.mark.parametrize("call,shapes", [
    (R.nn.gelu, [(3, 4)]),
    (lambda x, g, b: R.nn.layer_norm(x, g, b, [-1]), [(3, 4), (4,), (4,)]),
    (R.nn.attention, [(1, 3, 2, 4)] * 3),
    (lambda x: R.nn.max_pool1d(x, 2, 2), [(1, 3, 8)]),
], ids=["gelu", "layer_norm", "attention", "max_pool1d"])
def test_kernel_never_computes_the_forward_output(call, shapes):
    """Only intermediates that Relax does not keep (layer_norm's mean, attention's softmax) are
    computed again; the op's output itself never is."""
    kernel = _kernel(call, *shapes)
    assert kernel.forward[0].op not in set(ops_post_order(kernel.grads))
    assert ad.work(kernel.grads).iterations > 0


class _LossMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(5, 6), torch.nn.Linear(6, 2)

    def forward(self, x, y):
        return F.mse_loss(self.l2(F.gelu(self.l1(x))), y)


def test_dynamic_batch_gradients_at_two_batch_sizes_from_one_module():
    """One module with a symbolic batch (torch.export Dim), through the one-call pass: gradients
    equal torch's at batch 3 and 7.  TVM's own gradient of mean needs static shapes (int() of a
    shape variable), so mean is overridden."""
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program
    torch.manual_seed(3)
    model = _LossMLP()
    batch = torch.export.Dim("batch", min=2, max=64)
    exported = torch.export.export(model, (torch.zeros(4, 5), torch.zeros(4, 2)),
                                   dynamic_shapes=({0: batch}, {0: batch}))
    mod, params = detach_params(from_exported_program(exported, keep_params_as_input=True))
    mod = ar.backbone(mod)       # the 1-tuple output as a scalar
    ar.register_gradients(override=["relax.mean"])
    mod = ar.Gradient("backbone", require_grads=mod["backbone"].params[2:], target="llvm")(mod)
    kernels = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc) and ar.GRADIENT_ATTR in (f.attrs or {})]
    assert kernels and all(f.attrs[ar.SCHEDULE_ATTR] == "plain" for f in kernels)   # symbolic: not timed
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    rng = np.random.default_rng(3)
    for n in (3, 7):
        x, y = rng.standard_normal((n, 5)).astype("float32"), rng.standard_normal((n, 2)).astype("float32")
        loss, grads = vm["backbone_adjoint"](*[tvm.runtime.tensor(a) for a in [x, y, *[p.numpy() for p in params["main"]]]])
        model.zero_grad()
        expected = model(torch.from_numpy(x), torch.from_numpy(y))
        expected.backward()
        np.testing.assert_allclose(float(loss.numpy()), float(expected), rtol=1e-5)
        for g, p in zip(grads, model.parameters()):
            np.testing.assert_allclose(g.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_integer_and_boolean_ops_pass_no_gradient():
    """The mask arithmetic of decomposed attention: arange, comparisons, logical_and/not and a max
    over an int8 mask have no float inputs, so no gradient flows into them; the float path's
    gradient is exact (here d/dx sum(x * rowmask) = rowmask)."""
    x = _var("x", (3, 4))

    def body(bb, x):
        cols = bb.emit(R.arange(0, 4, 1, "int64"))
        keep = bb.emit(R.logical_and(R.less(cols, relax.const(3, "int64")), R.logical_not(R.equal(cols, relax.const(0, "int64")))))
        mask = bb.emit(R.astype(R.greater(x, relax.const(0.0)), "int8"))
        row = bb.emit(R.max(R.multiply(mask, R.astype(keep, "int8")), axis=1, keepdims=True))
        return R.multiply(x, R.astype(row, "float32"))

    mod = ar.Gradient("main")(_module([x], body))
    a = np.array([[1, -2, -3, 5], [-1, -2, 3, -4], [-1, -2, -3, 4]], "float32")
    _, (g,) = _run(mod, a)
    row = ((a > 0) & np.array([False, True, True, False])).any(1, keepdims=True)
    np.testing.assert_array_equal(g, np.broadcast_to(row, a.shape).astype("float32"))


def test_a_legalization_with_te_extern_raises_naming_the_op_and_the_way_out():
    x, u = _var("x", (3, 4)), _var("u", (3, 2))
    indices = relax.const(np.array([[1, 0], [2, 3], [0, 1]], "int64"))
    mod = _module([x, u], lambda bb, x, u: R.scatter_elements(x, indices, u, 1))
    with pytest.raises(ad.DifferentiationError, match=r"relax\.scatter_elements.*FPrimalGradient"):
        ar.Gradient("main")(mod)


def test_registration_keeps_tvm_gradients_unless_overridden():
    registered = ar.register_gradients()
    assert "relax.nn.silu" not in registered and "relax.nn.silu" in ar.candidates()
    x = _var("x", (3, 4))
    mod = relax.transform.Gradient("main")(_module([x], lambda bb, x: R.nn.silu(x)))
    assert not any(ar.GRADIENT_ATTR in (f.attrs or {}) for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))
    assert ar.register_gradients(ops=["relax.nn.gelu"], override=["relax.nn.silu"]) == ["relax.nn.silu"]
    mod = ar.Gradient("main")(_module([x], lambda bb, x: R.nn.silu(x)))
    assert any(ar.GRADIENT_ATTR in (f.attrs or {}) for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))
    a = np.linspace(-2, 2, 12, dtype="float32").reshape(3, 4)
    t = torch.from_numpy(a).requires_grad_()
    F.silu(t).sum().backward()
    np.testing.assert_allclose(_run(mod, a)[1][0], t.grad.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ad.DifferentiationError, match="relax.nn.gelux"):
        ar.register_gradients(ops=["relax.nn.gelux"])


def test_cuda_kernels_get_the_gpu_schedule_and_compile():
    """For a CUDA target every kernel of ours gets the GPU schedule (unscheduled CUDA code would
    run on the host), and the module compiles; running it needs a GPU (tests/test_cuda.py)."""
    x, g, b = _var("x", (8, 16)), _var("g", (16,)), _var("b", (16,))
    mod = _module([x, g, b], lambda bb, x, g, b: R.nn.layer_norm(R.nn.gelu(x), g, b, [-1]))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    mod = ar.Gradient("main", target=target)(mod)
    kernels = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc) and ar.GRADIENT_ATTR in (f.attrs or {})]
    assert len(kernels) == 2 and all(f.attrs[ar.SCHEDULE_ATTR] == "default" for f in kernels)
    module, kinds = tvm.compile(mod, target=target).mod, []
    stack = [module]
    while stack:
        m = stack.pop()
        kinds.append(m.kind)
        stack.extend(m.imports)
    assert "cuda" in kinds


def test_prepare_every_kernel_keeps_the_numbers():
    """kernels="all" also schedules the legalized forward and TVM's gradients (matmul here),
    each where timed faster; the gradients stay those of the plain module."""
    x, w = _var("x", (16, 32)), _var("w", (32, 24))
    body = lambda bb, x, w: R.nn.gelu(R.matmul(x, w))     # noqa: E731
    mod = relax.transform.LegalizeOps()(ar.Gradient("main")(_module([x, w], body)))
    prepared = ar.prepare_gradients(mod, "llvm", kernels="all")
    kernels = [f for f in prepared.functions.values() if isinstance(f, tirx.PrimFunc)]
    assert len(kernels) > 2 and all(f.attrs[ar.SCHEDULE_ATTR] in ("default", "plain") for f in kernels)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 32)).astype("float32"), rng.standard_normal((32, 24)).astype("float32")
    (_, plain), (_, ours) = _run(mod, a, b), _run(prepared, a, b)
    for p, o in zip(plain, ours):
        np.testing.assert_allclose(o, p, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'ours' or 'all'"):
        ar.prepare_gradients(mod, "llvm", kernels="every")
