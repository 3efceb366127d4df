"""Selection: TopK, the k largest (or smallest) elements along an axis and their indices.

k must be known at compile time (an initializer or a constant): it is the size of the
outputs. The outputs are always sorted (best first; for sorted=0 the spec leaves the order
open), equal values by lower index first, as the spec asks.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel.llvm import I64
from .base import Op, in_type, invalid, norm_axis, register, unsupported
from .indexing import NUMERIC, _as_i64, _check, _less, _scalar_int


def _lt(k, a, b):
    """a < b for loop indices (Python ints or index Exprs)."""
    return a < b if isinstance(a, int) and isinstance(b, int) else k.lift(a) < b


def _eq(k, a, b):
    return a == b if isinstance(a, int) and isinstance(b, int) else k.lift(a).eq(b)


@register("TopK")
class TopK(Op):
    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        if opset < 10:
            if "k" not in node.attrs:
                raise invalid(node, "needs k")
            kk = int(node.attrs["k"])
        else:
            kk = _scalar_int(node, 1, "TopK k")
            if kk is None:
                raise invalid(node, "needs the k input")
        node.inputs = node.inputs[:1]
        node.attrs["k"] = kk
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", -1)), rank, node)
        for key in ("largest", "sorted"):
            v = node.attrs.setdefault(key, 1)
            if v not in (0, 1):
                raise invalid(node, f"{key} must be 0 or 1, got {v}")

    def item_wise(self, node):
        return node.attrs["axis"] != 0

    def infer(self, node):
        t = _check(node, 0, NUMERIC, "the input")
        ax, kk = node.attrs["axis"], node.attrs["k"]
        if not 0 <= kk <= t.shape[ax]:
            raise invalid(node, f"k {kk} out of range for axis {ax} of size {t.shape[ax]}")
        if kk == 0:
            raise unsupported(node, "k 0 (empty outputs)")
        shape = t.shape[:ax] + (kk,) + t.shape[ax + 1:]
        return [TensorType(t.dtype, shape), TensorType("int64", shape)]

    def reference(self, node, x):
        ax, kk = node.attrs["axis"], node.attrs["k"]
        if node.attrs["largest"]:  # a stable sort of the reversed axis, reversed: ties by lower index
            order = x.shape[ax] - 1 - np.flip(np.argsort(np.flip(x, ax), axis=ax, kind="stable"), ax)
        else:
            order = np.argsort(x, axis=ax, kind="stable")
        order = np.take(order, np.arange(kk), axis=ax)
        return [np.take_along_axis(x, order, axis=ax), order.astype(np.int64)]

    def lower(self, k, node, ins, outs):
        """Per row, an insertion into the outputs kept sorted: element i is carried through
        slots 0..min(i, k)-1, swapped with each slot it beats (value first, then the lower
        index), and whatever is carried lands in slot i while i < k."""
        x, vals, idxs = ins[0], outs[0], outs[1]
        ax, kk = node.attrs["axis"], node.attrs["k"]
        n = x.shape[ax]
        dtype = x.dtype
        if node.attrs["largest"]:
            def beats(a, b): return _less(k, b, a, dtype)
        else:
            def beats(a, b): return _less(k, a, b, dtype)
        kept = x.shape[:ax] + (1,) + x.shape[ax + 1:]

        def at(idx, i):
            return idx[:ax] + (i,) + idx[ax + 1:]

        with k.loops(kept) as idx:
            with k.loop(n) as i:
                cur_v, cur_i = k.var(x[at(idx, i)]), k.var(_as_i64(k, i, "int64"))
                with k.loop(kk) as j:
                    with k.if_(_lt(k, j, i)):
                        slot_v, slot_i = vals[at(idx, j)], idxs[at(idx, j)]
                        a_v, a_i = cur_v.value, cur_i.value
                        take = beats(a_v, slot_v) | (a_v.eq(slot_v) & (a_i < slot_i))
                        vals[at(idx, j)] = k.select(take, a_v, slot_v)
                        idxs[at(idx, j)] = k.select(take, a_i, slot_i)
                        cur_v.value = k.select(take, slot_v, a_v)
                        cur_i.value = k.select(take, slot_i, a_i)
                    with k.if_(_eq(k, j, i)):
                        vals[at(idx, j)] = cur_v.value
                        idxs[at(idx, j)] = cur_i.value
