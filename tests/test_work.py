"""Work counts (`work`), the expression printer and `explain`."""
import io
import time

import numpy as np
import pytest
from tvm import te, tirx, topi

import tvm_autodiff as ad
import tvm_autodiff.counting as work_module
from tvm_autodiff.ir.graph import placeholders
from tvm_autodiff.printing import format_expr
from tvm_autodiff.counting import Work, count_loops, explain, op_iterations, work
from tvm_autodiff.passes import eliminate_zeros


def matmul(n, m, p):
    A = te.placeholder((n, m), name="A")
    B = te.placeholder((m, p), name="B")
    k = te.reduce_axis((0, m), name="k")
    return te.compute((n, p), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")


def triangular(n):
    A = te.placeholder((n,), name="A")

    def body(i):
        k = te.reduce_axis((0, i + 1), name="k")
        return te.sum(A[k], axis=k)
    return te.compute((n,), body, name="T")


def test_matmul_counts_the_body_not_the_init():
    w = work(matmul(5, 7, 3))
    assert w == Work(5 * 7 * 3, 5 * 3, {"C": 5 * 7 * 3})
    assert int(w) == 105


def test_elementwise_and_chain_count_each_op():
    A = te.placeholder((6, 4), name="A")
    B = te.compute((6, 4), lambda i, j: A[i, j] * 2.0, name="B")
    assert work(B) == Work(24, 24, {"B": 24})
    C = te.compute((4, 6), lambda i, j: B[j, i] + 1.0, name="C")
    D = te.compute((4,), lambda i: C[i, 0] + C[i, 1], name="D")
    w = work(D)
    assert w.per_op == {"B": 24, "C": 24, "D": 4}
    assert (w.iterations, w.elements) == (52, 52)
    # Asking for an intermediate too changes nothing; placeholders cost nothing.
    assert work([D, B, A]) == w
    assert work(A) == Work(0, 0, {})


def test_triangular_reduction_is_counted_exactly():
    for n in (1, 7, 300):
        assert work(triangular(n)).iterations == n * (n + 1) // 2


def test_reduce_axis_with_variable_lower_bound():
    n = 9
    A = te.placeholder((n, n), name="A")

    def body(i):
        k = te.reduce_axis((i, n), name="k")
        return te.sum(A[i, k], axis=k)
    assert work(te.compute((n,), body, name="S")).iterations == sum(n - i for i in range(n))


def test_where_does_not_reduce_the_count():
    A = te.placeholder((10, 8), name="A")
    k = te.reduce_axis((0, 8), name="k")
    R = te.compute((10,), lambda i: te.sum(A[i, k], axis=k, where=k < 2), name="R")
    assert work(R).iterations == 80


def test_bounds_depending_on_two_outer_axes_match_brute_force():
    n, m = 6, 5
    A = te.placeholder((n + m, 20), name="A")

    def body(i, j):
        k = te.reduce_axis((0, (i * j) // 3 + 1), name="k")
        r = te.reduce_axis((j, tirx.max(i, j) + 2), name="r")
        return te.sum(A[i + j, k + r], axis=[k, r])
    S = te.compute((n, m), body, name="S")
    expected = sum(((i * j) // 3 + 1) * (max(i, j) + 2 - j) for i in range(n) for j in range(m))
    assert work(S).iterations == expected == op_iterations(S.op)


def test_count_loops_matches_enumeration():
    i, j, k = (tirx.Var(s, "int32") for s in "ijk")
    loops = [(i, tirx.const(0), tirx.const(7), None),
             (j, i - 3, tirx.Min(i, 4) % 3 + 2, tirx.const(2)),
             (k, tirx.const(0), j * j - i, None)]
    expected = sum(max(j * j - i, 0)
                   for i in range(7) for j in range(i - 3, i - 3 + min(i, 4) % 3 + 2, 2))
    assert count_loops(loops, work_module._Bindings({}, {})) == expected


def test_multi_output_op_has_one_block_per_output():
    A = te.placeholder((3, 4), name="A")
    S, P = te.compute((3, 4), lambda i, j: (A[i, j] + 1.0, A[i, j] * 2.0), name="SP")
    w = work([S, P])
    assert w == Work(24, 24, {"SP_v0": 12, "SP_v1": 12})
    assert op_iterations(S.op) == 24


def test_symbolic_shapes_need_bindings():
    n, m = te.var("n"), te.var("m")
    A = te.placeholder((n, m), name="A")
    k = te.reduce_axis((0, m), name="k")
    R = te.compute((n,), lambda i: te.sum(A[i, k], axis=k), name="R")
    assert work(R, {n: 4, m: 6}) == Work(24, 4, {"R": 24})
    assert work(R, {"n": 3, "m": 2}).iterations == 6
    with pytest.raises(ValueError, match="'m'"):
        work(R, {n: 4})


def test_elements_counts_every_materialized_tensor():
    C = matmul(4, 5, 6)
    D = te.compute((4,), lambda i: C[i, 0] * 2.0, name="D")
    Z = te.compute((), lambda: D[0] + D[1], name="Z")
    w = work(Z)
    assert w.elements == 4 * 6 + 4 + 1
    assert w.per_op == {"C": 120, "D": 4, "Z": 1}


def test_fifty_ops_count_fast():
    n = 200

    def layer(src, i):  # alternately elementwise and a triangular reduction
        def prefix_sum(j):
            k = te.reduce_axis((0, j + 1), name="k")
            return te.sum(src[k], axis=k)
        return te.compute((n,), prefix_sum if i % 2 else (lambda j: src[j] * 2.0), name=f"L{i}")
    t = te.placeholder((n,), name="A")
    for i in range(50):
        t = layer(t, i)
    start = time.perf_counter()
    func = te.create_prim_func(placeholders([t]) + [t])
    create = time.perf_counter() - start
    start = time.perf_counter()
    w = work(t)
    assert time.perf_counter() - start - create < 1.0
    assert w.iterations == 25 * n + 25 * n * (n + 1) // 2 and func is not None


def test_format_expr_is_readable_infix():
    A = te.placeholder((8, 8), name="A")
    k = te.reduce_axis((0, 8), name="k")
    R = te.compute((8,), lambda i: te.sum(A[i, k] * (A[k, i] + 1.0), axis=k), name="R")
    assert format_expr(R.op.body[0]) == "sum(k in [0, 8): A[i, k] * (A[k, i] + 1.0))"
    M = te.compute((8,), lambda i: te.max(A[i, k], axis=k, where=k > i), name="M")
    assert format_expr(M.op.body[0]) == "max(k in [0, 8) where k > i: A[i, k])"
    x, y = tirx.Var("x", "int32"), tirx.Var("y", "float32")
    assert format_expr(tirx.Select(x > 1, te.exp(y), y - (y - 2.0))) == "select(x > 1, exp(y), y - (y - 2.0))"
    assert format_expr((x + 1) // 2 % 3 - tirx.min(x, 4)) == "(x + 1) // 2 % 3 - min(x, 4)"
    assert format_expr(tirx.Cast("float32", x) / y) == "float32(x) / y"


def test_explain_lists_ops_axes_and_work():
    C = matmul(4, 5, 6)
    D = te.compute((4,), lambda i: C[i, 0] * 2.0, name="D")
    out = io.StringIO()
    text = explain(D, file=out)
    assert out.getvalue() == text
    before, _ = text.split("== after eliminate_zeros ==")
    for piece in ("== before ==", "A: (4, 5) float32 input", "C: (4, 6) float32 compute",
                  "axes:   i in [0, 4), j in [0, 6)", "reduce: k in [0, 5)",
                  "body:   sum(k in [0, 5): A[i, k] * B[k, j])", "work:   120 iterations",
                  "D: (4,) float32 compute", "body:   C[i, 0] * 2.0", "work:   4 iterations",
                  "total before: 124 iterations, 28 elements"):
        assert piece in before
    assert "metadata" not in text


def test_explain_shows_the_graph_after_eliminate_zeros(monkeypatch):
    T = triangular(10)
    smaller = te.compute((10,), lambda i: T.op.input_tensors[0][i] * 1.0, name="T2")
    monkeypatch.setattr(work_module, "eliminate_zeros", lambda tensors: [smaller])
    text = explain([T])
    before, after = text.split("== after eliminate_zeros ==")
    assert "reduce: k in [0, i + 1)" in before and "work:   55 iterations" in before
    assert "T2: (10,) float32 compute" in after and "total after eliminate_zeros: 10 iterations" in after
    assert text.endswith("work: 55 -> 10 iterations (0.182x)\n")


def test_explain_uses_the_real_pass():
    text = explain(matmul(2, 3, 4))
    assert text.startswith("== before ==") and "total before: 24 iterations" in text
    assert "== after eliminate_zeros ==" in text and "total after eliminate_zeros: 24 iterations" in text


def test_per_op_counts_agree_with_the_kernel():
    T = triangular(12)
    U = te.compute((12, 3), lambda i, j: T[i] + T[11 - i], name="U")
    ops = [T.op, U.op]
    assert sum(op_iterations(op) for op in ops) == work(U).iterations == 78 + 36


def test_multi_output_reduction_is_one_block():
    # create_prim_func stores every value of a multi-output reduction from one block: one loop nest.
    from tvm import tirx
    X = te.placeholder((4, 6), "float32", name="X")
    k = te.reduce_axis((0, 6), name="k")
    argmax = te.comm_reducer(
        lambda x, y: (tirx.Select(x[0] >= y[0], x[0], y[0]), tirx.Select(x[0] >= y[0], x[1], y[1])),
        lambda t0, t1: (tirx.min_value(t0), tirx.const(-1, t1)))
    V, I = te.compute((4,), lambda i: argmax((X[i, k], k), axis=k), name="M")
    assert work([V, I]).iterations == 24
    assert op_iterations(V.op) == 24


# -- symbolic shapes ------------------------------------------------------------------------------


def _symbolic_dense_gradient(optimize=True):
    """dW of dense(X (b, 64), W (32, 64)) for the head full_like(Y, 1)."""
    b = te.var("b")
    X, W = te.placeholder((b, 64), name="X"), te.placeholder((32, 64), name="W")
    Y = topi.nn.dense(X, W)
    return ad.differentiate(Y, [W], head=topi.full_like(Y, 1.0), optimize=optimize)[0]


def test_explain_shows_symbolic_work_and_the_bindings_to_pass():
    dW = _symbolic_dense_gradient(optimize=False)
    text = explain(dW)
    assert text.splitlines()[0] == ("symbolic dimensions b are unbound: the work is shown in terms of them; "
                                    "pass bindings={'b': <int>} for counts")
    assert "total before: b * 4194336 iterations, b * 32 + 2048 elements" in text
    assert "total after eliminate_zeros: select(1 <= b, b, 1) * 2048 + b * 32 iterations" in text
    # The expressions are the counts: at b = 8, 8 · 4194336 before and 8 · 2048 + 8 · 32 after.
    bound = explain(dW, bindings={"b": 8})
    assert work(dW, {"b": 8}).iterations == 8 * 4194336
    assert bound.endswith(f"work: {8 * 4194336} -> {8 * 2048 + 8 * 32} iterations (0.000496x)\n")
    assert work(eliminate_zeros(dW), {"b": 8}) == Work(8 * 2080, 8 * 32 + 2048, {
        "T_full_like": 8 * 32, "dW_from_T_matmul_NT": 8 * 2048})


def test_explain_of_a_symbolic_non_box_nest_asks_for_bindings():
    n = te.var("n")
    A = te.placeholder((n,), name="A")

    def body(i):
        k = te.reduce_axis((0, i + 1), name="k")
        return te.sum(A[k], axis=k)
    T = te.compute((n,), body, name="T")
    text = explain(T)
    assert "work:   (bind n to count)" in text and "total before: (pass bindings to count) iterations, n elements" in text
    assert explain(T, bindings={"n": 6}).endswith("work: 21 -> 21 iterations (1x)\n")


def test_symbolic_shapes_partly_bound_still_explain():
    n, m = te.var("n"), te.var("m")
    A = te.placeholder((n, m), name="A")
    k = te.reduce_axis((0, m), name="k")
    R = te.compute((n,), lambda i: te.sum(A[i, k], axis=k), name="R")
    S = te.compute((4,), lambda i: A[i, 0] * 2.0, name="S")
    text = explain([R, S], bindings={"m": 3})
    assert "symbolic dimensions n are unbound" in text
    assert "work:   n * 3 iterations" in text and "work:   4 iterations" in text
    assert "total before: n * 3 + 4 iterations, n + 4 elements" in text
    assert work([R, S], {"n": 5, "m": 3}).iterations == 5 * 3 + 4


# -- argument checks ------------------------------------------------------------------------------


def _graph():
    n = te.var("n")
    A = te.placeholder((n, 4), name="A")
    return n, te.compute((n, 4), lambda i, j: A[i, j] * 2.0, name="B")


@pytest.mark.parametrize("fn", [work, explain])
@pytest.mark.parametrize("tensors,message", [
    (np.zeros((2, 4)), "tensors must be a te.Tensor or a list of te.Tensors, got a numpy array"),
    ("B", "tensors must be a te.Tensor or a list of te.Tensors, got str 'B'"),
    (3, "tensors must be a te.Tensor or a list of te.Tensors, got int 3"),
])
def test_tensors_argument_is_checked(fn, tensors, message):
    with pytest.raises(TypeError, match=f"{fn.__name__}\\(\\) {message}"):
        fn(tensors)


@pytest.mark.parametrize("fn", [work, explain])
def test_a_list_with_a_non_tensor_names_its_index(fn):
    _, B = _graph()
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a te.Tensor, got str 'x'"):
        fn([B, "x"], bindings={"n": 2})
    assert work((B,), {"n": 2}).iterations == work(B, {"n": 2}).iterations == 8


@pytest.mark.parametrize("fn", [work, explain])
@pytest.mark.parametrize("bindings,error,message", [
    ([("n", 2)], TypeError, r"bindings must be a dict \{name or te.var: int\}, got list"),
    ({"n": 2.0}, TypeError, r"bindings\['n'\] must be an int, got float 2.0"),
    ({"n": "2"}, TypeError, r"bindings\['n'\] must be an int, got str '2'"),
    ({"n": True}, TypeError, r"bindings\['n'\] must be an int, got bool True"),
    ({"n": -1}, ad.DifferentiationError, r"bindings\['n'\] is -1; a dimension is at least 0"),
    ({"m": 2}, ad.DifferentiationError, r"bindings: 'm' is not a symbolic dimension of these tensors \(theirs: n\)"),
    ({3: 2}, TypeError, r"bindings keys must be te.var's or their names, got int 3"),
])
def test_bindings_are_checked(fn, bindings, error, message):
    _, B = _graph()
    with pytest.raises(error, match=f"{fn.__name__}\\(\\) {message}"):
        fn(B, bindings=bindings)


def test_bindings_by_var_and_numpy_int():
    n, B = _graph()
    assert work(B, {n: np.int64(3)}) == Work(12, 12, {"B": 12})
    with pytest.raises(ad.DifferentiationError, match="not a symbolic dimension"):
        work(B, {te.var("n"): 3})     # another variable of the same name is not B's


def test_work_names_the_missing_bindings():
    _, B = _graph()
    with pytest.raises(ad.DifferentiationError, match=r"work\(\) counts iterations, which depend on the symbolic "
                       r"dimensions n; pass bindings=\{'n': <int>\}"):
        work(B)


def test_explain_file_is_checked():
    _, B = _graph()
    with pytest.raises(TypeError, match="explain\\(\\) file must have a write method"):
        explain(B, file="out.txt", bindings={"n": 1})
    out = io.StringIO()
    assert explain(B, file=out, bindings={"n": 1}) == out.getvalue() and "total before: 4 iterations" in out.getvalue()
