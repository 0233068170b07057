"""
Compile a training step for CUDA
================================

The training step of the digits CNN from ``03_train_digits.py`` (forward, cross-entropy,
backward, SGD-with-momentum update) compiled for an NVIDIA GPU:

1. ``tvm_autodiff.build(..., target="cuda")`` gives every block of the kernel a GPU schedule
   (dlight's default rules, then explicit thread binding for what they leave) and generates
   CUDA C.  This works on a machine without a GPU: TVM compiles the CUDA C only when the module
   is loaded on a device;
2. we print the generated kernels (abbreviated);
3. we compile them to PTX with ``nvcc`` when it is installed, which catches bad CUDA C without a
   GPU;
4. when a GPU is present (``tvm.cuda().exist``), we run a few training steps on it and compare
   them with the same step compiled for the CPU.

Run it with ``python tutorials/05_cuda.py``.
"""

# %%
# The training step
# -----------------
# The same model and update as in ``03_train_digits.py``, on random data (this tutorial is about
# the compiled code, not about accuracy).

import os
import re
import shutil
import time

import numpy as np
import tvm
from tvm import te, topi

import tvm_autodiff as ad
from tvm_autodiff import compile_ptx

FAST = os.environ.get("TVM_AUTODIFF_FAST") == "1"
BATCH, C1, HIDDEN = 32, 16, 64
SHAPES = {"conv_w": (C1, 1, 3, 3), "conv_b": (C1,), "w1": (HIDDEN, C1 * 16), "b1": (HIDDEN,),
          "w2": (10, HIDDEN), "b2": (10,)}


def cnn(x, p):
    conv = topi.nn.conv2d(x, p["conv_w"], strides=1, padding=1, dilation=1)
    conv = te.compute(conv.shape, lambda n, c, i, j: conv[n, c, i, j] + p["conv_b"][c], name="conv_bias")
    pool = topi.nn.pool2d(topi.nn.relu(conv), kernel=(2, 2), stride=(2, 2), dilation=(1, 1),
                          padding=(0, 0, 0, 0), pool_type="max")
    h = topi.nn.relu(topi.nn.dense(topi.nn.flatten(pool), p["w1"], p["b1"]))
    return topi.nn.dense(h, p["w2"], p["b2"])


def training_step_tensors():
    x = te.placeholder((BATCH, 1, 8, 8), "float32", name="x")
    y = te.placeholder((BATCH, 10), "float32", name="y")
    params = {n: te.placeholder(s, "float32", name=n) for n, s in SHAPES.items()}
    vels = {n: te.placeholder(s, "float32", name="v_" + n) for n, s in SHAPES.items()}
    lr, mu = te.placeholder((), "float32", name="lr"), te.placeholder((), "float32", name="mu")
    logp = topi.nn.log_softmax(cnn(x, params))
    b, c = te.reduce_axis((0, BATCH), name="b"), te.reduce_axis((0, 10), name="c")
    loss = te.compute((), lambda: te.sum(-y[b, c] * logp[b, c] * (1.0 / BATCH), axis=[b, c]), name="loss")
    grads = tvm.differentiate(loss, list(params.values()))

    def velocity(v, g):
        return te.compute(v.shape, lambda *i: mu() * v(*i) + g(*i), name="new_" + v.name)

    def weight(w, v):
        return te.compute(w.shape, lambda *i: w(*i) - lr() * v(*i), name="new_" + w.name)

    new_v = [velocity(vels[n], g) for n, g in zip(params, grads)]
    new_w = [weight(params[n], v) for n, v in zip(params, new_v)]
    return [loss, *new_w, *new_v], [x, y, *params.values(), *vels.values(), lr, mu]


outputs, inputs = training_step_tensors()

# %%
# Build for CUDA
# --------------
# ``target="cuda"`` uses the arch of the GPU when there is one, and ``sm_80`` otherwise; a dict
# such as ``{"kind": "cuda", "arch": "sm_86"}`` picks one explicitly.

has_gpu = tvm.cuda(0).exist
target = "cuda" if has_gpu else {"kind": "cuda", "arch": "sm_80"}
t0 = time.perf_counter()
gpu_step = ad.build(outputs, inputs, target=target)
print(f"built for {gpu_step.target} in {time.perf_counter() - t0:.1f} s")

# %%
# The generated CUDA C
# --------------------
# ``.source`` is the CUDA C of every kernel.  Each block of the step (forward ops, gradient ops,
# the update) is a ``__global__`` function; here are their names and the first kernel.

src = gpu_step.source
kernels = sorted(set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", src)),
                 key=lambda k: int(k.rpartition("_")[2]) if k[-1].isdigit() else 0)
print(f"{len(kernels)} kernels, {len(src.splitlines())} lines of CUDA C:")
print("  " + ", ".join(kernels[:6]) + (", ..." if len(kernels) > 6 else ""))
# The first kernel definition (the forward declarations come first in the file).
lines = src.splitlines()
start = next(i for i, l in enumerate(lines) if "__global__" in l and l.rstrip().endswith("{"))
end = next(i for i in range(start, len(lines)) if lines[i] == "}")
shown = lines[start:min(end + 1, start + 30)]
print("\n".join(shown) + f"\n// ... ({len(lines) - len(shown)} more lines)")
assert kernels, "no CUDA kernel was generated"
print("OK CUDA source generated")

# %%
# Compile to PTX with nvcc
# ------------------------
# TVM leaves the compilation of the CUDA C to the moment a module is loaded on a GPU (NVRTC,
# through ``tvm_callback_cuda_compile``).  ``tvm_autodiff.compile_ptx`` runs ``nvcc``
# ahead of time, so a CI machine without a GPU still checks that the generated code compiles.

if shutil.which("nvcc"):
    t0 = time.perf_counter()
    ptx = compile_ptx(gpu_step)
    ptx = bytes(ptx).decode() if not isinstance(ptx, str) else ptx
    entries = re.findall(r"\.entry\s+(\w+)", ptx)
    print(f"nvcc: {len(ptx)} bytes of PTX, {len(entries)} entry points, {time.perf_counter() - t0:.1f} s")
    assert sorted(entries) == sorted(kernels)
    print("OK nvcc compiled the kernels to PTX")
else:
    print("nvcc not found: skipping the PTX check")

# %%
# Run on the GPU
# --------------
# With a GPU, the compiled step is called exactly like the CPU one: numpy arrays in, numpy
# arrays out (``ad.build``'s callable copies them to and from the device).  We run a few steps
# from the same start on both devices and compare.

if has_gpu:
    rng = np.random.default_rng(0)
    w = {n: (rng.standard_normal(s) * 0.3).astype("float32") for n, s in SHAPES.items()}
    v = {n: np.zeros(s, "float32") for n, s in SHAPES.items()}
    hyper = (np.array(0.05, "float32"), np.array(0.9, "float32"))
    cpu_step = ad.build(outputs, inputs)
    state = {"gpu": (w, v), "cpu": (w, v)}
    losses = {"gpu": [], "cpu": []}
    for it in range(3 if FAST else 10):
        xb = rng.random((BATCH, 1, 8, 8), dtype=np.float32)
        yb = np.eye(10, dtype="float32")[rng.integers(0, 10, BATCH)]
        for dev, step in (("gpu", gpu_step), ("cpu", cpu_step)):
            w_, v_ = state[dev]
            loss, *out = step(xb, yb, *w_.values(), *v_.values(), *hyper)
            state[dev] = dict(zip(SHAPES, out[:len(SHAPES)])), dict(zip(SHAPES, out[len(SHAPES):]))
            losses[dev].append(float(loss))
    print("losses on the GPU:", " ".join(f"{l:.4f}" for l in losses["gpu"]))
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-3, atol=1e-4)
    for n in SHAPES:
        np.testing.assert_allclose(state["gpu"][0][n], state["cpu"][0][n], rtol=1e-3, atol=1e-4)
    args = (xb, yb, *state["gpu"][0].values(), *state["gpu"][1].values(), *hyper)
    print(f"GPU step {gpu_step.time(*args) * 1e3:.3f} ms, CPU step {cpu_step.time(*args) * 1e3:.3f} ms")
    print("OK GPU training steps match the CPU")
else:
    print("no CUDA device: not running the kernels")
