"""Shared test utilities: numeric checks of tvm_autodiff gradients against finite differences.

Every check compiles ONE module (`ad.build`) holding the forward output and all the gradients, with a
random head placeholder H of the output's shape, so that the loss is L = Σ H·out and the gradients are
dL/dx.  The finite differences evaluate the forward output with the same compiled module, so each case
costs one TVM compile.

    check_grad(out, [x, w])                     # float inputs, random data, L = Σ H·out
    check_grad(out, [x], gens={x: positive})    # custom input generators (log, sqrt, ...)
    check_jacobian(out, x)                      # head=None: the full Jacobian vs numeric

Integer placeholders (indices for take) get fixed random values (`gens` or `integers(0, 3)`) and are
not differentiated.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tvm import te, tirx

import tvm_autodiff as ad
from tvm_autodiff.ir.expr import is_float
from tvm_autodiff.ir.graph import TensorMap, placeholders

# -- input generators: gen(rng, shape, dtype) -> array ---------------------------------------------


def uniform(lo: float = -1.0, hi: float = 1.0) -> Callable:
    return lambda rng, shape, dtype: rng.uniform(lo, hi, shape).astype(dtype)


normal = lambda rng, shape, dtype: rng.standard_normal(shape).astype(dtype)  # noqa: E731
positive = uniform(0.5, 2.0)
unit_open = uniform(-0.9, 0.9)          # asin, acos, atanh: |x| < 1


def integers(lo: int, hi: int) -> Callable:
    """Integers in [lo, hi)."""
    return lambda rng, shape, dtype: rng.integers(lo, hi, shape).astype(dtype)


def away_from_integers(scale: float = 3.0) -> Callable:
    """Values at least 0.1 away from every multiple of 0.5: floor/ceil/round stay constant nearby."""
    def gen(rng, shape, dtype):
        base = rng.integers(-int(scale * 2), int(scale * 2) + 1, shape) * 0.5
        return (base + rng.uniform(0.1, 0.4, shape)).astype(dtype)
    return gen


def distinct(rng, shape, dtype):
    """A random permutation of well-separated values: max/min reductions and pools have no ties
    and no near-ties that a finite-difference step could swap."""
    n = int(np.prod(shape, dtype=np.int64))
    vals = (rng.permutation(n) - n / 2) * (2.0 / max(n, 1)) + rng.uniform(0, 0.1 / max(n, 1), n)
    return vals.reshape(shape).astype(dtype)


# -- helpers ------------------------------------------------------------------------------------------


def concrete_shape(t: te.Tensor, sizes: Mapping) -> tuple:
    """t's shape with symbolic dims (te.var) bound by `sizes` {var: int}."""
    out = []
    for d in t.shape:
        if isinstance(d, tirx.IntImm):
            out.append(int(d))
        else:
            from tvm import sym
            from tvm_autodiff.ir.expr import substitute
            e = sym.Analyzer().simplify(substitute(d, {v: tirx.const(n, str(v.ty.dtype))
                                                       for v, n in sizes.items()}))
            out.append(int(e))
    return tuple(out)


def default_tols(dtype: str) -> tuple:
    """(rtol, atol, eps) for finite differences in this dtype."""
    if dtype == "float64":
        return 1e-5, 1e-7, 1e-6
    if dtype == "float32":
        return 2e-2, 2e-3, 1e-2
    return 5e-2, 5e-2, 3e-2


def make_values(tensors: Sequence[te.Tensor], rng, gens: Optional[Mapping] = None,
                sizes: Optional[Mapping] = None) -> list:
    """Random arrays for placeholders: gens[t] if given, else normal floats / small integers."""
    gens = TensorMap((gens or {}).items())
    sizes = sizes or {}
    vals = []
    for t in tensors:
        shape, dtype = concrete_shape(t, sizes), str(t.dtype)
        gen = gens.get(t, normal if is_float(t) else integers(0, 3))
        vals.append(np.array(gen(rng, shape, dtype), dtype=dtype, order="C"))  # keeps 0-d arrays 0-d
    return vals


class Harness:
    """One compiled module with the forward output, the gradients of L = Σ H·out with respect to
    `inputs`, and any `extra` tensors (e.g. adjoints of intermediates); `args` are all placeholders of
    the forward graph plus the head, in that order."""

    def __init__(self, output: te.Tensor, inputs: Optional[Sequence[te.Tensor]] = None,
                 manual=None, extra: Callable = None, head: bool = True, build_forward: bool = True,
                 kernels: str = "auto"):
        self.output, self.build_forward = output, build_forward
        self.params = placeholders([output])
        self.inputs = [t for t in self.params if is_float(t)] if inputs is None else list(inputs)
        self.head = te.placeholder(output.shape, str(output.dtype), name="H") if head else None
        self.res = ad.differentiate(output, self.inputs, self.head, manual=manual)
        self.extra = list(extra(self.res)) if extra is not None else []
        outs = ([output] if build_forward else []) + [*self.res, *self.extra]
        args = self.params + ([self.head] if head else [])
        # The gradients may read only some placeholders; every one is an argument of the module.
        self.fn = ad.build(outs, args, kernels=kernels)

    def run(self, values: Sequence[np.ndarray], head_value=None) -> tuple:
        """(forward, [gradients], [extras])."""
        args = list(values) + ([head_value] if self.head is not None else [])
        res = self.fn(*args)
        if not self.build_forward:
            res = [None] + list(res)
        n = len(self.res)
        return res[0], list(res[1:1 + n]), list(res[1 + n:])

    def index(self, t: te.Tensor) -> int:
        for k, p in enumerate(self.params):
            if p.op.same_as(t.op):
                return k
        raise KeyError(t.name)


def _close_scalar(analytic: float, numeric: float, scale: float, rtol: float, atol: float, what: str):
    err = abs(analytic - numeric)
    tol = atol + rtol * max(scale, abs(numeric), abs(analytic))
    assert err <= tol, (f"{what}: analytic {analytic!r} vs finite differences {numeric!r} "
                        f"(error {err:.3g} > tolerance {tol:.3g})")


def check_grad(output: te.Tensor, inputs: Optional[Sequence[te.Tensor]] = None, *,
               rtol: Optional[float] = None, atol: Optional[float] = None,
               eps: Optional[float] = None, gens: Optional[Mapping] = None,
               full: Optional[bool] = None, ndirs: int = 3, seed: int = 0,
               manual=None, reference: Optional[Callable] = None,
               sizes: Sequence[Mapping] = ({},), max_full: int = 64,
               numpy_forward: Optional[Callable] = None, kernels: str = "auto") -> Harness:
    """Check the gradients of L = Σ H·output with respect to `inputs` (default: every float
    placeholder) against central finite differences.

    full=True perturbs every element of every input; False checks `ndirs` random directional
    derivatives <dL/dx, v> per input; None chooses full for inputs with at most `max_full` elements.
    `reference(*numpy_inputs)`, if given, checks the forward values too.  `sizes` binds symbolic
    dims (one dict per check; the module is compiled once).  `numpy_forward(*numpy_inputs)`
    replaces the compiled forward in the finite differences, for outputs that TVM cannot compile
    (float floordiv/floormod/fmod) but whose gradients it can.  `kernels` is build()'s.
    """
    h = Harness(output, inputs, manual=manual, build_forward=numpy_forward is None, kernels=kernels)
    dtype = str(output.dtype)
    d_rtol, d_atol, d_eps = default_tols(dtype)
    rtol, atol, eps = rtol or d_rtol, atol or d_atol, eps or d_eps
    rng = np.random.default_rng(seed)
    for size in sizes:
        values = make_values(h.params, rng, gens, size)
        head = np.array(normal(rng, concrete_shape(output, size), dtype), dtype=dtype)
        fwd, grads, _ = h.run(values, head)
        if reference is not None and fwd is not None:
            ref = reference(*values)
            np.testing.assert_allclose(fwd, ref, rtol=max(rtol, 1e-6), atol=atol * 10,
                                       err_msg=f"forward value of {output.name}")

        def loss(vals):
            out = numpy_forward(*vals) if numpy_forward is not None else h.run(vals, head)[0]
            return float(np.sum(head.astype("float64") * np.asarray(out).astype("float64")))

        for x, g in zip(h.inputs, grads):
            k = h.index(x)
            xv = values[k]
            assert g.shape == xv.shape, f"d{x.name} has shape {g.shape}, expected {xv.shape}"
            assert np.all(np.isfinite(g)), f"d{x.name} has non-finite values"
            use_full = full if full is not None else xv.size <= max_full
            step = eps * max(1.0, float(np.max(np.abs(xv)))) if xv.size else eps
            if use_full:
                num = np.zeros(xv.shape, "float64")
                for idx in np.ndindex(*xv.shape):
                    vals = list(values)
                    for sign in (1, -1):
                        p = xv.copy()
                        p[idx] = p[idx] + sign * step
                        vals[k] = p
                        num[idx] += sign * loss(vals)
                num /= 2 * step
                scale = float(np.max(np.abs(num))) if num.size else 0.0
                np.testing.assert_allclose(g.astype("float64"), num, rtol=rtol, atol=atol + rtol * scale,
                                           err_msg=f"gradient of {output.name} w.r.t. {x.name}")
            else:
                for r in range(ndirs):
                    v = rng.standard_normal(xv.shape)
                    vals = list(values)
                    vals[k] = (xv + step * v).astype(xv.dtype)
                    fp = loss(vals)
                    vals[k] = (xv - step * v).astype(xv.dtype)
                    fm = loss(vals)
                    # What was actually perturbed (float32 rounding of x ± step·v):
                    num = (fp - fm) / (2 * step)
                    ana = float(np.sum(g.astype("float64") * v))
                    _close_scalar(ana, num, float(np.sum(np.abs(g * v))), rtol, atol,
                                  f"<d{output.name}/d{x.name}, v{r}>")
    return h


def check_jacobian(output: te.Tensor, input: te.Tensor, *, rtol: Optional[float] = None,
                   atol: Optional[float] = None, eps: Optional[float] = None,
                   gens: Optional[Mapping] = None, seed: int = 0, jac: te.Tensor = None):
    """The full Jacobian (head=None, shape output.shape + input.shape) against central differences
    of the forward output, both from one compiled module.  `jac` overrides ad.jacobian's tensor."""
    jac = ad.jacobian(output, input) if jac is None else jac
    params = placeholders([output])
    fn = ad.build([output, jac], params)
    dtype = str(output.dtype)
    d_rtol, d_atol, d_eps = default_tols(dtype)
    rtol, atol, eps = rtol or d_rtol, atol or d_atol, eps or d_eps
    rng = np.random.default_rng(seed)
    values = make_values(params, rng, gens)
    k = [i for i, p in enumerate(params) if p.op.same_as(input.op)][0]
    fwd, J = fn(*values)
    out_shape, in_shape = tuple(fwd.shape), tuple(values[k].shape)
    assert J.shape == out_shape + in_shape, f"Jacobian shape {J.shape}, expected {out_shape + in_shape}"
    num = np.zeros(out_shape + in_shape, "float64")
    xv = values[k]
    for idx in np.ndindex(*in_shape):
        vals = list(values)
        for sign in (1, -1):
            p = xv.copy()
            p[idx] = p[idx] + sign * eps
            vals[k] = p
            num[(Ellipsis,) + idx] += sign * fn(*vals)[0].astype("float64")
    num /= 2 * eps
    np.testing.assert_allclose(J.astype("float64"), num, rtol=rtol,
                               atol=atol + rtol * float(np.max(np.abs(num), initial=0.0)),
                               err_msg=f"Jacobian of {output.name} w.r.t. {input.name}")
    return J


def run_poisoned(fn, *arrays) -> list:
    """Call a compiled module (`ad.build`) like `fn(*arrays)`, but with every float output buffer
    filled with NaN first, so that elements the kernel never writes show up as NaN instead of
    whatever the allocator left there (which is often, but not reliably, zero)."""
    args = fn.prepare(*arrays)
    n = len(fn.inputs)
    for a in args[n:]:
        dtype = str(a.dtype)
        if dtype.startswith("float"):
            a.copyfrom(np.full(tuple(a.shape), np.nan, dtype=dtype))
    fn.executable(*args)
    values = TensorMap([*zip(fn.inputs, (a.numpy() for a in args[:n])),
                        *((t, o.numpy()) for t, o in zip(fn.outputs, args[n:]))])
    result = [np.array(values[t]) for t in fn.requested]
    return result[0] if fn.single else result
