"""Rewrites that merge nodes: BatchNormalization into the preceding Conv/Gemm's
weights, and elementwise activations into their producer's store."""
from __future__ import annotations

import numpy as np

from ..ir import EpilogueStep, Graph, Node
from ..ops import registry


def _sole_user(g: Graph, users, v) -> Node | None:
    """The single node reading `v`, if `v` is read once and is not a graph output."""
    readers = users.get(id(v), [])
    if len(readers) != 1 or any(o is v for o in g.outputs):
        return None
    return readers[0]


def fold_batchnorm(g: Graph) -> bool:
    """Conv/Gemm(W, b) -> BatchNormalization(s, beta, mean, var)  ==>  Conv/Gemm(W', b')
    with W' = W * s/sqrt(var+eps) per output channel, b' = (b - mean) * s/sqrt(var+eps) + beta."""
    changed = False
    users = g.users()
    for bn in list(g.nodes):
        if bn.op != "BatchNormalization" or not all(v.is_const for v in bn.inputs[1:5]):
            continue
        prod = bn.inputs[0].producer
        if prod is None or prod.op not in ("Conv", "Gemm") or _sole_user(g, users, bn.inputs[0]) is not bn:
            continue
        if prod.epilogue or not all(v is None or v.is_const for v in prod.inputs[1:]):
            continue
        if prod.op == "Gemm" and (prod.attrs["alpha"] != 1.0 or prod.attrs["beta"] != 1.0):
            continue
        scale, beta, mean, var = (v.data.astype(np.float64) for v in bn.inputs[1:5])
        factor = scale / np.sqrt(var + bn.attrs["epsilon"])
        w = prod.inputs[1].data.astype(np.float64)
        out_ch = prod.outputs[0].type.shape[1]
        if prod.op == "Conv":
            w = w * factor.reshape((-1,) + (1,) * (w.ndim - 1))
        elif prod.attrs["transB"]:
            w = w * factor[:, None]
        else:
            w = w * factor[None, :]
        bias_in = prod.inputs[2] if len(prod.inputs) > 2 else None
        if prod.op == "Gemm" and bias_in is not None and bias_in.type.size not in (1, out_ch):
            continue  # a full (M, N) bias matrix: leave it
        bias = np.zeros(out_ch) if bias_in is None else np.broadcast_to(bias_in.data.ravel(), (out_ch,))
        bias = (bias - mean) * factor + beta
        new_inputs = [prod.inputs[0], g.const(prod.name + "_w_bn", w.astype(np.float32)),
                      g.const(prod.name + "_b_bn", bias.astype(np.float32))]
        prod.inputs = new_inputs
        prod.sources += bn.sources
        out = bn.outputs[0]
        g.replace_all_uses(out, prod.outputs[0])
        g.nodes.remove(bn)
        changed = True
        users = g.users()
    return changed


def fuse_activations(g: Graph) -> bool:
    """Producer -> elementwise activation  ==>  producer with the activation applied at its
    store; saves one pass over memory and the intermediate buffer."""
    changed = False
    users = g.users()
    for node in list(g.nodes):
        if node not in g.nodes or len(node.outputs) != 1:
            continue
        if not registry.get(node.op).fusable_epilogue:
            continue
        act = _sole_user(g, users, node.outputs[0])
        if act is None or not registry.get(act.op).unary_epilogue or len(act.inputs) != 1:
            continue
        if act.outputs[0].type.dtype != "float32":
            continue
        node.epilogue += (EpilogueStep(act.op, tuple(sorted(act.attrs.items()))),)
        node.outputs = [act.outputs[0]]
        node.sources += act.sources
        act.outputs[0].producer = node
        g.nodes.remove(act)
        changed = True
        users = g.users()
    return changed


def _runtime_scalar(v, t) -> bool:
    """One element computed or given at run time (a training step's learning rate): an
    epilogue operand read once for every element. (A constant one folds elsewhere.)"""
    return v.type.size == 1 and v.type.dtype == t.dtype and not v.is_const


def fuse_residuals(g: Graph) -> bool:
    """Producer -> binary elementwise op with a second operand of the same shape (the
    residual Add of a ResNet block, with its activation already fused), or of one element
    given at run time (the learning rate of p - lr * dW)  ==>  producer that
    reads the operand at its store and writes the final value. The operand becomes an
    extra input after the producer's own (Op.own_inputs). Saves a pass over the block's
    output, and the buffer between them: only where the operand is computed before the
    producer runs. (Moving the producer later would keep its inputs alive longer, and the
    arena could grow.)"""
    changed = False
    users = g.users()
    order = {id(n): i for i, n in enumerate(g.nodes)}
    for node in list(g.nodes):
        if not registry.get(node.op).binary_epilogue or len(node.inputs) != 2:
            continue
        t = node.outputs[0].type
        for side in (0, 1):
            prod, other = node.inputs[side].producer, node.inputs[1 - side]
            if (prod is None or registry.get(prod.op).own_inputs is None or other is node.inputs[side]
                    or _sole_user(g, users, node.inputs[side]) is not node or t.dtype != "float32"
                    or prod.outputs[0].type != t or not (other.type == t or _runtime_scalar(other, t))
                    or (other.producer is not None and order[id(other.producer)] > order[id(prod)])):
                continue
            own = registry.get(prod.op).own_inputs
            prod.inputs = prod.inputs + [None] * (own - len(prod.inputs)) + [other]
            step = EpilogueStep(node.op, tuple(sorted(node.attrs.items())), operand=len(prod.inputs) - 1,
                                operand_first=side == 1)
            prod.epilogue = prod.epilogue + (step,) + node.epilogue
            prod.outputs = [node.outputs[0]]
            prod.sources += node.sources
            node.outputs[0].producer = prod
            g.nodes.remove(node)
            changed = True
            users = g.users()
            break
    return changed
