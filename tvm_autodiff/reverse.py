"""Reverse accumulation over a TE graph: the public `differentiate`.

Ops are visited newest first.  The adjoint of a tensor is the sum of the contributions of its
consumers (`adjoint_summands`), materialized as its own tensor when there are several, because it
is read many times.  Each contribution comes from a `manual=` entry or from `edges.EdgeBuilder`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

from tvm import sym, te, tirx

from .edges import EdgeBuilder, bracket
from .errors import DifferentiationError
from .graph import TensorMap, make_compute, ops_post_order, outputs_of, placeholders, same_tensor
from .reductions import fold_where_init
from .rules import NoDerivativeRule

_MANUAL_HINT = ("Give its derivative by hand with manual={(out_tensor, in_tensor): fn}, "
                "where fn(out, inp, head) returns inp's adjoint contribution of shape "
                "head.shape[:-out.ndim] + inp.shape.")


class Gradients(Sequence):
    """The result of `differentiate`: list-like over the requested inputs' gradients.

    `adjoints[t]` is the adjoint of any tensor t between the inputs and the output (shape
    prefix + t.shape); `adjoint_summands[t][c]` is the part of it that flows through the consumer
    tensor c (every output of a multi-output consumer op maps to the op's one contribution).
    """

    def __init__(self, inputs, grads, adjoints, adjoint_summands):
        self.inputs, self.grads = list(inputs), list(grads)
        self.adjoints, self.adjoint_summands = adjoints, adjoint_summands

    def __getitem__(self, i):
        return self.grads[i]

    def __len__(self):
        return len(self.grads)

    def __repr__(self):
        return "Gradients(" + ", ".join(f"d{x.name}: {list(g.shape)}"
                                        for x, g in zip(self.inputs, self.grads)) + ")"


def _dims(shape) -> list:
    return [int(s) if isinstance(s, tirx.IntImm) else s for s in shape]


def _same_dims(a, b) -> bool:
    ana = sym.Analyzer()
    return len(a) == len(b) and all(ana.can_prove_equal(x, y) for x, y in zip(a, b))


def _check_float(t: te.Tensor, role: str):
    if not str(t.dtype).startswith(("float", "bfloat")):
        raise DifferentiationError(
            f"cannot differentiate with respect to {role} {t.name!r} of dtype {t.dtype}: only "
            f"floating-point tensors have gradients (integer tensors such as indices have zero "
            f"derivative; leave them out of `inputs`).")


def _validate(output, inputs, head):
    if not isinstance(output, te.Tensor):
        raise DifferentiationError(
            f"differentiate() needs a te.Tensor as output, got {type(output).__name__}. "
            "Pass the result of te.compute or a topi op.")
    if inputs is None:
        inputs = [t for t in placeholders([output]) if str(t.dtype).startswith(("float", "bfloat"))]
    inputs = list(inputs)
    for x in inputs:
        if not isinstance(x, te.Tensor):
            raise DifferentiationError(f"inputs must be te.Tensors, got {type(x).__name__}.")
        _check_float(x, "input")
    _check_float(output, "output")
    if head is None:
        return inputs, _dims(output.shape)
    if not isinstance(head, te.Tensor):
        raise DifferentiationError(f"head must be a te.Tensor, got {type(head).__name__}.")
    n = len(output.shape)
    if len(head.shape) < n or not _same_dims(head.shape[len(head.shape) - n:], output.shape):
        raise DifferentiationError(
            f"head {head.name!r} has shape {_dims(head.shape)}, but the adjoint of output "
            f"{output.name!r} must have shape prefix + {_dims(output.shape)}.")
    if str(head.dtype) != str(output.dtype):
        raise DifferentiationError(
            f"head {head.name!r} has dtype {head.dtype}, but output {output.name!r} has dtype "
            f"{output.dtype}; cast one of them.")
    return inputs, _dims(head.shape[:len(head.shape) - n])


class _Manual:
    """The `manual=` table: (out, in) -> fn, with None as a wildcard on either side."""

    def __init__(self, table: Optional[dict], remap: dict):
        self.table = dict(table or {})
        self.remap = remap
        self.used: set = set()

    def lookup(self, out: te.Tensor, inp: te.Tensor) -> Optional[tuple]:
        back = TensorMap((new, old) for old, new in self.remap.items())
        o, i = back.get(out, out), back.get(inp, inp)
        matches = [k for k in self.table
                   if (k[0] is None or same_tensor(k[0], o)) and (k[1] is None or same_tensor(k[1], i))]
        if not matches:
            return None
        # The most specific entry wins: (out, in), then (out, *), (*, in), (*, *).
        key = min(matches, key=lambda k: (k[0] is None, k[1] is None))
        self.used.add(id(key))
        return key, self.table[key]

    def warn_unused(self):
        for key in self.table:
            if id(key) not in self.used:
                o, i = (k.name if k is not None else "*" for k in key)
                warnings.warn(f"manual entry ({o}, {i}) was never used: no op with that output reads "
                              f"that input on the way from the inputs to the output.", stacklevel=3)


def _materialize(name, prefix, shape, head_fn):
    return make_compute(name, list(prefix) + list(shape),
                        lambda *pi: head_fn(pi[:len(prefix)], pi[len(prefix):]))


def differentiate(output: te.Tensor, inputs: Optional[Sequence[te.Tensor]] = None,
                  head: Optional[te.Tensor] = None, manual: Optional[dict] = None,
                  optimize: bool = True, scatter: bool = True) -> Gradients:
    """Reverse-mode derivatives of `output` with respect to `inputs` (see README, API).

    `head` is the adjoint of output, shape prefix + output.shape; None means the identity, so the
    result is the full Jacobian, shape output.shape + input.shape.  `optimize=False` skips zero
    elimination (`tvm_autodiff.passes`), leaving the naive Iverson-bracket sums.  `scatter=False`
    keeps the adjoints of data-dependent gathers (take) as reductions instead of scatter-add
    extern kernels: slower, but differentiable again (`hessian` uses it).
    """
    inputs, prefix = _validate(output, inputs, head)
    (fwd_out, *fwd_inputs), remap = fold_where_init([output] + inputs)
    manual_table = _Manual(manual, remap)
    dtype = str(output.dtype)

    if head is None:
        def out_head(p, i):
            return bracket(p, i, dtype)
    else:
        def out_head(p, i):
            return head(*p, *i)

    ops = ops_post_order([fwd_out])
    needs = TensorMap((t, True) for t in fwd_inputs)
    for op in ops:
        if any(t in needs for t in op.input_tensors):
            needs.update((t, True) for t in outputs_of(op) if str(t.dtype).startswith(("float", "bfloat")))

    summands = TensorMap()     # tensor -> {consumer op: contribution}
    adjoint_tensors = TensorMap()
    edges = EdgeBuilder()

    def adjoint(t: te.Tensor) -> Optional[te.Tensor]:
        if t not in adjoint_tensors:
            parts = list(summands.get(t, {}).values())
            if same_tensor(t, fwd_out):
                adjoint_tensors[t] = head if head is not None else _materialize(
                    f"d{t.name}", prefix, t.shape, out_head)
            elif len(parts) <= 1:
                adjoint_tensors[t] = parts[0] if parts else None
            else:
                adjoint_tensors[t] = make_compute(f"d{t.name}", parts[0].shape,
                                                  lambda *a: _sum(p(*a) for p in parts))
        return adjoint_tensors[t]

    def head_reader(t: te.Tensor) -> Optional[Callable]:
        if same_tensor(t, fwd_out):
            return out_head
        adj = adjoint(t)
        return None if adj is None else (lambda p, i, adj=adj: adj(*p, *i))

    for op in reversed(ops):
        if isinstance(op, te.PlaceholderOp):
            continue
        outs = outputs_of(op)
        heads = [head_reader(t) if t in needs else None for t in outs]
        if all(h is None for h in heads):
            continue
        for x in TensorMap((t, None) for t in op.input_tensors):
            if x not in needs:
                continue
            contrib = _edge(op, outs, heads, x, prefix, manual_table, edges, adjoint)
            if contrib is not None:
                summands.setdefault(x, {})[op] = contrib

    manual_table.warn_unused()
    back = TensorMap((new, old) for old, new in remap.items())
    grads = []
    for x, fx in zip(inputs, fwd_inputs):
        g = adjoint(fx) if (fx in summands or same_tensor(fx, fwd_out)) else None
        grads.append(g if g is not None else make_compute(
            f"d{x.name}", list(prefix) + list(x.shape), lambda *a, x=x: tirx.const(0, str(x.dtype))))
    adjoints = TensorMap((back.get(t, t), adjoint(t)) for t in [fwd_out, *summands])
    adjoint_summands = TensorMap(
        (back.get(t, t), TensorMap((back.get(c, c), s) for op, s in per.items() for c in outputs_of(op)))
        for t, per in summands.items())
    if optimize:
        grads, adjoints, adjoint_summands = _eliminate_zeros(grads, adjoints, adjoint_summands, scatter)
    return Gradients(inputs, grads, adjoints, adjoint_summands)


def _eliminate_zeros(grads, adjoints, adjoint_summands, scatter):
    """Zero elimination and factor hoisting over every tensor of the result at once, so shared
    adjoints stay shared.  Hoisting can turn sums over Kronecker deltas into sums that a second
    elimination round removes (the bracket moves into the hoisted sum's own body)."""
    from .passes import eliminate_zeros  # the passes import this package's graph utilities
    from .passes.factor import hoist

    everything = grads + list(adjoints.values()) + [s for per in adjoint_summands.values()
                                                    for s in per.values()]
    hoisted, rewritten = hoist(eliminate_zeros(everything, scatter))
    optimized = TensorMap(zip(everything, eliminate_zeros(hoisted, scatter, ops=rewritten)))
    return ([optimized[g] for g in grads],
            TensorMap((t, optimized[a]) for t, a in adjoints.items()),
            TensorMap((t, TensorMap((c, optimized[s]) for c, s in per.items()))
                      for t, per in adjoint_summands.items()))


def _sum(terms):
    terms = iter(terms)
    total = next(terms)
    for t in terms:
        total = total + t
    return total


def _edge(op, outs, heads, x, prefix, manual, edges: EdgeBuilder, adjoint) -> Optional[te.Tensor]:
    """x's adjoint contribution from consumer op: manual entries first, then the automatic rule."""
    entries = [(t, manual.lookup(t, x)) for t, h in zip(outs, heads) if h is not None]
    if any(e is not None for _, e in entries):
        parts = []
        for t, entry in entries:
            if entry is None:
                continue
            key, fn = entry
            part = fn(t, x, adjoint(t))
            want = list(prefix) + _dims(x.shape)
            if not isinstance(part, te.Tensor) or not _same_dims(part.shape, want) \
                    or str(part.dtype) != str(x.dtype):
                got = (f"shape {_dims(part.shape)} and dtype {part.dtype}"
                       if isinstance(part, te.Tensor) else type(part).__name__)
                raise DifferentiationError(
                    f"manual entry for ({t.name}, {x.name}) returned {got}; it must return a "
                    f"te.Tensor of shape {want} and dtype {x.dtype}.")
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return make_compute(f"d{x.name}_from_{op.name}", parts[0].shape,
                            lambda *a: _sum(p(*a) for p in parts))
    if not isinstance(op, te.ComputeOp):
        from .passes.scatter import SCATTER_TAG  # the passes import this package's graph utilities

        hint = _MANUAL_HINT
        if op.tag == SCATTER_TAG:
            hint = ("It is the scatter-add that zero elimination made of a gather's adjoint: compute "
                    "that gradient with differentiate(..., scatter=False) to differentiate it again.")
        raise DifferentiationError(
            f"cannot differentiate {type(op).__name__} {op.name!r} (output {outs[0].name!r}) with "
            f"respect to its input {x.name!r}: it has no tensor-expression body. " + hint)
    try:
        return edges.contribution(op, heads, x, prefix, f"d{x.name}_from_{op.name}")
    except NoDerivativeRule as err:
        raise DifferentiationError(
            f"no derivative rule for {err.what} in op {op.name!r} (output {outs[0].name!r}), "
            f"differentiating with respect to {x.name!r}. " + _MANUAL_HINT) from None
