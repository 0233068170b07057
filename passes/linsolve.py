"""Integer solutions of linear index equations, for zero elimination.

A gradient term ``sum_k select(A k == b, value, 0)`` only contributes at the integer points of
``{k in Z^n : A k = b}``, where the right-hand sides ``b`` are outer terms (outer variables, tensor
loads, ...).  This module describes that set as

    k = P b + K f,   f in Z^(n - rank A) fresh,

valid exactly when the returned conditions on ``b`` hold, so the pass can replace the determined
reduction variables by affine expressions and keep only the free directions ``f`` as reductions.

The method is the Smith normal form: with unimodular ``U``, ``V`` and ``U A V = D`` diagonal,
the substitution ``k = V y`` turns ``A k = b`` into the decoupled system ``D y = U b``.
"""
from dataclasses import dataclass
from fractions import Fraction
from itertools import count
from math import gcd, lcm

import tvm
from tvm import tirx

from tvm_autodiff.ir.expr import cast

__all__ = ["UNSOLVABLE", "IntegerSolution", "IndexSolution", "smith_normal_form",
           "solve_affine_system", "solve_index_equations"]


class _Unsolvable:
    """Sentinel type: the system has no integer solution."""

    def __repr__(self):
        return "UNSOLVABLE"


UNSOLVABLE = _Unsolvable()


# ---------------------------------------------------------------- integer matrices

def _identity(n):
    return [[int(i == j) for j in range(n)] for i in range(n)]


def _add_row(M, src, dst, c):
    """row_dst += c * row_src"""
    M[dst] = [a + c * s for a, s in zip(M[dst], M[src])]


def _add_col(M, src, dst, c):
    """col_dst += c * col_src"""
    for row in M:
        row[dst] += c * row[src]


def _swap_cols(M, a, b):
    for row in M:
        row[a], row[b] = row[b], row[a]


def _negate_col(M, j):
    for row in M:
        row[j] = -row[j]


def smith_normal_form(A):
    """Smith normal form ``(U, D, V)`` of an integer m x n matrix ``A`` (a list of rows).

    ``U`` (m x m) and ``V`` (n x n) are unimodular (integer, determinant +-1) and
    ``U A V = D`` is diagonal with ``D[0][0] | D[1][1] | ...``, all nonnegative; the nonzero
    diagonal entries come first and their count is the rank of ``A``.

    Pivoting: the entry of least absolute value in the remaining block is moved to the corner
    and the rest of its row and column is reduced by division with remainder; a nonzero
    remainder is a strictly smaller pivot for the next round.  A corner that does not divide the
    rest of the block gets an offending row added to its row, which again leaves a smaller
    remainder.  Unit pivots therefore clear their row and column in a single pass.
    """
    m, n = len(A), len(A[0]) if A else 0
    D, U, V = [list(map(int, row)) for row in A], _identity(m), _identity(n)
    for t in range(min(m, n)):
        while True:
            block = [(abs(D[i][j]), i, j) for i in range(t, m) for j in range(t, n) if D[i][j]]
            if not block:
                return U, D, V
            _, i, j = min(block)
            D[t], D[i], U[t], U[i] = D[i], D[t], U[i], U[t]
            _swap_cols(D, t, j)
            _swap_cols(V, t, j)
            p = D[t][t]
            for i in range(t + 1, m):
                q = D[i][t] // p
                _add_row(D, t, i, -q)
                _add_row(U, t, i, -q)
            for j in range(t + 1, n):
                q = D[t][j] // p
                _add_col(D, t, j, -q)
                _add_col(V, t, j, -q)
            if any(D[i][t] for i in range(t + 1, m)) or any(D[t][j] for j in range(t + 1, n)):
                continue
            bad = next((i for i in range(t + 1, m) for j in range(t + 1, n) if D[i][j] % p), None)
            if bad is None:
                break
            _add_row(D, bad, t, 1)
            _add_row(U, bad, t, 1)
        if D[t][t] < 0:
            D[t], U[t] = [-a for a in D[t]], [-a for a in U[t]]
    return U, D, V


def _kernel_echelon(K, width):
    """Column echelon form of the n x width kernel basis ``K`` by unimodular column operations.

    Rows are scanned bottom-up so that the last unknowns become the free ones.  Returns the new
    basis (same lattice) and the pivot row of each column.  Every pivot is positive and the
    entries left of it in its row are reduced modulo it, so at a pivot equal to 1 the whole row
    is the unit vector of that column: that unknown moves exactly with its fresh variable.
    """
    K, pivots = [row[:] for row in K], []
    for i in reversed(range(len(K))):
        c = len(pivots)
        if c == width:
            break
        # Euclid on the entries K[i][c:], by column operations, gathers their gcd into column c.
        while any(K[i][j] for j in range(c + 1, width)):
            j = min((j for j in range(c, width) if K[i][j]), key=lambda j: abs(K[i][j]))
            _swap_cols(K, c, j)
            for j in range(c + 1, width):
                _add_col(K, c, j, -(K[i][j] // K[i][c]))
        if K[i][c] == 0:
            continue
        if K[i][c] < 0:
            _negate_col(K, c)
        for j in range(c):
            _add_col(K, c, j, -(K[i][j] // K[i][c]))
        pivots.append(i)
    return K, pivots


# ---------------------------------------------------------------- int / PrimExpr arithmetic

def _lincomb(coeffs, terms):
    """sum c * t, skipping zero coefficients and literal 0 terms; works for int and PrimExpr."""
    acc = None
    for c, t in zip(coeffs, terms):
        if c == 0 or (isinstance(t, int) and t == 0):
            continue
        if acc is None:
            acc = t if c == 1 else t * c
        elif c > 0:
            acc = acc + (t if c == 1 else t * c)
        else:
            acc = acc - (t if c == -1 else t * -c)
    return 0 if acc is None else acc


def _floordiv(a, d):
    if d == 1:
        return a
    return a // d if isinstance(a, int) else tirx.floordiv(a, d)


def _normalize_condition(c, d):
    """Simplest equivalent of ``c . b == 0 (mod d)`` (d == 0: plain equality) as (c', d').

    Coefficients are reduced to symmetric residues modulo d and the common factor of the
    coefficients and d is divided out; None if the condition holds for every integer b.
    """
    if d:
        c = [v - d * ((2 * v + d) // (2 * d)) for v in c]
    g = gcd(d, *c)
    if g == 0 or d == g:
        return None
    c, d = [v // g for v in c], d // g
    sign = -1 if next(v for v in c if v) < 0 else 1
    return [sign * v for v in c], d


# ---------------------------------------------------------------- generic solver

@dataclass(frozen=True)
class IntegerSolution:
    """All integer solutions of ``A x = b``: ``x`` in terms of ``b`` and ``fresh`` integers.

    ``x[i]`` is ``floordiv(c_i . b, L_i) + K_i . fresh``; the division is exact whenever the
    ``conditions`` hold.  Each condition ``(e, d)`` means ``e == 0 (mod d)``, or ``e == 0`` when
    ``d == 0``.  ``x`` ranges over every solution as ``fresh`` ranges over Z^len(fresh).
    """
    x: tuple
    fresh: tuple
    conditions: tuple


def solve_affine_system(A, b, make_fresh):
    """Solve ``A x = b`` over the integers: ``A`` is m x n (m >= 1) integers, ``b`` m terms.

    The terms of ``b`` are ints or integer PrimExprs (anything with ``+``, ``-``, ``* int``).
    ``make_fresh(i)`` creates the fresh integer of one free direction; ``i`` is the index of
    the unknown that direction is attached to (its pivot row in the kernel echelon form).

    With ``U A V = D`` (Smith) and ``x = V y``: ``d_i y_i = (U b)_i``.  For ``i < rank``,
    ``y_i = (U b)_i / d_i`` needs ``(U b)_i == 0 (mod d_i)``; for ``i >= rank`` the rows read
    ``0 = (U b)_i`` and the ``y_i`` are free.  Hence ``x = P b + K f`` with the rational
    ``P = V[:, :r] D_r^-1 U[:r]`` and the kernel basis ``K = V[:, r:]``.  ``K`` is brought to
    column echelon form, and where an unknown has a unit pivot, ``P`` is shifted along ``K`` so
    that this unknown is exactly its fresh variable (integral shift: the row of ``P b`` is an
    integer whenever a solution exists).  Returns ``UNSOLVABLE`` when a condition is a false
    constant, otherwise an :class:`IntegerSolution` with ``n - rank`` fresh variables.
    """
    U, D, V = smith_normal_form(A)
    m, n = len(A), len(V)
    rank = sum(1 for i in range(min(m, n)) if D[i][i])
    conditions = []
    for i in range(m):
        cond = _normalize_condition(U[i], D[i][i] if i < rank else 0)
        if cond is None:
            continue
        expr = _lincomb(cond[0], b)
        if not isinstance(expr, int):
            conditions.append((expr, cond[1]))
        elif (expr % cond[1] if cond[1] else expr) != 0:
            return UNSOLVABLE
    P = [[sum(Fraction(V[i][t] * U[t][j], D[t][t]) for t in range(rank)) for j in range(m)]
         for i in range(n)]
    K, pivots = _kernel_echelon([row[rank:] for row in V], n - rank)
    for c, p in enumerate(pivots):
        if K[p][c] == 1:
            shift = P[p]
            P = [[v - K[i][c] * s for v, s in zip(P[i], shift)] for i in range(n)]
    order = sorted(range(len(pivots)), key=pivots.__getitem__)
    fresh = tuple(make_fresh(pivots[c]) for c in order)
    x = []
    for i in range(n):
        den = lcm(1, *(v.denominator for v in P[i]))
        part = _floordiv(_lincomb([int(v * den) for v in P[i]], b), den)
        x.append(_lincomb([1] + [K[i][c] for c in order], [part, *fresh]))
    return IntegerSolution(tuple(x), fresh, tuple(conditions))


# ---------------------------------------------------------------- TVM adapter

@dataclass(frozen=True)
class IndexSolution:
    """Solution of index equalities for some unknowns (reduction variables).

    Under ``conditions`` (boolean PrimExprs on the outer terms), the pairs used hold exactly for
    ``unknown = substitution[unknown]`` with the ``fresh`` variables ranging over Z.
    ``unused`` holds the (lhs, rhs) pairs that are not linear with constant integer
    coefficients in the unknowns; they were ignored and still have to be checked.
    """
    substitution: dict
    fresh: tuple
    conditions: tuple
    unused: tuple


def _as_term(e):
    """Constants become Python ints so that the core can decide constant conditions."""
    return int(e.value) if isinstance(e, tirx.IntImm) else e


def _as_expr(v, dtype):
    return tirx.const(v, dtype) if isinstance(v, int) else cast(v, dtype)


def solve_index_equations(equalities, unknowns):
    """Solve ``lhs == rhs`` pairs (integer PrimExprs) for the ``unknowns`` (``tirx.Var``).

    Each pair is split by ``tvm.sym.detect_linear_equation(lhs - rhs, unknowns)`` into
    ``a . k + rest``; the pairs with constant integer ``a`` form ``A k = -rest``, which
    :func:`solve_affine_system` solves (an equation without unknowns is a zero row of ``A`` and
    becomes a condition).  Fresh variables take the dtype of their unknown and are named
    ``<unknown>_f<i>``.  Returns ``UNSOLVABLE`` or an :class:`IndexSolution`.
    """
    ana = tvm.sym.Analyzer()
    dtype = max((str(u.ty.dtype) for u in unknowns), key=lambda t: tvm.DataType(t).bits,
                default="int32")
    rows, b, unused = [], [], []
    for lhs, rhs in equalities:
        coeffs = list(tvm.sym.detect_linear_equation(cast(lhs, dtype) - cast(rhs, dtype),
                                                     unknowns))
        if not coeffs or not all(isinstance(c, tirx.IntImm) for c in coeffs[:-1]):
            unused.append((lhs, rhs))
            continue
        a = [int(c.value) for c in coeffs[:-1]]
        # Flip the row so its first coefficient is positive: 2k = j - 1 rather than -2k = 1 - j.
        sign = -1 if next((v for v in a if v), 1) < 0 else 1
        rows.append([sign * v for v in a])
        b.append(_as_term(ana.simplify(coeffs[-1] * -sign)))
    if not rows:
        return IndexSolution({}, (), (), tuple(unused))
    names = count()
    sol = solve_affine_system(
        rows, b,
        lambda i: tirx.Var(f"{unknowns[i].name}_f{next(names)}", str(unknowns[i].ty.dtype)))
    if sol is UNSOLVABLE:
        return UNSOLVABLE
    conditions = []
    for e, d in sol.conditions:
        e = _as_expr(e, dtype)
        zero = tirx.const(0, str(e.ty.dtype))
        cond = ana.simplify(tirx.EQ(tirx.floormod(e, d) if d else e, zero))
        if not isinstance(cond, tirx.IntImm):
            conditions.append(cond)
        elif not cond.value:
            return UNSOLVABLE
    substitution = {u: ana.simplify(_as_expr(x, str(u.ty.dtype))) for u, x in zip(unknowns, sol.x)}
    return IndexSolution(substitution, sol.fresh, tuple(conditions), tuple(unused))
