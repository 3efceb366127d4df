"""Last rewrite before memory planning: every graph output gets a node of its own that
writes straight into the caller's output buffer, under the name the model gives it."""
from __future__ import annotations

from ..ir import Graph, Value
from ..ops import COPY, registry


def materialize_outputs(g: Graph) -> bool:
    """Constants, graph inputs, views and repeated outputs are copied by an internal copy node; then
    each output value takes the model's name for it (g.output_names)."""
    changed = False
    seen = set()
    for i, v in enumerate(g.outputs):
        needs_copy = (v.is_const or v.producer is None or id(v) in seen
                      or registry.get(v.producer.op).view)
        seen.add(id(v))
        if needs_copy:
            out = g.value(v.name + "_out", v.type)
            g.add_node(COPY, "copy_" + v.name, [v], [out])
            g.outputs[i] = out
            changed = True
    for v, want in zip(g.outputs, g.output_names or []):
        if v.name != want:
            _take_name(g, v, want)
            changed = True
    return changed


def _take_name(g: Graph, v: Value, name: str):
    """v is renamed `name`; any other node output or constant holding that name is renamed
    away first. A graph input may share its name with an output (an ONNX graph may list
    its input as an output too): the manifest keeps inputs and outputs apart."""
    taken = {id(x): x for n in g.nodes for x in n.outputs}
    taken.update({id(x): x for n in g.nodes for x in n.inputs if x is not None and x.is_const})
    for x in taken.values():
        if x is not v and x.name == name:
            x.name = g.unique(name)
    g._names.add(name)
    v.name = name
