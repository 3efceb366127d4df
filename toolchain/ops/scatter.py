"""Writes at positions read at run time, into a static shape: MaxUnpool (MaxPool's values
put back at its Indices) and TensorScatter (a KV cache's update written at each batch
item's write index).

A position out of range is skipped (no write outside the output): the spec calls those
indices invalid; onnxruntime refuses them at run time, which a compiled model cannot."""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from .base import Op, const_input, in_type, invalid, norm_axis, register, unsupported

FLOATS = ("float32", "float64")
DATA = FLOATS + ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


@register("MaxUnpool")
class MaxUnpool(Op):
    """Y is zeros of the unpooled shape, (in - 1) * stride - pads + kernel per spatial axis,
    with X[e] written at the flat position Indices[e] of that shape (positions over N, C and
    the spatial axes, as MaxPool's Indices count them); with output_shape (known at compile
    time) that result sits at the start of each axis of the larger output, the rest zeros
    (onnx's reference and its node tests). A later duplicate index wins."""
    shape_operands = (2,)

    def canonicalize(self, node, opset):
        x = in_type(node)
        n = len(x.shape) - 2
        a = node.attrs
        if n < 1:
            raise invalid(node, f"X must be N x C x spatial..., got shape {list(x.shape)}")
        if "kernel_shape" not in a:
            raise invalid(node, "needs attribute kernel_shape")
        a["kernel_shape"] = _ints(a["kernel_shape"])
        a["strides"] = _ints(a.get("strides", [1] * n))
        a["pads"] = _ints(a.get("pads", [0] * 2 * n))
        if len(a["kernel_shape"]) != n or len(a["strides"]) != n or len(a["pads"]) != 2 * n:
            raise invalid(node, f"kernel_shape, strides and pads need {n}, {n} and {2 * n} values for a "
                                f"{n}-D pooling")
        if min(a["kernel_shape"] + a["strides"]) < 1 or min(a["pads"]) < 0:
            raise invalid(node, "kernel_shape and strides must be positive, pads >= 0")
        unpooled = [(x.shape[2 + i] - 1) * a["strides"][i] - a["pads"][i] - a["pads"][n + i] + a["kernel_shape"][i]
                    for i in range(n)]
        if min(unpooled) < 1:
            raise invalid(node, f"the unpooled shape {unpooled} is empty")
        a["unpooled"] = [*x.shape[:2], *unpooled]
        shape = const_input(node, 2, "output_shape")
        if shape is None:
            a["shape"] = list(a["unpooled"])
        else:
            shape = _ints(shape)
            if len(shape) != len(x.shape) or shape[:2] != list(x.shape[:2]) or any(
                    s < u for s, u in zip(shape[2:], unpooled)):
                raise invalid(node, f"output_shape {shape} must be [N, C, ...] at least the unpooled shape "
                                    f"{a['unpooled']}")
            a["shape"] = shape
        node.inputs = node.inputs[:2]

    def infer(self, node):
        x = in_type(node)
        if x.dtype not in FLOATS:
            raise unsupported(node, f"{x.dtype} is not supported (float32, float64)")
        if len(node.inputs) < 2 or node.inputs[1] is None:
            raise invalid(node, "needs I (input 1)")
        i = in_type(node, 1)
        if i.dtype != "int64" or i.shape != x.shape:
            raise invalid(node, f"I must be int64 of X's shape {list(x.shape)}, got {i.dtype}{list(i.shape)}")
        return [TensorType(x.dtype, tuple(node.attrs["shape"]))]

    def reference(self, node, x, idx):
        unpooled, shape = node.attrs["unpooled"], node.attrs["shape"]
        y = np.zeros(math.prod(unpooled), x.dtype)
        for e, j in zip(x.reshape(-1), idx.reshape(-1)):
            if 0 <= j < y.size:
                y[j] = e
        out = np.zeros(shape, x.dtype)
        out[tuple(slice(0, u) for u in unpooled)] = y.reshape(unpooled)
        return [out]

    def lower(self, k, node, ins, outs):
        x, idx, y = ins[0], ins[1], outs[0]
        unpooled = node.attrs["unpooled"]
        with k.loops(y.shape) as o:
            y[o] = 0.0
        with k.loops(x.shape) as o:
            j = k.cast(idx[o], k.lift(0).v.type)
            with k.if_((j >= 0) & (j < math.prod(unpooled))):
                at, rest = [], j
                for d in reversed(unpooled):
                    at.insert(0, rest % d)
                    rest = rest // d
                y[tuple(at)] = x[o]


@register("TensorScatter")
class TensorScatter(Op):
    """present = past_cache with update[b, ..., s, ...] written at position write_indices[b] + s
    of `axis` (the sequence axis, default -2; not the batch axis 0), for each batch item b
    (write_indices absent: 0); mode circular takes positions modulo the axis length. A
    linear position outside the axis is skipped."""

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        ax = int(node.attrs.get("axis", -2))
        norm_axis(ax, rank, node)
        ax %= max(rank, 1)
        if ax == 0:
            raise invalid(node, "axis must not be the batch axis 0")
        mode = node.attrs.get("mode", "linear")
        if mode not in ("linear", "circular"):
            raise invalid(node, f"mode must be 'linear' or 'circular', got {mode!r}")
        node.attrs.clear()
        node.attrs.update(axis=ax, mode=mode)

    def infer(self, node):
        past = in_type(node)
        if past.dtype not in DATA:
            raise unsupported(node, f"{past.dtype} is not supported")
        upd = in_type(node, 1)
        ax = node.attrs["axis"]
        if upd.dtype != past.dtype or len(upd.shape) != len(past.shape) or any(
                u != p for i, (u, p) in enumerate(zip(upd.shape, past.shape)) if i != ax) or upd.shape[ax] > past.shape[ax]:
            raise invalid(node, f"update {upd.dtype}{list(upd.shape)} must be past_cache's type and shape "
                                f"{past.dtype}{list(past.shape)} but for at most as long an axis {ax}")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            w = in_type(node, 2)
            if w.dtype != "int64" or w.shape != past.shape[:1]:
                raise invalid(node, f"write_indices must be int64 of shape [{past.shape[0]}], got "
                                    f"{w.dtype}{list(w.shape)}")
        return [past]

    def reference(self, node, past, upd, w=None):
        ax, circular = node.attrs["axis"], node.attrs["mode"] == "circular"
        w = np.zeros(past.shape[0], np.int64) if w is None else w
        out, n = past.copy(), past.shape[ax]
        for pre in np.ndindex(past.shape[:ax]):
            for s in range(upd.shape[ax]):
                p = int(w[pre[0]]) + s
                p = p % n if circular else p
                if 0 <= p < n:
                    out[pre + (p,)] = upd[pre + (s,)]
        return [out]

    def lower(self, k, node, ins, outs):
        past, upd, y = ins[0], ins[1], outs[0]
        w = ins[2] if len(ins) > 2 and node.inputs[2] is not None else None
        ax = node.attrs["axis"]
        n = past.shape[ax]
        with k.loops(y.shape) as o:
            y[o] = past[o]
        with k.loops(upd.shape) as o:
            p = o[ax] if w is None else k.cast(w[(o[0],)], k.lift(0).v.type) + o[ax]
            if node.attrs["mode"] == "circular":
                p = p % n
                p = k.select(p < 0, p + n, p)
            with k.if_((k.lift(p) >= 0) & (k.lift(p) < n)):
                y[o[:ax] + (p,) + o[ax + 1:]] = upd[o]
