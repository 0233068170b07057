"""Argument checks of the entry points (differentiate, gradient, jacobian, hessian, build): each
wrong argument of issue 13 is refused up front with a message that names it, and scalar
parameters (free te.var's in bodies) are inputs of the compiled function and have gradients."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm
from tvm import te

import tvm_autodiff as ad
from tvm_autodiff.errors import ArgumentTypeError

F64 = "float64"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ph(shape, name, dtype=F64):
    return te.placeholder(shape, dtype, name=name)


def _graph():
    A = ph((3,), "A")
    Y = te.compute((3,), lambda i: A[i] * A[i], name="Y")
    return A, Y


def run_limited(code: str, memory_bytes: int = 3 << 30, timeout: int = 120):
    """Run `code` in a fresh interpreter with its address space limited, so that a regression
    that allocates without end fails this test (MemoryError, or the timeout) instead of taking
    the machine down.  One TVM thread keeps the thread stacks within the limit."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = {**os.environ, "TVM_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=limit, env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


# -- a single tensor as inputs (TVM 0.19 accepted it; list(A) never ends) ---------------------------

def test_single_tensor_as_inputs_is_one_input_under_a_memory_limit():
    out = run_limited("""
        import numpy as np
        from tvm import te
        import tvm_autodiff as ad
        A = te.placeholder((3,), "float64", name="A")
        Y = te.compute((3,), lambda i: A[i] * A[i], name="Y")
        H = te.placeholder((3,), "float64", name="H")
        res = ad.differentiate(Y, A, H)
        grads = te.gradient(Y, A, head=H)
        assert len(res) == 1 and isinstance(grads, list) and len(grads) == 1
        f = ad.build([res[0], grads[0]], [A, H])
        a, h = np.arange(3.0), np.ones(3)
        for g in f(a, h):
            np.testing.assert_allclose(g, 2 * a)
        np.testing.assert_allclose(ad.build(Y, A)(a), a * a)   # build(inputs=one tensor) too
        print("ok")
    """)
    assert out.strip() == "ok"


# -- differentiate, gradient: inputs, head, flags ---------------------------------------------------

@pytest.mark.parametrize("inputs,match", [
    (3, r"inputs must be a te.Tensor, a float scalar te.var, or a list of them, got int 3"),
    ("A", r"inputs must be .* got str 'A'"),
    ([None], r"inputs\[0\] must be a te.Tensor or a float scalar te.var, got NoneType"),
    ([np.zeros(3)], r"inputs\[0\] must be .* got ndarray"),
])
def test_inputs_of_the_wrong_type(inputs, match):
    A, Y = _graph()
    with pytest.raises(TypeError, match=match):
        ad.differentiate(Y, inputs)
    with pytest.raises(ad.DifferentiationError, match=match):
        ad.gradient(Y, inputs)


def test_integer_scalar_has_no_gradient():
    A, n = ph((4,), "A"), te.var("n", "int32")
    Y = te.compute((3,), lambda i: A[i + n % 2], name="Y")
    with pytest.raises(ad.DifferentiationError, match=r"inputs\[1\] 'n', an integer scalar variable "
                                                      r"of dtype int32.*leave them out"):
        ad.differentiate(Y, [A, n])


@pytest.mark.parametrize("name", ["optimize", "scatter"])
@pytest.mark.parametrize("value", ["no", [1], None, 1])
def test_flags_must_be_bool(name, value):
    A, Y = _graph()
    with pytest.raises(TypeError, match=rf"{name} must be True or False, got {type(value).__name__}"):
        ad.differentiate(Y, [A], **{name: value})


def test_head_of_the_wrong_type():
    A, Y = _graph()
    with pytest.raises(TypeError, match=r"head must be a te.Tensor or None, got ndarray"):
        ad.differentiate(Y, [A], np.ones(3))


# -- manual= ---------------------------------------------------------------------------------------

def _vjp(out, inp, head):
    return te.compute((3,), lambda i: head[i] * 2.0 * inp[i], name="dA_manual")


def test_manual_keys_that_are_not_pairs():
    A, Y = _graph()
    for key, shown in (("Y", "str 'Y'"), (("Y", "A"), "tuple"), ((Y,), "tuple"), ((Y, A, A), "tuple")):
        with pytest.raises(TypeError, match=rf"manual key {shown}.* is not an \(out_tensor, in_tensor\) "
                                            r"pair.*manual=\{\(Y, X\): fn\}"):
            ad.differentiate(Y, [A], manual={key: _vjp})
    with pytest.raises(ad.DifferentiationError, match=r"manual key te.Tensor 'Y'.*write \(Y, None\).*"
                                                      r"\(None, Y\)"):
        ad.differentiate(Y, [A], manual={Y: _vjp})


def test_manual_value_that_is_not_callable():
    A, Y = _graph()
    with pytest.raises(TypeError, match=r"manual entry \(Y, A\) maps to int 3, which is not callable"):
        ad.differentiate(Y, [A], manual={(Y, A): 3})
    with pytest.raises(TypeError, match=r"manual must be a dict, got list"):
        ad.differentiate(Y, [A], manual=[((Y, A), _vjp)])


def test_manual_function_of_the_wrong_arity():
    A, Y = _graph()
    with pytest.raises(TypeError, match=r"manual entry \(Y, None\): two\(out, inp\) cannot be "
                                        r"called as fn\(out, inp, head\)"):
        def two(out, inp):
            return inp
        ad.differentiate(Y, [A], manual={(Y, None): two})
    # Defaults and *args fit the call: accepted, and used.
    (dA,) = ad.differentiate(Y, [A], ph((3,), "H"), manual={(Y, A): lambda *args: _vjp(*args)})
    assert dA.op.name == "dA_manual"


# -- jacobian, hessian ------------------------------------------------------------------------------

def test_jacobian_and_hessian_arguments():
    A, Y = _graph()
    k = te.reduce_axis((0, 3), "k")
    L = te.compute((), lambda: te.sum(Y[k], axis=k), name="L")
    with pytest.raises(TypeError, match=r"jacobian\(\) input must be a te.Tensor or a float scalar "
                                        r"te.var, got list"):
        ad.jacobian(Y, [A])
    with pytest.raises(TypeError, match=r"jacobian\(\) needs a te.Tensor as output, got float"):
        ad.jacobian(1.0, A)
    with pytest.raises(TypeError, match=r"hessian\(\) needs a te.Tensor as output, got list"):
        ad.hessian([L], A)
    with pytest.raises(TypeError, match=r"hessian\(\) input2 must be .* got str"):
        ad.hessian(L, A, "A")
    with pytest.raises(ad.DifferentiationError, match=r"hessian\(\) needs a 0-d output"):
        ad.hessian(Y, A)


# -- build ------------------------------------------------------------------------------------------

def test_build_outputs_must_be_tensors():
    A, Y = _graph()
    with pytest.raises(TypeError, match=r"build\(\) outputs must be a te.Tensor or a list of them, "
                                        r"got float"):
        ad.build(3.0, [A])
    with pytest.raises(TypeError, match=r"build\(\) outputs\[1\] is str 'dY', not a te.Tensor"):
        ad.build([Y, "dY"], [A])
    with pytest.raises(ad.DifferentiationError, match=r"at least one output"):
        ad.build([], [A])


def test_build_inputs_must_be_placeholders_or_scalars():
    A, Y = _graph()
    with pytest.raises(TypeError, match=r"build\(\) inputs\[0\] is ndarray .*Pass the arrays to the "
                                        r"compiled function"):
        ad.build(Y, inputs=[np.zeros(3)])
    with pytest.raises(ad.DifferentiationError, match=r"build\(\) inputs must be a list of "
                                                      r"placeholders and scalar variables"):
        ad.build(Y, inputs=3)
    n = te.var("n")
    B = ph((n,), "B")
    Z = te.compute((n,), lambda i: B[i] + 1.0, name="Z")
    with pytest.raises(ad.DifferentiationError, match=r"inputs\[1\] is the dimension variable 'n'.*"
                                                      r"leave it out"):
        ad.build(Z, [B, n])


@pytest.mark.parametrize("target,error,match", [
    (42, TypeError, r"target must be \"llvm\" .*; got int 42"),
    ("llvm -mcpu=bogus -num-cores=2", ad.DifferentiationError,
     r"no longer parses target strings.*target=\{'kind': 'llvm', 'mcpu': 'bogus', 'num-cores': 2\}"),
    ({"kind": "llvm", "mcpu": "bogus"}, ad.DifferentiationError,
     r"mcpu 'bogus' is not a CPU that LLVM knows.*llvm_get_cpu_archlist.*leave mcpu out"),
    ({"kind": "llvm", "mcpu": "native"}, ad.DifferentiationError, r"mcpu 'native'"),
    ({"mcpu": "znver4"}, ad.DifferentiationError, r"has no \"kind\""),
    ("nosuch", ad.DifferentiationError, r"target 'nosuch' is not a TVM target \(.*nosuch.*\)"),
])
def test_build_target_errors(target, error, match):
    A, Y = _graph()
    with pytest.raises(error, match=match):
        ad.build(Y, [A], target=target)


def test_target_object_with_an_unknown_cpu():
    from tvm_autodiff.compile import resolve_target
    assert resolve_target({"kind": "llvm", "mcpu": "x86-64"}).attrs["mcpu"] == "x86-64"
    bad = tvm.target.Target({"kind": "llvm", "mcpu": "bogus"})
    with pytest.raises(ad.DifferentiationError, match=r"mcpu 'bogus'"):
        resolve_target(bad)


@pytest.mark.parametrize("keywords,error,match", [
    ({"schedule": "defualt"}, ad.DifferentiationError,
     r"schedule must be 'default', 'tune' or None, not 'defualt' \(did you mean 'default'\?\)"),
    ({"schedule": True}, ad.DifferentiationError, r"schedule must be .* not True$"),
    ({"trials": 0}, TypeError, r"trials must be a positive int .*got int 0"),
    ({"trials": 2.5}, TypeError, r"trials must be a positive int .*got float 2.5"),
    ({"trials": True}, TypeError, r"trials must be a positive int .*got bool True"),
    ({"work_dir": 3}, TypeError, r"work_dir must be None or a folder .*got int 3"),
])
def test_build_options(keywords, error, match):
    A, Y = _graph()
    with pytest.raises(error, match=match):
        ad.build(Y, [A], **keywords)


def test_argument_type_errors_are_both_kinds():
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ad.DifferentiationError)


# -- scalar parameters ------------------------------------------------------------------------------

def _scalar_graph():
    """Y[i] = beta · Σ_k exp(alpha · A[i, k]) + max(A[i, 0], alpha): alpha in a reduction and an
    elementwise max, beta read first."""
    A = ph((3, 4), "A")
    alpha, beta = te.var("alpha", F64), te.var("beta", F64)
    k = te.reduce_axis((0, 4), "k")
    S = te.compute((3,), lambda i: te.sum(beta * te.exp(alpha * A[i, k]), axis=k), name="S")
    Y = te.compute((3,), lambda i: S[i] + te.max(A[i, 0], alpha), name="Y")
    return A, alpha, beta, Y


def _numpy_forward(a, alpha, beta):
    return beta * np.exp(alpha * a).sum(1) + np.maximum(a[:, 0], alpha)


def test_scalar_parameters_are_inputs_in_first_use_order():
    A, alpha, beta, Y = _scalar_graph()
    f = ad.build(Y)
    assert [x.name for x in f.inputs] == ["A", "beta", "alpha"]
    a = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(f(a, 0.5, np.float32(0.25)), _numpy_forward(a, 0.25, 0.5))
    with pytest.raises(ad.DifferentiationError, match=r"scalar variables \['beta'\] that are not in "
                                                      r"inputs"):
        ad.build(Y, [A, alpha])
    with pytest.raises(TypeError, match=r"scalar parameter 'beta' \(float64\) needs a Python or "
                                        r"numpy float or int, got str"):
        f(a, "0.5", 0.25)


def test_gradient_of_a_float_scalar():
    """d/dalpha and d/dbeta of L = Σ H·Y against the closed form and central differences."""
    A, alpha, beta, Y = _scalar_graph()
    H = ph((3,), "H")
    dA, dalpha, dbeta = ad.differentiate(Y, [A, alpha, beta], H)
    assert [list(g.shape) for g in (dalpha, dbeta)] == [[], []]
    f = ad.build([Y, dA, dalpha, dbeta], [A, H, alpha, beta])
    rng = np.random.default_rng(1)
    a, h, al, be = rng.standard_normal((3, 4)), rng.standard_normal(3), 0.3, -1.7
    y, da, dal, dbe = f(a, h, al, be)
    e = np.exp(al * a)
    closed_alpha = (h * (be * (a * e).sum(1) + (al > a[:, 0]))).sum()
    np.testing.assert_allclose(dal, closed_alpha, rtol=1e-12)
    np.testing.assert_allclose(dbe, (h * e.sum(1)).sum(), rtol=1e-12)
    np.testing.assert_allclose(da[:, 1:], (h * be * al)[:, None] * e[:, 1:], rtol=1e-12)
    step = 1e-6
    loss = lambda al_, be_: float(np.sum(h * f(a, h, al_, be_)[0]))  # noqa: E731
    np.testing.assert_allclose(dal, (loss(al + step, be) - loss(al - step, be)) / (2 * step), rtol=1e-6)
    np.testing.assert_allclose(dbe, (loss(al, be + step) - loss(al, be - step)) / (2 * step), rtol=1e-6)


def test_scalar_jacobian_hessian_and_unused_scalar():
    """L = Σ exp(alpha·A): d²L/dalpha² = Σ A² exp(alpha·A), d²L/dA dalpha = exp(alpha·A)(1 + alpha·A);
    the Jacobian of Y w.r.t. alpha has Y's shape; an unread scalar gets a zero gradient."""
    A, alpha, unused = ph((2, 3), "A"), te.var("alpha", F64), te.var("gamma", F64)
    i, j = te.reduce_axis((0, 2), "i"), te.reduce_axis((0, 3), "j")
    L = te.compute((), lambda: te.sum(te.exp(alpha * A[i, j]), axis=[i, j]), name="L")
    Y = te.compute((2, 3), lambda p, q: alpha * alpha * A[p, q], name="Y")
    J = ad.jacobian(Y, alpha)
    (G,) = ad.differentiate(L, unused)
    outs = [ad.hessian(L, alpha), ad.hessian(L, A, alpha), J, G]
    assert [list(t.shape) for t in outs] == [[], [2, 3], [2, 3], []]
    f = ad.build(outs, [A, alpha, unused])
    a, al = np.random.default_rng(2).standard_normal((2, 3)), 0.6
    h_aa, h_xa, jac, g = f(a, al, 9.0)
    e = np.exp(al * a)
    np.testing.assert_allclose(h_aa, (a * a * e).sum(), rtol=1e-12)
    np.testing.assert_allclose(h_xa, e * (1 + al * a), rtol=1e-12)
    np.testing.assert_allclose(jac, 2 * al * a, rtol=1e-12)
    assert g == 0.0


def test_integer_scalar_parameter_in_an_index_and_a_shape():
    """An int te.var shifts an index, another sets an output extent that no placeholder has: both
    are inputs of the compiled function (the second also sizes the output)."""
    A, shift, m = ph((4,), "A"), te.var("shift", "int32"), te.var("m", "int32")
    Y = te.compute((m,), lambda i: A[(i + shift) % 4] * 2.0, name="Y")
    f = ad.build(Y)
    assert [x.name for x in f.inputs] == ["A", "m", "shift"]
    a = np.arange(4.0)
    np.testing.assert_allclose(f(a, 6, np.int64(1)), 2 * a[(np.arange(6) + 1) % 4])
    with pytest.raises(TypeError, match=r"scalar parameter 'm' \(int32\) needs a Python or numpy int, "
                                        r"got float 6.0"):
        f(a, 6.0, 1)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (no GPU needed)")
def test_scalar_parameter_on_cuda_compiles():
    """The GPU schedule takes scalar parameters too: the kernel source names alpha and nvcc
    compiles it (running it needs a GPU: tests/test_cuda.py)."""
    A, alpha = ph((64, 32), "A", "float32"), te.var("alpha", "float32")
    k = te.reduce_axis((0, 32), "k")
    S = te.compute((64,), lambda i: te.sum(te.exp(A[i, k] * alpha), axis=k), name="S")
    dA, dalpha = ad.differentiate(S, [A, alpha], ph((64,), "H", "float32"))
    m = ad.build([S, dA, dalpha], target="cuda")
    assert [x.name for x in m.inputs] == ["A", "H", "alpha"]
    assert "alpha" in m.source and ad.compile_ptx(m)
