"""Control flow at import: If, Loop and Scan become plain dataflow in the one graph.

A subgraph's nodes are imported into the model's graph by the same importer (each node
canonicalized, typed and folded at once), in a scope that is a copy of the outer one
with the subgraph's inputs bound: outer-scope names resolve, the graph's `unique` keeps
node and value names apart (a subgraph node is named `<control node>/<iteration or
branch>/<its name>`), and the subgraph's outputs become the control node's. A subgraph
holding control flow of its own goes through the same recursion.

- If: a condition known at compile time (a constant, or folded at import: the condition
  of an expanded function is often a shape test) imports the taken branch only. A
  condition computed at run time imports both branches and selects each output with
  Where (both branches are computed), when the branches' outputs have the same types and
  shapes and no node of either branch may fault on values the condition rules out (an
  integer division by a run-time divisor, a Gather at run-time indices); otherwise the If
  is refused.
- Loop: a trip count M known at compile time (or none: a while loop), with a condition
  that is absent or a constant and a body whose condition output is a constant each
  iteration (it may stop the loop early), is unrolled:
  the loop-carried values are threaded from one iteration's body to the next, each scan
  output is the iterations' values stacked (Reshape + Concat on axis 0). A run-time trip
  count or condition (data-dependent termination) is refused.
- Scan: the sequence length is a static dimension of the scan inputs, so it always
  unrolls: each iteration reads element t of each scan input (Gather on its axis, in its
  direction), the state is threaded, the scan outputs are stacked on their axes (in their
  directions). Scan-8 (opset 8: a batch axis first, optional sequence_lens) unrolls per
  batch item and stacks the items.

Unrolling is bounded: the nodes an outermost Loop or Scan unrolls into (iterations x
its body's nodes, an If's branches counted; a nested Loop or Scan counts as one node and
charges its own unrolled nodes, every time it is unrolled, to the same budget) must stay
within UNROLL_LIMIT, checked before a Scan unrolls and at each iteration of a Loop (which
may stop early: a trip count of 2**63-1 with a condition that turns false is a while
loop); past it the node is refused (a loop in generated code is not supported).
"""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidModelError, UnsupportedError
from ..ir import Value

OPS = ("If", "Loop", "Scan")
UNROLL_LIMIT = 2000  # iterations x body nodes an unrolled Loop or Scan may add
GRAPH = onnx.AttributeProto.GRAPH


def inline(imp, proto: onnx.NodeProto, name: str, env: dict[str, Value]):
    """Imports control-flow node `proto` as dataflow; binds its outputs in `env`."""
    outs = {"If": _if, "Loop": _loop, "Scan": _scan}[proto.op_type](imp, proto, name, env)
    if len(outs) < len([o for o in proto.output if o]):
        raise InvalidModelError(f"{len(proto.output)} outputs, but the body gives {len(outs)}",
                                node=name, op=proto.op_type)
    for onnx_name, v in zip(proto.output, outs):
        if onnx_name:
            env[onnx_name] = v


def body_size(graph: onnx.GraphProto) -> int:
    """Nodes in `graph`, with an If's branches' nodes (a nested Loop or Scan is one node:
    it charges its own unrolling)."""
    return sum(1 + (sum(body_size(s) for s in _subgraphs(n)) if n.op_type not in ("Loop", "Scan") else 0)
               for n in graph.node)


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == GRAPH:
            yield a.g
        yield from a.graphs


# -- helpers ----------------------------------------------------------------------------
class _Ctx:
    def __init__(self, imp, proto, name, env):
        self.imp, self.proto, self.name, self.env = imp, proto, name, env
        self.op = proto.op_type

    def invalid(self, msg):
        return InvalidModelError(msg, node=self.name, op=self.op)

    def unsupported(self, msg):
        return UnsupportedError(msg, node=self.name, op=self.op)

    def input(self, k) -> Value | None:
        if k >= len(self.proto.input) or not self.proto.input[k]:
            return None
        x = self.proto.input[k]
        if x not in self.env:
            raise self.invalid(f"input '{x}' is not produced by any earlier node")
        return self.env[x]

    def inputs(self, start) -> list[Value]:
        vals = [self.input(k) for k in range(start, len(self.proto.input))]
        if any(v is None for v in vals):
            raise self.invalid("an empty name among the loop-carried or scanned inputs")
        return vals

    def graph(self, key) -> onnx.GraphProto:
        for a in self.proto.attribute:
            if a.name == key and a.type == GRAPH:
                return a.g
        raise self.invalid(f"missing subgraph attribute '{key}'")

    def attr(self, key, default=None):
        for a in self.proto.attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        return default

    def const(self, tag, data) -> Value:
        return self.imp.g.const(f"{self.name}_{tag}", np.asarray(data))

    def emit(self, op, tag, inputs, **attrs) -> Value:
        return self.imp.emit(op, f"{self.name}/{tag}", inputs, attrs, source=self.name)[0]

    def run(self, body: onnx.GraphProto, bindings: list[Value], prefix: str) -> list[Value]:
        """Imports `body` with its inputs bound to `bindings`; its outputs."""
        if len(body.input) != len(bindings):
            raise self.invalid(f"subgraph '{body.name}' has {len(body.input)} inputs, {len(bindings)} expected")
        scope = dict(self.env)
        for vi, v in zip(body.input, bindings):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.elem_type:
                want = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
                if want != v.type.dtype:
                    raise self.invalid(f"subgraph '{body.name}' input '{vi.name}' is declared {want}, "
                                       f"given {v.type.dtype}")
            scope[vi.name] = v
        self.imp.nodes(body, scope, f"{self.name}/{prefix}/")
        outs = []
        for vi in body.output:
            if vi.name not in scope:
                raise self.invalid(f"subgraph '{body.name}' output '{vi.name}' is not produced by any node")
            outs.append(scope[vi.name])
        return outs

    @contextlib.contextmanager
    def unrolled(self, trips: int | None, body: onnx.GraphProto, what: str, lazy: bool = False):
        """Unrolling `body` `trips` times (None: until its condition output turns false),
        charged to the budget of the outermost Loop or Scan being unrolled (which this one
        opens when it is the outermost): all at once, or (lazy) one iteration at a time
        through the function it yields, so a loop that stops early is charged only for the
        iterations it runs."""
        n = body_size(body)
        outer = getattr(self.imp, "unrolling", None)
        budget = outer or [self.name, 0]

        def charge(nodes):
            budget[1] += nodes
            if budget[1] > UNROLL_LIMIT:
                within = f" (inside the unrolled '{outer[0]}': over {UNROLL_LIMIT} nodes in all)" if outer else ""
                count = f"{trips} times" if trips is not None else "until its condition turns false"
                made = f"makes {trips * n} nodes" if trips is not None else f"goes past {UNROLL_LIMIT} nodes"
                raise self.unsupported(f"unrolling {what} {count} over a {n}-node body {made}{within}, over the "
                                       f"limit of {UNROLL_LIMIT} (iterations x body nodes); a loop in generated "
                                       f"code is not supported")
        if not lazy:
            charge(trips * n)
        self.imp.unrolling = budget
        try:
            yield (lambda: charge(n)) if lazy else (lambda: None)
        finally:
            self.imp.unrolling = outer

    def stack(self, vals: list[Value], axis: int, tag: str) -> Value:
        """The values (of one type) stacked along a new axis `axis`."""
        t = vals[0].type
        for i, v in enumerate(vals):
            if v.type != t:
                raise self.unsupported(f"{tag} is {t} at iteration 0 but {v.type} at iteration {i}: "
                                       f"stacking values of different shapes is not supported")
        rank = len(t.shape) + 1
        if not -rank <= axis < rank:
            raise self.invalid(f"{tag}: axis {axis} out of range for rank {rank}")
        axis %= rank
        shape = self.const(f"{tag}_shape", [*t.shape[:axis], 1, *t.shape[axis:]])
        parts = [self.emit("Reshape", f"{tag}_{i}", [v, shape]) for i, v in enumerate(vals)]
        return parts[0] if len(parts) == 1 else self.emit("Concat", tag, parts, axis=axis)

    def empty(self, decl: onnx.ValueInfoProto, axis: int, tag: str) -> Value:
        """A scan output of no iterations: empty, its element shape from the body's declaration."""
        tt = decl.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not tt.elem_type or not tt.HasField("shape") or None in dims:
            raise self.unsupported(f"{tag} has no iterations and the body does not declare its shape "
                                   f"(not supported)")
        dims.insert(axis % (len(dims) + 1), 0)
        return self.const(tag, np.zeros(dims, helper.tensor_dtype_to_np_dtype(tt.elem_type)))


def _scalar(v: Value) -> np.generic:
    return np.asarray(v.data).reshape(-1)[0]


# -- If ---------------------------------------------------------------------------------
def _if(imp, proto, name, env) -> list[Value]:
    c = _Ctx(imp, proto, name, env)
    cond = c.input(0)
    then_g, else_g = c.graph("then_branch"), c.graph("else_branch")
    if cond is None or cond.type.size != 1:
        raise c.invalid("the condition must be a tensor of one element")
    if cond.is_const:
        taken = bool(_scalar(cond))
        return c.run(then_g if taken else else_g, [], "then" if taken else "else")
    start = len(imp.g.nodes)
    t = c.run(then_g, [], "then")
    middle = len(imp.g.nodes)
    e = c.run(else_g, [], "else")
    for branch, nodes in (("then", imp.g.nodes[start:middle]), ("else", imp.g.nodes[middle:])):
        for node in nodes:
            why = _unsafe_to_speculate(node)
            if why:
                raise c.unsupported(f"the condition is computed at run time, so both branches are computed, and "
                                    f"node '{node.name}' ({node.op}) of the {branch} branch {why}: computing it "
                                    f"when its branch is not taken is not supported")
    if len(t) != len(e):
        raise c.invalid(f"the then branch has {len(t)} outputs, the else branch {len(e)}")
    for k, (a, b) in enumerate(zip(t, e)):
        if a.type != b.type:
            raise c.unsupported(f"the condition is computed at run time and output {k} differs between the "
                                f"branches (then {a.type}, else {b.type}): both branches are computed and "
                                f"one result selected, which needs one type and shape (not supported "
                                f"otherwise; a condition known at compile time can choose between them)")
    if cond.type.shape != ():
        cond = c.emit("Reshape", "cond", [cond, c.const("scalar", np.zeros(0, np.int64))])
    return [a if a is b else c.emit("Where", f"select{k}", [cond, a, b]) for k, (a, b) in enumerate(zip(t, e))]


def _unsafe_to_speculate(node) -> str | None:
    """Why a node computed at run time may fault on values its If's condition rules out
    (both branches of a run-time If are computed), or None."""
    if node.op in ("Div", "Mod") and node.outputs[0].type.dtype not in ("float32", "float64", "float16"):
        d = node.inputs[1]
        if not (d.is_const and np.asarray(d.data).all()):
            return "divides integers by a value that may be zero (a trap)"
    if node.op == "Gather" and not node.inputs[1].is_const:
        return "reads at indices computed at run time (out of range, it reads outside its input)"
    return None


# -- Loop -------------------------------------------------------------------------------
def _loop(imp, proto, name, env) -> list[Value]:
    c = _Ctx(imp, proto, name, env)
    body = c.graph("body")
    m, cond, carried = c.input(0), c.input(1), c.inputs(2)
    if m is None and cond is None:
        raise c.unsupported("neither a trip count nor a condition: an infinite loop is not supported")
    if m is not None and not m.is_const:
        err = c.unsupported("the trip count M (input 0) must be a compile-time constant: the loop is unrolled, "
                            "and a trip count computed at run time is not supported")
        err.operand = 0  # the importer names the graph inputs it comes from (--bind)
        raise err
    if cond is not None and not cond.is_const:
        err = c.unsupported("the loop condition is computed at run time (data-dependent termination is not "
                            "supported; only a constant condition is)")
        err.operand = 1
        raise err
    # no M: until the condition output (a constant each iteration) turns false
    trips = None if m is None else max(int(_scalar(m)), 0)
    if cond is not None and not bool(_scalar(cond)):
        trips = 0
    n = len(carried)
    if len(body.input) != 2 + n or len(body.output) < 1 + n:
        raise c.invalid(f"the body has {len(body.input)} inputs and {len(body.output)} outputs for {n} "
                        f"loop-carried values")
    scans: list[list[Value]] = [[] for _ in body.output[1 + n:]]
    state = carried
    with c.unrolled(trips, body, "the loop", lazy=True) as charge:
        for t in itertools.count() if trips is None else range(trips):
            charge()
            outs = c.run(body, [_counter(c, body.input[0], t), _counter(c, body.input[1], True), *state], str(t))
            state = outs[1:1 + n]
            for k, v in enumerate(outs[1 + n:]):
                scans[k].append(v)
            if not outs[0].is_const:
                raise c.unsupported(f"the body's condition output is computed at run time (iteration {t}): "
                                    f"data-dependent termination is not supported")
            if not bool(_scalar(outs[0])):
                break
    return state + [c.stack(v, 0, f"scan{k}") if v else c.empty(body.output[1 + n + k], 0, f"scan{k}")
                    for k, v in enumerate(scans)]


def _counter(c: _Ctx, decl: onnx.ValueInfoProto, value) -> Value:
    """The iteration number (int64) or the condition (bool) a Loop body reads, in the shape
    its body declares (a scalar unless it declares [1])."""
    tt = decl.type.tensor_type
    shape = (1,) if tt.HasField("shape") and [d.dim_value for d in tt.shape.dim] == [1] else ()
    dtype = np.bool_ if isinstance(value, bool) else np.int64
    return c.const("cond" if dtype is np.bool_ else f"iter{value}", np.full(shape, value, dtype))


# -- Scan -------------------------------------------------------------------------------
def _scan(imp, proto, name, env) -> list[Value]:
    c = _Ctx(imp, proto, name, env)
    body = c.graph("body")
    n_scan = c.attr("num_scan_inputs")
    if not isinstance(n_scan, int) or n_scan < 1:
        raise c.invalid("attribute num_scan_inputs (a positive int) is required")
    if imp.opset < 9:
        return _scan8(c, body, n_scan)
    ins = c.inputs(0)
    if n_scan > len(ins):
        raise c.invalid(f"num_scan_inputs is {n_scan} but the node has {len(ins)} inputs")
    n_state = len(ins) - n_scan
    k = len(body.output) - n_state
    in_axes = c.attr("scan_input_axes", [0] * n_scan)
    in_dirs = c.attr("scan_input_directions", [0] * n_scan)
    out_axes = c.attr("scan_output_axes", [0] * k)
    out_dirs = c.attr("scan_output_directions", [0] * k)
    if len(in_axes) != n_scan or len(in_dirs) != n_scan or len(out_axes) != k or len(out_dirs) != k:
        raise c.invalid("scan_input_axes/directions need one entry per scan input, "
                        "scan_output_axes/directions one per scan output")
    return _unroll(c, body, ins[:n_state], ins[n_state:], in_axes, in_dirs, out_axes, out_dirs, "")


def _scan8(c: _Ctx, body, n_scan) -> list[Value]:
    """Scan-8: every input has a batch axis first; the body runs per item."""
    lens = c.input(0)
    ins = c.inputs(1)
    n_state = len(ins) - n_scan
    if n_state < 0:
        raise c.invalid(f"num_scan_inputs is {n_scan} but the node has {len(ins)} inputs after sequence_lens")
    dirs = c.attr("directions", [0] * n_scan)
    if len(dirs) != n_scan:
        raise c.invalid("directions needs one entry per scan input")
    if any(len(v.type.shape) < 1 for v in ins) or any(len(v.type.shape) < 2 for v in ins[n_state:]):
        raise c.invalid("Scan-8 inputs have a batch axis first (and scan inputs a sequence axis next)")
    batch = ins[0].type.shape[0]
    if any(v.type.shape[0] != batch for v in ins):
        raise c.invalid("the inputs' batch dimensions differ")
    length = ins[n_state].type.shape[1] if n_scan else 0
    if lens is not None and (not lens.is_const or (np.asarray(lens.data) != length).any()):
        raise c.unsupported(f"sequence_lens must be a compile-time constant equal to the sequence length "
                            f"{length} for every item (ragged sequences are not supported)")
    k = len(body.output) - n_state
    items = []
    with c.unrolled(batch * length, body, "the scan (batch x sequence)"):
        for b in range(batch):
            idx = c.const(f"item{b}", np.array(b, np.int64))
            sliced = [c.emit("Gather", f"item{b}_in{i}", [v, idx], axis=0) for i, v in enumerate(ins)]
            items.append(_unroll(c, body, sliced[:n_state], sliced[n_state:], [0] * n_scan, dirs, [0] * k,
                                 [0] * k, f"b{b}/"))
    return [c.stack([it[j] for it in items], 0, f"batch{j}") for j in range(len(body.output))]


def _unroll(c: _Ctx, body, state, xs, in_axes, in_dirs, out_axes, out_dirs, prefix) -> list[Value]:
    n_state = len(state)
    if len(body.input) != n_state + len(xs) or len(body.output) < n_state:
        raise c.invalid(f"the body has {len(body.input)} inputs and {len(body.output)} outputs for "
                        f"{n_state} state and {len(xs)} scan inputs")
    axes = []
    for x, a in zip(xs, in_axes):
        r = len(x.type.shape)
        if not -r <= a < r:
            raise c.invalid(f"scan input axis {a} out of range for rank {r}")
        axes.append(a % r)
    lengths = {x.type.shape[a] for x, a in zip(xs, axes)}
    if len(lengths) != 1:
        raise c.invalid(f"the scan inputs' sequence lengths differ: {sorted(lengths)}")
    length = lengths.pop()
    scans: list[list[Value]] = [[] for _ in body.output[n_state:]]
    with contextlib.nullcontext() if prefix else c.unrolled(length, body, "the scan"):  # Scan-8 charged per batch
        for t in range(length):
            elems = []
            for i, (x, a, d) in enumerate(zip(xs, axes, in_dirs)):
                at = t if d == 0 else length - 1 - t
                elems.append(c.emit("Gather", f"{prefix}{t}_in{i}", [x, c.const(f"t{at}", np.array(at, np.int64))],
                                    axis=a))
            outs = c.run(body, [*state, *elems], f"{prefix}{t}")
            state = outs[:n_state]
            for k, v in enumerate(outs[n_state:]):
                scans[k].append(v)
    results = list(state)
    for k, (vals, a, d) in enumerate(zip(scans, out_axes, out_dirs)):
        tag = f"{prefix}scan{k}"
        if not vals:
            results.append(c.empty(body.output[n_state + k], a, tag))
        else:
            results.append(c.stack(vals[::-1] if d else vals, a, tag))
    return results
