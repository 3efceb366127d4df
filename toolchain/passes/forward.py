"""Forward-mode differentiation (Jacobian-vector products) ahead of time, as a graph
transformation.

`forward(g)` turns an imported graph into one graph that computes, from the model's inputs
and a tangent per float input, the model's outputs and a tangent per float output: for
each node on the path from a float input to a float output, its derivative rule (`Op.jvp`,
next to its shape rule and reference) adds nodes of existing ops computing the tangents of
its outputs from those of its inputs. Primal and tangent computation are interleaved, so
a forward value dies as soon as both have read it; nothing is saved for later (no
residuals), and the usual pipeline and planner then run on the one graph.

Activity analysis: only nodes that depend on a float input and reach a float output get a
rule; a value that depends on no input has no tangent (a zero tangent is never built, a
zero output tangent is a constant). Initializers stay read-only constants: the derivative
is with respect to the inputs only.

Where the nodes rules built go (`_place_rule_nodes`): primal and tangent nodes interleave,
each rule's nodes right after its node. A tangent node that reads no forward value (a
Conv of a tangent with the model's weights, a Reshape of a tangent) waits until its first
reader, and so does a node that reads forward values only (Relu's mask), unless it is the
last to read one of them. So a tangent Gemm still meets the tangent BatchNorm (folded into
it as the forward one is), and Relu's mask is made after the tangent Conv it multiplies,
never alive while that Conv runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CompileError, InternalError, UnsupportedError
from ..ir import Graph, Value
from ..ops import registry
from .autodiff import Builder, _is_float, refuse_integer_paths
from .cleanup import eliminate_dead_code
from .verify import verify



@dataclass
class JvpProgram:
    graph: Graph  # inputs: the model's, then a tangent per wrt input; outputs likewise
    n_inputs: int  # graph.inputs[:n_inputs] are the model's inputs
    n_outputs: int  # graph.outputs[:n_outputs] are the model's outputs
    wrt_inputs: list  # indices of the model inputs that take a tangent (the float ones)
    tan_outputs: list  # indices of the model outputs that give a tangent (the float ones)

    @property
    def input_tangents(self) -> list:
        return self.graph.inputs[self.n_inputs:]

    @property
    def output_tangents(self) -> list:
        return self.graph.outputs[self.n_outputs:]


class TangentBuilder(Builder):
    """What a forward-mode rule builds with: nodes of registered ops in the same graph as the
    forward computation, which reads forward values where they are."""

    tag = "jvp"

    def __init__(self, g: Graph):
        super().__init__(g, {}, set())

    def primal(self, v: Value | None) -> Value | None:
        return v

    def expand(self, v: Value, shape) -> Value:
        """A tangent of a broadcast operand, broadcast to the result's shape."""
        shape = tuple(int(d) for d in shape)
        return v if v.type.shape == shape else self.op("Expand", [v], shape=list(shape))

    def zeros(self, like: Value) -> Value:
        return self.g.const("zero", np.zeros(like.type.shape, like.type.dtype))

    def add(self, terms: list) -> Value | None:
        """The sum of the terms that are not None (None if all are)."""
        terms = [t for t in terms if t is not None]
        if not terms:
            return None
        acc = terms[0]
        for t in terms[1:]:
            acc = self.op("Add", [acc, t])
        return acc


def forward(g: Graph) -> JvpProgram:
    """The JVP graph of `g` (changed in place) with respect to its float inputs."""
    if g.batch is not None:
        raise UnsupportedError("derivatives of a bounded-batch build (--dim N<=...) are not supported")
    n_inputs, n_outputs = len(g.inputs), len(g.outputs)
    wrt = [i for i, v in enumerate(g.inputs) if _is_float(v)]
    tan_outputs = [j for j, v in enumerate(g.outputs) if _is_float(v)]
    tangent_in = [Value(g.unique(f"d_{g.inputs[i].name}"), g.inputs[i].type) for i in wrt]
    tan = {id(g.inputs[i]): t for i, t in zip(wrt, tangent_in)}

    varied = set(tan)
    for node in g.nodes:
        if any(v is not None and id(v) in varied for v in node.inputs):
            varied.update(id(o) for o in node.outputs)
    useful = {id(g.outputs[j]) for j in tan_outputs}
    for node in reversed(g.nodes):
        if any(id(o) in useful for o in node.outputs):
            useful.update(id(v) for v in node.inputs if v is not None)

    b = TangentBuilder(g)
    forward_nodes, g.nodes = g.nodes, []
    for node in forward_nodes:
        g.nodes.append(node)
        if not any(id(o) in useful for o in node.outputs):
            continue
        if not any(v is not None and id(v) in varied for v in node.inputs):
            continue
        refuse_integer_paths(node, varied, useful)
        tangents = [None if v is None else tan.get(id(v)) for v in node.inputs]
        if all(t is None for t in tangents):
            continue
        if node.epilogue:
            raise InternalError("forward mode runs before fusion", node=node.name, op=node.op)
        b.node = node
        try:
            results = registry.get(node.op).jvp(b, node, tangents)
        except CompileError as e:
            raise e.at(node.name, node.op) from None
        for o, t in zip(node.outputs, results):
            if t is None:
                continue
            if t.type != o.type:
                raise InternalError(f"derivative rule gave {t.type} for output {o.name}: {o.type}",
                                    node=node.name, op=node.op)
            tan[id(o)] = t

    for j in tan_outputs:
        v = g.outputs[j]
        g.outputs.append(tan[id(v)] if id(v) in tan else g.const(f"zero_d_{v.name}", np.zeros(v.type.shape,
                                                                                              v.type.dtype)))
    names = g.output_names or [v.name for v in g.outputs[:n_outputs]]
    g.output_names = list(names[:n_outputs]) + [f"d_{names[j]}" for j in tan_outputs]
    g.inputs = g.inputs + tangent_in
    eliminate_dead_code(g)
    _place_rule_nodes(g, {id(t) for t in tangent_in}, set(map(id, forward_nodes)))
    verify(g)
    return JvpProgram(g, n_inputs, n_outputs, wrt, tan_outputs)


def _place_rule_nodes(g: Graph, tangent_inputs: set, forward_nodes: set):
    """Moves to just before its first reader each node a rule built that reads only tangents
    (and constants), which extends no forward value's life, and each that reads only forward
    values without being the last reader of any (Relu's mask: computing it later keeps it
    out of the way of the tangent nodes placed before its reader). Nodes that combine the
    two, and those nobody reads, stay where their rule put them."""
    tangent = set(tangent_inputs)
    for node in g.nodes:
        if id(node) not in forward_nodes and any(v is not None and id(v) in tangent for v in node.inputs):
            tangent.update(id(o) for o in node.outputs)
    users = g.users()
    last_reader = {}
    for node in g.nodes:
        for v in node.inputs:
            if v is not None:
                last_reader[id(v)] = node
    outputs = {id(v) for v in g.outputs}

    def deferred(node):
        if id(node) in forward_nodes or any(id(o) in outputs for o in node.outputs) or not any(
                users.get(id(o)) for o in node.outputs):
            return False
        read = [v for v in node.inputs if v is not None and not v.is_const]
        if all(id(v) in tangent for v in read):
            return True
        return not any(id(v) in tangent for v in read) and not any(last_reader[id(v)] is node for v in read)

    held: dict = {}  # id(output) -> the waiting node producing it
    order: list = []
    seen: set = set()

    def place(node):  # the waiting producers of its inputs first (depth first, iteratively)
        stack = [(node, False)]
        while stack:
            n, ready = stack.pop()
            if ready:
                order.append(n)
                continue
            if id(n) in seen:
                continue
            seen.add(id(n))
            for o in n.outputs:
                held.pop(id(o), None)
            stack.append((n, True))
            stack += [(held[id(v)], False) for v in reversed(n.inputs) if v is not None and id(v) in held]

    for node in g.nodes:
        if deferred(node):
            held.update({id(o): node for o in node.outputs})
        else:
            place(node)
    if held:
        raise InternalError(f"forward mode: {len(held)} tangent value(s) computed for no reader")
    g.nodes = order
