"""Reverse accumulation over a TE graph: the public `differentiate`.

`differentiate` runs these steps:

1. check every argument before any work (`_inputs`, `_head_prefix`, `_checked_manual`, the
   flags), so a wrong one is an error that names it;
2. fold `where=` and `init=` into the reductions (`fold_where_init`: `te.create_prim_func` drops
   them, docs/tvm-0.27.md, "create_prim_func drops where= and init=");
3. the backward sweep (`_Sweep`): ops are visited newest first, and the adjoint of a tensor is the
   sum of the contributions of its consumers (`adjoint_summands`), materialized as its own tensor
   when there are several, because it is read many times.  Each contribution comes from a
   `manual=` entry or from `edges.EdgeBuilder`.  A float scalar variable among the inputs
   (`te.var`) is consumed by every op whose bodies read it; its tangent seed is 1
   (`edges.read_seed`), so its gradient is the sum over output indices of head · ∂body/∂v;
4. collect the result (`_gradients`), in the caller's tensors;
5. unless `optimize=False`, zero elimination and factor hoisting, then crop fusion over the
   gradients (`_eliminate_zeros`).
"""
from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Callable, Optional, Sequence

from tvm import sym, te, tirx

from tvm_autodiff.errors import ArgumentTypeError, DifferentiationError, as_list, check_bool, describe
from tvm_autodiff.ir.expr import add_all, free_vars, is_float
from tvm_autodiff.ir.graph import (SCATTER_TAG, TensorMap, make_compute, ops_post_order, outputs_of,
                                   placeholders, same_tensor)
from tvm_autodiff.ir.reductions import fold_where_init
from tvm_autodiff.passes import eliminate_zeros, fuse_crops
from tvm_autodiff.passes.factor import hoist

from .edges import EdgeBuilder, bracket, shape_and_dtype
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


def differentiate(output: te.Tensor, inputs=None, head: Optional[te.Tensor] = None,
                  manual: Optional[dict] = None, optimize: bool = True, scatter: bool = True) -> Gradients:
    """Reverse-mode derivatives of `output` with respect to `inputs` (see README, API).

    `inputs` is a list of tensors and float scalar variables (`te.var`), or one of them (a
    one-element result); None means every float placeholder that output reads.  The gradient of
    a scalar variable has shape prefix + (): the sum over all output indices of head · ∂body/∂v.
    `head` is the adjoint of output, shape prefix + output.shape; None means the identity, so the
    result is the full Jacobian, shape output.shape + input.shape.  `optimize=False` skips zero
    elimination (`tvm_autodiff.passes`), leaving the naive Iverson-bracket sums.  `scatter=False`
    keeps the adjoints of data-dependent gathers (take) as reductions instead of scatter-add
    extern kernels: slower, but differentiable again (`hessian` uses it).  The steps are those of
    the module docstring.
    """
    inputs = _inputs(output, inputs)
    prefix = _head_prefix(output, head)
    check_bool("optimize", optimize)
    check_bool("scatter", scatter)
    manual = _checked_manual(manual)
    fwd_out, fwd_inputs, remap = _fold(output, inputs)
    manual_table = _Manual(manual, remap)
    ops = ops_post_order([fwd_out])
    sweep = _Sweep(fwd_out, head, prefix, manual_table)
    scalar_reads = _scalar_reads(ops, fwd_inputs)
    sweep.run(ops, _needs_adjoint(ops, fwd_inputs, scalar_reads), scalar_reads)
    manual_table.warn_unused()
    result = _gradients(inputs, fwd_inputs, sweep, remap)
    forward = set(ops_post_order([fwd_out] + ([head] if head is not None else [])))
    return _eliminate_zeros(result, scatter, forward) if optimize else result


# -- 1. checks -------------------------------------------------------------------------------------

_INPUTS = "a te.Tensor, a float scalar te.var, or a list of them"


def _dims(shape) -> list:
    return [int(s) if isinstance(s, tirx.IntImm) else s for s in shape]


def _same_dims(a, b) -> bool:
    ana = sym.Analyzer()
    return len(a) == len(b) and all(ana.can_prove_equal(x, y) for x, y in zip(a, b))


def _check_float(t, role: str):
    if not is_float(t):
        kind = "scalar variable" if isinstance(t, tirx.Var) else "tensor"
        what = "the output" if role == "output" else f"with respect to {role}"
        raise DifferentiationError(
            f"cannot differentiate {what} {t.name!r}, an integer {kind} of dtype "
            f"{t.dtype if isinstance(t, te.Tensor) else t.ty.dtype}: only floating-point tensors and "
            f"variables have gradients (integers such as indices have zero derivative; leave them "
            f"out of `inputs`).")


def check_output(output, function: str = "differentiate") -> None:
    if not isinstance(output, te.Tensor):
        raise ArgumentTypeError(
            f"{function}() needs a te.Tensor as output, got {describe(output)}. "
            "Pass the result of te.compute or a topi op.")
    _check_float(output, "output")


def check_input(x, name: str) -> None:
    """`x` (the argument `name`) is a float te.Tensor or a float scalar variable."""
    if not isinstance(x, (te.Tensor, tirx.Var)):
        raise ArgumentTypeError(f"{name} must be a te.Tensor or a float scalar te.var, got "
                                f"{describe(x)}.")
    _check_float(x, name)


def _inputs(output, inputs) -> list:
    """The inputs to differentiate with respect to (None: every float placeholder that output
    reads), after checking them and the output."""
    check_output(output)
    if inputs is None:
        return [t for t in placeholders([output]) if is_float(t)]
    inputs = as_list(inputs, "inputs", _INPUTS, single=(te.Tensor, tirx.Var))
    for n, x in enumerate(inputs):
        check_input(x, f"inputs[{n}]")
    return inputs


def _head_prefix(output: te.Tensor, head) -> list:
    """The prefix of head's shape before output's shape (head=None: output's shape), after
    checking head's shape and dtype."""
    if head is None:
        return _dims(output.shape)
    if not isinstance(head, te.Tensor):
        raise ArgumentTypeError(f"head must be a te.Tensor or None, got {describe(head)}.")
    n = len(output.shape)
    if len(head.shape) < n or not _same_dims(head.shape[len(head.shape) - n:], output.shape):
        raise DifferentiationError(
            f"head {head.name!r} has shape {_dims(head.shape)}, but the adjoint of output "
            f"{output.name!r} must have shape prefix + {_dims(output.shape)}.")
    if str(head.dtype) != str(output.dtype):
        raise DifferentiationError(
            f"head {head.name!r} has dtype {head.dtype}, but output {output.name!r} has dtype "
            f"{output.dtype}; cast one of them.")
    return _dims(head.shape[:len(head.shape) - n])


_MANUAL_FORM = ("manual maps (out_tensor, in_tensor) pairs, either of them None as a wildcard, to "
                "functions fn(out, inp, head) that return inp's adjoint contribution, e.g. "
                "manual={(Y, X): fn}")


def _entry(key) -> str:
    return "(" + ", ".join("None" if k is None else k.name for k in key) + ")"


def _check_manual_key(key) -> None:
    if isinstance(key, tuple) and len(key) == 2 and all(k is None or isinstance(k, te.Tensor)
                                                        for k in key):
        return
    hint = ""
    if isinstance(key, te.Tensor):
        hint = (f" For every input of {key.name!r}'s op write ({key.name}, None); for every "
                f"consumer of {key.name!r}, (None, {key.name}).")
    raise ArgumentTypeError(f"manual key {describe(key)} is not an (out_tensor, in_tensor) pair. "
                            f"{_MANUAL_FORM}.{hint}")


def _check_manual_fn(key, fn) -> None:
    if not callable(fn):
        raise ArgumentTypeError(f"manual entry {_entry(key)} maps to {describe(fn)}, which is not "
                                f"callable; {_MANUAL_FORM}.")
    try:
        signature = inspect.signature(fn)
    except ValueError:      # a builtin without a signature: its arity shows when it is called
        return
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise ArgumentTypeError(
            f"manual entry {_entry(key)}: {getattr(fn, '__name__', 'the function')}{signature} "
            f"cannot be called as fn(out, inp, head); {_MANUAL_FORM}.") from None


def _checked_manual(manual) -> dict:
    """The `manual=` table after checking every key and function."""
    if manual is None:
        return {}
    if not isinstance(manual, Mapping):
        raise ArgumentTypeError(f"manual must be a dict, got {describe(manual)}. {_MANUAL_FORM}.")
    for key, fn in manual.items():
        _check_manual_key(key)
        _check_manual_fn(key, fn)
    return dict(manual)


class _Manual:
    """The `manual=` table: (out, in) -> fn, with None as a wildcard on either side."""

    def __init__(self, table: dict, remap: dict):
        self.table = table
        self.remap = remap
        self.used: set = set()

    def lookup(self, out: te.Tensor, inp: te.Tensor) -> Optional[Callable]:
        """The function of the most specific entry for the edge (out, inp), or None."""
        back = TensorMap((new, old) for old, new in self.remap.items())
        o, i = back.get(out, out), back.get(inp, inp)
        matches = [k for k in self.table
                   if (k[0] is None or same_tensor(k[0], o)) and (k[1] is None or same_tensor(k[1], i))]
        if not matches:
            return None
        # The most specific entry wins: (out, in), then (out, *), (*, in), (*, *).
        key = min(matches, key=lambda k: (k[0] is None, k[1] is None))
        self.used.add(id(key))
        return self.table[key]

    def warn_unused(self):
        for key in self.table:
            if id(key) not in self.used:
                warnings.warn(f"manual entry {_entry(key)} was never used: no op with that output reads "
                              f"that input on the way from the inputs to the output.", stacklevel=3)


# -- 3. the backward sweep -------------------------------------------------------------------------


def _fold(output: te.Tensor, inputs: list) -> tuple:
    """(output, inputs, remap) with where= and init= folded into the reductions; scalar variables
    stay as they are."""
    tensors = [x for x in inputs if isinstance(x, te.Tensor)]
    (fwd_out, *folded), remap = fold_where_init([output] + tensors)
    folded = iter(folded)
    return fwd_out, [next(folded) if isinstance(x, te.Tensor) else x for x in inputs], remap


def _scalar_reads(ops: list, inputs: list) -> dict:
    """{op: the scalar-variable inputs that its bodies read}, for the ops that read any."""
    scalars = [x for x in inputs if isinstance(x, tirx.Var)]
    reads = {}
    for op in ops:
        if scalars and isinstance(op, te.ComputeOp):
            used = set().union(*(free_vars(b) for b in op.body))
            if hit := [v for v in scalars if v in used]:
                reads[op] = hit
    return reads


def _needs_adjoint(ops: list, inputs: list, scalar_reads: dict) -> TensorMap:
    """The tensor inputs and every float tensor that ops compute from the inputs (ops in post
    order)."""
    needs = TensorMap((t, True) for t in inputs if isinstance(t, te.Tensor))
    for op in ops:
        if op in scalar_reads or any(t in needs for t in op.input_tensors):
            needs.update((t, True) for t in outputs_of(op) if is_float(t))
    return needs


def _total(name: str, parts: list) -> Optional[te.Tensor]:
    """The sum of adjoint contributions (None: zero), its own tensor when there are several,
    because it is read many times."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    return make_compute(name, parts[0].shape, lambda *a: add_all(p(*a) for p in parts))


class _Sweep:
    """The backward sweep from `output`: `summands[t]` maps each consumer op of t to its
    contribution to t's adjoint; `scalar_summands[v]` the same for each scalar-variable input v,
    whose consumers are the ops whose bodies read it."""

    def __init__(self, output: te.Tensor, head: Optional[te.Tensor], prefix: list, manual: _Manual):
        self.output, self.head, self.prefix, self.manual = output, head, prefix, manual
        self.summands = TensorMap()      # tensor -> {consumer op: contribution}
        self.scalar_summands: dict = {}  # variable -> {consumer op: contribution}
        self._adjoints = TensorMap()
        self.edges = EdgeBuilder()
        dtype = str(output.dtype)
        if head is None:
            self.out_head = lambda p, i: bracket(p, i, dtype)
        else:
            self.out_head = lambda p, i: head(*p, *i)

    def run(self, ops: list, needs: TensorMap, scalar_reads: dict) -> None:
        """Visit `ops` (post order) newest first, adding each needed edge's contribution."""
        for op in reversed(ops):
            if isinstance(op, te.PlaceholderOp):
                continue
            outs = outputs_of(op)
            heads = [self.head_reader(t) if t in needs else None for t in outs]
            if all(h is None for h in heads):
                continue
            wrt = [x for x in TensorMap((t, None) for t in op.input_tensors) if x in needs]
            for x in wrt + scalar_reads.get(op, []):
                contrib = self.edge(op, outs, heads, x)
                if contrib is not None:
                    table = self.scalar_summands if isinstance(x, tirx.Var) else self.summands
                    table.setdefault(x, {})[op] = contrib

    def gradient(self, x) -> Optional[te.Tensor]:
        """The adjoint of the input x, a tensor or a scalar variable (None: zero)."""
        if isinstance(x, tirx.Var):
            return _total(f"d{x.name}", list(self.scalar_summands.get(x, {}).values()))
        return self.adjoint(x)

    def adjoint(self, t: te.Tensor) -> Optional[te.Tensor]:
        """t's adjoint: the sum of its summands (None: zero), materialized once."""
        if t not in self._adjoints:
            if same_tensor(t, self.output):
                self._adjoints[t] = self.head if self.head is not None else make_compute(
                    f"d{t.name}", list(self.prefix) + list(t.shape),
                    lambda *pi: self.out_head(pi[:len(self.prefix)], pi[len(self.prefix):]))
            else:
                self._adjoints[t] = _total(f"d{t.name}", list(self.summands.get(t, {}).values()))
        return self._adjoints[t]

    def head_reader(self, t: te.Tensor) -> Optional[Callable]:
        """`read(p, i)`, the element (p, i) of t's adjoint; None when it is zero."""
        if same_tensor(t, self.output):
            return self.out_head
        adj = self.adjoint(t)
        return None if adj is None else (lambda p, i, adj=adj: adj(*p, *i))

    def edge(self, op, outs, heads, x) -> Optional[te.Tensor]:
        """x's adjoint contribution from consumer op: manual entries first, then the automatic rule."""
        # manual= is keyed by tensors; a scalar variable's edges are always automatic.
        entries = [] if isinstance(x, tirx.Var) else [
            (t, self.manual.lookup(t, x)) for t, h in zip(outs, heads) if h is not None]
        if any(fn is not None for _, fn in entries):
            return self._manual_edge(op, entries, x)
        if not isinstance(op, te.ComputeOp):
            hint = _MANUAL_HINT
            if op.tag == SCATTER_TAG:
                hint = ("It is the scatter-add that zero elimination made of a gather's adjoint: compute "
                        "that gradient with differentiate(..., scatter=False) to differentiate it again.")
            raise DifferentiationError(
                f"cannot differentiate {type(op).__name__} {op.name!r} (output {outs[0].name!r}) with "
                f"respect to its input {x.name!r}: it has no tensor-expression body. " + hint)
        try:
            return self.edges.contribution(op, heads, x, self.prefix, f"d{x.name}_from_{op.name}")
        except NoDerivativeRule as err:
            hint = _MANUAL_HINT
            if err.key is not None:
                hint = (f"Register one with tvm_autodiff.register_rule({err.key!r}, rule), where "
                        "rule(e, d) returns the tangent of the call e. " + hint)
            raise DifferentiationError(
                f"no derivative rule for {err.what} in op {op.name!r} (output {outs[0].name!r}), "
                f"differentiating with respect to {x.name!r}. " + hint) from None

    def _manual_edge(self, op, entries: list, x) -> te.Tensor:
        """The sum of the manual entries' contributions, each checked for shape and dtype."""
        want = list(self.prefix) + _dims(x.shape)
        parts = []
        for t, fn in entries:
            if fn is None:
                continue
            part = fn(t, x, self.adjoint(t))
            if not isinstance(part, te.Tensor) or not _same_dims(part.shape, want) \
                    or str(part.dtype) != str(x.dtype):
                got = (f"shape {_dims(part.shape)} and dtype {part.dtype}"
                       if isinstance(part, te.Tensor) else type(part).__name__)
                raise DifferentiationError(
                    f"manual entry for ({t.name}, {x.name}) returned {got}; it must return a "
                    f"te.Tensor of shape {want} and dtype {x.dtype}.")
            parts.append(part)
        return _total(f"d{x.name}_from_{op.name}", parts)


# -- 4. and 5. the result --------------------------------------------------------------------------


def _gradients(inputs: list, fwd_inputs: list, sweep: _Sweep, remap: TensorMap) -> Gradients:
    """The gradients of `inputs` (zero tensors for those the output does not depend on) and the
    adjoints and summands, keyed by the caller's tensors rather than their folded copies."""
    back = TensorMap((new, old) for old, new in remap.items())
    grads = []
    for x, fx in zip(inputs, fwd_inputs):
        g = sweep.gradient(fx)
        shape, dtype = shape_and_dtype(x)
        grads.append(g if g is not None else make_compute(
            f"d{x.name}", list(sweep.prefix) + shape, lambda *a, dtype=dtype: tirx.const(0, dtype)))
    adjoints = TensorMap((back.get(t, t), sweep.adjoint(t)) for t in [sweep.output, *sweep.summands])
    adjoint_summands = TensorMap(
        (back.get(t, t), TensorMap((back.get(c, c), s) for op, s in per.items() for c in outputs_of(op)))
        for t, per in sweep.summands.items())
    return Gradients(inputs, grads, adjoints, adjoint_summands)


def _eliminate_zeros(result: Gradients, scatter: bool, forward: set) -> Gradients:
    """Zero elimination and factor hoisting over every tensor of the result at once, so shared
    adjoints stay shared.  Hoisting can turn sums over Kronecker deltas into sums that a second
    elimination round removes (the bracket moves into the hoisted sum's own body).  The ops of
    the forward graph and the head (`forward`) stay as they are: the caller computes them anyway
    (the loss of a training step), and a rewritten copy would compute every forward value after
    it a second time (a batch norm's mean of shape (1, C, 1, 1) hoisted to (C,) duplicated the
    convolutions behind it in the ResNet step of benchmarks/models.py)."""
    everything = result.grads + list(result.adjoints.values()) + [
        s for per in result.adjoint_summands.values() for s in per.values()]
    backward = set(ops_post_order(everything)) - forward
    hoisted, rewritten = hoist(eliminate_zeros(everything, scatter, ops=backward), keep=forward)
    optimized = TensorMap(zip(everything, eliminate_zeros(hoisted, scatter, ops=rewritten)))
    # Crops are fused over the gradients' graph alone: every intermediate adjoint is also a
    # result (`adjoints`), so over everything no crop's reduction would have a single reader.
    grads = fuse_crops([optimized[g] for g in result.grads])
    return Gradients(result.inputs, grads,
                     TensorMap((t, optimized[a]) for t, a in result.adjoints.items()),
                     TensorMap((t, TensorMap((c, optimized[s]) for c, s in per.items()))
                               for t, per in result.adjoint_summands.items()))
