"""choose-schedules: record on each node how it is tiled for the backend's vector unit
(toolchain.schedules), so the choice is printed by --dump-ir, listed in the manifest and
carried out, not re-decided, by the lowering."""
from __future__ import annotations

from ..ir import Graph
from ..ops import registry
from ..targets import VectorUnit


def choose_schedules(g: Graph, vector: VectorUnit) -> bool:
    changed = False
    for node in g.nodes:
        schedule = registry.get(node.op).schedule(node, vector)
        changed |= schedule != node.schedule
        node.schedule = schedule
    return changed
