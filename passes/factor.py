"""Factor hoisting: axes that only a cheap factor reads leave the tensor.

A body is a product of factors (and Iverson brackets).  Let D be the axes of tensor T that only
cheap factors read (loads and arithmetic, no calls such as exp), F the product of those factors
and G the product of the others, so that G does not read D:

    elementwise:   T[v] = F(v) · G(v)              ->  T[v] = F(v) · T'[v \\ D],  T'[u] = G(u)
    sum:           Y[v] = Σ_k F(v) · G(v, k)       ->  Y[v] = F(v) · Y'[v \\ D],  Y'[u] = Σ_k G(u, k)
                   (F reads no reduce variable k)

The small T' is materialized once; consumers read F(idx) · T'[idx \\ D] in place of T[idx], so the
factored form travels through chains of elementwise ops and sums until a sum runs over F's axes.
Elementwise tensors that become cheap this way (x·A' + x·B') are inlined into their consumers too.

Why: the adjoints of a gradient (Hessians, reverse over reverse) carry the seed's indices.  For
an MLP's first layer, d(W1 x)/dW1[a, b] = δ(l, a)·x[n, b] puts x[n, b] into every adjoint of the
second pass, which then has shape (h, d, n, h).  Hoisted, they have shape (h, n, h), and the
final sum is H[a, b, c, e] = Σ_n x[n, b]·S[a, n, c]·x[n, e].  The same rewrite computes the
logistic-regression weight s(1−s) once per sample instead of once per (sample, feature).

Pure expression rewriting: values are unchanged up to the rounding of reassociated products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tvm
import tvm_ffi
from tvm import sym, te, tirx
from tvm.ir import Call

from tvm_autodiff.ir.expr import free_vars, is_const, is_float, loads_only, substitute
from tvm_autodiff.ir.graph import TensorMap, compute_op, is_load, make_compute, rebuild, structural_key
from tvm_autodiff.ir.reductions import plain_sum

from .arguments import tensor_list
from .nonzero import conjunction, conjuncts

# Largest body (expression nodes) that is inlined into its consumers.
_INLINE_NODES = 48


@dataclass(frozen=True)
class Product:
    """select(∧ conds, Π values, 0), or Π values without conds."""
    conds: tuple
    values: tuple

    def expr(self, dtype: str):
        value = _multiply(self.values, dtype)
        if not self.conds:
            return value
        return tirx.Select(conjunction(list(self.conds)), value, tirx.const(0, dtype))


def _multiply(values, dtype: str):
    out = None
    for v in values:
        out = v if out is None else out * v
    return tirx.const(1, dtype) if out is None else out


def _take_common(xs: tuple, ys: tuple, names: TensorMap) -> tuple[list, list, list]:
    """(common, xs - common, ys - common) as multisets under structural equality."""
    rest_y = list(ys)
    keys_y = [structural_key(y, names) for y in rest_y]
    common, rest_x = [], []
    for x in xs:
        k = structural_key(x, names)
        if k in keys_y:
            n = keys_y.index(k)
            common.append(x)
            del rest_y[n], keys_y[n]
        else:
            rest_x.append(x)
    return common, rest_x, rest_y


def product(e, names: Optional[TensorMap] = None) -> Product:
    """e as a Product:  a·b -> factors of a and b;  select(c, a, 0) -> [c] and the factors of a;
    a ± b -> the common factors (and brackets) of a and b times (a' ± b');  else e itself."""
    names = TensorMap() if names is None else names
    dtype = str(e.ty.dtype)
    if isinstance(e, tirx.Mul) and not dtype.startswith("bool"):
        a, b = product(e.a, names), product(e.b, names)
        return Product(a.conds + b.conds, a.values + b.values)
    if isinstance(e, tirx.Select) and is_const(e.false_value, 0):
        a = product(e.true_value, names)
        return Product(tuple(conjuncts(e.condition)) + a.conds, a.values)
    if isinstance(e, (tirx.Add, tirx.Sub)) and is_float(dtype):
        a, b = product(e.a, names), product(e.b, names)
        conds, ca, cb = _take_common(a.conds, b.conds, names)
        values, va, vb = _take_common(a.values, b.values, names)
        if not conds and not values:
            return Product((), (e,))
        ra, rb = Product(tuple(ca), tuple(va)).expr(dtype), Product(tuple(cb), tuple(vb)).expr(dtype)
        return Product(tuple(conds), tuple(values) + (type(e)(ra, rb),))
    return Product((), (e,))


def _nodes(e) -> int:
    count = [0]
    tvm_ffi.structural_walk(e, (tvm.ir.Expr, lambda _: count.__setitem__(0, count[0] + 1)))
    return count[0]


def split_factors(p: Product, axes: list, fixed: set) -> tuple[set, Product, Product]:
    """(D, F, G) with p = F · G: D the axes (not in `fixed`) that only cheap factors read,
    F the factors that read D, G the rest."""
    items = [(c, True) for c in p.conds] + [(v, False) for v in p.values]
    used = [free_vars(x) for x, _ in items]
    dropped = {v for v in axes if v not in fixed and
               all(loads_only(x) and not (u & fixed) for (x, _), u in zip(items, used) if v in u)}
    f, g = ([], []), ([], [])
    for (x, is_cond), u in zip(items, used):
        side = f if u & dropped else g
        side[0 if is_cond else 1].append(x)
    return dropped, Product(tuple(f[0]), tuple(f[1])), Product(tuple(g[0]), tuple(g[1]))


class _Hoister:
    """The rewrite callback for `rebuild`; `inline` maps each rewritten op to the body that its
    consumers read instead of its output (over the op's own axis variables)."""

    def __init__(self):
        self.inline = {}
        self.rewritten = []   # ops whose bodies this pass wrote (cores, hoisted and inlined ops)

    def read_inlined(self, expr, reads: Optional[int] = None):
        """expr with its loads of inlined ops replaced by their bodies, except, in a sum of
        `reads` iterations, those of ops with fewer elements whose body is not a product: there
        no factor could leave the sum, which would evaluate the body several times per element
        (a convolution's gradient reads its head once per input channel and kernel tap; a
        training batch norm makes that head dX' + c[channel]), where the materialized tensor is
        computed once."""
        def visit(c):
            if not is_load(c) or c.args[0].op not in self.inline:
                return c
            op = c.args[0].op
            body = self.inline[op]
            if reads is not None and reads > (_volume(op.axis) or reads) and _factors(body) < 2:
                return c
            return substitute(body, {iv.var: i for iv, i in zip(op.axis, c.args[1:])})
        return tvm_ffi.structural_map(expr, (Call, visit))

    def __call__(self, op: te.ComputeOp, bodies: list):
        reads = _volume([*op.axis, *op.reduce_axis]) if isinstance(bodies[0], tirx.Reduce) else None
        new = [self.read_inlined(b, reads) for b in bodies]
        changed = any(not n.same_as(b) for n, b in zip(new, bodies))
        if op.num_outputs == 1:
            hoisted = self.hoist(op, new[0], changed)
            if hoisted is not None:
                return hoisted
            if changed:
                out = compute_op(op.name, op.tag, op.attrs, op.axis, new).output(0)
                self.rewritten.append(out.op)
                return out
        return new if changed else None

    def hoist(self, op: te.ComputeOp, body, read_inlined: bool) -> Optional[te.Tensor]:
        axes = [iv.var for iv in op.axis]
        dtype = str(body.ty.dtype)
        if not isinstance(body, tirx.Reduce) and read_inlined and loads_only(body) and _nodes(body) <= _INLINE_NODES:
            return self.replace(op, body)
        if not is_float(dtype):
            return None   # only real arithmetic is worth it (and a bool product is no Mul)
        if isinstance(body, tirx.Reduce):
            if not plain_sum(body):
                return None
            # Axes in a reduce range stay: the range is evaluated per output point.
            fixed = {v for rv in body.axis for v in {rv.var} | free_vars(rv.dom.min) | free_vars(rv.dom.extent)}
            dropped, f, g = split_factors(product(body.source[0]), axes, fixed)
            g_expr = g.expr(dtype)
            make = lambda vmap: _resum(body, g_expr, vmap)   # noqa: E731
        else:
            dropped, f, g = split_factors(product(body), axes, set())
            g_expr = g.expr(dtype)
            if loads_only(g_expr):
                return None   # T is cheap as it is; a core would only be another copy
            make = lambda vmap: substitute(g_expr, vmap)   # noqa: E731
        # F is recomputed wherever T is read, so it must stay small.
        f_expr = f.expr(dtype)
        if not dropped or _nodes(f_expr) > _INLINE_NODES:
            return None
        return self.replace(op, f_expr * self.core(op, dropped, make))

    def core(self, op: te.ComputeOp, dropped: set, fbody):
        """The load T'[u] of the tensor T' over op's axes without `dropped`, T'[u] = fbody(u)."""
        kept = [iv for iv in op.axis if iv.var not in dropped]
        core = make_compute(f"{op.name}_core", [iv.dom.extent for iv in kept],
                            lambda *u: fbody(dict(zip([iv.var for iv in kept], u))))
        self.rewritten.append(core.op)
        return core(*[iv.var for iv in kept])

    def replace(self, op: te.ComputeOp, body) -> te.Tensor:
        out = compute_op(op.name, op.tag, op.attrs, op.axis, [body]).output(0)
        self.inline[out.op] = body
        self.rewritten.append(out.op)
        return out


def _factors(e) -> int:
    """How many factors `product` finds in e (brackets not counted: a padding's bracket is no
    factor that could leave a sum)."""
    return len(product(e).values)


def _volume(axes) -> Optional[int]:
    """An upper bound of the number of points of the iteration axes `axes`, outermost first (a
    window's extent may depend on outer axes: min(2, k) + 1 - max(0, k - 7)); None if one has
    no constant bound."""
    ana, n = sym.Analyzer(), 1
    for iv in axes:
        bound = ana.const_int_bound(iv.dom.extent).max_value
        if bound >= sym.ConstIntBound.POS_INF:
            return None
        n *= max(0, bound)
        ana.bind(iv.var, iv.dom)
    return n


def _resum(r: tirx.Reduce, source, vmap: dict):
    """Σ over fresh copies of r's reduce axes of `source`, with vmap applied."""
    fresh = [te.reduce_axis((substitute(rv.dom.min, vmap), substitute(rv.dom.extent, vmap)), name=rv.var.name)
             for rv in r.axis]
    vmap = {**vmap, **{rv.var: f.var for rv, f in zip(r.axis, fresh)}}
    return te.sum(substitute(source, vmap), axis=fresh)


def hoist(tensors: list, keep=frozenset()) -> tuple[list, list]:
    """(`hoist_factors` of the list `tensors`, the ops whose bodies it wrote).  Only those can
    hold new sums over Kronecker deltas for another round of zero elimination; the others would
    only be re-split (elimination is not idempotent on its own results).  The ops in `keep` (a
    set closed under inputs, such as a forward graph) stay as they are."""
    hoister = _Hoister()
    out, _ = rebuild(list(tensors), lambda op, bodies: None if op in keep else hoister(op, bodies))
    return out, hoister.rewritten


def hoist_factors(tensors):
    """The graph of `tensors` (a tensor or a list) with cheap factors hoisted out of elementwise
    ops and sums (see the module docstring).  Values are unchanged; shared tensors stay shared."""
    out, _ = hoist(tensor_list(tensors, "hoist_factors() tensors"))
    return out[0] if isinstance(tensors, te.Tensor) else out


__all__ = ["Product", "hoist", "hoist_factors", "product", "split_factors"]
