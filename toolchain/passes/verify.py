"""The IR verifier run after every pass: the graph's structure (ir.Graph.verify) and each
node's output types against its op's shape rule, so a pass that breaks the IR is caught
right after it runs, not three passes later."""
from __future__ import annotations

from ..errors import CompileError, InternalError
from ..ir import Graph
from ..ops import registry


def verify(g: Graph):
    g.verify()
    for node in g.nodes:
        try:
            expected = registry.get(node.op).infer(node)
        except CompileError:
            raise
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise InternalError(f"malformed node ({type(e).__name__}: {e})", node=node.name, op=node.op) from None
        for out, want in zip(node.outputs, expected):
            if out.type != want:
                raise InternalError(f"output {out!r} has type {out.type}, shape rule says {want}",
                                    node=node.name, op=node.op)


def infer_shapes(g: Graph) -> bool:
    """Re-derive every output type from the shape rules (types are set at import; this
    catches any disagreement, e.g. from a hand-edited graph)."""
    changed = False
    for node in g.nodes:
        for out, t in zip(node.outputs, registry.get(node.op).infer(node)):
            changed |= out.type != t
            out.type = t
    return changed
