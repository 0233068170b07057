"""Zero elimination for sum reductions:  Σ_k select(c(i, k), v(i, k), 0)  ->  cheap gathers.

For one reduction Y[i] = Σ_{k ∈ K} s(i, k):

1. split:   s = Σ_n t_n (monomials), t_n = select(c_n, v_n, 0) (nonzeroness), and each c_n into
            disjoint conjunctions, so Y = Σ_n Σ_k [c_n] v_n; terms with equal conditions are merged
            (`split_terms`).
2. solve:   the equalities of c_n among the k and the outer variables i (Smith normal form):
            k = A·i + B·t + b on the lattice of solutions, with fresh integer variables t;
            an unsolvable system makes the term zero (`solve_term`).
3. bound:   the other atoms of c_n plus the ranges of the substituted k form a Presburger set of
            the remaining variables, with i as parameters (isl).  Its exact bounding box becomes
            the new reduce axes, deskewed to start at 0 (`deskew`); what the box misses stays as a
            select in the summand; conditions on i alone are lifted out:  select(c(i), Σ_k' …, 0).
            (A window whose only conditions are in-bounds checks of one read sums a fixed box over
            a zero-padded tensor instead, `padding.py`; a bracket on tensor data may become a
            scatter-add, `scatter.py`.)  Steps 2 and 3 are `reduce_term`.
4. rebuild: a term with reduce axes left becomes its own tensor; Y is the elementwise sum of
            the terms.  A single unconditional term stays the reduction itself
            (`eliminate_reduction`).
5. phases:  a single sum whose result reads an output axis v only through v div s and v mod s
            (a strided window's adjoint) is eliminated once more for each phase v = s·q + p,
            where it is a stride-1 window, and Y interleaves the phases (`phase.py`).

Solving the Kronecker deltas of a gradient's index equations this way follows Urban & van der
Smagt, "Automatic Differentiation for Tensor Algebras" (arXiv 1711.01348), and TVM's
`src/te/autodiff/ad_simplify.cc`, removed from TVM together with `te.gradient`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Expr
from tvm.te.tensor import Operation

from tvm_autodiff.errors import ArgumentTypeError, check_bool, describe
from tvm_autodiff.ir.expr import TRUE, cast, free_vars, is_const, is_float, loads_only, reads, simplify, substitute
from tvm_autodiff.ir.graph import TensorMap, is_load, make_compute, rebuild, structural_key
from tvm_autodiff.ir.reductions import plain_sum

from . import linsolve
from .arguments import operation_set, tensor_list
from .domain import reduction_domain
from .nonzero import conjunction, conjuncts, disjoint_dnf, monomials, nonzero, same
from .padding import padded_window
from .phase import split_phases
from .scatter import scatter_add, scatter_atoms

@dataclass(frozen=True)
class Term:
    """select(cond, Σ_{axes} body, 0) in the outer variables; axes empty for an elementwise term.
    With `scatter = ((o, g), ...)`, the sum also carries the brackets [o == g] (scatter.py's
    `scatter_atoms`: the first g reads tensor data)."""
    cond: object
    axes: tuple      # ((var, extent), ...) deskewed reduce variables, ranging over [0, extent)
    body: object
    scatter: Optional[tuple[tuple[tirx.Var, object], ...]] = None


def _sparse_body(t: te.Tensor, memo: dict):
    """t's body with its sparse reads inlined, when t is elementwise and sparse; else None.

    Sparse means zero somewhere by construction: an index mask that reads no tensor,
    select(c(i), v(i), 0), such as the identity adjoint [p == i] of a Jacobian; or arithmetic on
    reads (no other calls) whose every nonzero case has an index equality, a Kronecker delta such
    as select(k == i, V[l, j], 0), which the adjoints of a gradient (Hessians) carry through whole
    chains of elementwise tensors.  Inlined into a reduction, the conditions reach the solver; the
    bodies are cheap to recompute where they are nonzero, and the full tensors are not built.

    Whether t is sparse depends on its reads being sparse, so the elementwise tensors above t are
    decided first, producers before consumers, with an explicit stack: a chain of hundreds of
    them (the adjoints of a sum of many terms) would exceed Python's recursion limit.  `memo`
    ({op: body or None}) holds every decision; shared between the reductions of one graph, each
    tensor is decided once, not once per reduction that reads it."""
    pending = [t.op]
    while pending:
        op = pending[-1]
        if op in memo:
            pending.pop()
        elif not _elementwise_loads(op):
            memo[op] = None
            pending.pop()
        else:
            todo = [r.op for r in reads(op.body[0]) if r.op not in memo]
            if todo:
                pending += todo
            else:
                memo[pending.pop()] = _sparse_of(op, memo)
    return memo[t.op]


def _elementwise_loads(op) -> bool:
    """Whether op is a single-output elementwise ComputeOp whose calls are all tensor reads."""
    return (isinstance(op, te.ComputeOp) and op.num_outputs == 1 and not isinstance(op.body[0], tirx.Reduce)
            and loads_only(op.body[0]))


def _sparse_of(op, memo: dict):
    """op's body with its sparse reads inlined if op is sparse (see `_sparse_body`), else None;
    every tensor op reads is decided in `memo` already."""
    body = _inline_sparse(op.body[0], memo)
    cond = nonzero(body).cond
    reads_nothing = not reads(op.body[0])
    # Only equalities of indices: one on tensor data (argmax[i] == k) says nothing about sparsity.
    delta = all(any(_is_index_eq(a) and not reads(a) for a in atoms) for atoms in disjoint_dnf(cond))
    return body if not is_const(cond, True) and (reads_nothing or delta) else None


def _inline_sparse(expr, memo: dict):
    def visit(c):
        body = _sparse_body(c.args[0], memo) if is_load(c) else None
        if body is None:
            return c
        return substitute(body, {iv.var: i for iv, i in zip(c.args[0].op.axis, c.args[1:])})
    return tvm_ffi.structural_map(expr, (Call, visit))


def inline_sparse(expr, memo: dict | None = None):
    """expr with every read of a sparse elementwise tensor (see `_sparse_body`) replaced by the
    tensor's body:  Σ_k T[f(i, k)] · v  ->  Σ_k select(c(f(i, k)), w(f(i, k)), 0) · v.  `memo`
    carries the decisions between calls on the same graph."""
    return _inline_sparse(expr, {} if memo is None else memo)


def split_terms(source) -> list[tuple[list, object]]:
    """[(atoms, value)]: source == Σ [∧ atoms] · value, the conjunctions being disjoint per
    monomial; values with the same conjunction are added up."""
    names, groups = TensorMap(), {}
    for m in monomials(source):
        nz = nonzero(m)
        for atoms in disjoint_dnf(nz.cond):
            key = structural_key(tirx.all(*atoms) if atoms else TRUE, names)
            if key in groups:
                groups[key] = (atoms, groups[key][1] + nz.value)
            else:
                groups[key] = (atoms, nz.value)
    return list(groups.values())


def _is_index_eq(a) -> bool:
    return isinstance(a, tirx.EQ) and not is_float(a.a)


@dataclass(frozen=True)
class Solved:
    """Σ_{red} [∧ conds] · value once the index equalities are solved (step 2): the solved reduce
    variables are substituted away, and their ranges became conditions on what replaced them.
    `red`: ((var, min, extent), ...), the unsolved reduce variables and the solver's fresh ones,
    which range over all integers (min and extent None): their bounds are in `conds` only."""
    conds: tuple
    value: object
    red: tuple


@dataclass(frozen=True)
class Box:
    """Σ_{axes} select(residual, body, 0): the bounding box of a domain as reduce axes from 0
    (step 3), `axes` being ((var, extent), ...) and body and residual in those variables."""
    axes: tuple
    body: object
    residual: object


def solve_term(atoms: list, value, red: list) -> Optional[Solved]:
    """Step 2: Σ_{k ∈ red} [∧ atoms] · value with the index equalities among the atoms solved for
    the reduce variables; None when they have no integer solution (the term is zero).

    red: [(var, min, extent)]."""
    eqs = [(a.a, a.b) for a in atoms if _is_index_eq(a)]
    conds = [a for a in atoms if not _is_index_eq(a)]
    sol = linsolve.solve_index_equations(eqs, [v for v, _, _ in red]) if eqs else None
    if sol is linsolve.UNSOLVABLE:
        return None
    if sol is None:
        return Solved(tuple(conds), value, tuple(red))
    sub = {v: cast(e, str(v.ty.dtype)) for v, e in dict(sol.substitution).items()}
    conds += list(sol.conditions) + [tirx.EQ(l, r) for l, r in sol.unused]
    conds += [c for v, lo, ext in red if v in sub for c in (sub[v] >= lo, sub[v] < lo + ext)]
    remaining = [(v, lo, ext) for v, lo, ext in red if v not in sub]
    remaining += [(t, None, None) for t in sol.fresh]
    return Solved(tuple(substitute(c, sub) for c in conds), substitute(value, sub), tuple(remaining))


def deskew(dom, value) -> Box:
    """The bounding box of `dom` (a `reduction_domain`) with each axis shifted to start at 0; an
    axis of extent 1 is replaced by its lower bound.  `value` and the residual follow."""
    shift, axes = {}, []
    for bound in dom.axes:
        extent = simplify(bound.extent)
        if is_const(extent, 1):
            shift[bound.var] = simplify(bound.lo)
        else:
            k = tirx.Var(bound.var.name, str(bound.var.ty.dtype))
            shift[bound.var] = simplify(bound.lo) + k
            axes.append((k, extent))
    return Box(tuple(axes), substitute(value, shift), substitute(dom.residual, shift))


def reduce_term(atoms: list, value, outer: list, red: list, scatter: bool = True) -> Optional[Term]:
    """Σ_{k ∈ red} [∧ atoms] · value as a Term with the smallest exact domain; None when zero.

    Steps 2 and 3 of the module docstring: solve the index equalities (`solve_term`); sum a
    window over a zero-padded tensor where that is exact and cheap (`padded_window`); else bound
    the rest with isl (`reduction_domain`) and sum over its box (`deskew`), either as a scatter
    (`_scatter_term`) or with the residual and the outer condition as masks (`_masked_term`).

    outer, red: [(var, min, extent)].  scatter: whether a data-dependent bracket [o == g(k)] may
    become a scatter-add (`Term.scatter`) instead of staying in the summand."""
    solved = solve_term(atoms, value, red)
    if solved is None:
        return None
    padded = padded_window(list(solved.conds), solved.value, outer, list(solved.red))
    if padded is not None:
        return _padded_term(*padded)
    dom = reduction_domain(list(solved.red), outer, conjunction(list(solved.conds)))
    if dom is None:
        # A fresh variable whose real bounds sit in atoms isl cannot read (e.g. select window
        # bounds, or a select extent) has no box.  Keep the term as it came, in the original
        # reduce variables.
        return Term(TRUE, tuple((v, ext) for v, _, ext in red), _in_original_box(atoms, value, red))
    if dom.empty:
        return None
    box = deskew(dom, solved.value)
    term = _scatter_term(box, dom.outer_cond, outer) if scatter else None
    return term if term is not None else _masked_term(box, dom.outer_cond)


def _padded_term(body, box: list) -> Term:
    """The Term of `padded_window`'s (body, box), its axes shifted to start at 0."""
    shift = {v: v + lo for v, lo, _ in box if not is_const(lo, 0)}
    return Term(TRUE, tuple((v, ext) for v, _, ext in box), simplify(substitute(body, shift)))


def _scatter_term(box: Box, outer_cond, outer: list) -> Optional[Term]:
    """The box's sum as a scatter-add Term when an atom of its residual is a data-dependent bracket
    [o == g] on an outer variable o (with it, the further brackets of `scatter_atoms`), and no
    extent of the box mentions a scattered variable; else None."""
    atoms = conjuncts(box.residual)
    hits = scatter_atoms(atoms, [v for v, _, _ in outer]) if box.axes else []
    hits = [h for h in hits if not any(h.var in free_vars(ext) for _, ext in box.axes)]
    if not hits or not reads(hits[0].gather):
        return None
    used = {h.index for h in hits}
    keep = tirx.all(simplify(outer_cond), *(a for n, a in enumerate(atoms) if n not in used))
    body = tirx.Select(keep, box.body, tirx.const(0, str(box.body.ty.dtype)))
    return Term(TRUE, box.axes, simplify(body), scatter=tuple((h.var, h.gather) for h in hits))


def _masked_term(box: Box, outer_cond) -> Term:
    """The box's sum with the residual as a select in the summand and the outer condition lifted
    out (step 3's  select(outer_cond, Σ_k' select(residual, v, 0), 0))."""
    body, axes = box.body, list(box.axes)
    zero = tirx.const(0, str(body.ty.dtype))
    if not is_const(box.residual, True):
        body = tirx.Select(box.residual, body, zero)
    outer_cond = simplify(outer_cond)
    # Loop extents cannot read tensors (create_prim_func fails), so data-dependent outer atoms
    # stay a select outside the sum.
    on_data = [a for a in conjuncts(outer_cond) if reads(a)]
    index_cond = conjunction([a for a in conjuncts(outer_cond) if not reads(a)]) if axes else TRUE
    if not is_const(index_cond, True):
        # Where the outer condition fails, shrink the axes to one (masked) point: the reduction
        # then costs nothing there, instead of summing a whole box that a select outside would
        # throw away.  Every axis, and to one point, not zero: isl's bounds hold only where the
        # domain is nonempty, and a reduction block whose loops run zero times never executes its
        # init, which would leave its output unwritten.
        axes = [(k, tirx.Select(index_cond, ext, tirx.const(1, str(ext.ty.dtype)))) for k, ext in axes]
        body = tirx.Select(index_cond, body, zero)
        outer_cond = conjunction(on_data)
    return Term(outer_cond, tuple(axes), simplify(body))


def _in_original_box(atoms: list, value, red: list):
    """Σ_{k ∈ red} [∧ atoms] · value with the reduce variables shifted to start at 0."""
    shift = {v: v + lo for v, lo, _ in red if not is_const(lo, 0)}
    body = tirx.Select(tirx.all(*atoms), value, tirx.const(0, str(value.ty.dtype))) if atoms else value
    return substitute(body, shift)


def _materialize(term: Term, op: te.ComputeOp, name: str) -> te.Tensor:
    """The term's reduction as a tensor over op's axes."""
    axis_vars = [iv.var for iv in op.axis]

    def body(*idx):
        vmap = dict(zip(axis_vars, idx))
        axes = [te.reduce_axis((0, substitute(ext, vmap)), name=k.name) for k, ext in term.axes]
        vmap.update({k: rv.var for (k, _), rv in zip(term.axes, axes)})
        return te.sum(substitute(term.body, vmap), axis=axes)

    return make_compute(name, [iv.dom.extent for iv in op.axis], body)


def _ceil_division(e):
    """(a + d - 1) // d if e is select(a % d == 0, a // d, a // d + 1) with a constant d > 0."""
    c, t, f = e.condition, e.true_value, e.false_value
    if not (isinstance(c, tirx.EQ) and is_const(c.b, 0) and isinstance(c.a, tirx.FloorMod)):
        return e
    a, d = c.a.a, c.a.b
    if not (isinstance(d, tirx.IntImm) and d.value > 0 and isinstance(t, tirx.FloorDiv)
            and isinstance(f, tirx.Add) and is_const(f.b, 1) and isinstance(f.a, tirx.FloorDiv)):
        return e
    if not all(same(x.a, a) and same(x.b, d) for x in (t, f.a)):
        return e
    return tirx.floordiv(a + (d.value - 1), d)


def ceil_divisions(expr):
    """expr with the ceiling-division idiom as one floor division (d > 0 a constant):

        select(a % d == 0, a // d, a // d + 1)  ->  (a + d - 1) // d

    topi writes adaptive-pool windows this way.  As a select the window bound is no Presburger
    term and the solver and isl give up; as a division isl reads it exactly."""
    return tvm_ffi.structural_map(expr, (tirx.Select, _ceil_division))


def eliminate_reduction(op: te.ComputeOp, bodies: list, scatter: bool = True, *,
                        memo: dict | None = None, phases: bool = True) -> list | te.Tensor | None:
    """New bodies for a single-output sum reduction op with bodies `bodies` (see the module
    docstring), or None when op is no such reduction or has no zeros to eliminate.  With
    `scatter`, sums over data-dependent brackets become scatter-add extern ops; a reduction that
    is one scatter comes back as that tensor, which replaces op (see `rebuild`).  `memo`, a dict
    shared by the calls on one graph (`eliminate_zeros` passes one), keeps `inline_sparse`'s
    decisions, so that the elementwise tensors above many reductions are inspected once.
    `phases`: whether a sum that reads an output axis through divisions by a stride is
    eliminated again per phase of that axis (step 5, `phase.py`)."""
    _check_reduction_arguments(op, bodies, scatter, memo)
    if not isinstance(op, te.ComputeOp) or op.num_outputs != 1 or not plain_sum(bodies[0]):
        return None
    r = bodies[0]
    outer = [(iv.var, iv.dom.min, iv.dom.extent) for iv in op.axis]
    red = [(rv.var, rv.dom.min, ceil_divisions(rv.dom.extent)) for rv in r.axis]
    split = split_terms(ceil_divisions(inline_sparse(r.source[0], memo)))
    if len(split) == 1 and not split[0][0]:
        return None  # no condition anywhere: already as cheap as it gets
    terms = [t for t in (reduce_term(atoms, value, outer, red, scatter) for atoms, value in split)
             if t is not None]
    dtype = str(r.source[0].ty.dtype)
    if len(terms) == 1 and terms[0].axes and is_const(terms[0].cond, True) and terms[0].scatter is None:
        t = terms[0]
        axes = [te.reduce_axis((0, ext), name=k.name) for k, ext in t.axes]
        result = [te.sum(substitute(t.body, {k: rv.var for (k, _), rv in zip(t.axes, axes)}), axis=axes)]
        split = split_phases(op, bodies, result, lambda o: eliminate_reduction(
            o, list(o.body), scatter, memo=memo, phases=False)) if phases else None
        return result if split is None else split
    # The scatter terms add into one tensor (scatter.py's `scatter_add`), which replaces op itself
    # when no other term is left.
    scatters = [(t.scatter, t.axes, t.body) for t in terms if t.scatter is not None]
    terms = [t for t in terms if t.scatter is None]
    if scatters and not terms:
        return scatter_add(op.name, op.axis, scatters, dtype)
    total = scatter_add(f"{op.name}_scatter", op.axis, scatters, dtype)(*[iv.var for iv in op.axis]) \
        if scatters else None
    for n, t in enumerate(terms):
        value = _materialize(t, op, f"{op.name}_t{n}")(*[iv.var for iv in op.axis]) if t.axes else t.body
        value = value if is_const(t.cond, True) else tirx.Select(t.cond, value, tirx.const(0, dtype))
        total = value if total is None else total + value
    return [tirx.const(0, dtype) if total is None else total]


def _check_reduction_arguments(op, bodies, scatter, memo) -> None:
    if not isinstance(op, Operation):
        raise ArgumentTypeError(f"eliminate_reduction() op must be a te operation (t.op), got {describe(op)}.")
    if not isinstance(bodies, (list, tuple, tvm_ffi.Array)) or len(bodies) != op.num_outputs \
            or not all(isinstance(b, Expr) for b in bodies):
        raise ArgumentTypeError(f"eliminate_reduction() bodies must be a list of {op.num_outputs} expressions, "
                                f"one per output of {op.name!r} (e.g. list(op.body)), got {describe(bodies)}.")
    check_bool("eliminate_reduction() scatter", scatter)
    if memo is not None and not isinstance(memo, dict):
        raise ArgumentTypeError(f"eliminate_reduction() memo must be None or a dict, got {describe(memo)}.")


def eliminate_zeros(tensors, scatter: bool = True, ops=None):
    """The graph of `tensors` (a tensor or a list) with every sum reduction rewritten by
    `eliminate_reduction`.  Values are unchanged; ops that do not change (and the subgraphs below
    them) stay the same objects, and tensors shared by several outputs stay shared.
    `scatter=False` keeps data-dependent gathers' adjoints as (differentiable) reductions;
    `ops`, if given, limits the rewrite to those ops (an iterable of `t.op`)."""
    items = tensor_list(tensors, "eliminate_zeros() tensors")
    check_bool("eliminate_zeros() scatter", scatter)
    only = None if ops is None else operation_set(ops, "eliminate_zeros() ops")
    memo: dict = {}
    out, _ = rebuild(items, lambda op, bodies: eliminate_reduction(op, bodies, scatter, memo=memo)
                     if only is None or op in only else None)
    return out[0] if isinstance(tensors, te.Tensor) else out
