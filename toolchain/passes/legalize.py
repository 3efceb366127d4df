"""Last rewrite before memory planning: every graph output gets a node of its own that
writes straight into the caller's output buffer."""
from __future__ import annotations

from ..ir import Graph
from ..ops import COPY, registry


def materialize_outputs(g: Graph) -> bool:
    """Constants, graph inputs, views and repeated outputs are copied by an internal copy node."""
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
    return changed
