"""Rewrites that recognize a subgraph exporters spell out op by op and give it to an op
that computes it in one pass: MatMul + bias Add as a Gemm whose bias starts the
accumulators, and GELU's Div -> Erf -> Add -> Mul -> Mul chain as one Gelu."""
from __future__ import annotations

import math

import numpy as np

from ..ir import Graph, TensorType, Value


def _readers(users, v) -> list:
    return users.get(id(v), [])


def _sole_reader(g: Graph, users, v):
    readers = _readers(users, v)
    if len(readers) != 1 or any(o is v for o in g.outputs):
        return None
    return readers[0]


def _scalar_const(v: Value | None) -> float | None:
    """The value of a constant holding one float32 element, else None."""
    if v is None or not v.is_const or v.type.dtype != "float32" or v.type.size != 1:
        return None
    return float(np.asarray(v.data).reshape(-1)[0])


def _other(node, v):
    """The input of a two-input node that is not v (None if v is not exactly one of them)."""
    a, b = node.inputs
    if a is v and b is not v:
        return b
    if b is v and a is not v:
        return a
    return None


def fold_matmul_bias(g: Graph) -> bool:
    """MatMul(x, W) -> Add(., b), W a constant matrix, b a constant of N values (shape (N,)
    or with leading 1s) ==> Reshape(x, (M, K)) -> Gemm(., W, b) -> Reshape(., out shape).
    Gemm starts its accumulators at the bias (no pass of its own over the output); the
    Reshapes are views (no code). Only float32, x of rank >= 2, W of rank 2, the MatMul
    read by the Add alone."""
    changed = False
    users = g.users()
    for mm in list(g.nodes):
        if mm.op != "MatMul" or mm.epilogue or len(mm.inputs) != 2:
            continue
        x, w = mm.inputs
        y = mm.outputs[0]
        if (x is None or w is None or not w.is_const or len(w.type.shape) != 2 or len(x.type.shape) < 2
                or x.type.dtype != "float32" or w.type.dtype != "float32"):
            continue
        add = _sole_reader(g, users, y)
        if add is None or add.op != "Add" or len(add.inputs) != 2 or add.epilogue:
            continue
        bias = _other(add, y)
        k_, n = w.type.shape
        if (bias is None or not bias.is_const or bias.type.dtype != "float32" or bias.type.size != n
                or (bias.type.shape and bias.type.shape[-1] != n) or len(bias.type.shape) > len(y.type.shape)
                or add.outputs[0].type != y.type):
            continue
        m_ = x.type.size // k_
        out_shape = y.type.shape
        idx = g.nodes.index(mm)
        flat_x = x
        if x.type.shape != (m_, k_):
            flat_x = g.value(mm.name + "_2d", TensorType("float32", (m_, k_)))
            g.add_node("Reshape", mm.name + "_2d", [x], [flat_x], {"shape": [m_, k_]}, index=idx).sources = mm.sources
            idx += 1
        b1 = g.const(add.name + "_bias", np.ascontiguousarray(np.asarray(bias.data, np.float32).reshape(n)))
        final = add.outputs[0]
        gemm_out = final if out_shape == (m_, n) else g.value(mm.name + "_gemm", TensorType("float32", (m_, n)))
        gemm = g.add_node("Gemm", mm.name, [flat_x, w, b1], [gemm_out],
                          {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, index=idx)
        gemm.sources = mm.sources + add.sources
        if gemm_out is not final:
            g.add_node("Reshape", add.name + "_nd", [gemm_out], [final], {"shape": list(out_shape)},
                       index=idx + 1).sources = add.sources
        g.nodes.remove(mm)
        g.nodes.remove(add)
        changed = True
        users = g.users()
    return changed


_INV_SQRT2 = 1 / math.sqrt(2)


def _close(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-6 * abs(want)


def fuse_gelu(g: Graph) -> bool:
    """x / sqrt(2) (or x * (1/sqrt(2))) -> Erf -> + 1 -> then x * . * 0.5 in either order
    (Mul(Mul(x, e1), 0.5) or Mul(Mul(x, 0.5), e1)) ==> Gelu(x) (approximate="none"), float32.
    Every intermediate must be read only inside the pattern."""
    changed = False
    users = g.users()
    for scale in list(g.nodes):
        if scale not in g.nodes or scale.op not in ("Div", "Mul") or len(scale.inputs) != 2 or scale.epilogue:
            continue
        x = scale.inputs[0]
        c = _scalar_const(scale.inputs[1])
        want = math.sqrt(2) if scale.op == "Div" else _INV_SQRT2
        if x is None or x.type.dtype != "float32" or not _close(c, want) or scale.outputs[0].type != x.type:
            continue
        erf = _sole_reader(g, users, scale.outputs[0])
        if erf is None or erf.op != "Erf" or erf.epilogue:
            continue
        add = _sole_reader(g, users, erf.outputs[0])
        if add is None or add.op != "Add" or len(add.inputs) != 2 or add.epilogue:
            continue
        if not _close(_scalar_const(_other(add, erf.outputs[0])), 1.0) or add.outputs[0].type != x.type:
            continue
        e1 = add.outputs[0]
        mul1 = _sole_reader(g, users, e1)
        if mul1 is None or mul1.op != "Mul" or len(mul1.inputs) != 2 or mul1.epilogue:
            continue
        other = _other(mul1, e1)
        half_first = None  # the Mul(x, 0.5) node when 0.5 x comes first
        if other is x:
            mul2 = _sole_reader(g, users, mul1.outputs[0])
            if mul2 is None or mul2.op != "Mul" or len(mul2.inputs) != 2 or mul2.epilogue:
                continue
            if not _close(_scalar_const(_other(mul2, mul1.outputs[0])), 0.5):
                continue
            last = mul2
        else:
            half_first = other.producer if other is not None else None
            if (half_first is None or half_first.op != "Mul" or len(half_first.inputs) != 2 or half_first.epilogue
                    or _other(half_first, x) is None or not _close(_scalar_const(_other(half_first, x)), 0.5)
                    or _sole_reader(g, users, other) is not mul1):
                continue
            last = mul1
        out = last.outputs[0]
        if out.type != x.type:
            continue
        removed = [scale, erf, add, mul1] + ([last] if last is not mul1 else []) + ([half_first] if half_first else [])
        idx = min(g.nodes.index(n) for n in removed)
        node = g.add_node("Gelu", scale.name.rsplit("/", 1)[0] + "/Gelu" if "/" in scale.name else scale.name + "_gelu",
                          [x], [out], {"approximate": "none"}, index=idx)
        node.sources = tuple(s for n in removed for s in n.sources)
        for n in removed:
            g.nodes.remove(n)
        changed = True
        users = g.users()
    return changed
