"""
Train an MLP and a small CNN on handwritten digits
==================================================

This tutorial trains two classifiers on scikit-learn's ``load_digits`` data set (1797 gray
8×8 images of the digits 0-9, shipped with scikit-learn, so nothing is downloaded):

* an MLP, 64 → 64 → 10;
* a small CNN: conv 3×3 (16 channels) → ReLU → 2×2 max-pool → dense 64 → ReLU → dense 10.

The model is written with ``topi``; ``tvm.differentiate`` gives the gradients of the loss; and
the **whole training step** -- forward, loss, backward, and the SGD-with-momentum update that
produces new weights and new velocities -- is compiled by ``tvm_autodiff.build`` into **one**
module.  Each step is a single call: weights in, new weights out.

Run it with::

    python tutorials/03_train_digits.py

``TVM_AUTODIFF_FAST=1`` runs a quick version (a few hundred images, a few epochs) that the test
suite uses.
"""

# %%
# Setup
# -----
# ``import tvm_autodiff`` installs ``tvm.differentiate``.  The data set is split 80/20 into
# training and test images, stratified by label, and the pixel values (0-16) are scaled to [0, 1].

import os
import time

import numpy as np
import tvm
from tvm import te, topi

import tvm_autodiff as ad
from tvm_autodiff.schedule import host_cores

FAST = os.environ.get("TVM_AUTODIFF_FAST") == "1"
# The PNG goes to tutorials/out/ (git-ignored), or to $TVM_AUTODIFF_TUTORIAL_OUT when set.
OUT_DIR = os.environ.get("TVM_AUTODIFF_TUTORIAL_OUT") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "out")
os.makedirs(OUT_DIR, exist_ok=True)

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

digits = load_digits()
images = (digits.images / 16.0).astype("float32")          # (1797, 8, 8)
labels = digits.target.astype("int64")
x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.2, random_state=0, stratify=labels)
if FAST:
    x_train, y_train = x_train[:320], y_train[:320]
print(f"train {len(x_train)} images, test {len(x_test)} images")

BATCH = 32
EPOCHS = {"mlp": 3 if FAST else 20, "cnn": 3 if FAST else 20}
LR, MOMENTUM = 0.05, 0.9

# %%
# The models
# ----------
# A model is a function from an input placeholder and a dict of parameter placeholders to a
# ``te.Tensor`` of logits.  It is called twice: with a batch of 32 images for training and with
# the whole test split for evaluation (the same parameters, a different graph).  topi has no
# bias-add, so the bias of the convolution is a small ``te.compute``.


def mlp_params():
    return {"w1": (64, 64), "b1": (64,), "w2": (10, 64), "b2": (10,)}


def mlp(x, p):
    h = topi.nn.flatten(x)                                   # (n, 64)
    h = topi.nn.relu(topi.nn.dense(h, p["w1"], p["b1"]))     # dense weights are (out, in)
    return topi.nn.dense(h, p["w2"], p["b2"])


C1, HIDDEN = 16, 64


def cnn_params():
    return {"conv_w": (C1, 1, 3, 3), "conv_b": (C1,), "w1": (HIDDEN, C1 * 16), "b1": (HIDDEN,),
            "w2": (10, HIDDEN), "b2": (10,)}


def cnn(x, p):
    conv = topi.nn.conv2d(x, p["conv_w"], strides=1, padding=1, dilation=1)    # (n, C1, 8, 8)
    conv = te.compute(conv.shape, lambda n, c, i, j: conv[n, c, i, j] + p["conv_b"][c], name="conv_bias")
    pool = topi.nn.pool2d(topi.nn.relu(conv), kernel=(2, 2), stride=(2, 2), dilation=(1, 1),
                          padding=(0, 0, 0, 0), pool_type="max")               # (n, C1, 4, 4)
    h = topi.nn.relu(topi.nn.dense(topi.nn.flatten(pool), p["w1"], p["b1"]))
    return topi.nn.dense(h, p["w2"], p["b2"])


def init_params(shapes, rng):
    """He-normal weights, zero biases."""
    values = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        values[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) if fan_in
                        else np.zeros(shape)).astype("float32")
    return values


# %%
# The training step as one module
# -------------------------------
# The loss is the mean cross-entropy ``-Σ y·log_softmax(logits) / B`` with one-hot labels ``y``,
# a 0-d tensor.  ``tvm.differentiate(loss, params)`` with no head returns the gradient of a 0-d
# output directly.  The momentum update is plain TE on top:
#
# .. math::  v' = \mu v + g, \qquad w' = w - \eta v'
#
# and ``ad.build`` compiles ``[loss, w'..., v'...]`` into one kernel whose inputs are the batch,
# the weights, the velocities and the two hyper-parameters (0-d placeholders, so changing the
# learning rate needs no rebuild).  Forward values that the gradient reads are computed once.
#
# ``tvm.differentiate`` runs zero elimination on the gradients by default.  Without it
# (``optimize=False``) every gradient of a dense or convolution layer is a sum over the whole
# domain of the consumer with an index bracket: on a 2-core machine the step of a smaller CNN
# (8 channels, 32 hidden units) took about 125 ms instead of about 1 ms.


def make_step(model, shapes, batch):
    x = te.placeholder((batch, 1, 8, 8), "float32", name="x")
    y = te.placeholder((batch, 10), "float32", name="y")             # one-hot labels
    params = {n: te.placeholder(s, "float32", name=n) for n, s in shapes.items()}
    vels = {n: te.placeholder(s, "float32", name="v_" + n) for n, s in shapes.items()}
    lr = te.placeholder((), "float32", name="lr")
    mu = te.placeholder((), "float32", name="mu")

    logp = topi.nn.log_softmax(model(x, params))
    b, c = te.reduce_axis((0, batch), name="b"), te.reduce_axis((0, 10), name="c")
    loss = te.compute((), lambda: te.sum(-y[b, c] * logp[b, c] * (1.0 / batch), axis=[b, c]),
                      name="loss")

    grads = tvm.differentiate(loss, list(params.values()))

    def velocity(v, g):
        return te.compute(v.shape, lambda *i: mu() * v(*i) + g(*i), name="new_" + v.name)

    def weight(w, v):
        return te.compute(w.shape, lambda *i: w(*i) - lr() * v(*i), name="new_" + w.name)

    new_v = [velocity(vels[n], g) for n, g in zip(params, grads)]
    new_w = [weight(params[n], v) for n, v in zip(params, new_v)]
    inputs = [x, y, *params.values(), *vels.values(), lr, mu]
    return ad.build([loss, *new_w, *new_v], inputs)


def make_predict(model, shapes, batch):
    x = te.placeholder((batch, 1, 8, 8), "float32", name="x")
    params = {n: te.placeholder(s, "float32", name=n) for n, s in shapes.items()}
    return ad.build(model(x, params), [x, *params.values()])


# %%
# Training loop
# -------------
# Mini-batch SGD with momentum over shuffled batches (the last partial batch of an epoch is
# dropped, the compiled step has a fixed batch size), with a cosine decay of the learning rate.  A tqdm bar shows the running loss; after
# each epoch the test accuracy is measured with the forward module.

from tqdm import tqdm

EYE = np.eye(10, dtype="float32")


def best_time(fn, repeat=7, number=20):
    """Seconds per call: the best of `repeat` runs of `number` calls, after a warm-up.  The best
    run is the least disturbed by other processes on the machine."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return min(runs)


def train(name, model, shapes, epochs, seed=0):
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    step = make_step(model, shapes, BATCH)
    predict = make_predict(model, shapes, len(x_test))
    print(f"[{name}] differentiated and compiled the training step in {time.perf_counter() - t0:.1f} s")
    w = init_params(shapes, rng)
    v = {n: np.zeros_like(a) for n, a in w.items()}
    lr, mu = np.array(LR, "float32"), np.array(MOMENTUM, "float32")
    xt = x_test[:, None]
    history = {"loss": [], "acc": []}
    steps_per_epoch = len(x_train) // BATCH
    bar = tqdm(total=epochs * steps_per_epoch, desc=name, mininterval=0.5, disable=FAST)
    for epoch in range(epochs):
        # Cosine learning-rate decay: the rate is a 0-d input of the compiled step.
        lr = np.array(LR * 0.5 * (1 + np.cos(np.pi * epoch / epochs)), "float32")
        order = rng.permutation(len(x_train))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * BATCH:(s + 1) * BATCH]
            loss, *out = step(x_train[idx, None], EYE[y_train[idx]], *w.values(), *v.values(), lr, mu)
            w = dict(zip(shapes, out[:len(shapes)]))
            v = dict(zip(shapes, out[len(shapes):]))
            losses.append(float(loss))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        logits = predict(xt, *w.values())
        acc = float((logits.argmax(1) == y_test).mean())
        history["loss"].append(float(np.mean(losses)))
        history["acc"].append(acc)
        bar.write(f"[{name}] epoch {epoch + 1:2d}: train loss {history['loss'][-1]:.4f}, test accuracy {acc:.4f}")
    bar.close()
    batch = (x_train[:BATCH, None], EYE[y_train[:BATCH]], *w.values(), *v.values(), lr, mu)
    args = step.prepare(*batch)            # device tensors: time the kernel alone
    history["step_s"] = best_time(lambda: step.executable(*args))
    history["call_s"] = best_time(lambda: step(*batch))   # with numpy in/out conversion
    print(f"[{name}] test accuracy {history['acc'][-1]:.4f}, training step {history['step_s'] * 1e3:.3f} ms "
          f"(batch {BATCH}; {history['call_s'] * 1e3:.3f} ms with numpy conversion)")
    return history, w


results = {}
for name, model, shapes in (("mlp", mlp, mlp_params()), ("cnn", cnn, cnn_params())):
    results[name], _ = train(name, model, shapes, EPOCHS[name])

# %%
# Loss and accuracy curves
# ------------------------

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
for name, h in results.items():
    epochs = np.arange(1, len(h["loss"]) + 1)
    ax_loss.plot(epochs, h["loss"], marker="o", label=name)
    ax_acc.plot(epochs, h["acc"], marker="o", label=name)
ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
png = os.path.join(OUT_DIR, "03_train_digits.png")
fig.savefig(png, dpi=100)
print(f"saved {png}")

# %%
# The same step in PyTorch
# ------------------------
# When PyTorch is installed, the same training steps (forward, cross-entropy, backward,
# SGD-with-momentum update) are timed on the CPU with the same number of threads, both as the
# best of 7 runs of 20 steps.  Our time is the compiled kernel alone on device tensors (PyTorch
# also updates its parameters in place); the numpy round trip of each call is printed above.  PyTorch calls
# hand-written kernels (oneDNN convolution, BLAS); our step is one kernel that TVM generated from
# the tensor expressions and their derivatives.

try:
    import torch
except ImportError:
    torch = None

if torch is not None:
    torch.set_num_threads(host_cores())
    torch.manual_seed(0)

    def torch_step_time(name):
        if name == "mlp":
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                      torch.nn.Linear(64, 10))
        else:
            net = torch.nn.Sequential(torch.nn.Conv2d(1, C1, 3, padding=1), torch.nn.ReLU(),
                                      torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                      torch.nn.Linear(C1 * 16, HIDDEN), torch.nn.ReLU(),
                                      torch.nn.Linear(HIDDEN, 10))
        opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        xb = torch.from_numpy(np.ascontiguousarray(x_train[:BATCH, None]))
        yb = torch.from_numpy(y_train[:BATCH])

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()

        return best_time(step)

    print(f"\nstep time, batch {BATCH}, {host_cores()} threads (PyTorch {torch.__version__}):")
    for name, h in results.items():
        t = torch_step_time(name)
        h["torch_step_s"] = t
        print(f"  {name}: tvm_autodiff {h['step_s'] * 1e3:8.3f} ms   PyTorch {t * 1e3:8.3f} ms   "
              f"ratio {h['step_s'] / t:.2f}")
else:
    print("PyTorch is not installed: no step-time comparison")

# %%
# Summary
# -------
# The lines below are what ``tests/test_tutorials.py`` checks.

for name, h in results.items():
    print(f"RESULT {name} first_loss={h['loss'][0]:.4f} last_loss={h['loss'][-1]:.4f} "
          f"test_acc={h['acc'][-1]:.4f} step_ms={h['step_s'] * 1e3:.3f}")
if not FAST:
    ok = results["cnn"]["acc"][-1] >= 0.97
    print(f"{'OK' if ok else 'FAILED'} CNN test accuracy {results['cnn']['acc'][-1]:.4f} (target >= 0.97)")
