"""Sum merging (passes/merge_sums.py): a sum of same-domain reductions that nothing else reads is
one reduction.  Values against numpy formulas (float64) and against the graph before the pass
(hypothesis); which sums merge, and the schedule rule of the merged one, counted."""
from __future__ import annotations

import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import te, topi, tirx

import tvm_autodiff as ad
from tvm_autodiff.ir.expr import tensor_loads
from tvm_autodiff.ir.graph import ops_post_order
from tvm_autodiff.passes import merge_sums

F64 = "float64"


def _shared_weight(steps: int, n=16, k=8, batch=6, dtype=F64):
    """loss = Σ_t Σ tanh(x_t · Wᵀ) over `steps` inputs x_t (batch x k) and one W (n x k): dW is
    the sum of one reduction over the batch per step.  (W, xs, dW, the numpy dW)."""
    w = te.placeholder((n, k), dtype, name="W")
    xs = [te.placeholder((batch, k), dtype, name=f"x{t}") for t in range(steps)]
    loss = topi.sum(sum((topi.tanh(topi.nn.dense(x, w)) for x in xs[1:]), topi.tanh(topi.nn.dense(xs[0], w))))
    (dw,) = ad.differentiate(loss, [w])

    def expected(wv, xvs):
        return sum((1 - np.tanh(x @ wv.T) ** 2).T @ x for x in xvs)

    return w, xs, dw, expected


def _merged(t):
    """The ops of the graph of t (a tensor or a list) whose body is one reduction of a sum of
    several products."""
    return [op for op in ops_post_order(t if isinstance(t, list) else [t]) if isinstance(op, te.ComputeOp) and op.reduce_axis
            and isinstance(op.body[0].source[0], tirx.Add)]


def _values(steps, seed=0, shape=(6, 8), n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, shape[1])) * 0.3, [rng.standard_normal(shape) for _ in range(steps)]


def test_weight_shared_by_steps_is_one_reduction():
    """Five steps: one merged reduction of five products (its loads: W's adjoint parts and the
    x_t), with the matmul tile; the values are the numpy formula's."""
    w, xs, dw, expected = _shared_weight(5)
    (op,) = _merged(merge_sums(dw))
    assert len(tensor_loads(op.body[0].source[0])) == 10
    m = ad.build(dw, [w, *xs], kernels="one")
    assert m.rules[op.name] == "matmul-tile", m.explain()
    wv, xvs = _values(5)
    np.testing.assert_allclose(m(wv, *xvs), expected(wv, xvs), rtol=1e-12)


def test_what_is_not_merged():
    """A reduction that something else reads, or that is an output, stays; different domains
    are different groups."""
    a, b = te.placeholder((4, 6), F64, name="a"), te.placeholder((6, 5), F64, name="b")
    c = te.placeholder((4, 3), F64, name="c")
    d = te.placeholder((3, 5), F64, name="d")
    ab = [topi.matmul(a, b) for _ in range(2)]            # domain 6: merges
    cd = [topi.matmul(c, d) for _ in range(2)]            # domain 3: its own group
    total = topi.add(topi.add(ab[0], ab[1]), topi.add(cd[0], cd[1]))
    merged = _merged(merge_sums(total))
    assert sorted(int(op.body[0].axis[0].dom.extent) for op in merged) == [3, 6]
    # A larger reduction read at Y's index inside its bounds: the merged sum would take its
    # shape and read the smaller one's operands past their ends.
    big = topi.matmul(te.placeholder((6, 6), F64, name="e"), te.placeholder((6, 6), F64, name="f"))
    inside = te.compute((4, 5), lambda i, j: ab[0][i, j] + big[i, j], name="inside")
    assert not _merged(merge_sums(inside))
    # ab[0] is also an output, and cd[0] also read by another op: nothing merges then.
    shared = topi.add(topi.add(ab[0], ab[1]), topi.multiply(cd[0], 2.0) + cd[1])
    assert not _merged(merge_sums([shared, ab[0]]))


def test_groups_hold_at_most_max_terms(monkeypatch):
    """MAX_TERMS = 2 and five steps: two merged pairs and one reduction left alone."""
    monkeypatch.setattr(sys.modules["tvm_autodiff.passes.merge_sums"], "MAX_TERMS", 2)
    w, xs, dw, expected = _shared_weight(5)
    merged = merge_sums(dw)
    assert [len(tensor_loads(op.body[0].source[0])) for op in _merged(merged)] == [4, 4]
    wv, xvs = _values(5, seed=1)
    np.testing.assert_allclose(ad.build(merged, [w, *xs], schedule=None)(wv, *xvs), expected(wv, xvs),
                               rtol=1e-12)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.integers(2, 6), batch=st.integers(2, 5), k=st.integers(1, 6), seed=st.integers(0, 99))
def test_merging_keeps_values(steps, batch, k, seed):
    """Differential: the merged graph and the graph before the pass, both unscheduled, agree.
    (A batch of one is no reduction, so nothing merges there.)"""
    w, xs, dw, _ = _shared_weight(steps, n=5, k=k, batch=batch)
    merged = merge_sums(dw)
    assert len(_merged(merged)) == 1
    wv, xvs = _values(steps, seed, shape=(batch, k), n=5)
    np.testing.assert_allclose(ad.build(merged, [w, *xs], schedule=None)(wv, *xvs),
                               ad.build(dw, [w, *xs], schedule=None)(wv, *xvs), rtol=1e-12, atol=1e-14)
