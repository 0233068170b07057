"""Each op of tests/relax_op_table.py differentiated through relax.transform.Gradient with the
gradients tvm_autodiff.relax registers, against torch autograd in float64 (or central finite
differences where torch has no such op).  All cases build as one Relax module."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_autodiff.relax as ar
from relax_op_table import CASES, F64
from tvm_autodiff.relax.coverage import NO_TE_LEGALIZATION, NOT_DIFFERENTIABLE, coverage

SEED = 0


def _loss_function(bb: relax.BlockBuilder, name: str, case, rng):
    """`name`(params) = sum_j sum(out_j * W_j) over the case's used output fields, W_j fixed
    random constants; returns the W_j as numpy arrays."""
    params = [relax.Var(f"x{i}", relax.TensorType(s, case.dtype)) for i, s in enumerate(case.shapes)]
    weights = []
    with bb.function(name, params):
        with bb.dataflow():
            out = bb.emit(case.relax(*params))
            fields = [out] if not case.fields else [bb.emit(relax.TupleGetItem(out, j)) for j in case.fields]
            total = None
            for f in fields:
                w = rng.standard_normal([int(d) for d in f.ty.shape.values])
                weights.append(w)
                term = bb.emit(relax.op.sum(relax.op.multiply(f, relax.const(w.astype(case.dtype), case.dtype))))
                total = term if total is None else bb.emit(relax.op.add(total, term))
            loss = bb.emit_output(total)
        bb.emit_func_output(loss)
    return weights


def build_cases(cases):
    """(VM, [(inputs, weights) per case]) of one module holding every case's loss `c{i}` and its
    adjoint `c{i}_adjoint`."""
    ar.register_gradients()
    rng = np.random.default_rng(SEED)
    bb = relax.BlockBuilder()
    data = []
    for i, case in enumerate(cases):
        weights = _loss_function(bb, f"c{i}", case, rng)
        inputs = [rng.uniform(case.low, case.high, s).astype(case.dtype) for s in case.shapes]
        data.append((inputs, weights))
    mod = bb.get()
    for i in range(len(cases)):
        mod = relax.transform.Gradient(f"c{i}")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm, data


def torch_gradients(case, inputs, weights):
    xs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    weights = [w.astype(case.dtype).astype(F64) for w in weights]
    out = case.torch(*xs)
    outs = [out] if isinstance(out, torch.Tensor) else [out[j] for j in range(len(weights))]
    loss = sum((o * torch.from_numpy(w)).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    return [np.zeros_like(x) if g is None else g.numpy() for x, g in zip(inputs, grads)]


def finite_differences(loss, inputs, eps=1e-6):
    """Central differences of the compiled scalar `loss` at `inputs`."""
    def at(args):
        return float(loss(*[tvm.runtime.tensor(a) for a in args]).numpy())

    grads = []
    for k, x in enumerate(inputs):
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = [a.copy() for a in inputs], [a.copy() for a in inputs]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            g[idx] = (at(plus) - at(minus)) / (2 * eps)
        grads.append(g)
    return grads


@pytest.fixture(scope="module")
def built():
    return build_cases(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_op_gradient(built, index):
    vm, data = built
    case, (inputs, weights) = CASES[index], data[index]
    loss, grads = vm[f"c{index}_adjoint"](*[tvm.runtime.tensor(x) for x in inputs])
    ours = [g.numpy() for g in grads]
    expected = (torch_gradients(case, inputs, weights) if case.torch is not None
                else finite_differences(vm[f"c{index}"], inputs))
    tol = case.tol or (1e-4 if case.dtype != F64 else 1e-7 if case.torch is not None else 1e-5)
    for i, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{case.id}: gradient of input {i}")


def test_coverage_of_differentiable_ops():
    """Every differentiable Relax op with a TE legalization has TVM's gradient, a verified case
    in relax_op_table.py, or a listed reason (coverage.LEFTOVERS); at least 95% have a gradient."""
    report = coverage({case.op for case in CASES})
    assert not report["unclassified"], f"ops in no class: {report['unclassified']}"
    covered = len(report["tvm"]) + len(report["ours"])
    assert covered / len(report["differentiable"]) >= 0.95, report["leftovers"]


if __name__ == "__main__":      # the coverage numbers for the README
    report = coverage({case.op for case in CASES})
    total, ours, theirs = len(report["differentiable"]), len(report["ours"]), len(report["tvm"])
    print(f"{total} differentiable ops with a TE legalization: {theirs} TVM gradients + {ours} tvm_autodiff "
          f"= {theirs + ours} ({100 * (theirs + ours) / total:.1f}%); {len(report['leftovers'])} left:")
    for op, reason in report["leftovers"].items():
        print(f"  {op}: {reason}")
    print(f"not differentiable: {len(NOT_DIFFERENTIABLE)}; no working TE legalization: {dict(NO_TE_LEGALIZATION)}")


# Cases whose first input's leading dimension can be any batch: run with it symbolic.
SYMBOLIC = ["nn.gelu", "nn.softplus", "nn.layer_norm", "nn.rms_norm", "nn.conv1d", "nn.max_pool1d",
            "nn.avg_pool1d", "nn.adaptive_avg_pool1d", "nn.attention", "nn.prelu", "std", "max", "flip",
            "tile", "einsum", "image.resize2d", "nn.conv2d_transpose", "log_add_exp"]


@pytest.fixture(scope="module")
def symbolic_module():
    """One module: for each SYMBOLIC case, sum(op(x, ...)) with x's first dimension a shape
    variable of its own, and its adjoint."""
    ar.register_gradients()
    cases = {c.id: c for c in CASES}
    bb = relax.BlockBuilder()
    for name in SYMBOLIC:
        case = cases[name]
        n = tvm.tirx.Var("n", "int64")
        shapes = [(n, *case.shapes[0][1:]), *case.shapes[1:]]
        params = [relax.Var(f"x{i}", relax.TensorType(s, case.dtype)) for i, s in enumerate(shapes)]
        with bb.function(name.replace(".", "_"), params):
            with bb.dataflow():
                loss = bb.emit_output(relax.op.sum(case.relax(*params)))
            bb.emit_func_output(loss)
    mod = bb.get()
    for name in SYMBOLIC:
        mod = ar.Gradient(name.replace(".", "_"), target="llvm")(mod)
    return cases, relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())


@pytest.mark.parametrize("name", SYMBOLIC)
def test_symbolic_batch_gradient_at_two_sizes(symbolic_module, name):
    cases, vm = symbolic_module
    case, rng = cases[name], np.random.default_rng(1)
    for batch in (1, 3):
        shapes = [(batch, *case.shapes[0][1:]), *case.shapes[1:]]
        inputs = [rng.uniform(case.low, case.high, s).astype(case.dtype) for s in shapes]
        _, grads = vm[name.replace(".", "_") + "_adjoint"](*[tvm.runtime.tensor(x) for x in inputs])
        xs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
        expected = torch.autograd.grad(case.torch(*xs).sum(), xs)
        tol = case.tol or (1e-4 if case.dtype != F64 else 1e-7)
        for i, (g, e) in enumerate(zip(grads, expected)):
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=tol, atol=tol,
                                       err_msg=f"{name} at batch {batch}: gradient of input {i}")
