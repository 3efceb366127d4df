"""Dead-code and common-subexpression elimination."""
from __future__ import annotations

import hashlib

import numpy as np

from ..ir import Graph


def eliminate_dead_code(g: Graph) -> bool:
    """Drop nodes none of whose outputs reach a graph output."""
    live = {id(v) for v in g.outputs}
    keep = []
    for node in reversed(g.nodes):
        if any(id(o) in live for o in node.outputs):
            keep.append(node)
            live.update(id(v) for v in node.inputs if v is not None)
    changed = len(keep) != len(g.nodes)
    g.nodes = keep[::-1]
    return changed


def _const_key(v):
    return ("const", v.type, hashlib.sha256(np.ascontiguousarray(v.data).tobytes()).hexdigest())


def _attr_key(attrs):
    def norm(x):
        if isinstance(x, np.ndarray):
            return ("array", x.dtype.str, x.shape, x.tobytes())
        if isinstance(x, (list, tuple)):
            return tuple(norm(i) for i in x)
        if isinstance(x, dict):
            return tuple(sorted((k, norm(v)) for k, v in x.items()))
        return x
    return norm(attrs)


def eliminate_common_subexpressions(g: Graph) -> bool:
    """Merge identical constants (same bytes) and nodes with the same op, inputs and attributes."""
    changed = False
    consts: dict = {}
    for v in g.constants():
        key = _const_key(v)
        if key in consts and consts[key] is not v:
            g.replace_all_uses(v, consts[key])
            changed = True
        else:
            consts.setdefault(key, v)
    seen: dict = {}
    for node in list(g.nodes):
        key = (node.op, tuple(id(v) if v is not None else None for v in node.inputs), _attr_key(node.attrs),
               tuple((s.op, _attr_key(s.attrs), s.operand, s.operand_first) for s in node.epilogue))
        twin = seen.get(key)
        if twin is None:
            seen[key] = node
            continue
        for mine, theirs in zip(node.outputs, twin.outputs):
            g.replace_all_uses(mine, theirs)
        twin.sources += tuple(n for n in node.sources if n not in twin.sources)
        g.nodes.remove(node)
        changed = True
    return changed
