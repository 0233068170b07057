"""The op table (tests/op_table.py): numeric gradient checks of every derivative rule, index map,
reduction kind and the topi ops against central finite differences (tests/gradcheck.py).  One TVM
compile per case."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import te

import tvm_autodiff as ad
from gradcheck import check_grad
from op_table import CASES, IDS, case


# -- the test ------------------------------------------------------------------------------------------

def test_case_count():
    assert len(CASES) >= 100


@pytest.mark.parametrize("cid", IDS)
def test_gradient(cid):
    out, inputs, check = case(cid).build()
    if check.pop("ties", False):
        _check_ties(out, inputs[0])
        return
    check_grad(out, inputs, **check)


def _check_ties(out, A):
    """Exact ties in the data: the whole adjoint goes to the first extremal index (PyTorch's rule)."""
    H = te.placeholder(out.shape, str(out.dtype), name="H")
    (dA,) = ad.differentiate(out, [A], H)
    f = ad.build([out, dA], [A, H])
    a = np.array([[0.5, 2.5, 2.5, 2.5], [3.0, 1.0, 3.0, 0.0]])
    h = np.array([2.0, -1.0])
    y, g = f(a, h)
    expected = np.zeros_like(a)
    expected[0, 1], expected[1, 0] = 2.0, -1.0
    np.testing.assert_allclose(np.abs(y), [2.5, 3.0])
    sign = 1.0 if out.op.body[0].combiner.result[0].__class__.__name__ == "Max" else -1.0
    np.testing.assert_allclose(g, sign * expected)
