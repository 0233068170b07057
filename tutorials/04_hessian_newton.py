"""
Newton's method with a compiled Hessian
=======================================

Gradients are plain tensor expressions, so ``tvm_autodiff`` can differentiate them again.  This
tutorial trains an L2-regularized logistic regression (digit 3 against digit 8 from
scikit-learn's digits) with Newton's method:

1. write the loss with ``te.compute``;
2. get its gradient and its Hessian with ``tvm_autodiff.differentiate`` and ``tvm_autodiff.hessian``;
3. look at the Hessian with ``explain``: zero elimination leaves one reduction, Xᵀ·diag(s(1−s))·X,
   not a materialized higher-order tensor;
4. compile loss, gradient and Hessian as one module and take Newton steps
   w ← w − H⁻¹ g, which converge quadratically.

Run it with ``python tutorials/04_hessian_newton.py``.
"""

# %%
# Data and loss
# -------------
# Labels are 0/1, features are the 64 pixels scaled to [0, 1] plus a constant column for the
# bias.  L(w) = Σᵢ log(1 + exp(zᵢ)) − yᵢ zᵢ + λ/2 ‖w‖² with z = X w.

import os

import numpy as np
from sklearn.datasets import load_digits
from tvm import te

import tvm_autodiff as ad

FAST = os.environ.get("TVM_AUTODIFF_FAST") == "1"
digits = load_digits()
keep = np.isin(digits.target, (3, 8))
features = digits.data[keep] / 16.0
features = np.hstack([features, np.ones((len(features), 1))])
labels = (digits.target[keep] == 8).astype("float64")
rng = np.random.default_rng(0)
order = rng.permutation(len(labels))
split = int(0.7 * len(labels))
train, test = order[:split], order[split:]

n, d = len(train), features.shape[1]
LAMBDA = 1e-2
X = te.placeholder((n, d), "float64", name="X")
y = te.placeholder((n,), "float64", name="y")
w = te.placeholder((d,), "float64", name="w")
k = te.reduce_axis((0, d), name="k")
z = te.compute((n,), lambda i: te.sum(X[i, k] * w[k], axis=k), name="z")
r = te.reduce_axis((0, n), name="r")
data_loss = te.compute((), lambda: te.sum(te.log(1.0 + te.exp(z[r])) - y[r] * z[r], axis=r), name="data")
q = te.reduce_axis((0, d), name="q")
penalty = te.compute((), lambda: te.sum(0.5 * LAMBDA * w[q] * w[q], axis=q), name="penalty")
loss = te.compute((), lambda: data_loss[()] + penalty[()], name="loss")

# %%
# Gradient and Hessian
# --------------------
# ``hessian(loss, w)`` differentiates the gradient once more.  ``explain`` prints every op of
# the result with its work: after zero elimination the Hessian is a single reduction over the
# samples, n·d² iterations, the same work a hand-written Xᵀ·D·X would do.

(grad,) = ad.differentiate(loss, [w])
hess = ad.hessian(loss, w)
text = ad.explain(hess)
print(text.split("== after")[0])
assert all(len(op.output(0).shape) <= 2 for op in ad.ir.graph.ops_post_order([hess]))
print("OK the Hessian is compact:", ad.work(hess).iterations, "iterations for", n, "samples and", d, "features")

# %%
# Newton's method
# ---------------
# One module computes loss, gradient and Hessian; numpy solves the d×d system.

step = ad.build([loss, grad, hess], [X, y, w])
xs, ys = features[train], labels[train]
weights = np.zeros(d)
history = []
for it in range(4 if FAST else 8):
    value, g, h = step(xs, ys, weights)
    history.append(float(value))
    print(f"iteration {it}: loss {float(value):.10f}  |grad| {np.linalg.norm(g):.2e}")
    weights = weights - np.linalg.solve(h, g)
assert history[-1] < history[0]

# The Hessian of the last iterate against the closed form Xᵀ·diag(s(1−s))·X + λI.
s = 1.0 / (1.0 + np.exp(-(xs @ weights)))
_, _, h = step(xs, ys, weights)
np.testing.assert_allclose(h, xs.T @ (xs * (s * (1 - s))[:, None]) + LAMBDA * np.eye(d), rtol=1e-9)
print("OK Hessian matches the closed form")

accuracy = np.mean(((features[test] @ weights) > 0) == (labels[test] == 1))
print(f"test accuracy {accuracy:.3f}")
assert accuracy > 0.9
print("OK Newton's method converged")
