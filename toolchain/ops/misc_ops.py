"""Ops with static index maps that fit no other family: Col2Im, CenterCropPad,
ReverseSequence, Compress (with a compile-time condition), the window generators
(HannWindow, HammingWindow, BlackmanWindow: constants once their size is known) and SwiGLU.

Indices read at run time (ReverseSequence's sequence_lens) are clamped into the input, so
no value can take a kernel outside its buffers."""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from ..kernel.llvm import LLVM_TYPES
from .base import Op, const_input, in_type, invalid, norm_axis, register, unsupported

NUMERIC = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
ANY = NUMERIC + ("bool",)


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _data(node, i=0, allowed=ANY):
    t = in_type(node, i)
    if t.dtype not in allowed:
        raise unsupported(node, f"{t.dtype} is not supported")
    return t


def _needed(node, i, what):
    v = const_input(node, i, what)
    if v is None:
        raise invalid(node, f"needs {what} (input {i})")
    return v


@register("Col2Im")
class Col2Im(Op):
    """Sums column blocks back into an image: the inverse layout of im2col, overlapping
    blocks added. Lowered as a scatter over the input (every input element lands on at most
    one output element; the ones in the padding are dropped)."""

    def canonicalize(self, node, opset):
        image, block = _ints(_needed(node, 1, "image_shape")), _ints(_needed(node, 2, "block_shape"))
        n = len(image)
        if len(block) != n or n == 0:
            raise invalid(node, f"image_shape {image} and block_shape {block} differ in length")
        a = node.attrs
        a["image"], a["block"] = image, block
        a["strides"] = _ints(a.get("strides", [1] * n))
        a["dilations"] = _ints(a.get("dilations", [1] * n))
        a["pads"] = _ints(a.get("pads", [0] * 2 * n))
        if len(a["strides"]) != n or len(a["dilations"]) != n or len(a["pads"]) != 2 * n:
            raise invalid(node, f"strides, dilations and pads must have {n}, {n} and {2 * n} values")
        if min(a["strides"] + a["dilations"] + block + image) < 1 or min(a["pads"]) < 0:
            raise invalid(node, "strides, dilations, block and image sizes must be positive, pads >= 0")
        node.inputs = node.inputs[:1]

    def _counts(self, node):
        a, n = node.attrs, len(node.attrs["image"])
        return [(a["image"][i] + a["pads"][i] + a["pads"][i + n] - a["dilations"][i] * (a["block"][i] - 1) - 1)
                // a["strides"][i] + 1 for i in range(n)]

    def infer(self, node):
        t, a = _data(node, 0, NUMERIC), node.attrs
        if len(t.shape) != 3:
            raise invalid(node, f"needs an input [N, C*prod(block), L], got shape {list(t.shape)}")
        nb, counts = math.prod(a["block"]), self._counts(node)
        if t.shape[1] % nb or min(counts) < 1 or math.prod(counts) != t.shape[2]:
            raise invalid(node, f"input {list(t.shape)} does not hold blocks {a['block']} of image {a['image']} "
                                f"({counts} block positions)")
        return [TensorType(t.dtype, (t.shape[0], t.shape[1] // nb) + tuple(a["image"]))]

    def reference(self, node, x):
        a, n = node.attrs, len(node.attrs["image"])
        counts, out = self._counts(node), self.infer(node)[0].shape
        y = np.zeros(out, x.dtype)
        cols = x.reshape(out[:2] + tuple(a["block"]) + tuple(counts))
        for b in np.ndindex(*a["block"]):
            for pos in np.ndindex(*counts):
                at = [p * s - a["pads"][i] + o * d
                      for i, (p, s, o, d) in enumerate(zip(pos, a["strides"], b, a["dilations"]))]
                if all(0 <= v < a["image"][i] for i, v in enumerate(at)):
                    y[(slice(None), slice(None)) + tuple(at)] += cols[(slice(None), slice(None)) + b + pos]
        return [y]

    def macs(self, node):
        return in_type(node).size

    def lower(self, k, node, ins, outs):
        a, n, y = node.attrs, len(node.attrs["image"]), outs[0]
        flat = y.flat()
        with k.loop(flat.size) as i:
            flat[i] = k.lift(0, like=LLVM_TYPES[y.dtype])
        x = ins[0].reshape(y.shape[:2] + tuple(a["block"]) + tuple(self._counts(node)))
        with k.loops(x.shape) as idx:
            at, inside = [], True
            for i in range(n):
                b, p = idx[2 + i], idx[2 + n + i]
                v = k.lift(p) * a["strides"][i] + k.lift(b) * a["dilations"][i] - a["pads"][i]
                lo = -a["pads"][i]
                hi = (x.shape[2 + n + i] - 1) * a["strides"][i] + (a["block"][i] - 1) * a["dilations"][i] - a["pads"][i]
                if lo < 0 or hi >= a["image"][i]:  # only axes where a block can reach the padding
                    ok = (v >= 0) & (v < a["image"][i])
                    inside = ok if inside is True else inside & ok
                at.append(v)
            with k.if_(inside):
                dst = tuple(idx[:2]) + tuple(at)
                y[dst] = y[dst] + x[idx]


@register("CenterCropPad")
class CenterCropPad(Op):
    shape_operands = (1,)

    def canonicalize(self, node, opset):
        shape = _ints(_needed(node, 1, "shape"))
        src = in_type(node).shape
        axes = node.attrs.get("axes")
        axes = [norm_axis(int(x), len(src), node) for x in axes] if axes is not None else list(range(len(src)))
        if len(set(axes)) != len(axes) or len(shape) != len(axes):
            raise invalid(node, f"shape {shape} does not give one size per axis of {axes}")
        out, shift = list(src), [0] * len(src)
        for ax, s in zip(axes, shape):
            if s < 0:
                raise invalid(node, f"negative size {s}")
            out[ax] = s
            # crop: the window starts at (d - s) // 2; pad: (s - d) // 2 before, the odd one after
            shift[ax] = (src[ax] - s) // 2 if s <= src[ax] else -((s - src[ax]) // 2)
        node.attrs.clear()
        node.attrs.update(out=out, shift=shift)
        node.inputs = node.inputs[:1]

    def item_wise(self, node):
        return node.attrs["shift"][0] == 0 and node.attrs["out"][0] == in_type(node).shape[0]

    def infer(self, node):
        return [TensorType(_data(node).dtype, tuple(node.attrs["out"]))]

    def reference(self, node, x):
        y = np.zeros(node.attrs["out"], x.dtype)
        src, dst = [], []
        for d, s, sh in zip(x.shape, node.attrs["out"], node.attrs["shift"]):
            if s <= d:  # crop (or keep)
                src.append(slice(sh, sh + s))
                dst.append(slice(0, s))
            else:
                src.append(slice(0, d))
                dst.append(slice(-sh, -sh + d))
        y[tuple(dst)] = x[tuple(src)]
        return [y]

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        with k.loops(y.shape) as idx:
            src, inside = [], None
            for o, sh, d, s in zip(idx, node.attrs["shift"], x.shape, y.shape):
                if s <= d:  # cropped (or kept) axis: always inside
                    src.append(k.lift(o) + sh if sh else o)
                    continue
                c = k.lift(o) + sh
                ok = (c >= 0) & (c < d)
                inside = ok if inside is None else inside & ok
                src.append(k.min(k.max(c, 0), d - 1))
            v = x[tuple(src)]
            y[idx] = v if inside is None else k.select(inside, v, k.lift(0, like=v))


@register("ReverseSequence")
class ReverseSequence(Op):
    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        ba = node.attrs["batch_axis"] = int(node.attrs.get("batch_axis", 1))
        ta = node.attrs["time_axis"] = int(node.attrs.get("time_axis", 0))
        if {ba, ta} not in ({0, 1},) or rank < 2:
            raise invalid(node, f"batch_axis {ba} and time_axis {ta} must be 0 and 1 (in either order) "
                                f"of an input of rank >= 2, got rank {rank}")

    def infer(self, node):
        t = _data(node)
        lens = in_type(node, 1)
        if lens.dtype != "int64" or lens.shape != (t.shape[node.attrs["batch_axis"]],):
            raise invalid(node, f"sequence_lens must be int64 of shape [{t.shape[node.attrs['batch_axis']]}], "
                                f"got {lens.dtype}{list(lens.shape)}")
        return [t]

    def reference(self, node, x, lens):
        ba, ta = node.attrs["batch_axis"], node.attrs["time_axis"]
        y = x.copy()
        for b, n in enumerate(lens):
            n = int(np.clip(n, 0, x.shape[ta]))
            at = [slice(None)] * x.ndim
            at[ba], at[ta] = b, slice(0, n)
            y[tuple(at)] = np.flip(x[tuple(at)], axis=ta - (ta > ba))
        return [y]

    def lower(self, k, node, ins, outs):
        x, lens, y = ins[0], ins[1], outs[0]
        ba, ta, steps = node.attrs["batch_axis"], node.attrs["time_axis"], x.shape[node.attrs["time_axis"]]
        with k.loops(y.shape) as idx:
            n = k.cast(lens[(idx[ba],)], k.lift(0).v.type)
            n = k.min(k.max(n, 0), steps)  # out-of-range lengths: the whole axis, or none of it
            t = k.lift(idx[ta])
            src = list(idx)
            src[ta] = k.select(t < n, n - 1 - t, t)
            y[idx] = x[tuple(src)]


@register("Compress")
class Compress(Op):
    """With the condition known at compile time it is a gather of fixed positions. A
    condition computed at run time decides the output's shape: refused."""

    def canonicalize(self, node, opset):
        cond = node.inputs[1] if len(node.inputs) > 1 else None
        if cond is None:
            raise invalid(node, "needs a condition (input 1)")
        if not cond.is_const:
            err = unsupported(node, "condition (input 1) must be a compile-time constant: its values decide "
                                    "the output shape")
            err.operand = 1  # the importer names the graph inputs it comes from (--bind)
            raise err
        c = np.asarray(cond.data)
        if c.ndim != 1:
            raise invalid(node, f"condition must be 1-D, got shape {list(c.shape)}")
        shape = in_type(node).shape
        axis = node.attrs.get("axis")
        if axis is not None:
            axis = norm_axis(int(axis), len(shape), node)
        length = math.prod(shape) if axis is None else shape[axis]
        keep = [int(i) for i in np.nonzero(c)[0]]
        if keep and keep[-1] >= length:
            raise invalid(node, f"condition selects position {keep[-1]} of an axis of {length}")
        node.attrs.clear()
        node.attrs.update(axis=axis, keep=keep)
        node.inputs = node.inputs[:1]

    def infer(self, node):
        t, a = _data(node), node.attrs
        if not a["keep"]:
            raise unsupported(node, "a condition that selects nothing (an empty output) is not supported")
        if a["axis"] is None:
            return [TensorType(t.dtype, (len(a["keep"]),))]
        ax = a["axis"]
        return [TensorType(t.dtype, t.shape[:ax] + (len(a["keep"]),) + t.shape[ax + 1:])]

    def reference(self, node, x):
        a = node.attrs
        src = x.reshape(-1) if a["axis"] is None else x
        return [np.take(src, np.array(a["keep"], np.int64), axis=0 if a["axis"] is None else a["axis"])]

    def lower(self, k, node, ins, outs):
        a, y = node.attrs, outs[0]
        x, ax = (ins[0].flat(), 0) if a["axis"] is None else (ins[0], a["axis"])
        keep = a["keep"]
        step = keep[1] - keep[0] if len(keep) > 1 else 1
        if step > 0 and keep == list(range(keep[0], keep[0] + step * len(keep), step)):  # a strided view
            strides = list(x.strides)
            strides[ax] *= step
            src = x.view(y.shape, strides, x.offset + keep[0] * x.strides[ax])
            with k.loops(y.shape) as idx:
                y[idx] = src[idx]
            return
        table = k.constant(np.array(keep, np.int32))
        with k.loops(y.shape) as idx:
            at = list(idx)
            at[ax] = k.cast(table[(idx[ax],)], k.lift(0).v.type)
            y[idx] = x[tuple(at)]


def _window(op, n, periodic):
    """The window of n points in float64 (the spec's formulas, after the paper it cites)."""
    if n == 1:
        return np.ones(1)
    big_n = n if periodic else n - 1
    t = 2 * np.pi * np.arange(n) / big_n
    if op == "HannWindow":
        return 0.5 - 0.5 * np.cos(t)
    if op == "HammingWindow":
        a0 = 25 / 46
        return a0 - (1 - a0) * np.cos(t)
    return 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2 * t)


@register("HannWindow", "HammingWindow", "BlackmanWindow")
class Window(Op):
    """A constant once its size is: folded at compile time."""
    shape_operands = (0,)
    dtype_attrs = ("output_datatype",)

    def canonicalize(self, node, opset):
        size = np.asarray(_needed(node, 0, "size"))
        if size.size != 1 or size.dtype.kind not in "iu":
            raise invalid(node, f"size must be an integer scalar, got {size.dtype}{list(size.shape)}")
        n = int(size.reshape(-1)[0])
        if n < 1:
            raise unsupported(node, f"a window of size {n} (an empty output) is not supported")
        periodic = int(node.attrs.get("periodic", 1))
        if periodic not in (0, 1):
            raise invalid(node, f"periodic must be 0 or 1, got {periodic}")
        dtype = node.attrs.get("output_datatype", "float32")
        if dtype not in NUMERIC:
            raise unsupported(node, f"output_datatype {dtype} is not supported")
        node.attrs.clear()
        node.attrs.update(size=n, periodic=periodic, dtype=dtype)
        node.inputs = []

    def infer(self, node):
        return [TensorType(node.attrs["dtype"], (node.attrs["size"],))]

    def reference(self, node, *unused):
        a = node.attrs
        return [_window(node.op, a["size"], a["periodic"]).astype(a["dtype"])]

    def lower(self, k, node, ins, outs):
        table = k.constant(self.reference(node)[0])
        with k.loop(outs[0].size) as i:
            outs[0][i] = table[i]


@register("SwiGLU")
class SwiGLU(Op):
    """Y = A * sigmoid(alpha * A) * B, A and B of one shape (no broadcasting)."""

    def canonicalize(self, node, opset):
        node.attrs["alpha"] = float(node.attrs.get("alpha", 1.0))

    def item_wise(self, node):
        return True

    def infer(self, node):
        a, b = in_type(node, 0), in_type(node, 1)
        if a.dtype != "float32" or b.dtype != "float32":
            raise unsupported(node, f"needs float32 inputs, got {a.dtype} and {b.dtype}")
        if a.shape != b.shape:
            raise invalid(node, f"A {list(a.shape)} and B {list(b.shape)} must have the same shape")
        return [a]

    def reference(self, node, a, b):
        a64 = a.astype(np.float64)
        return [(a64 / (1 + np.exp(-node.attrs["alpha"] * a64)) * b).astype(a.dtype)]

    def lower(self, k, node, ins, outs):
        a, b, y = ins[0].flat(), ins[1].flat(), outs[0].flat()
        with k.loop(y.size) as i:
            x = a[i]
            y[i] = x * m.sigmoid(k, x * node.attrs["alpha"]) * b[i]
