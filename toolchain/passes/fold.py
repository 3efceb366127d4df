"""Constant folding: a node whose inputs are all known is evaluated with its numpy
reference and replaced by constants; so is a node whose outputs are all empty (a
zero-sized dimension), whatever its inputs: there is nothing to compute."""
from __future__ import annotations

import numpy as np

from ..errors import CompileError, InvalidModelError
from ..ir import Graph, Node, TensorType
from ..ops import registry


def fold_node(g: Graph, node: Node):
    """Fold `node` if it can be; returns the constant outputs (the node is removed) or None."""
    op = registry.get(node.op, node=node.name)
    if node.outputs and all(out.type is not None and out.type.size == 0 for out in node.outputs):
        return _replace(g, node, [np.zeros(out.type.shape, out.type.dtype) for out in node.outputs])  # empty
    if not op.foldable or node.epilogue:
        return None
    if not op.shape_only and not all(v is None or v.is_const for v in node.inputs):
        return None
    args = [v.data if v is not None and v.is_const else None for v in node.inputs]
    while args and args[-1] is None:
        args.pop()
    try:
        results = op.reference(node, *args)
    except CompileError:
        raise
    except Exception as e:
        raise InvalidModelError(f"constant evaluation failed: {type(e).__name__}: {e}", node=node.name, op=node.op)
    return _replace(g, node, results)


def _replace(g: Graph, node: Node, results) -> list:
    consts = []
    for out, data in zip(node.outputs, results):
        data = np.asarray(data)
        if TensorType.of(data) != out.type:
            data = data.astype(out.type.dtype).reshape(out.type.shape)
        c = g.const(out.name + "_c", data)
        g.replace_all_uses(out, c)
        consts.append(c)
    g.nodes.remove(node)
    return consts


def fold_constants(g: Graph) -> bool:
    changed = False
    for node in list(g.nodes):
        if fold_node(g, node) is not None:
            changed = True
    return changed
