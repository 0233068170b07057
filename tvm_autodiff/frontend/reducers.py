"""The reducer rule table: the tangent of a reduction Y_v[i] = ⊕_k s_v(i, k), per combiner kind.

`REDUCER_RULES[kind](fwd, op, w, heads, seed)` gives the (head, tangent) terms that source w of
op's reduction contributes, kind being `reducer_kind(combiner, w)` (`tvm_autodiff.ir.reductions`).
The tangent is in op's own axis and reduce-axis variables, `seed` is the forward-mode seed of the
tensor reads (`rules.jvp`), and `fwd` builds the forward helper tensors once per consumer op:

- sum:      ∂Y = Σ_k ∂s(i, k)
- max/min:  PyTorch's conventions for ties.  With output axes (max(dim), max_pool),
            ∂Y = Σ_k [k == argmax_k s(i, k)] · ∂s(i, k), with a forward argmax tensor (ties go to the
            first index); over all axes, to a 0-d Y (x.max()), the tied extrema share it evenly:
            ∂Y = Σ_k [s(k) = Y] · ∂s(k) / #{k : s(k) = Y}, with a forward tie count (a NaN Y ties
            with the NaN elements).  Either costs about one forward pass;
- prod:     ∂Y = Σ_k Π_{k' ≠ k} s(i, k') · ∂s(i, k), the product of the others read off two forward
            tensors, the zero count Z[i] and the product P[i] of the nonzero factors:
            Z = 0: P / s;  Z = 1 and s = 0: P;  otherwise 0.  About one forward pass more, and
            no division by zero (PyTorch's prod backward does the same);
- selection (user comm_reducers whose every result is select(c, x_v, y_v) with one condition c,
            such as argmax pairs): Y_v = s_v(i, k*), so ∂Y_v = Σ_k [k == k*] · ∂s_v(i, k), with k*
            from a forward reduction by the same combiner that also carries the position;
- generic (other user comm_reducers): ∂Y_v = Σ_k Σ_w D_wv[i, k] · ∂s_w(i, k), where
            D_wv[i, k] = ∂Y_v / ∂s_w(i, k) comes from a reduction over the pair combiner
            ((x, dx), (y, dy)) -> (x ⊕ y, ∂⊕/∂x·dx + ∂⊕/∂y·dy).  Correct for any combiner; costs a
            reduction length more than the forward pass.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tvm
from tvm import sym, te, tirx

from tvm_autodiff.errors import DifferentiationError
from tvm_autodiff.ir.expr import TRUE, is_float, substitute
from tvm_autodiff.ir.graph import compute_op
from tvm_autodiff.ir.reductions import multi_reduce, reducer_kind, selection_condition

from .rules import const, jvp

# -- reduce domains ----------------------------------------------------------------------------------


def fresh_reduce_axes(axes: Sequence[tirx.IterVar]) -> list[tirx.IterVar]:
    """New reduce axes over the same ranges (a reduce axis belongs to one reduction)."""
    return [te.reduce_axis((iv.dom.min, iv.dom.min + iv.dom.extent), name=iv.var.name + "_r")
            for iv in axes]


def _uses(e, names: set) -> bool:
    return any(v in names for v in tvm.tirx.analysis.undefined_vars(e))


def reduce_box(op: te.ComputeOp) -> list[tuple]:
    """[(lo_r, extent_r)] per reduce axis r: a box that contains op's reduce domain for every output
    index i and does not depend on i.

    A reduce axis may range over [lo_r(i), hi_r(i)) (adaptive pooling).  Once the output axes become
    reduction variables themselves (in an adjoint, or in a forward helper over (i, k)), the domain
    must not depend on them: take the box [min_i lo_r(i), max_i hi_r(i)) and test membership
    `in_reduce_domain` in the summand, as an Iverson bracket."""
    out_vars = {iv.var for iv in op.axis}
    dom = {iv.var: sym.IntervalSet(iv.dom.min, iv.dom.min + iv.dom.extent - 1) for iv in op.axis}
    ana = sym.Analyzer()
    box = []
    for rv in op.reduce_axis:
        lo, hi = rv.dom.min, rv.dom.min + rv.dom.extent
        if _uses(lo, out_vars) or _uses(hi, out_vars):
            lo, hi = ana.int_set(lo, dom).min_value, ana.int_set(hi, dom).max_value
            if any(_uses(b, out_vars) or "inf" in str(b) for b in (lo, hi)):
                raise DifferentiationError(
                    f"cannot bound the domain of reduce axis {rv.var.name} of op {op.name!r}: "
                    f"[{rv.dom.min}, {rv.dom.min + rv.dom.extent}) over its output axes.")
        box.append((ana.simplify(lo), ana.simplify(hi - lo)))
    return box


def in_reduce_domain(op: te.ComputeOp, vmap: dict):
    """[k ∈ dom_k(i)] for the reduce axes whose domain depends on the output axes, with op's
    variables renamed by vmap; None when every domain is a constant box."""
    out_vars = {iv.var for iv in op.axis}
    conds = []
    for rv in op.reduce_axis:
        lo, hi = rv.dom.min, rv.dom.min + rv.dom.extent
        if _uses(lo, out_vars) or _uses(hi, out_vars):
            k = vmap.get(rv.var, rv.var)
            conds += [k >= substitute(lo, vmap), k < substitute(hi, vmap)]
    return tirx.all(*conds) if conds else None


# -- the rules ---------------------------------------------------------------------------------------


def _own_source(transform: Callable) -> Callable:
    """The rule of a kind whose value w depends on source w alone: the term
    (head_w, transform(fwd, op, w, ∂s_w)), none when head_w or ∂s_w is zero."""
    def rule(fwd: "ForwardTensors", op: te.ComputeOp, w: int, heads: Sequence, seed: Callable) -> list:
        h = heads[w]
        ds = None if h is None else jvp(op.body[0].source[w], seed)
        return [] if ds is None else [(h, transform(fwd, op, w, ds))]
    return rule


def _masked(cond, ds):
    return tirx.Select(cond, ds, const(0.0, ds))


def _generic(fwd: "ForwardTensors", op: te.ComputeOp, w: int, heads: Sequence, seed: Callable) -> list:
    """The terms D_wv · ∂s_w of the pair-combiner rule, one per value v with a head."""
    ds = jvp(op.body[0].source[w], seed)
    if ds is None:
        return []
    pair = fwd.pair_tensors(op, w)
    return [(h, pair[v] * ds) for v, h in enumerate(heads) if h is not None and v in pair]


# One rule per kind of `reducer_kind` (REDUCER_KINDS).
REDUCER_RULES: dict[str, Callable] = {
    "sum": _own_source(lambda fwd, op, w, ds: ds),
    "prod": _own_source(lambda fwd, op, w, ds: fwd.product_of_others(op, w) * ds),
    "max": _own_source(lambda fwd, op, w, ds: fwd.extremum_tangent(op, w, ds)),
    "min": _own_source(lambda fwd, op, w, ds: fwd.extremum_tangent(op, w, ds)),
    "selection": _own_source(lambda fwd, op, w, ds: _masked(fwd.is_selected(op), ds)),
    "generic": _generic,
}


def reduction_terms(fwd: "ForwardTensors", op: te.ComputeOp, heads: Sequence, seed: Callable) -> list:
    """[(head, tangent)] of the reduction op, source by source through `REDUCER_RULES`."""
    r0 = op.body[0]
    return [term for w in range(len(r0.source))
            for term in REDUCER_RULES[reducer_kind(r0.combiner, w)](fwd, op, w, heads, seed)]


# -- forward helper tensors --------------------------------------------------------------------------


class ForwardTensors:
    """The forward helper tensors of the rules (argmax positions, zero counts and products, pair
    derivatives), built once per consumer op and shared by all the tensors it reads."""

    def __init__(self):
        self._position: dict = {}
        self._ties: dict = {}
        self._prod: dict = {}
        self._pair: dict = {}

    def extremum_tangent(self, op: te.ComputeOp, v: int, ds):
        """The tangent of max/min value v (see the module docstring): to the first extremal position
        when op has output axes, shared among the tied extrema when op is 0-d."""
        if op.axis:
            return _masked(self.is_arg_extremum(op, v), ds)
        if (op, v) not in self._ties:
            self._ties[(op, v)] = _tie_count(op, v)
        count = tirx.Cast(str(ds.ty.dtype), self._ties[(op, v)]())
        return _masked(_is_tie(op.body[v].source[v], op.output(v)()), ds / count)

    def is_arg_extremum(self, op: te.ComputeOp, v: int):
        """[k == argmax_k s_v(i, k)], in op's variables, from a forward argmax tensor.  One linear
        index rather than one per axis: the equation reads tensor data, so no solver can use it
        anyway, and the forward reduction carries one value less per axis."""
        return self._at_position(op, v, lambda: _arg_extremum(op, v))

    def is_selected(self, op: te.ComputeOp):
        """[k == k*(i)] for a selection combiner, in op's variables (like `is_arg_extremum`)."""
        return self._at_position(op, "selected", lambda: _selected_position(op))

    def _at_position(self, op: te.ComputeOp, key, position: Callable[[], te.Tensor]):
        """[linear index of k == P[i]] for the forward position tensor P that `position()` builds
        (once per (op, key))."""
        if (op, key) not in self._position:
            self._position[(op, key)] = position()
        lin = _linear_index(op.reduce_axis, str(op.reduce_axis[0].var.ty.dtype))
        return lin == self._position[(op, key)](*[iv.var for iv in op.axis])

    def product_of_others(self, op: te.ComputeOp, v: int):
        """Π_{k' ≠ k} s_v(i, k') in op's variables (see the module docstring)."""
        key = (op, v)
        if key not in self._prod:
            self._prod[key] = _zero_count_and_product(op, v)
        zeros, product = (t(*[iv.var for iv in op.axis]) for t in self._prod[key])
        s = op.body[v].source[v]
        zero = const(0.0, s)
        only_zero = tirx.And(zeros == 1, s == zero)
        return tirx.Select(zeros == 0, product / s, tirx.Select(only_zero, product, zero))

    def pair_tensors(self, op: te.ComputeOp, w: int) -> dict:
        """{v: D_wv[i, k - min]} read expressions in op's variables."""
        key = (op, w)
        if key not in self._pair:
            self._pair[key] = _pair_derivatives(op, w)
        idx = [iv.var for iv in op.axis] + [rv.var - lo for rv, (lo, _) in zip(op.reduce_axis, reduce_box(op))]
        return {v: t(*idx) for v, t in self._pair[key].items()}


def _linear_index(axes: Sequence[tirx.IterVar], dtype: str):
    """The row-major position of the point `axes` in their box: it orders points lexicographically."""
    lin = tirx.const(0, dtype)
    for rv in axes:
        lin = lin * rv.dom.extent + (rv.var - rv.dom.min)
    return lin


# Reductions of at least this many points find their extremum's position as the first tie of the
# forward result (`_first_tie`), shorter ones (pooling windows) with one pair reduction
# (`_pair_position`): a (32, 64, 100, 100) 2x2 max-pool step is 15.7 ms with the pair and 18.4 ms
# with the tie (its extra pass over the input outweighs four scalar steps per output), a
# (2048, 2000) cross-entropy's row max 9 ms with the pair and under 1 ms with the tie.
LONG_REDUCTION = 64


def _arg_extremum(op: te.ComputeOp, v: int) -> te.Tensor:
    """Forward tensor l*[i]: the linear index (`_linear_index`) of the first position of the max/min
    Y_v[i] of op's source v over its reduce axes."""
    points = 1
    for _, extent in reduce_box(op):
        points *= extent.value if isinstance(extent, tirx.IntImm) else LONG_REDUCTION
    return (_first_tie if points >= LONG_REDUCTION else _pair_position)(op, v)


def _first_tie(op: te.ComputeOp, v: int) -> te.Tensor:
    """l*[i] = min_k { lin(k) : s_v(i, k) ties Y_v[i] } (`_is_tie`; none: the index type's max): a
    single-output min over the forward's result, which vectorizes like any reduction, where a
    reduction carrying the pair (value, position) stays scalar (docs/tvm-0.27.md, "vectorized
    multi-output reductions")."""
    red = fresh_reduce_axes(op.reduce_axis)
    idt = str(red[0].var.ty.dtype)
    s = substitute(op.body[v].source[v], {a.var: b.var for a, b in zip(op.reduce_axis, red)})
    y = op.output(v)(*[iv.var for iv in op.axis])
    first = te.min(tirx.Select(_is_tie(s, y), _linear_index(red, idt), tirx.max_value(idt)), axis=red)
    return compute_op(op.name + "_argext", "", None, op.axis, [first]).output(0)


def _pair_position(op: te.ComputeOp, v: int) -> te.Tensor:
    """l*[i] from one reduction with the combiner
        (x, lx) ⊕ (y, ly) = better(x, y) or (x == y and lx < ly) ? (x, lx) : (y, ly)."""
    r0 = op.body[v]
    red = list(op.reduce_axis)
    idt = str(red[0].var.ty.dtype)
    dtypes = [str(r0.source[v].ty.dtype), idt]
    lhs = [tirx.Var(f"x{c}", dt) for c, dt in enumerate(dtypes)]
    rhs = [tirx.Var(f"y{c}", dt) for c, dt in enumerate(dtypes)]
    better = lhs[0] > rhs[0] if reducer_kind(r0.combiner, v) == "max" else lhs[0] < rhs[0]
    pick = tirx.Or(better, tirx.And(lhs[0] == rhs[0], lhs[1] < rhs[1]))
    result = [tirx.Select(pick, a, b) for a, b in zip(lhs, rhs)]
    combiner = tirx.CommReducer(lhs, rhs, result, [r0.combiner.identity_element[v], tirx.max_value(idt)])

    new_red = fresh_reduce_axes(red)
    vmap = {a.var: b.var for a, b in zip(red, new_red)}
    sources = [substitute(r0.source[v], vmap), _linear_index(new_red, idt)]
    new_op = compute_op(op.name + "_argext", "", None, op.axis, multi_reduce(combiner, sources, new_red))
    return new_op.output(1)


def _is_tie(s, y):
    """isnan(y) ? isnan(s) : s == y, PyTorch's mask for x.max().  One select, not an Or that the
    passes would split into s == y and s != y && ..., because TVM's simplifier folds x != x to
    false and compiles `!=` as false when either side is NaN (tests/test_conventions.py)."""
    return tirx.Select(tirx.isnan(y), tirx.isnan(s), s == y)


def _tie_count(op: te.ComputeOp, v: int) -> te.Tensor:
    """Forward 0-d tensor #{k : s_v(k) ties Y_v} (int32) of the 0-d max/min op."""
    red = fresh_reduce_axes(op.reduce_axis)
    s = substitute(op.body[v].source[v], {a.var: b.var for a, b in zip(op.reduce_axis, red)})
    one, zero = tirx.const(1, "int32"), tirx.const(0, "int32")
    ties = te.sum(tirx.Select(_is_tie(s, op.output(v)()), one, zero), axis=red)
    return compute_op(op.name + "_ties", "", None, [], [ties]).output(0)


def _selected_position(op: te.ComputeOp) -> te.Tensor:
    """Forward tensor k*[i]: the linear index of the element that op's selection combiner picks,
    by the same combiner extended with a position component chosen by the same condition."""
    r0 = op.body[0]
    comb, red = r0.combiner, list(op.reduce_axis)
    idt = str(red[0].var.ty.dtype)
    lx, ly = tirx.Var("lx", idt), tirx.Var("ly", idt)
    combiner = tirx.CommReducer(list(comb.lhs) + [lx], list(comb.rhs) + [ly],
                                list(comb.result) + [tirx.Select(selection_condition(comb), lx, ly)],
                                list(comb.identity_element) + [tirx.max_value(idt)])
    new_red = fresh_reduce_axes(red)
    vmap = {a.var: b.var for a, b in zip(red, new_red)}
    sources = [substitute(s, vmap) for s in r0.source] + [_linear_index(new_red, idt)]
    new_op = compute_op(op.name + "_selected", "", None, op.axis, multi_reduce(combiner, sources, new_red))
    return new_op.output(len(sources) - 1)


def _zero_count_and_product(op: te.ComputeOp, v: int) -> tuple[te.Tensor, te.Tensor]:
    """Forward tensors Z[i] = #{k : s_v(i, k) = 0} (int32) and P[i] = Π_{k : s_v(i, k) ≠ 0} s_v(i, k)."""
    r0 = op.body[v]
    s = r0.source[v]
    zero, one = const(0.0, s), const(1.0, s)
    parts = [("_zeros", te.sum, lambda x: tirx.Select(x == zero, tirx.const(1, "int32"), tirx.const(0, "int32"))),
             ("_nonzero_prod", _PROD, lambda x: tirx.Select(x == zero, one, x))]
    out = []
    for suffix, reducer, f in parts:
        red = fresh_reduce_axes(op.reduce_axis)
        x = substitute(s, {a.var: b.var for a, b in zip(op.reduce_axis, red)})
        out.append(compute_op(op.name + suffix, "", None, op.axis, [reducer(f(x), axis=red)]).output(0))
    return out[0], out[1]


_PROD = te.comm_reducer(lambda x, y: x * y, lambda t: tirx.const(1, t), name="prod")


def _pair_combiner(comb: tirx.CommReducer, floats: list) -> tirx.CommReducer:
    """The pair combiner ((x, dx), (y, dy)) -> (x ⊕ y, ∂⊕/∂x·dx + ∂⊕/∂y·dy) of `comb`, with a
    tangent component for each float component in `floats`."""
    dx = {c: tirx.Var(f"d{comb.lhs[c].name}", str(comb.lhs[c].ty.dtype)) for c in floats}
    dy = {c: tirx.Var(f"d{comb.rhs[c].name}", str(comb.rhs[c].ty.dtype)) for c in floats}
    tangent_of = {**{comb.lhs[c]: dx[c] for c in floats}, **{comb.rhs[c]: dy[c] for c in floats}}
    tangents = []
    for c in floats:
        t = jvp(comb.result[c], tangent_of.get)
        tangents.append(const(0.0, comb.result[c]) if t is None else t)
    return tirx.CommReducer(list(comb.lhs) + [dx[c] for c in floats],
                            list(comb.rhs) + [dy[c] for c in floats],
                            list(comb.result) + tangents,
                            list(comb.identity_element) + [const(0.0, dx[c]) for c in floats])


def _pair_derivatives(op: te.ComputeOp, w: int) -> dict:
    """{v: D_wv} with D_wv[i, k] = ∂Y_v[i] / ∂s_w(i, k), by a reduction over the pair combiner."""
    r0 = op.body[0]
    comb, n = r0.combiner, len(r0.source)
    floats = [c for c in range(n) if is_float(r0.source[c])]
    combiner = _pair_combiner(comb, floats)
    red = list(op.reduce_axis)
    out_axes = list(op.axis)
    box = reduce_box(op)
    shape = [iv.dom.extent for iv in out_axes] + [ext for _, ext in box]

    def body(*ik):
        i, k = ik[:len(out_axes)], ik[len(out_axes):]
        # The reduce axes range over the box; outside op's own domain (for this i) the sources are
        # the combiner's identity with zero tangent, which leaves the reduction unchanged.
        new_red = [te.reduce_axis((lo, lo + ext), name=rv.var.name + "_r")
                   for rv, (lo, ext) in zip(red, box)]
        vmap = {**{a.var: b.var for a, b in zip(red, new_red)},
                **{a.var: b for a, b in zip(out_axes, i)}}
        here = tirx.all(*[rv.var - lo == kk for rv, (lo, _), kk in zip(new_red, box, k)]) if k else TRUE
        sources = [substitute(s, vmap) for s in r0.source]
        inside = in_reduce_domain(op, vmap)
        if inside is not None:
            sources = [tirx.Select(inside, s, e) for s, e in zip(sources, comb.identity_element)]
        sources += [tirx.Select(here, const(1.0, sources[c]), const(0.0, sources[c])) if c == w
                    else const(0.0, sources[c]) for c in floats]
        # TE needs every value of a multi-valued reduction in the op; D_w· are the tangent values.
        return tuple(multi_reduce(combiner, sources, new_red))

    tensors = te.compute(shape, body, name=op.name + "_pair_d")
    tensors = tensors if isinstance(tensors, (list, tuple)) else [tensors]
    return dict(zip(floats, tensors[n:]))
