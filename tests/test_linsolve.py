"""Tests of the integer linear equation solver (passes/linsolve.py)."""
import itertools
import random
from fractions import Fraction
from math import gcd

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.ir import Call, Var

from tvm_autodiff.passes import linsolve
from tvm_autodiff.passes.linsolve import UNSOLVABLE


# ---------------------------------------------------------------- exact integer helpers

def matmul(X, Y):
    return [[sum(a * b for a, b in zip(row, col)) for col in zip(*Y)] for row in X]


def det(M):
    """Exact determinant by Gaussian elimination over the rationals."""
    M, n, d = [[Fraction(v) for v in row] for row in M], len(M), Fraction(1)
    for c in range(n):
        p = next((r for r in range(c, n) if M[r][c]), None)
        if p is None:
            return 0
        if p != c:
            M[c], M[p], d = M[p], M[c], -d
        d *= M[c][c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [a - f * b for a, b in zip(M[r], M[c])]
    return int(d)


def rank(M):
    return int(np.linalg.matrix_rank(np.array(M, dtype=float))) if M and M[0] else 0


def determinantal_divisor(A, k):
    """gcd of all k x k minors of A; it equals d_1 * ... * d_k for the Smith form."""
    rows, cols = range(len(A)), range(len(A[0]))
    return gcd(*(det([[A[i][j] for j in cs] for i in rs])
                 for rs in itertools.combinations(rows, k) for cs in itertools.combinations(cols, k)))


def random_matrix(rng, max_m=4, max_n=5):
    """Entries in [-6, 6]; some have zero rows/columns or repeated (+-) rows/columns."""
    m, n = rng.randint(1, max_m), rng.randint(1, max_n)
    A = [[rng.randint(-6, 6) for _ in range(n)] for _ in range(m)]
    for _ in range(rng.choice([0, 0, 1, 2])):
        kind, i, j = rng.randrange(4), rng.randrange(m), rng.randrange(n)
        s = rng.choice([1, -1])
        if kind == 0:
            A[i] = [0] * n
        elif kind == 1:
            for row in A:
                row[j] = 0
        elif kind == 2:
            A[i] = [s * v for v in A[rng.randrange(m)]]
        else:
            src = rng.randrange(n)
            for row in A:
                row[j] = s * row[src]
    if rng.random() < 0.3:  # small entries make unit pivots and large kernels common
        A = [[v % 3 - 1 for v in row] for row in A]
    return A


# ---------------------------------------------------------------- Smith normal form

def test_smith_normal_form_random():
    rng = random.Random(1234)
    for _ in range(250):
        A = random_matrix(rng)
        m, n = len(A), len(A[0])
        U, D, V = linsolve.smith_normal_form(A)
        assert matmul(matmul(U, A), V) == D
        assert abs(det(U)) == 1 and abs(det(V)) == 1
        assert all(D[i][j] == 0 for i in range(m) for j in range(n) if i != j)
        diag = [D[i][i] for i in range(min(m, n))]
        assert all(d >= 0 for d in diag)
        assert all((b % a == 0) if a else b == 0 for a, b in zip(diag, diag[1:]))
        r = sum(1 for d in diag if d)
        assert r == rank(A)
        # Independent check of the invariant factors: d_1 ... d_k = gcd of the k x k minors.
        prod = 1
        for k in range(1, r + 1):
            prod *= diag[k - 1]
            assert prod == determinantal_divisor(A, k)


def test_smith_normal_form_examples():
    assert linsolve.smith_normal_form([[1]]) == ([[1]], [[1]], [[1]])
    U, D, V = linsolve.smith_normal_form([[2, 4, 4], [-6, 6, 12], [10, -4, -16]])
    assert [D[i][i] for i in range(3)] == [2, 6, 12]
    assert linsolve.smith_normal_form([[0, 0]])[1] == [[0, 0]]


# ---------------------------------------------------------------- generic solver vs brute force

def lattice_members(points, p, K):
    """Mask of the rows x of `points` with x - p in K Z^cols (K: n x cols, full column rank)."""
    n, cols = len(p), len(K[0]) if K else 0
    diff = points - np.array(p)
    if cols == 0:
        return np.all(diff == 0, axis=1)
    S = []  # rows of K forming a nonsingular square block
    for i in range(n):
        if rank([K[s] for s in S + [i]]) > len(S):
            S.append(i)
    KS = [K[s] for s in S]
    dS = det(KS)
    # adjugate = det * inverse, with cofactors computed exactly
    adj = [[(-1) ** (r + c) * det([row[:r] + row[r + 1:] for k, row in enumerate(KS) if k != c])
            for c in range(cols)] for r in range(cols)]
    num = diff[:, S] @ np.array(adj).T
    integral = np.all(num % dS == 0, axis=1)
    F = num // dS
    return integral & np.all(F @ np.array(K).T == diff, axis=1)


def solve_with_fresh_values(A, b, values):
    """Solve with the i-th created fresh variable taking values[i]; records the pivot indices."""
    pivots = []

    def make_fresh(i):
        pivots.append(i)
        return values[len(pivots) - 1]
    return linsolve.solve_affine_system(A, b, make_fresh), pivots


def unsolvability_certificate(A, b):
    """A rational y with y A integral and y b not an integer proves A x = b has no integer
    solution.  Candidates come from the Smith form, but the proof is checked against A, b."""
    U, D, _ = linsolve.smith_normal_form(A)
    m, n = len(A), len(A[0])
    for i in range(m):
        ub = sum(u * v for u, v in zip(U[i], b))
        d = D[i][i] if i < min(m, n) and D[i][i] else 2 * abs(ub)
        if d == 0:
            continue
        y = [Fraction(u, d) for u in U[i]]
        yA = [sum(yi * A[r][c] for r, yi in enumerate(y)) for c in range(n)]
        yb = sum(yi * bi for yi, bi in zip(y, b))
        if all(v.denominator == 1 for v in yA) and yb.denominator != 1:
            return y
    return None


def test_solve_affine_system_brute_force():
    rng = random.Random(99)
    B = 3
    stats = {"unsolvable": 0, "free": 0, "unique": 0}
    for case in range(600):
        A = random_matrix(rng, max_m=4, max_n=4)
        m, n = len(A), len(A[0])
        if case % 2:
            x0 = [rng.randint(-B, B) for _ in range(n)]
            b = [sum(a * x for a, x in zip(row, x0)) for row in A]
        else:
            b = [rng.randint(-6, 6) for _ in range(m)]
        box = np.array(list(itertools.product(range(-B, B + 1), repeat=n)))
        brute = box[np.all(box @ np.array(A).T == np.array(b), axis=1)]
        sol, pivots = solve_with_fresh_values(A, b, [0] * n)
        if sol is UNSOLVABLE:
            stats["unsolvable"] += 1
            assert len(brute) == 0
            assert unsolvability_certificate(A, b) is not None, (A, b)
            continue
        nf = n - rank(A)
        assert len(sol.fresh) == nf and sol.conditions == ()
        p = list(sol.x)
        assert all(isinstance(v, int) for v in p)
        assert matmul(A, [[v] for v in p]) == [[v] for v in b]  # a genuine integer solution
        K = [[0] * nf for _ in range(n)]
        for t in range(nf):
            sol_t, _ = solve_with_fresh_values(A, b, [int(s == t) for s in range(nf)])
            for i in range(n):
                K[i][t] = sol_t.x[i] - p[i]
        assert pivots == sorted(set(pivots)) and len(pivots) == nf
        if nf:
            assert all(v == 0 for row in matmul(A, K) for v in row)  # K spans directions of A x = 0
            assert rank(K) == nf
        # Same solution set inside the box: nothing missing, nothing extra.
        produced = box[lattice_members(box, p, K)]
        assert sorted(map(tuple, produced)) == sorted(map(tuple, brute)), (A, b)
        stats["free" if nf else "unique"] += 1
    assert min(stats.values()) > 50, stats


def test_solve_affine_system_lattice_is_complete():
    """The kernel basis must span the whole integer kernel, not a sublattice: with
    2 x1 + 4 x2 + 6 x3 = 0 the point (1, 1, -1) has to be reachable."""
    sol, _ = solve_with_fresh_values([[2, 4, 6]], [0], [0, 0])
    K = [[solve_with_fresh_values([[2, 4, 6]], [0], [int(s == t) for s in range(2)])[0].x[i]
          for t in range(2)] for i in range(3)]
    assert lattice_members(np.array([[1, 1, -1], [1, 0, 0]]), list(sol.x), K).tolist() == [True, False]


def test_solve_affine_system_unit_pivot_is_identity():
    j, i = tirx.Var("j", "int32"), tirx.Var("i", "int32")
    sol = linsolve.solve_affine_system([[1]], [j], lambda t: None)
    assert sol.x[0].same_as(j) and sol.fresh == () and sol.conditions == ()
    sol = linsolve.solve_affine_system([[0, 1], [1, 0]], [j, i], lambda t: None)
    assert sol.x[0].same_as(i) and sol.x[1].same_as(j)


def test_solve_affine_system_symbolic_conditions():
    j, i = tirx.Var("j", "int32"), tirx.Var("i", "int32")
    sol = linsolve.solve_affine_system([[2], [2]], [j, i], lambda t: None)
    (e1, d1), (e2, d2) = sol.conditions
    assert (d1, d2) == (2, 0)
    assert evaluate(e1, {j: 4}) % 2 == 0 and evaluate(e1, {j: 5}) % 2 == 1
    assert evaluate(e2, {j: 4, i: 4}) == 0 and evaluate(e2, {j: 4, i: 6}) != 0
    assert evaluate(sol.x[0], {j: 6, i: 6}) == 3
    with pytest.raises(AttributeError):
        sol.x = ()  # frozen


# ---------------------------------------------------------------- TVM adapter

def evaluate(e, env):
    """Value of an integer PrimExpr with the variables of env (Var -> int) substituted."""
    vals = {v: tirx.const(x, str(v.ty.dtype)) for v, x in env.items()}
    r = tvm.sym.Analyzer().simplify(tvm_ffi.structural_map(e, (Var, lambda v: vals.get(v, v))))
    assert isinstance(r, tirx.IntImm), r
    return int(r.value)


def check_against_brute_force(eqs, unknowns, sol, outer, box=6, outer_range=range(-6, 7)):
    """For every value of the outer vars: the conditions hold iff some k in the box solves the
    used equations, and then the solutions produced for fresh values in the box (which contain
    every box solution, as the fresh variables here are unknowns with unit pivots) are exactly
    the box solutions."""
    fresh_vals = list(itertools.product(range(-box, box + 1), repeat=len(sol.fresh)))
    box_pts = list(itertools.product(range(-box, box + 1), repeat=len(unknowns)))
    for vals in itertools.product(outer_range, repeat=len(outer)):
        env = dict(zip(outer, vals))
        brute = {k for k in box_pts
                 if all(evaluate(l - r, {**env, **dict(zip(unknowns, k))}) == 0 for l, r in eqs)}
        if not all(evaluate(c, env) for c in sol.conditions):
            assert not brute, (env, brute)
            continue
        produced = set()
        for f in fresh_vals:
            full = {**env, **dict(zip(sol.fresh, f))}
            k = tuple(evaluate(sol.substitution[u], full) for u in unknowns)
            kenv = {**env, **dict(zip(unknowns, k))}
            assert all(evaluate(l - r, kenv) == 0 for l, r in eqs), (env, f, k)
            if all(abs(v) <= box for v in k):
                produced.add(k)
        assert produced == brute, (env, produced, brute)


def ivars(names, dtype="int32"):
    return [tirx.Var(s, dtype) for s in names.split()]


def test_identity():
    j, k = ivars("j k")
    sol = linsolve.solve_index_equations([(j, k)], [k])
    assert sol.substitution[k].same_as(j)
    assert sol.fresh == () and sol.conditions == () and sol.unused == ()


def test_divisibility_condition():
    j, k = ivars("j k")
    eqs = [(j, 2 * k + 1)]
    sol = linsolve.solve_index_equations(eqs, [k])
    assert len(sol.conditions) == 1 and sol.fresh == ()
    assert [evaluate(sol.conditions[0], {j: v}) for v in range(-3, 4)] == [1, 0, 1, 0, 1, 0, 1]
    assert [evaluate(sol.substitution[k], {j: v}) for v in (-3, -1, 1, 3, 5)] == [-2, -1, 0, 1, 2]
    check_against_brute_force(eqs, [k], sol, [j])


def test_conv_like():
    j, i, k = ivars("j i k")
    for s in (1, 2, 3):
        eqs = [(j, s * i + k)]
        sol = linsolve.solve_index_equations(eqs, [k])
        assert sol.conditions == () and sol.fresh == ()
        assert tvm.sym.Analyzer().can_prove_equal(sol.substitution[k], j - s * i)
    check_against_brute_force(eqs, [k], sol, [j, i], box=12, outer_range=range(-3, 4))


def test_two_unknowns_one_equation():
    j, k1, k2 = ivars("j k1 k2")
    eqs = [(j, k1 + k2)]
    sol = linsolve.solve_index_equations(eqs, [k1, k2])
    assert len(sol.fresh) == 1 and sol.conditions == ()
    f = sol.fresh[0]
    assert str(f.ty.dtype) == "int32" and f.name.startswith("k") and "_f" in f.name
    assert set(sol.substitution) == {k1, k2}
    check_against_brute_force(eqs, [k1, k2], sol, [j])


def test_two_equations_with_offsets():
    j1, j2, k1, k2 = ivars("j1 j2 k1 k2")
    eqs = [(j1, 2 * k1 + k2), (j2, k1 - 3)]
    sol = linsolve.solve_index_equations(eqs, [k1, k2])
    assert sol.fresh == () and sol.conditions == ()
    check_against_brute_force(eqs, [k1, k2], sol, [j1, j2], box=12, outer_range=range(-2, 3))


def test_rank_deficient_gives_equality_condition():
    i, j, k1, k2 = ivars("i j k1 k2")
    eqs = [(j, 2 * k1 + 4 * k2), (i, k1 + 2 * k2)]
    sol = linsolve.solve_index_equations(eqs, [k1, k2])
    assert len(sol.fresh) == 1 and len(sol.conditions) == 1
    check_against_brute_force(eqs, [k1, k2], sol, [i, j], box=5, outer_range=range(-3, 4))


def test_non_unit_coefficients_with_free_direction():
    j, k1, k2 = ivars("j k1 k2")
    eqs = [(j, 2 * k1 + 3 * k2)]
    sol = linsolve.solve_index_equations(eqs, [k1, k2])
    assert len(sol.fresh) == 1 and sol.conditions == ()
    # The fresh variable moves k2 by 2, so fresh values in [-6, 6] cover the box.
    check_against_brute_force(eqs, [k1, k2], sol, [j], box=4)


def test_unsolvable_constant():
    (k,) = ivars("k")
    assert linsolve.solve_index_equations([(2 * k, tirx.const(1, "int32"))], [k]) is UNSOLVABLE
    k1, k2 = ivars("k1 k2")
    eqs = [(k1 + k2, tirx.const(1, "int32")), (k1 + k2, tirx.const(2, "int32"))]
    assert linsolve.solve_index_equations(eqs, [k1, k2]) is UNSOLVABLE


def test_equation_without_unknowns_is_a_condition():
    i, j, k = ivars("i j k")
    eqs = [(j, k), (j, i + 1)]
    sol = linsolve.solve_index_equations(eqs, [k])
    assert len(sol.conditions) == 1
    check_against_brute_force(eqs, [k], sol, [i, j], outer_range=range(-3, 4))
    assert linsolve.solve_index_equations([(i, i + 1), (j, k)], [k]) is UNSOLVABLE
    sol = linsolve.solve_index_equations([(i + 1, 1 + i), (j, k)], [k])
    assert sol.conditions == () and sol.substitution[k].same_as(j)


def test_tensor_load_on_outer_side():
    i, j, k = ivars("i j k")
    idx = te.placeholder((8,), "int32", name="idx")
    sol = linsolve.solve_index_equations([(k, idx(i))], [k])
    e = sol.substitution[k]
    assert isinstance(e, Call) and e.op.name == "te.tensor_load"
    assert e.args[0] == idx and e.args[1].same_as(i)
    # With a divisibility condition: stand in a variable for the load to evaluate it.
    sol = linsolve.solve_index_equations([(j, 2 * k + idx(i))], [k])
    load = tirx.Var("load", "int32")
    to_var = lambda x: tvm_ffi.structural_map(
        x, (Call, lambda c: load if c.op.name == "te.tensor_load" else c))
    (cond,) = sol.conditions
    for jv, lv in itertools.product(range(-4, 5), repeat=2):
        env = {j: jv, load: lv}
        assert evaluate(to_var(cond), env) == ((jv - lv) % 2 == 0)
        if (jv - lv) % 2 == 0:
            assert 2 * evaluate(to_var(sol.substitution[k]), env) + lv == jv


def test_nonlinear_is_unused():
    i, j, k = ivars("i j k")
    kk = k * k
    sol = linsolve.solve_index_equations([(kk, j)], [k])
    assert sol.substitution == {} and sol.fresh == () and sol.conditions == ()
    (pair,) = sol.unused
    assert pair[0].same_as(kk) and pair[1].same_as(j)
    # A non-constant coefficient (i * k) is not usable either; the linear equation still is.
    sol = linsolve.solve_index_equations([(i * k, j), (k, j + 1)], [k])
    assert len(sol.unused) == 1 and sol.unused[0][1].same_as(j)
    assert evaluate(sol.substitution[k], {j: 4}) == 5


def test_dtypes_are_kept():
    (j,) = ivars("j")
    (k, k2) = ivars("k k2", "int64")
    sol = linsolve.solve_index_equations([(j, 2 * k + k2 + 1)], [k, k2])
    assert all(str(e.ty.dtype) == "int64" for e in sol.substitution.values())
    assert all(str(f.ty.dtype) == "int64" for f in sol.fresh)
    check_against_brute_force([(j, 2 * k + k2 + 1)], [k, k2], sol, [j], box=4, outer_range=range(-2, 3))
    (j64,) = ivars("j", "int64")
    (k32,) = ivars("k")
    sol = linsolve.solve_index_equations([(j64, 2 * k32)], [k32])
    assert str(sol.substitution[k32].ty.dtype) == "int32"
    assert evaluate(sol.substitution[k32], {j64: 6}) == 3
