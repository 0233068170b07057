"""
Override a derivative by hand
=============================

``tvm.differentiate`` derives every op from its tensor-expression body.  Sometimes you know a
better derivative, or the op has no body at all (an extern op calling a hand-written kernel).
The ``manual=`` argument maps ``(out_tensor, in_tensor)`` to a function
``fn(out, inp, head) -> te.Tensor`` that returns ``inp``'s adjoint contribution (shape
``head.shape[:-out.ndim] + inp.shape``, where ``head`` is the adjoint of ``out``).  Either key
may be ``None``, a wildcard.

This tutorial

1. overrides the derivative of ``flatten`` after a convolution (the example of TVM RFC
   apache/tvm#1996): the adjoint of a reshape is the reshape of the head.  The result is the same
   and the work is smaller than the raw automatic derivative's;
2. differentiates through a ``te.extern`` op, whose forward is a Python function registered as a
   TVM packed function, by giving its derivative by hand.

Run it with ``python tutorials/02_manual_jacobian.py``.
"""

# %%
# A convolution followed by flatten
# ---------------------------------

import numpy as np
import tvm
from tvm import te, tirx, topi

import tvm_autodiff as ad

N, C, H, W, K, F = 2, 2, 6, 6, 3, 4
x = te.placeholder((N, C, H, W), "float64", name="x")
wc = te.placeholder((K, C, 3, 3), "float64", name="wc")
wd = te.placeholder((F, K * H * W), "float64", name="wd")

conv = topi.nn.conv2d(x, wc, strides=1, padding=1, dilation=1)     # (N, K, H, W)
flat = topi.nn.flatten(conv)                                         # (N, K*H*W): div/mod indices
dense = topi.nn.dense(topi.tanh(flat), wd)
n, f = te.reduce_axis((0, N), name="n"), te.reduce_axis((0, F), name="f")
loss = te.compute((), lambda: te.sum(dense[n, f] * dense[n, f], axis=[n, f]), name="loss")

# %%
# The manual entry
# ----------------
# The automatic derivative of ``flat[n, q] = conv[n, q // (H*W), (q // W) % H, q % W]`` is a sum
# over every element of ``flat`` with an index bracket, which zero elimination must solve (div
# and mod included).  By hand it is a reshape of the head back to the convolution's shape.  The
# function receives the head with any prefix dimensions first (here none: the loss is 0-d).


def flatten_vjp(out, inp, head):
    prefix = [int(s) for s in head.shape[:len(head.shape) - len(out.shape)]]
    return topi.reshape(head, prefix + [int(s) for s in inp.shape])


auto = tvm.differentiate(loss, [x, wc, wd])
manual = tvm.differentiate(loss, [x, wc, wd], manual={(flat, conv): flatten_vjp})

# %%
# The same numbers
# ----------------
# One build compiles both versions of all three gradients.

fn = ad.build([*auto, *manual], [x, wc, wd])
rng = np.random.default_rng(0)
xv = rng.standard_normal((N, C, H, W))
wcv = rng.standard_normal((K, C, 3, 3)) * 0.3
wdv = rng.standard_normal((F, K * H * W)) * 0.1
grads = fn(xv, wcv, wdv)
for name, g_auto, g_manual in zip(["x", "wc", "wd"], grads[:3], grads[3:]):
    np.testing.assert_allclose(g_manual, g_auto, rtol=1e-10, atol=1e-12)
    print(f"d{name}: max |auto - manual| = {np.abs(g_auto - g_manual).max():.2e}")
print("OK manual flatten derivative gives the same gradients")

# %%
# Less work
# ---------
# ``tvm_autodiff.work`` counts the loop-body executions of the kernels that compute a graph
# (deterministic, unlike a timing).  The work of the flatten edge alone is the work of its
# contribution to ``conv``'s adjoint (``res.adjoint_summands[conv][flat]``) minus the work of
# the head it reads (``res.adjoints[flat]``).
#
# The raw reverse pass (``optimize=False``) sums over every element of ``flat`` for every element
# of ``conv``: quadratic.  The manual entry is one read per element.  Zero elimination, which
# ``tvm.differentiate`` runs by default, solves the index equation ``q == k*H*W + i*W + j``
# (div and mod included) and finds the same reshape, so with it the hand-written derivative is no
# longer needed here -- it still is for ops without a body, below.


def edge_work(res):
    return (ad.work(res.adjoint_summands[conv][flat]).iterations
            - ad.work(res.adjoints[flat]).iterations)


raw_auto = tvm.differentiate(loss, [x, wc, wd], optimize=False)
raw_manual = tvm.differentiate(loss, [x, wc, wd], manual={(flat, conv): flatten_vjp}, optimize=False)
print(f"{'work of the flatten edge':28s} {'automatic':>10s} {'manual':>8s}")
print(f"{'  raw reverse pass':28s} {edge_work(raw_auto):10d} {edge_work(raw_manual):8d}")
print(f"{'  with zero elimination':28s} {edge_work(auto):10d} {edge_work(manual):8d}")
print(f"work of the whole gradient (forward included): raw {ad.work(list(raw_auto)).iterations} -> "
      f"manual {ad.work(list(raw_manual)).iterations}; optimized {ad.work(list(auto)).iterations} -> "
      f"manual {ad.work(list(manual)).iterations}")
assert edge_work(raw_manual) < edge_work(raw_auto)
assert edge_work(manual) <= edge_work(auto)
assert ad.work(list(raw_manual)).iterations < ad.work(list(raw_auto)).iterations
print("OK manual flatten derivative does less work than the raw automatic one")

# %%
# Differentiating through an extern op
# ------------------------------------
# ``te.extern`` calls code that TVM cannot see into: here a softplus ``log(1 + exp(x))`` written
# in numpy and registered as a packed function.  The compiled kernel calls it, so it also runs
# inside ``ad.build``.  Without a manual entry ``tvm.differentiate`` raises a
# ``DifferentiationError`` that names the op; with one, the extern op is differentiated like any
# other: ``d softplus(x) / dx = sigmoid(x)``.


@tvm.register_global_func("tutorial.softplus", override=True)
def _softplus(inp, out):
    out.copyfrom(np.logaddexp(0.0, inp.numpy()))


M = 5
u = te.placeholder((M,), "float64", name="u")
v = te.placeholder((M,), "float64", name="v")
sp = te.extern((M,), [u], lambda ins, outs: tirx.call_packed("tutorial.softplus", ins[0], outs[0]),
               name="softplus", dtype="float64")
m = te.reduce_axis((0, M), name="m")
y = te.compute((), lambda: te.sum(sp[m] * v[m] * u[m], axis=m), name="y")

try:
    tvm.differentiate(y, [u, v])
except ad.DifferentiationError as err:
    print("without a manual entry:", str(err).split(":")[0])


def softplus_vjp(out, inp, head):
    return te.compute(inp.shape, lambda i: head[i] * te.sigmoid(inp[i]), name="dsoftplus")


du, dv = tvm.differentiate(y, [u, v], manual={(sp, u): softplus_vjp})
ext = ad.build([y, du, dv], [u, v])
uv, vv = rng.standard_normal(M), rng.standard_normal(M)
yv, duv, dvv = ext(uv, vv)


def y_np(u, v):
    return float(np.sum(np.logaddexp(0.0, u) * v * u))


eps = 1e-6
du_fd = np.array([(y_np(uv + eps * e, vv) - y_np(uv - eps * e, vv)) / (2 * eps) for e in np.eye(M)])
np.testing.assert_allclose(yv, y_np(uv, vv), rtol=1e-12)
np.testing.assert_allclose(duv, du_fd, rtol=1e-6, atol=1e-9)
np.testing.assert_allclose(dvv, np.logaddexp(0.0, uv) * uv, rtol=1e-12)
print("OK gradient through the extern op matches finite differences")
