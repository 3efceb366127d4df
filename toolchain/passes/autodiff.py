"""Reverse-mode differentiation ahead of time, as a graph transformation.

`reverse(g, params)` takes an imported graph and returns two graphs:

- the primal: the original inputs and the float parameters (initializers, now graph
  inputs instead of constants), computing the original outputs and then the residuals,
  the forward values the pullback reads;
- the pullback: inputs are the residuals, then a cotangent per float output, then the
  parameters it reads; outputs are the cotangents of the float graph inputs, then of the
  parameters.

`wrt` ("all", "inputs", "params") chooses what is differentiated: with "inputs" no
initializer becomes a parameter, with "params" no graph input gets a cotangent, and
activity analysis then leaves out the work only the other side needed.
`recompute_residuals` (--residuals recompute) turns a bound program's residuals into the
primal's inputs alone: the pullback re-runs the forward graph on them first.

Each op's derivative rule (`Op.vjp`, next to its shape rule and reference) adds nodes of
existing ops through a Builder. Activity analysis: only nodes that depend on a
differentiated input or parameter and reach a float output are differentiated; rules
may build more than is needed, dead-code elimination then removes it, and a forward value
only dead nodes read is not saved. `bind_params` turns the parameters back into constants
(read-only weights) for a build; the usual pipeline and planner then run on each graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CompileError, InternalError, InvalidModelError, UnsupportedError
from ..ir import Graph, TensorType, Value
from ..ops import registry
from .cleanup import eliminate_dead_code
from .verify import verify


WRT_MODES = ("all", "inputs", "params")
RESIDUAL_MODES = ("save", "recompute")


def check_grad_options(wrt: str, residuals: str):
    """Refuses a --wrt or --residuals value that is not one of the modes."""
    if wrt not in WRT_MODES:
        raise InvalidModelError(f"--wrt must be one of {', '.join(WRT_MODES)}, got '{wrt}'")
    if residuals not in RESIDUAL_MODES:
        raise InvalidModelError(f"--residuals must be one of {', '.join(RESIDUAL_MODES)}, got '{residuals}'")


def _is_float(v: Value) -> bool:
    return v.type.dtype.startswith("float")


def refuse_integer_paths(node, varied: set, useful: set):
    """A value on a differentiated path (depending on a differentiated input, reaching a
    differentiated output) that is not float: no derivative flows through it (both modes)."""
    for v in [*node.inputs, *node.outputs]:
        if v is not None and id(v) in varied and id(v) in useful and not _is_float(v):
            raise UnsupportedError(f"is not differentiable (its {'input' if v in node.inputs else 'output'} "
                                   f"'{v.name}' is {v.type.dtype})", node=node.name, op=node.op)


@dataclass
class Param:
    """A float initializer made a graph input: its name, its value in the model's layout,
    and its input in each graph (None where a graph does not read it)."""

    name: str
    data: np.ndarray
    primal: Value
    pullback: Value | None = None


@dataclass
class GradProgram:
    primal: Graph
    pullback: Graph
    n_outputs: int  # primal.outputs[:n_outputs] are the model's outputs, the rest residuals
    residuals: list  # the primal's residual outputs, in pullback-input order
    params: list  # [Param]
    wrt_inputs: list  # indices of the graph inputs that get a cotangent (the float ones)
    cot_outputs: list  # indices of the outputs that take a cotangent (the float ones)
    # what the residual buffer holds in each mode: "save", the forward values the pullback
    # reads; "recompute", the primal's inputs those values are computed from
    candidates: dict = None
    mode: str = "save"
    wrt: str = "all"

    @property
    def residual_bytes(self) -> int:
        return sum(v.type.nbytes for v in self.residuals)


class Builder:
    """What a derivative rule builds with: nodes of registered ops in the pullback graph."""

    tag = "grad"  # in the names of the nodes rules build
    vector = None  # the target's VectorUnit, where the build knows it (rules may shape nodes to it)

    def __init__(self, pullback: Graph, params: dict, from_inputs: set):
        self.g = pullback
        self.from_inputs = from_inputs  # ids of forward values that depend on a model input
        self.params = params  # id(primal param input) -> pullback input
        self.saved: dict = {}  # id(primal value) -> (primal value, pullback input)
        self.node = None  # the forward node whose rule is running

    def primal(self, v: Value | None) -> Value | None:
        """A forward value, as the pullback sees it: a constant as is, a parameter as the
        pullback's input, anything else as a residual."""
        if v is None or v.is_const:
            return v
        if id(v) in self.params:
            return self.params[id(v)]
        if v.producer is not None and id(v) not in self.from_inputs:
            # computed from parameters alone (a transposed weight): recomputed in the pullback,
            # where it folds to a constant once the parameters are bound, instead of saved
            node = v.producer
            outs = [Value(self.g.unique(o.name), o.type) for o in node.outputs]
            self.g.add_node(node.op, node.name, [self.primal(x) for x in node.inputs], outs, node.attrs)
            for o, c in zip(node.outputs, outs):
                self.params[id(o)] = c
            return self.params[id(v)]
        if id(v) not in self.saved:
            self.saved[id(v)] = (v, Value(self.g.unique(v.name), v.type))
        return self.saved[id(v)][1]

    def op(self, op: str, inputs: list, outputs: int = 1, **attrs):
        """A node of `op` with canonical attributes; its output value (a list if several)."""
        base = self.node.name if self.node is not None else "grad"
        outs = [Value(self.g.unique(f"{base}_d{op.lower()}"), None) for _ in range(outputs)]
        node = self.g.add_node(op, f"{base}_{self.tag}_{op}", inputs, outs, attrs)
        try:
            types = registry.get(op).infer(node)
        except CompileError as e:
            raise InternalError(f"derivative rule built an ill-typed {op}: {e}", node=base,
                                op=self.node.op if self.node else None) from None
        for o, t in zip(outs, types):
            o.type = t
        return outs[0] if outputs == 1 else outs

    def scalar(self, x: float, dtype: str = "float32") -> Value:
        return self.g.const("c", np.array(x, dtype))

    def reshape(self, v: Value, shape) -> Value:
        shape = tuple(int(d) for d in shape)
        return v if v.type.shape == shape else self.op("Reshape", [v], shape=list(shape))

    def unbroadcast(self, v: Value, shape) -> Value:
        """A cotangent of a broadcast result, summed back to an operand of `shape`."""
        shape, vs = tuple(shape), v.type.shape
        if vs == shape:
            return v
        lead = len(vs) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and vs[lead + i] != 1]
        if axes:
            v = self.op("ReduceSum", [v], axes=axes, keepdims=0)
        return self.reshape(v, shape)


def params_to_inputs(g: Graph, names, gemm_layout: bool = False) -> list:
    """The float initializers named in `names` become graph inputs (after the model's own),
    in that order. One the importer stored transposed (Gemm's `<name>_t`) is read through a
    Transpose, so its input and cotangent keep the model's layout; with gemm_layout, Gemms
    read it as transB=1 instead (no transposed copy at run time, where nothing folds it)."""
    consts: dict = {}
    for node in g.nodes:
        for v in node.inputs:
            if v is not None and v.is_const and v.type.dtype == "float32":
                lst = consts.setdefault(v.name, [])
                if all(x is not v for x in lst):
                    lst.append(v)
    params = []
    for name in names:
        direct, flipped = consts.get(name, []), [v for v in consts.get(f"{name}_t", []) if v.data.ndim == 2]
        if not direct and not flipped:
            continue  # folded away at import, or unused
        data = direct[0].data if direct else np.ascontiguousarray(flipped[0].data.T)
        inp = Value(g.unique(name), TensorType.of(data))
        for v in direct:
            g.replace_all_uses(v, inp)
        users = [(n, i) for n in g.nodes for i, x in enumerate(n.inputs) if any(x is v for v in flipped)]
        if gemm_layout and all(n.op == "Gemm" and i == 1 and not n.attrs["transB"] for n, i in users):
            for n, _ in users:
                n.inputs[1] = inp
                n.attrs["transB"] = 1
            flipped = []
        for v in flipped:
            t = Value(g.unique(f"{name}_t"), v.type)
            g.replace_all_uses(v, t)
            g.add_node("Transpose", f"{name}_transpose", [inp], [t], {"perm": [1, 0]}, index=0)
        g.inputs.append(inp)
        params.append(Param(name, data, inp))
    return params


def reverse(g: Graph, params=(), gemm_layout: bool = False, wrt: str = "all", vector=None) -> GradProgram:
    """Primal and pullback of `g` (changed in place into the primal) with respect to its
    float inputs and the float initializers named in `params` (gemm_layout: see
    params_to_inputs); wrt "inputs" or "params" keeps only that side. vector: the target's
    VectorUnit, for the rules that shape their nodes to it (Conv's depthwise weight gradient)."""
    if g.batch is not None:
        raise UnsupportedError("derivatives of a bounded-batch build (--dim N<=...) are not supported")
    check_grad_options(wrt, "save")
    mode = wrt
    wrt = [i for i, v in enumerate(g.inputs) if _is_float(v)] if mode != "params" else []
    n_model_inputs = len(g.inputs)
    plist = params_to_inputs(g, params if mode != "inputs" else (), gemm_layout)
    if mode == "inputs" and not wrt:
        raise InvalidModelError("--wrt inputs: the model has no float input to differentiate")
    if mode == "params" and not plist:
        raise InvalidModelError("--wrt params: the model has no float initializer to differentiate")
    diff = [g.inputs[i] for i in wrt] + [p.primal for p in plist]

    varied = {id(v) for v in diff}
    for node in g.nodes:
        if any(v is not None and id(v) in varied for v in node.inputs):
            varied.update(id(o) for o in node.outputs)
    cot_outputs = [i for i, v in enumerate(g.outputs) if _is_float(v)]
    useful = {id(g.outputs[i]) for i in cot_outputs}
    path = []
    for node in reversed(g.nodes):
        if any(id(o) in useful for o in node.outputs):
            useful.update(id(v) for v in node.inputs if v is not None)
            if any(v is not None and id(v) in varied for v in node.inputs):
                path.append(node)

    pb = Graph(f"{g.name}_pullback")
    pb_params = {id(p.primal): Value(pb.unique(p.name), p.primal.type) for p in plist}
    from_inputs = {id(v) for v in g.inputs[:n_model_inputs]}
    for node in g.nodes:
        if any(v is not None and id(v) in from_inputs for v in node.inputs):
            from_inputs.update(id(o) for o in node.outputs)
    b = Builder(pb, dict(pb_params), from_inputs)
    b.vector = vector
    ct: dict = {}

    def accumulate(v, c):
        if id(v) in ct:
            b.node = None
            c = b.op("Add", [ct[id(v)], c])
        ct[id(v)] = c

    cot_in = []
    for i in cot_outputs:
        v = g.outputs[i]
        c = Value(pb.unique(f"d_{v.name}"), v.type)
        cot_in.append(c)
        accumulate(v, c)

    for node in path:  # already in reverse order
        refuse_integer_paths(node, varied, useful)
        cts = [ct.get(id(o)) for o in node.outputs]
        if all(c is None for c in cts):
            continue
        b.node = node
        try:
            grads = registry.get(node.op).vjp(b, node, cts)
        except CompileError as e:
            raise e.at(node.name, node.op) from None
        for v, gv in zip(node.inputs, grads):
            if v is None or gv is None or id(v) not in varied:
                continue
            if gv.type != v.type:
                raise InternalError(f"derivative rule gave {gv.type} for input {v.name}: {v.type}",
                                    node=node.name, op=node.op)
            accumulate(v, gv)

    for v in diff:
        pb.outputs.append(ct[id(v)] if id(v) in ct else pb.const(f"zero_{v.name}", np.zeros(v.type.shape,
                                                                                                v.type.dtype)))
    pb.inputs = [rv for _, rv in b.saved.values()] + cot_in + list(pb_params.values())
    eliminate_dead_code(pb)
    transpose_gemm_results(pb)
    used = {id(v) for n in pb.nodes for v in n.inputs if v is not None} | {id(v) for v in pb.outputs}
    residuals = [(pv, rv) for pv, rv in b.saved.values() if id(rv) in used]
    for p in plist:
        p.pullback = pb_params[id(p.primal)] if id(pb_params[id(p.primal)]) in used else None
    pb.inputs = [rv for _, rv in residuals] + cot_in + [p.pullback for p in plist if p.pullback is not None]
    n_outputs = len(g.outputs)
    g.outputs = g.outputs + [pv for pv, _ in residuals]
    pb.output_names = [f"d_{g.inputs[i].name}" for i in wrt] + [f"d_{p.name}" for p in plist]
    verify(g)
    verify(pb)
    assert len(g.inputs) == n_model_inputs + len(plist)
    saved = [pv for pv, _ in residuals]
    candidates = {"save": saved, "recompute": _ancestor_inputs(g.inputs[:n_model_inputs], saved)}
    return GradProgram(g, pb, n_outputs, saved, plist, wrt, cot_outputs, candidates, "save", mode)


def _ancestor_inputs(inputs: list, values: list) -> list:
    """The graph inputs (in order) some value of `values` is computed from (or is)."""
    seen = {id(v) for v in values}
    stack = list(values)
    while stack:
        v = stack.pop()
        if v.producer is not None:
            for x in v.producer.inputs:
                if x is not None and id(x) not in seen:
                    seen.add(id(x))
                    stack.append(x)
    return [v for v in inputs if id(v) in seen]


def recompute_residuals(prog: GradProgram) -> GradProgram:
    """--residuals recompute, on a bound program (bind_params): the residual buffer holds only
    the primal's inputs the saved values are computed from; the pullback starts with a copy
    of the forward graph on them (its values live in the pullback's arena), dead-code
    elimination keeping only the nodes that compute what the derivative rules read."""
    if any(p.primal is not None or p.pullback is not None for p in prog.params):
        raise InternalError("recompute_residuals needs the parameters bound (bind_params first)")
    g, pb = prog.primal, prog.pullback
    keep = prog.candidates["recompute"]
    n_res = len(prog.residuals)
    copy = {id(v): Value(pb.unique(v.name), v.type) for v in keep}
    k = 0
    for node in g.nodes:
        if not all(x is None or x.is_const or id(x) in copy for x in node.inputs):
            continue  # reads an input outside `keep`: nothing a residual needs
        outs = [Value(pb.unique(o.name), o.type) for o in node.outputs]
        twin = pb.add_node(node.op, f"{node.name}_recompute", [x if x is None or x.is_const else copy[id(x)]
                                                                for x in node.inputs], outs, node.attrs, index=k)
        twin.sources = node.sources
        k += 1
        copy.update((id(o), c) for o, c in zip(node.outputs, outs))
    for pv, rv in zip(prog.residuals, pb.inputs[:n_res]):
        pb.replace_all_uses(rv, copy[id(pv)])
    pb.inputs = [copy[id(v)] for v in keep] + pb.inputs[n_res:]
    eliminate_dead_code(pb)
    g.outputs = g.outputs[:prog.n_outputs] + list(keep)
    eliminate_dead_code(g)
    verify(g)
    verify(pb)
    prog.residuals, prog.mode = list(keep), "recompute"
    return prog


def transpose_gemm_results(g: Graph) -> bool:
    """Transpose(Gemm(a, b)) with no bias -> Gemm(b, a) with the transpositions swapped
    ((a'b')^T = b'^T a'^T). A parameter the importer stores transposed gets its cotangent
    this way straight in the model's layout, without a transposed copy kept alive in the
    arena until the end of the pullback."""
    users = g.users()
    changed = False
    for t in list(g.nodes):
        src = t.inputs[0].producer if t.op == "Transpose" and t.attrs["perm"] == [1, 0] else None
        if (src is None or src.op != "Gemm" or (len(src.inputs) > 2 and src.inputs[2] is not None)
                or len(users.get(id(src.outputs[0]), [])) != 1 or any(o is src.outputs[0] for o in g.outputs)):
            continue
        a = src.attrs
        src.inputs = [src.inputs[1], src.inputs[0]]
        src.attrs = {**a, "transA": 1 - a["transB"], "transB": 1 - a["transA"]}
        src.outputs = [t.outputs[0]]
        t.outputs[0].producer = src
        g.nodes.remove(t)
        changed = True
    return changed


def bind_params(prog: GradProgram) -> GradProgram:
    """The parameters become constants again (read-only weights) in both graphs: the form a
    build compiles. Values computed from parameters alone then fold at compile time."""
    for g, attr in ((prog.primal, "primal"), (prog.pullback, "pullback")):
        for p in prog.params:
            v = getattr(p, attr)
            if v is None:
                continue
            c = g.const(p.name, p.data)
            g.replace_all_uses(v, c)
            g.inputs = [x for x in g.inputs if x is not v]
            setattr(p, attr, None)
    return prog


def residual_layout(values, align: int) -> tuple[list, int]:
    """Offsets of the residuals in the caller's residual buffer (each aligned to `align`,
    in order) and the buffer's size (a multiple of `align`, never 0)."""
    offsets, end = [], 0
    for v in values:
        end = -(-end // align) * align
        offsets.append(end)
        end += v.type.nbytes
    return offsets, max(-(-end // align) * align, align)
