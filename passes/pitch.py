"""Row-pitch flattening: a 2-D window sum over rows of any width becomes a sum over one long row.

A sum whose summand A · B reads B (last two axes Hb x Wb, row pitch P = Wb) at B[.., p + e, r + f],
with p and r two variables that nothing else reads there, is a 1-D window over B's flat rows:
B[.., p + e, r + f] = Bf[.., j + e·P + f] with j = p·P + r.  Let J = ⌈n_p·P / ROW_MULTIPLE⌉ ·
ROW_MULTIPLE, and let Bq[.., t] = Bf[.., t] for t < Hb·P, 0 after it, be long enough for every read.

    output form (p, r the last two output axes; A reads neither, a convolution's forward):
        Y[.., p, r] = Σ_k A · B[.., p + e, r + f]
          ==>  Y'[.., j] = Σ_k A · Bq[.., j + e·P + f]  (j < J),   Y[.., p, r] = Y'[.., p·P + r]
    reduction form (p, r reduce variables that A reads as its last two indices, a weight gradient):
        Y[..] = Σ_{k, p, r} A[.., p, r] · B[.., p + e, r + f]
          ==>  Y[..] = Σ_{k, j < J} Aq[.., j] · Bq[.., j + e·P + f],
               Aq[.., j] = [j mod P < n_r ∧ j div P < n_p] · A[.., j div P, j mod P]

Why: the schedules vectorize the inner axis, and an image row of 28 or 14 (n_r not a multiple of
ROW_MULTIPLE) leaves ragged vectors, where the flat row (j) is whole vectors: the 3x3 convolution
at (16, 64, 28, 28) forward 6.5 -> 4.9 ms, its weight gradient 8.8 -> 7.1 ms (README, "How it
works").
Y' has P - n_r extra columns per row (cropped away); Aq's zeros there make the reduction form's
extra terms vanish.  Exact for finite values: an extra term multiplies a zero of Aq by the B
element the read wraps around to, a real element of B (or Bq's zero tail), so only an inf or NaN
in B turns a zero term into NaN, and such an element already makes the output it feeds
non-finite.  Pure graph rewriting; copies Bq (and Aq) are shared by every op that reads them the
same way.
"""
from __future__ import annotations

import math
from typing import Optional

import tvm
from tvm import sym, te, tirx

from tvm_autodiff.ir.expr import free_vars, substitute
from tvm_autodiff.ir.graph import compute_op, is_load, make_compute, rebuild
from tvm_autodiff.ir.reductions import plain_sum

from .arguments import tensor_list
from .phase import ROW_MULTIPLE

# Most extra work of the flat row (P / n_r): a 3x3 window on 14 columns pads them to 16 (1.14);
# on 7 columns to 9 (1.29) it would waste more than the whole vectors gain.
MAX_PITCH_WASTE = 1.2
# Least multiply-adds per element of the copies Aq and Bq (a convolution's 3x3 taps times its
# channels), so that making them is small next to the sum.
MIN_WORK_PER_COPY = 32


def _offset(idx, v, others: set):
    """e with idx = v + e and e free of `others` (and v), or None."""
    coefs = sym.detect_linear_equation(idx, [v])
    if len(coefs) != 2 or not (isinstance(coefs[0], tirx.IntImm) and coefs[0].value == 1):
        return None
    e = coefs[1]
    return None if free_vars(e) & (others | {v}) else e


def _loads(source) -> Optional[tuple]:
    """The two loads of a product A · B (in either order), or None."""
    if isinstance(source, tirx.Mul) and is_load(source.a) and is_load(source.b):
        return source.a, source.b
    return None


class _Flattener:
    """The rewrite callback for `rebuild`; `copies` shares Aq and Bq between ops."""

    def __init__(self):
        self.copies = {}

    def __call__(self, op: te.ComputeOp, bodies: list):
        if len(bodies) != 1 or not plain_sum(bodies[0]) or len(bodies[0].source) != 1:
            return None
        r = bodies[0]
        loads = _loads(r.source[0])
        ext = self._extents(op, r) if loads is not None else None
        if ext is None:
            return None
        for a, b in (loads, loads[::-1]):
            for form in (self._output_form, self._reduction_form):
                found = form(op, r, ext, a, b)
                if found is not None:
                    return found
        return None

    @staticmethod
    def _extents(op, r) -> Optional[dict]:
        """{var: constant extent} of op's axes and r's reduce variables (all from 0), or None."""
        ext = {}
        for iv in list(op.axis) + list(r.axis):
            if not (isinstance(iv.dom.min, tirx.IntImm) and iv.dom.min.value == 0
                    and isinstance(iv.dom.extent, tirx.IntImm)):
                return None
            ext[iv.var] = iv.dom.extent.value
        return ext

    def _window(self, b, p, r_, ext: dict):
        """(e, f, P, Hb, max e, max f) for the read b = B[.., p + e, r + f] inside B's rows, or
        None."""
        shape = b.args[0].shape
        if len(b.args) < 3 or not all(isinstance(d, tirx.IntImm) for d in shape[-2:]):
            return None
        *prefix, y, x = b.args[1:]
        if any(free_vars(i) & {p, r_} for i in prefix):
            return None
        e, f = _offset(y, p, {r_}), _offset(x, r_, {p})
        if e is None or f is None:
            return None
        ana = sym.Analyzer()
        for v, n in ext.items():
            ana.bind(v, tvm.ir.Range.from_min_extent(0, n))
        be, bf = ana.const_int_bound(e), ana.const_int_bound(f)
        hb, wb = shape[-2].value, shape[-1].value
        if be.min_value < 0 or bf.min_value < 0 or be.max_value + ext[p] > hb or bf.max_value + ext[r_] > wb:
            return None   # the window leaves B's rows: padding is the elimination's to make
        return e, f, wb, hb, be.max_value, bf.max_value

    def _pays(self, n_p, n_r, pitch) -> Optional[int]:
        """J, or None when the row is whole vectors already or the flat row wastes too much."""
        if n_r % ROW_MULTIPLE == 0 or pitch > MAX_PITCH_WASTE * n_r:
            return None
        return -(-n_p * pitch // ROW_MULTIPLE) * ROW_MULTIPLE

    def _flat_b(self, b, pitch, hb, length):
        """Bq[.., t] over B's leading axes and t < length (shared)."""
        t = b.args[0]
        key = ("B", t.op, t.value_index, length)
        if key not in self.copies:
            lead = list(t.shape[:-2])
            self.copies[key] = make_compute(
                f"{t.op.name}_rows", lead + [tirx.const(length, "int32")],
                lambda *i: tirx.Select(i[-1] < hb * pitch,
                                       t(*i[:-1], tirx.floordiv(i[-1], pitch), tirx.floormod(i[-1], pitch)),
                                       tirx.const(0, t.dtype)))
        return self.copies[key]

    def _flat_a(self, a, pitch, n_p, n_r, length):
        """Aq[.., j] over A's leading axes and j < length (shared)."""
        t = a.args[0]
        key = ("A", t.op, t.value_index, pitch, n_p, n_r, length)
        if key not in self.copies:
            lead = list(t.shape[:-2])

            def body(*i):
                y, x = tirx.floordiv(i[-1], pitch), tirx.floormod(i[-1], pitch)
                return tirx.Select(tirx.all(x < n_r, y < n_p), t(*i[:-1], y, x), tirx.const(0, t.dtype))
            self.copies[key] = make_compute(f"{t.op.name}_rows", lead + [tirx.const(length, "int32")], body)
        return self.copies[key]

    @staticmethod
    def _pays_copies(work: int, *copies) -> bool:
        """Whether `work` multiply-adds pay for copies of (load, length): the load's tensor's
        leading axes times the flat length, each."""
        lead = [load.args[0].shape[:-2] for load, _ in copies]
        if not all(isinstance(d, tirx.IntImm) for dims in lead for d in dims):
            return False   # a symbolic batch: the op's own extents are constant, its inputs' not
        size = sum(math.prod(d.value for d in dims) * length for dims, (_, length) in zip(lead, copies))
        return work >= MIN_WORK_PER_COPY * size

    def _plan(self, b, p, r_, ext: dict, copied_a):
        """(e, f, P, Hb, J, Bq's length) for flattening the read b over (p, r_), or None when the
        window leaves B's rows or the flat row or the copies (Bq, and Aq of `copied_a` when it
        is copied too) do not pay."""
        window = self._window(b, p, r_, ext)
        if window is None:
            return None
        e, f, pitch, hb, max_e, max_f = window
        rows = self._pays(ext[p], ext[r_], pitch)
        if rows is None:
            return None
        length = rows + max_e * pitch + max_f
        copies = [(b, length)] + ([(copied_a, rows)] if copied_a is not None else [])
        if not self._pays_copies(math.prod(ext.values()) * pitch // ext[r_], *copies):
            return None
        return e, f, pitch, hb, rows, length

    def _output_form(self, op, r, ext: dict, a, b):
        if len(op.axis) < 3:
            return None
        p, r_ = op.axis[-2].var, op.axis[-1].var
        if free_vars(a) & {p, r_}:
            return None
        plan = self._plan(b, p, r_, ext, copied_a=None)
        if plan is None:
            return None
        e, f, pitch, hb, rows, length = plan
        bq = self._flat_b(b, pitch, hb, length)
        *prefix, _, _ = b.args[1:]
        lead = [iv.var for iv in op.axis[:-2]]

        def flat_body(*i):
            j = i[-1]
            vmap = dict(zip(lead, i[:-1]))
            fresh = [te.reduce_axis((0, ext[rv.var]), name=rv.var.name) for rv in r.axis]
            vmap.update((rv.var, nv.var) for rv, nv in zip(r.axis, fresh))
            read = bq(*[substitute(x, vmap) for x in prefix], j + substitute(e * pitch + f, vmap))
            return te.sum(substitute(a, vmap) * read, axis=fresh)
        flat = make_compute(f"{op.name}_rows", [iv.dom.extent for iv in op.axis[:-2]] + [tirx.const(rows, "int32")],
                            flat_body)
        crop = flat(*lead, p * pitch + r_)
        return compute_op(op.name, op.tag, op.attrs, op.axis, [crop]).output(0)

    def _reduction_form(self, op, r, ext: dict, a, b):
        if len(a.args) < 3:
            return None
        p, r_ = a.args[-2], a.args[-1]
        reduce_vars = [rv.var for rv in r.axis]
        if not (isinstance(p, tirx.Var) and isinstance(r_, tirx.Var) and not p.same_as(r_)
                and any(p.same_as(v) for v in reduce_vars) and any(r_.same_as(v) for v in reduce_vars)):
            return None
        if any(free_vars(i) & {p, r_} for i in a.args[1:-2]):
            return None
        plan = self._plan(b, p, r_, ext, copied_a=a)
        if plan is None:
            return None
        e, f, pitch, hb, rows, length = plan
        aq = self._flat_a(a, pitch, ext[p], ext[r_], rows)
        bq = self._flat_b(b, pitch, hb, length)
        kept = [rv for rv in r.axis if not rv.var.same_as(p) and not rv.var.same_as(r_)]
        fresh = [te.reduce_axis((0, ext[rv.var]), name=rv.var.name) for rv in kept]
        j = te.reduce_axis((0, rows), name=f"{p.name}_{r_.name}")
        vmap = {rv.var: nv.var for rv, nv in zip(kept, fresh)}
        *a_prefix, _, _ = a.args[1:]
        *b_prefix, _, _ = b.args[1:]
        read_a = aq(*[substitute(x, vmap) for x in a_prefix], j.var)
        read_b = bq(*[substitute(x, vmap) for x in b_prefix], j.var + substitute(e * pitch + f, vmap))
        return [te.sum(read_a * read_b, axis=fresh + [j])]


def flatten_rows(tensors):
    """The graph of `tensors` (a tensor or a list) with 2-D window sums over rows that are not
    whole vectors flattened to one row (module docstring).  Values are unchanged for finite
    inputs; shared tensors stay shared."""
    items = tensor_list(tensors, "flatten_rows() tensors")
    out, _ = rebuild(items, _Flattener())
    return out[0] if isinstance(tensors, te.Tensor) else out


__all__ = ["flatten_rows"]
