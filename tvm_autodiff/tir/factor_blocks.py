"""TIR pass: expensive j-invariant factors of matmul-like sums get blocks of their own.

Differentiation inlines elementwise gradients into the matmuls that consume them: the input
gradient of softmax(X·Wᵀ) is a sum C[i, j] += a(i, k) · b(k, j) whose factor `a` holds the
softmax gradient (exp and three loads).  In the register-tiled matmul plan, `a` would be
recomputed for every tile of j columns.  The rewrite

    C[.., j] += a(v) · b(.., j)        (a does not read j)
      ==>
    F[v] = a(v);    C[.., j] += F[v] · b(.., j)

computes F once per element, vectorized, in a block of its own.  It applies when `a` is expensive
(a call in nodes.EXPENSIVE, or three or more loads) or reads b's buffer (Xᵀ·diag(s)·X, where
packing b's column panel alone would copy all of X per column tile).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tvm import s_tir, tirx

from .nodes import (LOAD_TYPE, canonical_nest, fresh_vars, has_expensive_call, is_true, loads,
                    loop_nest, peel_loops, rename, root_statements, uses, with_root_body)


@dataclass(frozen=True)
class _Product:
    """A sum-reduction update C[.., j] = C[.., j] + a · b, with `a` free of j."""
    a: object
    b: object
    a_first: bool        # the product is written a * b (else b * a)
    own_first: bool      # the sum is written C[..] + a*b (else a*b + C[..])


def _matmul_product(block) -> Optional[_Product]:
    """The `_Product` of a reduction block's store C[.., j] += x · y where exactly one of x, y
    reads C's last index j (a plain variable); None for other blocks."""
    store = block.body
    if block.init is None or not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
        return None
    value, out = store.value, store.buffer
    own = lambda e: isinstance(e, LOAD_TYPE) and e.source.same_as(out)   # noqa: E731
    rhs = value.b if own(value.a) else value.a if own(value.b) else None
    if not isinstance(rhs, tirx.Mul) or not store.indices or not isinstance(store.indices[-1], tirx.Var):
        return None
    jvar = store.indices[-1]
    uses_j = [uses(rhs.a, jvar), uses(rhs.b, jvar)]
    if uses_j.count(True) != 1:
        return None
    a, b = (rhs.b, rhs.a) if uses_j[0] else (rhs.a, rhs.b)
    return _Product(a, b, not uses_j[0], own(value.a))


def _worth_a_block(p: _Product, out) -> bool:
    """The module docstring's condition on `a`, and `a` must not read the output."""
    a_loads, b_loads = loads(p.a), loads(p.b)
    aliased = any(l.source.same_as(m.source) for l in a_loads for m in b_loads)
    return ((has_expensive_call(p.a) or len(a_loads) >= 3 or aliased)
            and not any(l.source.same_as(out) for l in a_loads) and bool(b_loads))


def _factor_axes(block, a) -> list:
    """The iter vars that `a` reads, ordered for F's layout: last a reduction iterator, so each row
    of the matmul's register tile streams F contiguously; then the one indexing other than the
    last dimension of the fewest loads in `a` (then the last dimension of the most), so the block
    computing F reads contiguously along it."""
    a_loads = loads(a)
    used = [iv for iv in block.iter_vars if uses(a, iv.var)]

    def rank(iv):
        strided = sum(any(uses(x, iv.var) for x in l.indices[:-1]) for l in a_loads)
        return (iv.iter_type == tirx.IterVar.CommReduce, -strided,
                sum(bool(l.indices) and uses(l.indices[-1], iv.var) for l in a_loads))

    if not used:
        return []
    inner = max(used, key=rank)
    return [iv for iv in used if not iv.same_as(inner)] + [inner]


def _regions(ivs, name, body, buffer_map, init=None):
    """(reads, writes): the access regions of a block over `ivs` with `body`."""
    return s_tir.analysis.get_sblock_read_write_region(
        s_tir.SBlock(ivs, [], [], name, body, init), buffer_map)


def _factor_nest(block, a, used, buffer_map):
    """(F's buffer, the loop nest of the block computing F[used] = a)."""
    factor = tirx.decl_buffer([iv.dom.extent for iv in used], str(a.ty.dtype),
                              name=block.name_hint + "_factor")
    fresh = fresh_vars(used)
    f_ivs = [tirx.IterVar(iv.dom, fresh[iv.var], tirx.IterVar.DataPar) for iv in used]
    f_body = tirx.BufferStore(factor, rename(a, fresh), [fresh[iv.var] for iv in used])
    reads, writes = _regions(f_ivs, block.name_hint + "_factor", f_body, {**buffer_map, factor: factor})
    f_block = s_tir.SBlock(f_ivs, reads, writes, block.name_hint + "_factor", f_body)
    lvs = [tirx.Var(iv.var.name + "_f", iv.var.ty.dtype) for iv in used]
    nest = loop_nest(s_tir.SBlockRealize(lvs, tirx.const(True, "bool"), f_block),
                     [(lv, iv.dom.extent) for iv, lv in zip(used, lvs)])
    return factor, nest


def _reading_factor(realize, loops, p: _Product, factor, used, buffer_map):
    """The matmul's loop nest with its update reading F[used] in place of `a`."""
    block = realize.block
    store, out = block.body, block.body.buffer
    load = tirx.BufferLoad(factor, [iv.var for iv in used])
    product = tirx.Mul(load, p.b) if p.a_first else tirx.Mul(p.b, load)
    value = tirx.Add(store.value.a, product) if p.own_first else tirx.Add(product, store.value.b)
    new_store = tirx.BufferStore(out, value, list(store.indices))
    reads, _ = _regions(list(block.iter_vars), block.name_hint, new_store,
                             {**buffer_map, factor: factor}, block.init)
    reads = [r for r in reads if not r.source.same_as(out)]
    new_block = s_tir.SBlock(list(block.iter_vars), reads, list(block.writes), block.name_hint,
                             new_store, block.init, [], [], dict(block.annotations))
    nest = s_tir.SBlockRealize(list(realize.iter_values), realize.predicate, new_block)
    for l in reversed(loops):
        nest = tirx.For(l.loop_var, l.min, l.extent, l.kind, nest)
    return nest


def _hoisted(stmt, buffer_map):
    """([F's nest, the matmul's nest], F's buffer) for a top-level matmul nest whose factor is
    worth a block (module docstring); None otherwise."""
    loops, s = peel_loops(stmt)
    if not isinstance(s, s_tir.SBlockRealize):
        return None
    block = s.block
    if (block.alloc_buffers or block.match_buffers or not is_true(s.predicate)
            or not canonical_nest(loops, s)
            or not all(isinstance(iv.dom.extent, tirx.IntImm) for iv in block.iter_vars)):
        return None
    product = _matmul_product(block)
    if product is None or not _worth_a_block(product, block.body.buffer):
        return None
    used = _factor_axes(block, product.a)
    if not used:
        return None
    factor, f_nest = _factor_nest(block, product.a, used, buffer_map)
    return [f_nest, _reading_factor(s, loops, product, factor, used, buffer_map)], factor


def hoist_invariant_factors(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the expensive factors of matmul-like reductions computed by blocks of their own
    (module docstring).  Functions without such blocks come back unchanged."""
    stmts = root_statements(func)
    if stmts is None:
        return func
    root = func.body.block
    # In 0.27 a buffer is itself the variable that the access-region analysis maps.
    buffer_map = {b: b for b in list(func.params) + list(root.alloc_buffers)}
    out, allocs = [], list(root.alloc_buffers)
    for st in stmts:
        hoisted = _hoisted(st, buffer_map)
        if hoisted is None:
            out.append(st)
        else:
            out += hoisted[0]
            allocs.append(hoisted[1])
    if len(allocs) == len(root.alloc_buffers):
        return func
    return with_root_body(func, tirx.SeqStmt(out), allocs)
