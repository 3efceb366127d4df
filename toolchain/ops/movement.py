"""Data movement with static index maps: Split, Slice, Pad, Expand, Tile,
DepthToSpace/SpaceToDepth, and the constant generators ConstantOfShape and Range.
Most lower to one strided copy: the source is a view (offset, strides) of the input."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .base import Op, broadcast_shapes, const_input, in_type, invalid, linear_jvp, norm_axis, register, unsupported



def _copy(k, src, dst):
    with k.loops(dst.shape) as idx:
        dst[idx] = src[idx]


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _window(shape, axis, begin, count, step=1) -> dict:
    """Slice's canonical attributes for a window along one axis of `shape`."""
    r = len(shape)
    return dict(begin=[begin if i == axis else 0 for i in range(r)], step=[step if i == axis else 1 for i in range(r)],
                count=[count if i == axis else d for i, d in enumerate(shape)])


def slice_transpose(b, g, shape, begin, step, count):
    """The adjoint of Slice(begin, step, count) from `shape`, as graph ops added through `b`:
    g placed where the slice read, zeros elsewhere. Per axis, a negative step reverses g,
    a step s > 1 spaces its elements s apart (s - 1 zeros padded after each, through a
    Reshape), then one Pad puts the window at its place."""
    if any(c == 0 for c in count):
        return b.g.const("zero", np.zeros(shape, g.type.dtype))
    r = len(shape)
    lo, hi = [0] * r, [0] * r
    for a in range(r):
        st, c, first = step[a], count[a], begin[a]
        if st < 0:
            g = b.op("Slice", [g], **_window(g.type.shape, a, c - 1, c, -1))
            first, st = first + (c - 1) * st, -st
        span = (c - 1) * st + 1
        if st > 1 and c > 1:
            cur = list(g.type.shape)
            g = b.reshape(g, cur[:a + 1] + [1] + cur[a + 1:])
            pads = [0] * (2 * r + 2)
            pads[r + 2 + a] = st - 1
            g = b.op("Pad", [g], pads=pads, mode="constant", value=0.0)
            g = b.reshape(g, cur[:a] + [c * st] + cur[a + 1:])
            g = b.op("Slice", [g], **_window(g.type.shape, a, 0, span))
        lo[a], hi[a] = first, shape[a] - first - span
    return b.op("Pad", [g], pads=lo + hi, mode="constant", value=0.0) if any(lo + hi) else g



@register("Split")
class Split(Op):
    shape_operands = (1,)
    splits_input = True
    jvp = staticmethod(linear_jvp)

    def canonicalize(self, node, opset):
        shape = in_type(node).shape
        ax = node.attrs["axis"] = norm_axis(node.attrs.get("axis", 0), len(shape), node)
        sizes = const_input(node, 1, "split sizes") if opset >= 13 else node.attrs.get("split")
        node.inputs = node.inputs[:1]
        n = len(node.outputs)
        if sizes is None or len(sizes) == 0:
            parts = int(node.attrs.pop("num_outputs", n))
            chunk = -(-shape[ax] // parts)  # the last chunk may be smaller (opset 18)
            sizes = [min(chunk, shape[ax] - i * chunk) for i in range(parts)]
        node.attrs.pop("num_outputs", None)
        sizes = _ints(sizes)
        if len(sizes) != n or sum(sizes) != shape[ax] or min(sizes) < 0:
            raise invalid(node, f"split sizes {sizes} do not divide axis {ax} of {shape} into {n} outputs")
        node.attrs["split"] = sizes

    def vjp(self, b, node, cotangents):
        """The parts' cotangents concatenated back (zeros for a part that has none)."""
        parts = [c if c is not None else b.g.const("zero", np.zeros(o.type.shape, o.type.dtype))
                 for o, c in zip(node.outputs, cotangents)]
        return [parts[0] if len(parts) == 1 else b.op("Concat", parts, axis=node.attrs["axis"])]

    def item_wise(self, node):
        return True

    def infer(self, node):
        t = in_type(node)
        ax = node.attrs["axis"]
        return [TensorType(t.dtype, t.shape[:ax] + (s,) + t.shape[ax + 1:]) for s in node.attrs["split"]]

    def reference(self, node, x):
        cuts = np.cumsum(node.attrs["split"])[:-1]
        return [p.copy() for p in np.split(x, cuts, axis=node.attrs["axis"])]

    def lower(self, k, node, ins, outs):
        x, ax, start = ins[0], node.attrs["axis"], 0
        for y in outs:
            if y.size:  # an empty part (a split size of 0) has nothing to write
                _copy(k, x.view(y.shape, x.strides, x.offset + start * x.strides[ax]), y)
            start += y.shape[ax]


@register("Slice")
class Slice(Op):
    shape_operands = (1, 2, 3, 4)
    jvp = staticmethod(linear_jvp)

    fusable_epilogue = False

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        shape = in_type(node).shape
        if opset >= 10:
            starts, ends = const_input(node, 1, "starts"), const_input(node, 2, "ends")
            axes, steps = const_input(node, 3, "axes"), const_input(node, 4, "steps")
        else:
            starts, ends = node.attrs.pop("starts", None), node.attrs.pop("ends", None)
            axes, steps = node.attrs.pop("axes", None), None
        if starts is None or ends is None:
            raise invalid(node, "needs starts and ends")
        starts, ends = _ints(starts), _ints(ends)
        axes = _ints(axes) if axes is not None else list(range(len(starts)))
        steps = _ints(steps) if steps is not None else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise invalid(node, "starts, ends, axes and steps differ in length")
        begin, step, count = [0] * len(shape), [1] * len(shape), list(shape)
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = norm_axis(a, len(shape), node)
            if st == 0:
                raise invalid(node, "step 0")
            lo, hi, st = slice(s, e, st).indices(shape[a])  # numpy's clamping rules
            begin[a], step[a], count[a] = lo, st, len(range(lo, hi, st))
        node.inputs = node.inputs[:1]
        node.attrs.update(begin=begin, step=step, count=count)

    def infer(self, node):
        return [TensorType(in_type(node).dtype, tuple(node.attrs["count"]))]

    def vjp(self, b, node, cotangents):
        a = node.attrs
        return [slice_transpose(b, cotangents[0], in_type(node).shape, a["begin"], a["step"], a["count"])]

    def reference(self, node, x):
        a = node.attrs
        return [x[tuple(slice(b, b + c * s if b + c * s >= 0 else None, s)
                        for b, s, c in zip(a["begin"], a["step"], a["count"]))].copy()]

    def lower(self, k, node, ins, outs):
        a, x = node.attrs, ins[0]
        offset = x.offset + sum(b * st for b, st in zip(a["begin"], x.strides))
        _copy(k, x.view(outs[0].shape, [s * st for s, st in zip(a["step"], x.strides)], offset), outs[0])


@register("Pad")
class Pad(Op):
    shape_operands = (1, 3)

    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        if opset >= 11:
            pads = const_input(node, 1, "pads")
            value = const_input(node, 2, "constant_value")
            axes = const_input(node, 3, "axes")
        else:
            pads, value, axes = node.attrs.pop("pads", None), node.attrs.pop("value", 0.0), None
        if pads is None:
            raise invalid(node, "needs pads")
        pads = _ints(pads)
        axes = [norm_axis(a, rank, node) for a in _ints(axes)] if axes is not None else list(range(rank))
        if len(pads) != 2 * len(axes):
            raise invalid(node, f"{len(pads)} pads for {len(axes)} axes")
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise unsupported(node, f"unsupported mode '{mode}'")
        node.attrs.update(pads=full, mode=mode,
                          value=float(np.asarray(value).reshape(-1)[0]) if value is not None and
                          np.asarray(value).size else 0.0)
        node.inputs = node.inputs[:1]

    def infer(self, node):
        t = in_type(node)
        r, p = len(t.shape), node.attrs["pads"]
        out = tuple(d + p[i] + p[i + r] for i, d in enumerate(t.shape))
        if min(out, default=1) < 0:
            raise invalid(node, f"pads {p} crop {t.shape} below zero")
        if node.attrs["mode"] != "constant" and any(
                d == 0 and (p[i] or p[i + r]) for i, d in enumerate(t.shape)):
            raise invalid(node, f"{node.attrs['mode']} padding of an empty axis")
        return [TensorType(t.dtype, out)]

    def reference(self, node, x):
        r, p, mode = x.ndim, node.attrs["pads"], node.attrs["mode"]
        crop = tuple(slice(max(-p[i], 0), x.shape[i] - max(-p[i + r], 0)) for i in range(r))
        x = x[crop]
        widths = [(max(p[i], 0), max(p[i + r], 0)) for i in range(r)]
        if mode == "constant":
            return [np.pad(x, widths, constant_values=node.attrs["value"]).astype(x.dtype)]
        return [np.pad(x, widths, mode=mode)]

    def jvp(self, b, node, tangents):
        """Linear: the same padding of the tangent, with 0 where a constant is padded in."""
        return [b.op("Pad", [tangents[0]], **{**node.attrs, "value": 0.0})]

    def vjp(self, b, node, cotangents):
        """Constant mode: the window of the cotangent over the input (zeros where a negative
        pad cropped it). Edge, reflect, wrap, axis by axis: that window plus the padded
        strips added onto the input elements they copy (the edge ones summed, the mirrored
        ones reversed), for pads within one reflection or wrap of the input."""
        x, g = in_type(node), cotangents[0]
        r, p, mode = len(x.shape), node.attrs["pads"], node.attrs["mode"]
        if mode == "constant":
            keep = [n - max(0, -p[i]) - max(0, -p[i + r]) for i, n in enumerate(x.shape)]
            if min(keep, default=1) <= 0:
                return [b.g.const("zero", np.zeros(x.shape, x.dtype))]
            inner = b.op("Slice", [g], begin=[max(0, v) for v in p[:r]], step=[1] * r, count=keep)
            return [slice_transpose(b, inner, x.shape, [max(0, -v) for v in p[:r]], [1] * r, keep)]
        if min(p) < 0:
            raise unsupported(node, f"no derivative rule for {mode} padding with negative pads (reverse mode)")
        limit = {"reflect": 1, "wrap": 0, "edge": None}[mode]
        for a, n in enumerate(x.shape):
            pb, pe = p[a], p[a + r]
            if not pb and not pe:
                continue
            if limit is not None and max(pb, pe) > n - limit:
                raise unsupported(node, f"no derivative rule for {mode} pads beyond the input's size (reverse mode)")
            parts = [b.op("Slice", [g], **_window(g.type.shape, a, pb, n))]
            shape = parts[0].type.shape

            def put(v, at):  # v, a strip along axis a, added onto the input from `at`
                parts.append(slice_transpose(b, v, shape, [at if i == a else 0 for i in range(r)], [1] * r,
                                             list(v.type.shape)))

            for strip_at, size, edge_at in ((0, pb, 0), (pb + n, pe, n - 1)):
                if not size:
                    continue
                if mode == "edge":
                    put(b.op("ReduceSum", [b.op("Slice", [g], **_window(g.type.shape, a, strip_at, size))], axes=[a],
                             keepdims=1), edge_at)
                elif mode == "reflect":  # the strip reversed, onto 1..pb / n-1-pe..n-2
                    put(b.op("Slice", [g], **_window(g.type.shape, a, strip_at + size - 1, size, -1)),
                        1 if strip_at == 0 else n - 1 - pe)
                else:  # wrap: the left strip copies the input's end, the right one its start
                    put(b.op("Slice", [g], **_window(g.type.shape, a, strip_at, size)), n - pb if strip_at == 0 else 0)
            g = parts[0]
            for v in parts[1:]:
                g = b.op("Add", [g, v])
        return [g]

    def lower(self, k, node, ins, outs):
        """Branch-free: source indices are clamped into the input, so every load is in
        bounds, and constant mode selects the pad value outside (vectorizes)."""
        x, y = ins[0], outs[0]
        r, p, mode = x.rank, node.attrs["pads"], node.attrs["mode"]
        with k.loops(y.shape) as idx:
            src, inside = [], None
            for i, o in enumerate(idx):
                c, n = k.lift(o) - p[i], x.shape[i]
                if mode == "reflect":
                    c = k.select(c < 0, -c, c)
                    c = k.select(c > n - 1, 2 * (n - 1) - c, c)
                elif mode == "wrap":
                    c = k.select(c < 0, c + n, c)
                    c = k.select(c > n - 1, c - n, c)
                elif mode == "constant" and (p[i] > 0 or p[i + r] > 0):
                    ok = (c >= 0) & (c < n)
                    inside = ok if inside is None else inside & ok
                src.append(k.min(k.max(c, 0), n - 1))
            v = x[tuple(src)]
            y[idx] = v if inside is None else k.select(inside, v, node.attrs["value"])


@register("Expand")
class Expand(Op):
    shape_operands = (1,)
    jvp = staticmethod(linear_jvp)

    def canonicalize(self, node, opset):
        shape = const_input(node, 1, "Expand shape")
        if shape is None:
            raise invalid(node, "needs a shape")
        node.attrs["shape"] = _ints(shape)
        node.inputs = node.inputs[:1]

    def item_wise(self, node):
        return True

    def infer(self, node):
        t = in_type(node)
        return [TensorType(t.dtype, broadcast_shapes(node, t.shape, tuple(node.attrs["shape"])))]

    def reference(self, node, x):
        return [np.broadcast_to(x, self.infer(node)[0].shape).copy()]

    def vjp(self, b, node, cotangents):
        return [b.unbroadcast(cotangents[0], in_type(node).shape)]

    def lower(self, k, node, ins, outs):
        _copy(k, ins[0].broadcast_to(outs[0].shape), outs[0])


@register("Tile")
class Tile(Op):
    shape_operands = (1,)
    jvp = staticmethod(linear_jvp)

    def canonicalize(self, node, opset):
        reps = const_input(node, 1, "repeats")
        if reps is None or len(reps) != len(in_type(node).shape):
            raise invalid(node, "needs one repeat count per axis")
        node.attrs["repeats"] = _ints(reps)
        node.inputs = node.inputs[:1]

    def item_wise(self, node):
        return True

    def infer(self, node):
        t = in_type(node)
        return [TensorType(t.dtype, tuple(d * r for d, r in zip(t.shape, node.attrs["repeats"])))]

    def reference(self, node, x):
        return [np.tile(x, node.attrs["repeats"])]

    def vjp(self, b, node, cotangents):
        """Each repeat's cotangent summed: viewed as (r0, d0, r1, d1, ...), reduced over the r's."""
        shape, reps = in_type(node).shape, node.attrs["repeats"]
        g = b.reshape(cotangents[0], [v for r, d in zip(reps, shape) for v in (r, d)])
        return [b.reshape(b.op("ReduceSum", [g], axes=list(range(0, 2 * len(shape), 2)), keepdims=0), shape)]

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        with k.loops(y.shape) as idx:
            y[idx] = x[tuple(i % d if r > 1 else i for i, d, r in zip(idx, x.shape, node.attrs["repeats"]))]


class _Rearrange(Op):
    """DepthToSpace / SpaceToDepth: a 6-D transpose between two reshapes."""
    jvp = staticmethod(linear_jvp)

    def canonicalize(self, node, opset):
        t = in_type(node)
        if len(t.shape) != 4:
            raise invalid(node, f"needs a 4-D NCHW input, got {t.shape}")
        mode = node.attrs.get("mode", "DCR")
        node.attrs["mode"] = mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("DCR", "CRD"):
            raise invalid(node, f"mode must be DCR or CRD, got {mode!r}")
        node.attrs["blocksize"] = int(node.attrs["blocksize"])

    def _plan(self, node):
        """(6-D shape the input is viewed as, permutation, output shape)."""
        n, c, h, w = in_type(node).shape
        b = node.attrs["blocksize"]
        if node.op == "DepthToSpace":
            if c % (b * b):
                raise invalid(node, f"channels {c} not divisible by blocksize^2 = {b * b}")
            if node.attrs["mode"] == "DCR":
                return (n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2), (n, c // (b * b), h * b, w * b)
            return (n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3), (n, c // (b * b), h * b, w * b)
        if h % b or w % b:
            raise invalid(node, f"spatial {h}x{w} not divisible by blocksize {b}")
        perm = (0, 3, 5, 1, 2, 4) if node.attrs["mode"] == "DCR" else (0, 1, 3, 5, 2, 4)  # CRD: opset 25
        return (n, c, h // b, b, w // b, b), perm, (n, c * b * b, h // b, w // b)

    def infer(self, node):
        return [TensorType(in_type(node).dtype, self._plan(node)[2])]

    def reference(self, node, x):
        six, perm, out = self._plan(node)
        return [x.reshape(six).transpose(perm).reshape(out)]

    def vjp(self, b, node, cotangents):
        """A permutation of the elements: the inverse one (the reshapes and transpose backwards)."""
        six, perm, _ = self._plan(node)
        g = b.reshape(cotangents[0], [six[p] for p in perm])
        g = b.op("Transpose", [g], perm=[int(i) for i in np.argsort(perm)])
        return [b.reshape(g, in_type(node).shape)]

    def lower(self, k, node, ins, outs):
        six, perm, _ = self._plan(node)
        src = ins[0].reshape(six).transpose(perm)
        _copy(k, src, outs[0].reshape(src.shape))


register("DepthToSpace", "SpaceToDepth")(_Rearrange)


@register("ConstantOfShape")
class ConstantOfShape(Op):
    """Folds away when its shape is constant, which it must be with static shapes."""
    shape_operands = (0,)

    def canonicalize(self, node, opset):
        shape = const_input(node, 0, "ConstantOfShape shape")
        node.attrs["shape"] = _ints(shape) if shape is not None else []
        value = node.attrs.get("value")  # the front end gives tensor attributes as arrays
        node.attrs["value"] = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(1)

    def infer(self, node):
        return [TensorType(node.attrs["value"].dtype.name, tuple(node.attrs["shape"]))]

    def reference(self, node, shape=None):
        return [np.full(node.attrs["shape"], node.attrs["value"][0], dtype=node.attrs["value"].dtype)]

    def lower(self, k, node, ins, outs):
        y = outs[0].flat()
        with k.loop(y.size) as i:
            y[i] = node.attrs["value"].item()


@register("Range")
class Range(Op):
    def canonicalize(self, node, opset):
        start, limit, delta = (const_input(node, i, n) for i, n in enumerate(("start", "limit", "delta")))
        if start is None or limit is None or delta is None:
            raise invalid(node, "needs start, limit and delta")
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
        node.attrs["count"] = max(int(np.ceil((limit - start) / delta)), 0)

    def infer(self, node):
        return [TensorType(in_type(node).dtype, (node.attrs["count"],))]

    def reference(self, node, start, limit, delta):
        start, delta = np.asarray(start).reshape(-1)[0], np.asarray(delta).reshape(-1)[0]
        return [(start + np.arange(node.attrs["count"]) * delta).astype(start.dtype)]
