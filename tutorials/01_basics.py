"""
Differentiate a tensor expression
=================================

This tutorial shows the basic workflow of ``tvm_autodiff``:

1. write a small model with ``topi`` (TVM's operator library, plain tensor expressions);
2. differentiate it with ``tvm.differentiate``;
3. read the adjoint of an intermediate tensor;
4. look at a gradient's tensor expression before and after zero elimination, and its work;
5. compile forward and backward together with ``tvm_autodiff.build`` and check the numbers
   against finite differences;
6. compute a full Jacobian (``head=None``).

Run it with ``python tutorials/01_basics.py``.
"""

# %%
# A small graph
# -------------
# ``import tvm_autodiff`` installs ``tvm.differentiate`` (and ``tvm.te.gradient``, the TVM 0.19
# contract).  The graph is a dense layer, a tanh and a cross-entropy against soft targets ``t``;
# the loss is a 0-d tensor.  We use float64 so that finite differences are accurate.

import numpy as np
import tvm
from tvm import te, topi

import tvm_autodiff as ad

N, IN, OUT = 2, 4, 3
x = te.placeholder((N, IN), "float64", name="x")
w = te.placeholder((OUT, IN), "float64", name="w")        # topi dense weights are (out, in)
b = te.placeholder((OUT,), "float64", name="b")
t = te.placeholder((N, OUT), "float64", name="t")

h = topi.nn.dense(x, w, b)                                  # (N, OUT)
a = topi.tanh(h)
logp = topi.nn.log_softmax(a)
i, j = te.reduce_axis((0, N), name="i"), te.reduce_axis((0, OUT), name="j")
loss = te.compute((), lambda: te.sum(-t[i, j] * logp[i, j], axis=[i, j]), name="loss")

# %%
# Differentiate
# -------------
# ``tvm.differentiate(output, inputs, head=None)`` returns a list-like result with one gradient
# per input.  With a 0-d output and no head, each gradient has the shape of its input.
# ``res.adjoints`` holds the adjoint of every tensor between the inputs and the output, here
# ``dloss/dh``, the gradient with respect to the dense layer's output.

res = tvm.differentiate(loss, [w, b])
dw, db = res
dh = res.adjoints[h]
print(res)
print("dw:", dw.name, [int(s) for s in dw.shape], " dh:", dh.name, [int(s) for s in dh.shape])

# %%
# What the gradient looks like
# ----------------------------
# A gradient is an ordinary ``te.Tensor`` graph.  The reverse pass writes each edge's
# contribution as a sum over the consumer's whole domain with an Iverson bracket
# ``select(i == f(..), 1, 0)``; zero elimination (``tvm_autodiff.passes.eliminate_zeros``) then
# solves those index equations and shrinks the sums.  ``tvm.differentiate`` runs it by default;
# ``optimize=False`` returns the raw reverse pass.  ``tvm_autodiff.explain`` prints every op of a
# graph (shape, domain, body and *work*, the number of loop-body executions of its kernel),
# before and after zero elimination.  Here is the op that computes ``dw``, and the totals:

raw = tvm.differentiate(loss, [w, b], optimize=False)
text = ad.explain(raw[0])


def show(text, op_name):
    """The section headers, the lines of one op, and the totals of an explain() dump."""
    keep, inside = [], False
    for line in text.splitlines():
        if line.startswith(op_name + ":"):
            inside = True
        elif not line.startswith("  "):
            inside = False
        if inside or line.startswith(("==", "total", "work:")):
            keep.append(line)
    return "\n".join(keep)


print(show(text, raw[0].name))
# The whole graph before/after, op by op:  print(text)
w_raw, w_opt = ad.work(raw[0]).iterations, ad.work(dw).iterations
assert w_opt < w_raw
print(f"OK zero elimination reduced the work of dw from {w_raw} to {w_opt} iterations")

# %%
# Build and check against finite differences
# ------------------------------------------
# ``ad.build(outputs, inputs)`` compiles all the outputs into one kernel, so the forward tensors
# that the gradients read are computed once.  The result is a callable on numpy arrays.

step = ad.build([loss, dw, db, dh, raw[0]], [x, w, b, t])

rng = np.random.default_rng(0)
xv, wv, bv = rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)), rng.standard_normal(OUT)
tv = rng.dirichlet(np.ones(OUT), size=N)                   # soft targets, rows sum to 1
lv, dwv, dbv, dhv, dw_raw = step(xv, wv, bv, tv)


def loss_np(x, w, b, t):
    a = np.tanh(x @ w.T + b)
    logp = a - a.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -(t * logp).sum()


def numeric_grad(f, v, eps=1e-6):
    g = np.zeros_like(v)
    for k in np.ndindex(v.shape):
        d = np.zeros_like(v)
        d[k] = eps
        g[k] = (f(v + d) - f(v - d)) / (2 * eps)
    return g


assert np.isclose(lv, loss_np(xv, wv, bv, tv))
np.testing.assert_allclose(dwv, numeric_grad(lambda w_: loss_np(xv, w_, bv, tv), wv), rtol=1e-6, atol=1e-8)
np.testing.assert_allclose(dbv, numeric_grad(lambda b_: loss_np(xv, wv, b_, tv), bv), rtol=1e-6, atol=1e-8)
print("OK gradients dw, db match finite differences")
np.testing.assert_allclose(dw_raw, dwv, rtol=1e-12)
print("OK raw and zero-eliminated gradients agree")

# The adjoint of the intermediate h is the gradient with respect to h, and the chain rule through
# the dense layer gives dw = dhᵀ · x and db = Σ_n dh.
hv = xv @ wv.T + bv


def loss_of_h(h):
    return loss_np(np.zeros((N, 1)), np.zeros((OUT, 1)), h, tv)   # x·wᵀ = 0, so the "bias" is h


np.testing.assert_allclose(dhv, numeric_grad(loss_of_h, hv), rtol=1e-6, atol=1e-8)
np.testing.assert_allclose(dwv, dhv.T @ xv, rtol=1e-10)
np.testing.assert_allclose(dbv, dhv.sum(0), rtol=1e-10)
print("OK adjoint of intermediate h matches finite differences and the chain rule")

# %%
# A full Jacobian
# ---------------
# With ``head=None`` and a non-scalar output, the result is the full Jacobian, of shape
# ``output.shape + input.shape``.  (``head`` is the adjoint of the output: pass a tensor of shape
# ``prefix + output.shape`` to get a vector-Jacobian product instead.)  Here is the Jacobian of
# the softmax probabilities with respect to the input batch ``x``, shape (N, OUT, N, IN).

prob = topi.nn.softmax(a)
(jac,) = tvm.differentiate(prob, [x])
print("Jacobian shape:", [int(s) for s in jac.shape])
jac_fn = ad.build([prob, jac], [x, w, b])
pv, jv = jac_fn(xv, wv, bv)


def prob_np(x):
    e = np.exp(np.tanh(x @ wv.T + bv))
    return e / e.sum(1, keepdims=True)


eps = 1e-6
jac_fd = np.zeros((N, OUT, N, IN))
for k in np.ndindex(N, IN):
    d = np.zeros((N, IN))
    d[k] = eps
    jac_fd[(slice(None), slice(None)) + k] = (prob_np(xv + d) - prob_np(xv - d)) / (2 * eps)
np.testing.assert_allclose(pv, prob_np(xv), rtol=1e-12)
np.testing.assert_allclose(jv, jac_fd, rtol=1e-6, atol=1e-9)
# Rows of different samples do not interact: the off-diagonal blocks are exactly zero.
assert np.all(jv[0, :, 1, :] == 0) and np.all(jv[1, :, 0, :] == 0)
print("OK Jacobian matches finite differences")
