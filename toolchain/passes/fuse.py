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
    store; saves one pass over memory and the intermediate buffer. Also through one view
    between them (producer -> Reshape -> activation  ==>  producer+activation -> Reshape)."""
    changed = False
    users = g.users()
    for node in list(g.nodes):
        if node not in g.nodes or len(node.outputs) != 1:
            continue
        if not registry.get(node.op).fusable_epilogue:
            continue
        act = _sole_user(g, users, node.outputs[0])
        view = None  # a Reshape between them (MatMul as Gemm, passes.patterns): the view now ends in act's output
        if act is not None and registry.get(act.op).view and len(act.outputs) == 1:
            view, act = act, _sole_user(g, users, act.outputs[0])
        if act is None or not registry.get(act.op).unary_epilogue or len(act.inputs) != 1:
            continue
        if act.outputs[0].type.dtype != "float32":
            continue
        node.epilogue += (EpilogueStep(act.op, tuple(sorted(act.attrs.items()))),)
        node.sources += act.sources
        if view is None:
            node.outputs = [act.outputs[0]]
            act.outputs[0].producer = node
        else:
            view.outputs = [act.outputs[0]]
            act.outputs[0].producer = view
        g.nodes.remove(act)
        changed = True
        users = g.users()
    return changed


def _scalar(v, dtype) -> bool:
    """One element of this type, constant or given at run time (attention's 1/sqrt(d), a
    training step's learning rate): an epilogue operand read once for every store."""
    return v.type.size == 1 and v.type.dtype == dtype


def fuse_residuals(g: Graph) -> bool:
    """Producer -> binary elementwise op with a second operand of the same shape (the
    residual Add of a ResNet block, with its activation already fused), or of one element
    constant or given at run time (a scale; the learning rate of p - lr * dW)  ==>  producer that
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
            if _fuse_through_view(g, users, order, node, side):
                changed = True
                users = g.users()
                order = {id(n): i for i, n in enumerate(g.nodes)}
                break
            prod, other = node.inputs[side].producer, node.inputs[1 - side]
            if (prod is None or registry.get(prod.op).own_inputs is None or other is node.inputs[side]
                    or _sole_user(g, users, node.inputs[side]) is not node or t.dtype != "float32"
                    or prod.outputs[0].type != t or not (other.type == t or _scalar(other, t.dtype))
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


def _fuse_through_view(g: Graph, users, order, node: Node, side: int) -> bool:
    """fuse_residuals with a Reshape between producer and op (MatMul as Gemm, passes.patterns):
    producer -> Reshape -> Add(., other)  ==>  producer(+ Reshape(other)) -> Reshape. The
    operand is read at the producer's offsets, so it gets the producer's shape (a view)."""
    view, other = node.inputs[side].producer, node.inputs[1 - side]
    t = node.outputs[0].type
    if (view is None or not registry.get(view.op).view or len(view.outputs) != 1 or view.inputs[0] is None
            or _sole_user(g, users, node.inputs[side]) is not node or other is node.inputs[side]):
        return False
    prod = view.inputs[0].producer
    if (prod is None or len(prod.outputs) != 1 or registry.get(prod.op).own_inputs is None
            or _sole_user(g, users, prod.outputs[0]) is not view or t.dtype != "float32" or other.type != t
            or prod.outputs[0].type.dtype != t.dtype or prod.outputs[0].type.size != t.size
            or (other.producer is not None and order[id(other.producer)] > order[id(prod)])):
        return False
    shape = prod.outputs[0].type.shape
    operand = other
    if other.type.shape != shape:
        operand = g.value(other.name + "_as_" + prod.name, prod.outputs[0].type)
        g.add_node("Reshape", node.name + "_operand", [other], [operand], {"shape": list(shape)},
                   index=g.nodes.index(prod))
    own = registry.get(prod.op).own_inputs
    prod.inputs = prod.inputs + [None] * (own - len(prod.inputs)) + [operand]
    step = EpilogueStep(node.op, tuple(sorted(node.attrs.items())), operand=len(prod.inputs) - 1,
                        operand_first=side == 1)
    prod.epilogue = prod.epilogue + (step,) + node.epilogue
    prod.sources += node.sources
    view.outputs = [node.outputs[0]]
    node.outputs[0].producer = view
    g.nodes.remove(node)
    return True
