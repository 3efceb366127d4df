"""Ops of the ai.onnx.ml domain (Op.domain): Binarizer and ArrayFeatureExtractor with its
indices known at compile time (a constant, or a graph input bound with --bind). The
importer takes these two from that domain and refuses its other ops by name."""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from .base import Op, const_input, in_type, invalid, register, unsupported

ML = "ai.onnx.ml"
NUMBERS = ("float32", "float64", "int32", "int64")


@register("Binarizer")
class Binarizer(Op):
    """Y = 1 where X > threshold, else 0, in X's type (NaN > t is false: 0)."""
    domain = ML

    def canonicalize(self, node, opset):
        node.attrs["threshold"] = float(node.attrs.get("threshold", 0.0))

    def infer(self, node):
        t = in_type(node)
        if t.dtype not in NUMBERS:
            raise unsupported(node, f"{t.dtype} is not supported (it takes {', '.join(NUMBERS)})")
        return [t]

    def item_wise(self, node):
        return True

    def reference(self, node, x):
        return [np.where(x > node.attrs["threshold"], 1, 0).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        x, y = ins[0].flat(), outs[0].flat()
        t, dtype = node.attrs["threshold"], np.dtype(in_type(node).dtype)
        always = None  # the answer when no element can decide it
        if dtype.kind != "f":  # an integer exceeds t exactly when it exceeds floor(t)
            info = np.iinfo(dtype)
            if math.isnan(t) or t >= info.max:
                always = 0
            elif t < info.min:
                always = 1
            else:
                t = math.floor(t)
        with k.loop(y.size) as i:
            v = x[i]
            one, zero = k.lift(1, like=v), k.lift(0, like=v)
            y[i] = (one if always else zero) if always is not None else k.select(v > k.lift(t, like=v), one, zero)


@register("ArrayFeatureExtractor")
class ArrayFeatureExtractor(Op):
    """The elements of X's last axis at the given indices: [..., N] -> [..., K] (a 1-D X gives
    [1, K]). The indices must be known at compile time and in [0, N)."""
    domain = ML

    def canonicalize(self, node, opset):
        idx = const_input(node, 1, "indices")
        if idx is None:
            raise invalid(node, "needs indices (input 1)")
        n = in_type(node).shape[-1] if in_type(node).shape else 0
        keep = [int(i) for i in np.asarray(idx).reshape(-1)]
        if not keep:
            raise unsupported(node, "no indices (an empty output) is not supported")
        bad = [i for i in keep if not 0 <= i < n]
        if bad:
            raise invalid(node, f"index {bad[0]} is out of range for a last axis of {n}")
        node.attrs.clear()
        node.attrs["keep"] = keep
        node.inputs = node.inputs[:1]

    def infer(self, node):
        t = in_type(node)
        if t.dtype not in NUMBERS:
            raise unsupported(node, f"{t.dtype} is not supported (it takes {', '.join(NUMBERS)})")
        if not t.shape:
            raise invalid(node, "X must have at least one dimension")
        k = len(node.attrs["keep"])
        return [TensorType(t.dtype, (1, k) if len(t.shape) == 1 else t.shape[:-1] + (k,))]

    def reference(self, node, x):
        y = x[..., node.attrs["keep"]]
        return [y.reshape(self.infer(node)[0].shape)]

    def lower(self, k, node, ins, outs):
        keep, x = node.attrs["keep"], ins[0]
        y = outs[0] if len(x.shape) > 1 else outs[0].reshape((len(keep),))
        last = len(y.shape) - 1
        table = k.constant(np.array(keep, np.int32))
        with k.loops(y.shape) as idx:
            at = list(idx)
            at[last] = k.cast(table[(idx[last],)], k.lift(0).v.type)
            y[idx] = x[tuple(at)]
