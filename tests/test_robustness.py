"""Robustness: inputs that must give the right numbers or a clear error, and never crash inside TVM,
hang or exhaust memory.

Risky cases run in a worker process (this file run as a script) under a memory limit
(RLIMIT_AS) and a per-case time limit, so that a regression fails its test instead of killing the
test run; see `run_isolated`.  A section registers its cases with `@isolated(...)`; one
`run_isolated` call runs every section's cases (one worker start), and `test_isolated_case` reads
each outcome.

Sections:
- topi ops that the op table (tests/op_table.py) does not cover: gradients against float64
  central finite differences (tests/gradcheck.py), or, for ops without a TE body (ExternOp), a
  DifferentiationError that names the op and `manual=`, and the `manual=` way out checked the same
  way.
- deep graphs: a 1,000-op chain differentiates with linear op count and work and builds per
  kernel in about a second, with the numpy chain rule's values; a 100-op one builds as one
  PrimFunc and gives numpy's values and finite-difference gradients.
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from tvm import te, tirx, topi

import tvm_autodiff as ad
from tvm_autodiff.ir.graph import ops_post_order
from gradcheck import check_grad, distinct, integers, positive, uniform

# -- isolation ---------------------------------------------------------------------------------------

MEMORY_LIMIT = 6 << 30        # bytes of address space; a worker needs about 1.3 GB
CASE_TIMEOUT = 60             # seconds per case; the topi cases take under 3 s each
# Few threads and malloc arenas, so that the address space does not grow with the machine's cores.
WORKER_ENV = {"TVM_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}

ISOLATED: dict[str, tuple[Callable[[], None], int]] = {}


def isolated(timeout: int = CASE_TIMEOUT) -> Callable:
    """Register the decorated function as an isolated case: it passes by returning, fails by
    raising."""
    def deco(fn):
        ISOLATED[fn.__name__] = (fn, timeout)
        return fn
    return deco


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _died(rc: int, stderr: str) -> str:
    how = ("timed out (killed by SIGALRM)" if rc == -signal.SIGALRM else
           f"crashed (signal {-rc})" if rc < 0 else f"exited with status {rc}")
    return f"the worker {how}; stderr ends with:\n{stderr[-2000:]}"


def run_isolated(names: list[str]) -> dict[str, Outcome]:
    """The outcome of each case in `names`, run one after another in a worker process with at most
    MEMORY_LIMIT bytes of address space and each case's time limit.  The case in flight when the
    worker dies (a crash, an abort inside TVM, a timeout) fails with how it died, and a fresh
    worker runs the rest."""
    outcomes: dict[str, Outcome] = {}
    remaining = list(names)
    while remaining:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
            budget = sum(ISOLATED[n][1] for n in remaining) + 60
            proc = subprocess.run([sys.executable, __file__, log.name, *remaining], capture_output=True,
                                  text=True, timeout=budget, preexec_fn=_limit_memory,
                                  env={**os.environ, **WORKER_ENV})
            started = None
            for line in log:
                record = json.loads(line)
                if "start" in record:
                    started = record["start"]
                else:
                    outcomes[record["name"]] = Outcome(record["ok"], record["detail"])
        if started is not None and started not in outcomes:
            outcomes[started] = Outcome(False, _died(proc.returncode, proc.stderr))
        elif remaining != [n for n in remaining if n in outcomes]:   # died before any case ran
            raise RuntimeError(_died(proc.returncode, proc.stderr))
        remaining = [n for n in remaining if n not in outcomes]
    return outcomes


def _worker(log_path: str, names: list[str]):
    """Run the cases, appending {"start": name} before each and its outcome after it to the log."""
    with open(log_path, "a") as log:
        for name in names:
            fn, timeout = ISOLATED[name]
            log.write(json.dumps({"start": name}) + "\n")
            log.flush()
            signal.alarm(timeout)           # SIGALRM's default action ends the process
            try:
                fn()
                record = {"name": name, "ok": True, "detail": ""}
            except BaseException:           # MemoryError and pytest's failures too
                record = {"name": name, "ok": False, "detail": traceback.format_exc()[-3000:]}
            signal.alarm(0)
            log.write(json.dumps(record) + "\n")
            log.flush()


# The runner itself: a case that exhausts memory, hangs or crashes fails alone.

@isolated()
def isolation_memory():
    np.ones(1 << 31)                        # 16 GiB


@isolated(timeout=1)
def isolation_hang():
    import time
    time.sleep(30)


@isolated()
def isolation_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


@isolated()
def isolation_ok():
    pass


def test_isolation_reports_memory_hangs_and_crashes():
    out = run_isolated(["isolation_memory", "isolation_hang", "isolation_crash", "isolation_ok"])
    assert not out["isolation_memory"].ok and "MemoryError" in out["isolation_memory"].detail
    assert not out["isolation_hang"].ok and "timed out" in out["isolation_hang"].detail
    assert not out["isolation_crash"].ok and "crashed (signal 11)" in out["isolation_crash"].detail
    assert out["isolation_ok"] == Outcome(True, "")


# -- topi ops not in the op table --------------------------------------------------------------------

F64, F32 = "float64", "float32"
TOPI_CASES: list[str] = []


def topi_case(fn):
    TOPI_CASES.append(fn.__name__)
    return isolated()(fn)


def ph(shape, name, dtype=F64):
    return te.placeholder(shape, dtype, name=name)


def extern_error(op_name: str):
    """The DifferentiationError of an op without a TE body: it names the op and the way out."""
    return pytest.raises(ad.DifferentiationError, match=re.compile(
        rf"ExternOp '{re.escape(op_name)}'.*manual=", re.S))


@topi_case
def batch_norm_training():
    x, g, b, m, v = ph((2, 3, 2, 2), "x"), ph((3,), "g"), ph((3,), "b"), ph((3,), "m"), ph((3,), "v")
    out = topi.nn.batch_norm(x, g, b, m, v, axis=1, epsilon=1e-5, training=True)[0]
    check_grad(out, [x, g, b])


@topi_case
def batch_norm_inference():
    x, g, b, m, v = ph((2, 3, 2, 2), "x"), ph((3,), "g"), ph((3,), "b"), ph((3,), "m"), ph((3,), "v")
    out = topi.nn.batch_norm(x, g, b, m, v, axis=1, epsilon=1e-5, training=False)[0]
    check_grad(out, [x, g, b, m, v], gens={v: positive})


@topi_case
def group_norm():
    # topi's group_norm accepts float32 and float16 only (a TVM check when the graph is made).
    x, g, b = ph((2, 4, 2, 2), "x", F32), ph((4,), "g", F32), ph((4,), "b", F32)
    check_grad(topi.nn.group_norm(x, g, b, 2, 1, [2, 3]), [x, g, b])


@topi_case
def lrn():
    x = ph((1, 5, 2, 2), "x")
    check_grad(topi.nn.lrn(x, 3, 1, 0.1, 0.75, 2.0), [x])


# topi's resize and upsampling cast the data to float32 and are linear in it, so finite differences
# take a large step: exact for a linear function, and float32 rounding stays below the tolerance.
LINEAR_F32 = {"eps": 0.5, "rtol": 1e-5, "atol": 1e-5}


@topi_case
def resize2d_linear():
    x = ph((1, 1, 3, 3), "x")
    check_grad(topi.image.resize2d(x, [0.0] * 4, (5, 4), method="linear"), [x], **LINEAR_F32)


@topi_case
def resize2d_nearest():
    x = ph((1, 1, 3, 3), "x")
    check_grad(topi.image.resize2d(x, [0.0] * 4, (5, 4), method="nearest_neighbor",
                                   coordinate_transformation_mode="asymmetric", rounding_method="floor"),
               [x], **LINEAR_F32)


@topi_case
def resize2d_cubic():
    x = ph((1, 1, 3, 3), "x")
    check_grad(topi.image.resize2d(x, [0.0] * 4, (5, 4), method="cubic"), [x], **LINEAR_F32)


@topi_case
def upsampling_nearest():
    x = ph((1, 2, 2, 3), "x")
    check_grad(topi.nn.upsampling(x, 2, 2), [x], **LINEAR_F32)


@topi_case
def upsampling_bilinear():
    x = ph((1, 2, 2, 3), "x")
    check_grad(topi.nn.upsampling(x, 2, 2, method="bilinear"), [x], **LINEAR_F32)


@topi_case
def cumsum_is_extern():
    x = ph((3, 4), "x")
    with extern_error("cumsum_generic"):
        ad.differentiate(topi.cumsum(x, axis=1), [x])


@topi_case
def cumsum_manual():
    """The way out: d cumsum = the reversed cumulative sum of the head, Σ_{k ≥ j} H[b, k]."""
    x = ph((3, 4), "x")
    out = topi.cumsum(x, axis=1)

    def adjoint(out, inp, head):
        k = te.reduce_axis((0, 4), "k")
        return te.compute(inp.shape, lambda b, j: te.sum(
            tirx.Select(k >= j, head[b, k], tirx.const(0.0, F64)), axis=k), name="dcumsum")

    check_grad(out, [x], manual={(out, x): adjoint})


@topi_case
def sort_is_extern():
    x = ph((3, 4), "x")
    with extern_error("sort_cpu"):
        ad.differentiate(topi.sort(x, axis=1), [x])


@topi_case
def sort_manual():
    """The way out: the head goes back to where each sorted value came from (argsort, a forward
    extern op, inside the manual adjoint)."""
    x = ph((3, 4), "x")
    out = topi.sort(x, axis=1)

    def adjoint(out, inp, head):
        idx = topi.argsort(inp, axis=1, dtype="int32")
        k = te.reduce_axis((0, 4), "k")
        return te.compute(inp.shape, lambda b, j: te.sum(
            tirx.Select(idx[b, k] == j, head[b, k], tirx.const(0.0, F64)), axis=k), name="dsort")

    check_grad(out, [x], manual={(out, x): adjoint}, gens={x: distinct})


@topi_case
def topk_is_extern():
    x = ph((3, 4), "x")
    values, indices = topi.topk(x, 2, axis=1, ret_type="both")
    with extern_error("topk_cpu"):
        ad.differentiate(values, [x])
    with pytest.raises(ad.DifferentiationError, match=r"'topk_cpu\.v1'.*int64.*floating-point"):
        ad.differentiate(indices, [x])


@topi_case
def scatter_elements_is_extern():
    x, i, u = ph((3, 4), "x"), ph((3, 2), "i", "int32"), ph((3, 2), "u")
    with extern_error("scatter_elements.generic"):
        ad.differentiate(topi.scatter_elements(x, i, u, 1, "add"), [x, u])


@topi_case
def gather():
    x, i = ph((3, 4), "x"), ph((3, 5), "i", "int32")
    check_grad(topi.gather(x, 1, i), [x], gens={i: integers(0, 4)})


@topi_case
def where():
    c, x, y = ph((3, 4), "c", "int32"), ph((3, 4), "x"), ph((3, 4), "y")
    check_grad(topi.where(c, x, y), [x, y], gens={c: integers(0, 2)})


@topi_case
def clip():
    # Away from the bounds (test_conventions.py pins the gradient at them).
    x = ph((3, 4), "x")
    values = lambda rng, shape, dtype: (rng.choice([-1, 1], shape) * rng.uniform(0.1, 0.4, shape)  # noqa: E731
                                        + rng.choice([-1.0, 0.0, 1.0], shape)).astype(dtype)
    check_grad(topi.clip(x, -0.5, 0.5), [x], gens={x: values})


@topi_case
def prelu():
    x, s = ph((2, 3, 2), "x"), ph((3,), "s")
    check_grad(topi.nn.prelu(x, s, 1), [x, s], gens={x: uniform(-1, 1)})


@topi_case
def leaky_relu():
    x = ph((3, 4), "x")
    check_grad(topi.nn.leaky_relu(x, 0.1), [x])


@topi_case
def conv1d():
    x, w = ph((1, 2, 7), "x"), ph((3, 2, 3), "w")
    check_grad(topi.nn.conv1d(x, w, 2, 1, 1), [x, w])


@topi_case
def conv1d_dilated():
    x, w = ph((1, 2, 8), "x"), ph((2, 2, 2), "w")
    check_grad(topi.nn.conv1d(x, w, 1, 0, 2), [x, w])


@topi_case
def conv3d():
    x, w = ph((1, 2, 4, 4, 4), "x"), ph((2, 2, 2, 2, 2), "w")
    check_grad(topi.nn.conv3d_ncdhw(x, w, 1, 1, 1, 1), [x, w])


@topi_case
def pool1d_max():
    x = ph((1, 2, 7), "x")
    check_grad(topi.nn.pool1d(x, (3,), (2,), (1,), (1, 1), "max"), [x], gens={x: distinct})


@topi_case
def pool1d_avg():
    x = ph((1, 2, 7), "x")
    check_grad(topi.nn.pool1d(x, (3,), (2,), (1,), (1, 1), "avg"), [x])


@topi_case
def pool3d_max():
    x = ph((1, 1, 4, 4, 4), "x")
    check_grad(topi.nn.pool3d(x, (2, 2, 2), (2, 2, 2), (1, 1, 1), (0,) * 6, "max"), [x], gens={x: distinct})


@topi_case
def pool3d_avg():
    x = ph((1, 1, 4, 4, 4), "x")
    check_grad(topi.nn.pool3d(x, (2, 2, 2), (1, 1, 1), (1, 1, 1), (1,) * 6, "avg"), [x])


# -- deep graphs ------------------------------------------------------------------------------------

# (TE op, numpy op, numpy derivative): each derivative is near 1, so that products over 100 ops
# stay between 0.3 and 30 and finite differences of the chain are accurate.
CHAIN_OPS = [(lambda v: v + te.sin(v) * 0.1, lambda v: v + np.sin(v) * 0.1,
              lambda v: 1 + 0.1 * np.cos(v)),
             (lambda v: v * 1.02 - 0.01, lambda v: v * 1.02 - 0.01, lambda v: np.full_like(v, 1.02)),
             (lambda v: (v + te.tanh(v) * 0.05) * 0.95, lambda v: (v + np.tanh(v) * 0.05) * 0.95,
              lambda v: (1 + 0.05 * (1 - np.tanh(v) ** 2)) * 0.95),
             (lambda v: v + te.sigmoid(v) * 0.1 - 0.05, lambda v: v + 0.1 / (1.0 + np.exp(-v)) - 0.05,
              lambda v: 1 + 0.1 * np.exp(-v) / (1 + np.exp(-v)) ** 2)]


def mixed_chain(k: int, n: int = 4):
    """x -> t_0 -> ... -> t_{k-1}, cycling through four elementwise ops; with its numpy twin,
    which returns the value and the derivative by the chain rule."""
    x = ph((n,), "x")

    def step(t, i):
        return te.compute((n,), lambda j: CHAIN_OPS[i % 4][0](t[j]), name=f"t{i}")

    def reference(v):
        slope = np.ones_like(v)
        for i in range(k):
            slope, v = slope * CHAIN_OPS[i % 4][2](v), CHAIN_OPS[i % 4][1](v)
        return v, slope

    t = x
    for i in range(k):
        t = step(t, i)
    return x, t, reference


X0, HEAD0 = np.array([0.3, -0.2, 0.7, 0.1]), np.array([1.0, -2.0, 0.5, 3.0])


@isolated()
def deep_chain_1000():
    """A 1,000-op chain differentiates to a gradient graph with one adjoint op per forward op and
    twice the forward work (each adjoint reads one local derivative and the next adjoint); it
    builds per kernel (kernels.py cuts the fused adjoint chain into kernels of at most
    MAX_KERNEL_OPS ops, five distinct ones) and gives the numpy chain rule's values."""
    x, y, reference = mixed_chain(1000)
    head = ph(y.shape, "H")
    (dx,) = ad.differentiate(y, [x], head=head)
    assert len(ops_post_order([dx])) <= 2 * 1000 + 2
    assert ad.work([dx]).iterations <= 2 * ad.work([y]).iterations
    fn = ad.build([y, dx], [x, head])
    assert fn.module is not None and len(fn.kernels) <= 8, list(fn.kernels)
    value, grad = fn(X0, HEAD0)
    want, slope = reference(X0)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    np.testing.assert_allclose(grad, HEAD0 * slope, rtol=1e-8)     # slopes near 1e-13: relative


@isolated()
def deep_chain_100_values():
    """A 100-op chain built as one PrimFunc with the default schedule: the value and the gradient
    against the numpy twin and its central finite differences (float64)."""
    x, y, reference = mixed_chain(100)
    head = ph(y.shape, "H")
    fn = ad.build([y, *ad.differentiate(y, [x], head=head)], [x, head], kernels="one")
    value, grad = fn(X0, HEAD0)
    np.testing.assert_allclose(value, reference(X0)[0], rtol=1e-12)
    eps = 1e-6
    fd = (reference(X0 + eps)[0] - reference(X0 - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, HEAD0 * fd, rtol=1e-6)


DEEP_CASES = ["deep_chain_1000", "deep_chain_100_values"]


# -- the isolated cases of the sections above, in one worker ---------------------------------------

@pytest.fixture(scope="module")
def outcomes():
    return run_isolated(TOPI_CASES + DEEP_CASES)


@pytest.mark.parametrize("name", TOPI_CASES + DEEP_CASES)
def test_isolated_case(name, outcomes):
    outcome = outcomes[name]
    assert outcome.ok, outcome.detail


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
