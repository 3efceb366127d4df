"""Pooling: MaxPool (with the optional Indices output), AveragePool, LpPool (N-d windows
with pads, strides, dilations, ceil_mode) and the global forms of the first two."""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from ..kernel.llvm import I64, LLVM_TYPES
from ..kernel.tiled_conv import window_in_bounds
from .base import Op, Partition, in_type, invalid, linear_jvp, register, unsupported
from .movement import slice_transpose
from .nn import window_attrs



def pool_out_size(size, k, s, d, pb, pe, ceil_mode):
    """ONNX's rule: with ceil_mode the last window must still start inside the input
    or its left padding (a window that begins in the right padding is dropped)."""
    span = size + pb + pe - ((k - 1) * d + 1)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _windows(node, x_shape):
    """Per spatial dim: (kernel, stride, dilation, pad_begin, pad_end, out)."""
    a = node.attrs
    rank = len(a["kernel_shape"])
    return [(a["kernel_shape"][i], a["strides"][i], a["dilations"][i], a["pads"][i], a["pads"][i + rank],
             pool_out_size(x_shape[2 + i], a["kernel_shape"][i], a["strides"][i], a["dilations"][i],
                           a["pads"][i], a["pads"][i + rank], a["ceil_mode"]))
            for i in range(rank)]


def _int_power(v, p):
    """v**p for a constant integer p >= 1, by squaring."""
    result, base = None, v
    while p:
        if p & 1:
            result = base if result is None else result * base
        p >>= 1
        if p:
            base = base * base
    return result


def _flat_indices(shape, column_major):
    """MaxPool's Indices: each input element's offset in the flattened input, the spatial
    part row-major, or column-major (storage_order 1: the first spatial axis fastest)."""
    spatial = shape[2:]
    grid = np.indices(shape, dtype=np.int64)
    per_item = int(np.prod(spatial, dtype=np.int64))
    return (grid[0] * shape[1] + grid[1]) * per_item + sum(g * st for g, st in zip(grid[2:],
                                                                               _strides(spatial, column_major)))


def _strides(spatial, column_major):
    return [int(np.prod(spatial[:i] if column_major else spatial[i + 1:], dtype=np.int64))
            for i in range(len(spatial))]


class _Pool(Op):
    """kind: max (float32, int8, uint8; optional Indices output), avg, or lp (the p-norm
    of each window: (sum |x|^p) ** (1/p), padding adds nothing)."""

    fusable_epilogue = True
    kind = "avg"
    dtypes = ("float32",)

    @property
    def is_max(self):
        return self.kind == "max"

    def item_wise(self, node):
        return True

    def partition(self, node):
        """By channels: each piece pools its own channels."""
        return Partition(axis=1, inputs=((1, 1, 1),)) if len(node.outputs) == 1 else None

    def canonicalize(self, node, opset):
        x = in_type(node).shape
        if "kernel_shape" not in node.attrs:
            raise invalid(node, "needs kernel_shape")
        if len(x) < 3 or len(node.attrs["kernel_shape"]) != len(x) - 2:
            raise invalid(node, f"kernel_shape {node.attrs['kernel_shape']} does not fit input {x}")
        window_attrs(node, x[2:], node.attrs["kernel_shape"])
        node.attrs["ceil_mode"] = int(node.attrs.get("ceil_mode", 0))
        node.attrs["count_include_pad"] = int(node.attrs.get("count_include_pad", 0))
        node.attrs.pop("storage_order", None)

    def _outputs(self, node, y):
        return [y]

    def infer(self, node):
        t = in_type(node)
        if t.dtype not in self.dtypes:
            raise unsupported(node, f"needs {' or '.join(self.dtypes)} input, got {t.dtype}")
        out = [w[-1] for w in _windows(node, t.shape)]
        if min(out) <= 0:
            raise invalid(node, f"window larger than the padded input {t.shape}")
        return self._outputs(node, TensorType(t.dtype, t.shape[:2] + tuple(out)))

    def reference(self, node, x):
        wins = _windows(node, x.shape)
        fill = -np.inf if self.is_max else 0.0
        pads = [(0, 0), (0, 0)]
        for size, (k, s, d, pb, pe, out) in zip(x.shape[2:], wins):
            pads.append((pb, max(pe, (out - 1) * s + (k - 1) * d + 1 - size - pb)))
        src = x.astype(np.float64)
        if self.kind == "lp":
            src = np.abs(src) ** node.attrs["p"]
        xp = np.pad(src, pads, constant_values=fill)
        with_indices = self.is_max and len(node.outputs) > 1
        if with_indices:
            flat = np.pad(_flat_indices(x.shape, node.attrs["storage_order"]), pads, constant_values=-1)
        real = np.pad(np.ones(x.shape[2:]), pads[2:])  # 1 where the input is, 0 in padding
        declared = np.pad(np.ones([s + pb + pe for s, (_, _, _, pb, pe, _) in zip(x.shape[2:], wins)]),
                          [(0, p[1] - w[4]) for p, w in zip(pads[2:], wins)])  # input + explicit pads
        acc = np.full(x.shape[:2] + tuple(w[-1] for w in wins), fill)
        best = np.full(acc.shape, -1, np.int64)
        count = np.zeros(acc.shape[2:])
        weights = declared if node.attrs["count_include_pad"] else real
        for offs in itertools.product(*[range(w[0]) for w in wins]):
            sl = tuple(slice(o * d, o * d + (out - 1) * s + 1, s) for o, (_, s, d, _, _, out) in zip(offs, wins))
            win = xp[(slice(None), slice(None)) + sl]
            if with_indices:  # the first maximum in window order (the first element if all are equal)
                at = flat[(slice(None), slice(None)) + sl]
                best = np.where((win > acc) | ((best < 0) & (at >= 0)), at, best)
            acc = np.maximum(acc, win) if self.is_max else acc + win
            count += weights[sl]
        if self.kind == "avg":
            acc = acc / count
        elif self.kind == "lp":
            acc = acc ** (1.0 / node.attrs["p"])
        return [acc.astype(x.dtype)] + ([best] if with_indices else [])

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        indices = outs[1] if len(outs) > 1 else None
        wins = _windows(node, x.shape)
        include_pad = node.attrs["count_include_pad"]
        dtype = x.dtype
        if self.is_max:
            init = float("-inf") if dtype == "float32" else int(np.iinfo(dtype).min)
        else:
            init = 0.0
        per_item = int(np.prod(x.shape[2:], dtype=np.int64))
        if indices is not None:
            strides = _strides(x.shape[2:], node.attrs["storage_order"])
        with k.loops(y.shape) as (n, c, *o):
            acc = k.var(k.lift(init, like=LLVM_TYPES[dtype]))
            count = None if self.kind != "avg" else k.var(0.0)
            best = k.var(k.lift(-1, like=I64)) if indices is not None else None
            with k.loops([w[0] for w in wins]) as kk:
                coords = [o[i] * s - pb + kk[i] * d for i, (_, s, d, pb, _, _) in enumerate(wins)]
                with k.if_(window_in_bounds(k, coords, x.shape[2:])):
                    v = x[(n, c, *coords)]
                    if self.is_max and dtype == "float32" and best is None:
                        acc.value = k.max(v, acc.value)
                    elif self.is_max:  # strictly greater: the first maximum in window order
                        take = k.unsigned("<", acc.value, v) if dtype == "uint8" else acc.value < v
                        if best is not None:  # the window's first element, whatever it holds
                            take = take | best.value.eq(-1)
                        acc.value = k.select(take, v, acc.value)
                        if best is not None:
                            at = (k.lift(n) * x.shape[1] + c) * per_item
                            for cc, st in zip(coords, strides):
                                at = at + k.lift(cc) * st
                            best.value = k.select(take, k.cast(at, I64), best.value)
                    elif self.kind == "lp":
                        acc += _int_power(k.abs(v), node.attrs["p"])
                    else:
                        acc += v
                        if not include_pad:
                            count += 1.0
                if include_pad and self.kind == "avg":
                    extent = [x.shape[2 + i] + wins[i][3] + wins[i][4] for i in range(len(wins))]
                    padded = [cc + w[3] for cc, w in zip(coords, wins)]
                    with k.if_(window_in_bounds(k, padded, extent)):
                        count += 1.0
            if self.kind == "avg":
                y[(n, c, *o)] = acc.value / count.value
            elif self.kind == "lp":
                p = node.attrs["p"]
                total = acc.value
                y[(n, c, *o)] = total if p == 1 else k.sqrt(total) if p == 2 else \
                    m.exp(k, m.log(k, total) * (1.0 / p))
            else:
                y[(n, c, *o)] = acc.value
            if best is not None:
                indices[(n, c, *o)] = best.value


@register("MaxPool")
class MaxPool(_Pool):
    kind = "max"
    dtypes = ("float32", "int8", "uint8")

    def canonicalize(self, node, opset):
        order = int(node.attrs.get("storage_order", 0))
        super().canonicalize(node, opset)
        node.attrs["count_include_pad"] = 0  # an AveragePool attribute; meaningless here
        if order not in (0, 1):
            raise invalid(node, f"storage_order must be 0 or 1, got {order}")
        if len(node.outputs) > 1:  # it orders the Indices output
            node.attrs["storage_order"] = order

    def item_wise(self, node):
        return len(node.outputs) == 1  # Indices count from the whole batch's first element

    def _outputs(self, node, y):
        if len(node.outputs) > 2:
            raise invalid(node, f"has {len(node.outputs)} outputs, at most 2 (Y, Indices)")
        return [y] + [TensorType("int64", y.shape)] * (len(node.outputs) - 1)

    def jvp(self, b, node, tangents):
        """The tangent at each window's maximum (the first tap that holds it, in window
        order): per tap, the strided slices of the input and of the tangent under it (both
        padded as the windows reach, the input with -inf); the output selects, from the last
        tap to the first, the tangent's slice where the input's equals the maximum."""
        x, y, t = node.inputs[0], node.outputs[0], tangents[0]
        xs, ys = x.type.shape, y.type.shape
        wins = _windows(node, xs)
        begin = [pb for (_, _, _, pb, _, _) in wins]
        end = [max(pe, (out - 1) * s + (k - 1) * d + 1 - size - pb)
               for size, (k, s, d, pb, pe, out) in zip(xs[2:], wins)]
        if any(begin) or any(end):
            pads = [0, 0, *begin, 0, 0, *end]
            x = b.op("Pad", [x], pads=pads, mode="constant", value=float("-inf"))
            t = b.op("Pad", [t], pads=pads, mode="constant", value=0.0)
        r = None
        for offs in reversed(list(itertools.product(*[range(w[0]) for w in wins]))):
            window = dict(begin=[0, 0, *(o * w[2] for o, w in zip(offs, wins))], step=[1, 1, *(w[1] for w in wins)],
                          count=list(ys))
            tap = b.op("Slice", [t], **window)
            r = tap if r is None else b.op("Where", [b.op("Equal", [b.op("Slice", [x], **window), y]), tap, r])
        return [r] + [None] * (len(node.outputs) - 1)  # Indices: integer, no tangent

    def vjp(self, b, node, cotangents):
        """Each window's cotangent to its first maximum in window order (onnxruntime's and
        PyTorch's choice on ties): per tap, the strided slice of the input (padded with -inf
        as the windows reach) equal to the output and not already taken by an earlier tap
        selects the cotangent, put back where the slice read (movement.slice_transpose)."""
        x, y, g = b.primal(node.inputs[0]), b.primal(node.outputs[0]), cotangents[0]
        xs, ys = node.inputs[0].type.shape, node.outputs[0].type.shape
        wins = _windows(node, xs)
        begin = [pb for (_, _, _, pb, _, _) in wins]
        end = [max(pe, (out - 1) * s + (k - 1) * d + 1 - size - pb)
               for size, (k, s, d, pb, pe, out) in zip(xs[2:], wins)]
        if any(begin) or any(end):
            x = b.op("Pad", [x], pads=[0, 0, *begin, 0, 0, *end], mode="constant", value=float("-inf"))
        zero, taken, acc = b.scalar(0.0, g.type.dtype), None, None
        for offs in itertools.product(*[range(w[0]) for w in wins]):
            at, step = [0, 0, *(o * w[2] for o, w in zip(offs, wins))], [1, 1, *(w[1] for w in wins)]
            hit = b.op("Equal", [b.op("Slice", [x], begin=at, step=step, count=list(ys)), y])
            first = hit if taken is None else b.op("And", [hit, b.op("Not", [taken])])
            taken = hit if taken is None else b.op("Or", [taken, hit])
            part = slice_transpose(b, b.op("Where", [first, g, zero]), x.type.shape, at, step, list(ys))
            acc = part if acc is None else b.op("Add", [acc, part])
        if any(begin) or any(end):
            acc = b.op("Slice", [acc], begin=[0, 0, *begin], step=[1] * len(xs), count=list(xs))
        return [acc] + [None] * (len(node.outputs) - 1)


@register("LpPool")
class LpPool(_Pool):
    kind = "lp"

    def canonicalize(self, node, opset):
        p = node.attrs.get("p", 2)
        if not isinstance(p, int) or p < 1:
            raise invalid(node, f"p must be a positive integer, got {p}")
        super().canonicalize(node, opset)
        node.attrs["count_include_pad"] = 0  # padding adds 0 to the sum
        node.attrs["p"] = p


@register("AveragePool")
class AveragePool(_Pool):
    jvp = staticmethod(linear_jvp)

    def canonicalize(self, node, opset):
        super().canonicalize(node, opset)
        if node.attrs["dilations"] != [1] * len(node.attrs["kernel_shape"]) and opset < 19:
            raise invalid(node, "dilations need opset 19")

    def vjp(self, b, node, cotangents):
        """Each window's cotangent divided by the window's divisor, spread back over the
        window: a depthwise ConvTranspose with a kernel of ones."""
        a = node.attrs
        if a["ceil_mode"]:
            raise unsupported(node, "no derivative rule with ceil_mode=1 yet")
        xs, ys = node.inputs[0].type.shape, node.outputs[0].type.shape
        k, s, d, p = a["kernel_shape"], a["strides"], a["dilations"], a["pads"]
        rank = len(k)
        divisor = np.ones(ys[2:])
        for i in range(rank):  # separable: the product of the real elements per axis
            starts = np.arange(ys[2 + i]) * s[i] - p[i]
            taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
            n = k[i] if a["count_include_pad"] else ((taps >= 0) & (taps < xs[2 + i])).sum(axis=1)
            divisor = divisor * np.asarray(n, np.float64).reshape((-1,) + (1,) * (rank - 1 - i))
        g = b.op("Mul", [cotangents[0], b.g.const("inv_count", (1.0 / divisor).astype(np.float32)
                                                 .reshape((1, 1) + tuple(ys[2:])))])
        span = [(ys[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 for i in range(rank)]
        if list(s) == list(k) and not any(p) and all(v == 1 for v in d):  # windows tile the input
            return [_spread_tiles(b, g, xs, ys, k)]
        ones = b.g.const("ones", np.ones((xs[1], 1, *k), np.float32))
        return [b.op("ConvTranspose", [g, ones], group=xs[1], kernel_shape=list(k), strides=list(s),
                     dilations=list(d), output_padding=[xs[2 + i] + p[i] + p[rank + i] - span[i] for i in range(rank)],
                     pads=list(p))]


def _spread_tiles(b, g, xs, ys, k):
    """Each element of g repeated over its window, where the windows tile the input (stride =
    kernel, no padding): a broadcast, not a ConvTranspose; the input's last rows and
    columns no window reaches get 0."""
    rank = len(k)
    tiled = b.op("Expand", [b.reshape(g, (*ys[:2], *[v for i in range(rank) for v in (ys[2 + i], 1)]))],
                 shape=[*ys[:2], *[v for i in range(rank) for v in (ys[2 + i], k[i])]])
    out = b.reshape(tiled, (*ys[:2], *[ys[2 + i] * k[i] for i in range(rank)]))
    rest = [xs[2 + i] - ys[2 + i] * k[i] for i in range(rank)]
    if any(rest):
        out = b.op("Pad", [out], pads=[0] * (2 + rank) + [0, 0, *rest], mode="constant", value=0.0)
    return out


@register("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Op):
    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def partition(self, node):
        """By channels: each piece pools its own channels."""
        return Partition(axis=1, inputs=((1, 1, 1),)) if len(node.outputs) == 1 else None

    def infer(self, node):
        t = in_type(node)
        if len(t.shape) < 3:
            raise invalid(node, f"needs an N x C x spatial input, got {t.shape}")
        return [TensorType(t.dtype, t.shape[:2] + (1,) * (len(t.shape) - 2))]

    def reference(self, node, x):
        axes = tuple(range(2, x.ndim))
        f = np.max if node.op == "GlobalMaxPool" else np.mean
        return [f(x.astype(np.float64), axis=axes, keepdims=True).astype(x.dtype)]

    def vjp(self, b, node, cotangents):
        if node.op != "GlobalAveragePool":
            return super().vjp(b, node, cotangents)
        x = node.inputs[0].type
        spread = b.op("Expand", [cotangents[0]], shape=list(x.shape))
        return [b.op("Mul", [spread, b.scalar(1.0 / int(np.prod(x.shape[2:], dtype=np.int64)))])]

    def jvp(self, b, node, tangents):
        if node.op != "GlobalAveragePool":
            return super().jvp(b, node, tangents)
        return linear_jvp(b, node, tangents)

    def lower(self, k, node, ins, outs):
        n_, c_ = ins[0].shape[:2]
        spatial = int(np.prod(ins[0].shape[2:], dtype=np.int64))
        x = ins[0].reshape((n_, c_, spatial))
        y = outs[0].reshape((n_, c_))
        is_max = node.op == "GlobalMaxPool"
        with k.loops((n_, c_)) as (n, c):
            acc = k.var(x[n, c, 0] if is_max else 0.0)
            with k.loop(spatial) as i:
                if is_max:
                    acc.value = k.max(x[n, c, i], acc.value)
                else:
                    acc += x[n, c, i]
            y[n, c] = acc.value if is_max else acc.value * (1.0 / spatial)
