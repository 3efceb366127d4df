"""Neural-network ops with a reduction inside: convolution, GEMM/MatMul, softmax.

Op semantics only: each op's attributes, shape rule and numpy reference, its schedule
choice (a record from toolchain.schedules, made per vector unit) and a lowering that
hands that schedule to the tiled loop nests of toolchain.kernel.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType, Value
from ..kernel import mathfns as m
from ..kernel.llvm import LLVM_TYPES
from ..kernel.tiled_conv import conv2d_channels, conv2d_columns, conv2d_taps_reduce, conv_point, conv_pointwise
from ..kernel.tiled_matmul import matmul_by_dots, tiled_matmul
from ..schedules import ConvLayer, conv_schedule, matmul_schedule
from .base import Op, Partition, in_type, invalid, norm_axis, register, unsupported
from .conv_grad import (bias_grad, depthwise_weight_grad, few_channel_weight_grad, input_grad_as_conv,
                        reached_input, strided_input_grad_as_conv, subpixel_input_grad, weight_grad_by_taps)

# -- convolution ------------------------------------------------------------------
def resolve_auto_pad(node, in_spatial, kernel, strides, dilations):
    """SAME_UPPER/SAME_LOWER/VALID -> explicit pads [begin..., end...]."""
    mode = node.attrs.pop("auto_pad", "NOTSET")
    if isinstance(mode, bytes):
        mode = mode.decode()
    rank = len(in_spatial)
    if mode in ("NOTSET", ""):
        return list(node.attrs.get("pads", [0] * (2 * rank)))
    if mode == "VALID":
        return [0] * (2 * rank)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise invalid(node, f"unknown auto_pad {mode}")
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


def conv_out_size(size, k, s, d, pb, pe, ceil_mode=False):
    span = size + pb + pe - ((k - 1) * d + 1)
    return (-(-span // s) if ceil_mode else span // s) + 1


def window_attrs(node, spatial_in, kernel):
    """Canonical strides/dilations/pads for conv- and pool-like ops."""
    rank = len(kernel)
    node.attrs["kernel_shape"] = list(kernel)
    node.attrs["strides"] = list(node.attrs.get("strides", [1] * rank))
    node.attrs["dilations"] = list(node.attrs.get("dilations", [1] * rank))
    for key, want in (("strides", rank), ("dilations", rank), ("pads", 2 * rank)):
        if key in node.attrs and len(node.attrs[key]) != want:
            raise invalid(node, f"{key} {list(node.attrs[key])} has {len(node.attrs[key])} values, "
                                f"want {want} for {rank} spatial dimension(s)")
    for key in ("strides", "dilations"):
        if any(v < 1 for v in node.attrs[key]):
            raise invalid(node, f"{key} {node.attrs[key]} must be positive")
    node.attrs["pads"] = resolve_auto_pad(node, spatial_in, kernel, node.attrs["strides"], node.attrs["dilations"])
    if any(v < 0 for v in node.attrs["pads"]):  # onnx's shape inference and onnxruntime refuse them too
        raise invalid(node, f"pads {node.attrs['pads']} must not be negative")


@register("Conv")
class Conv(Op):
    fusable_epilogue = True
    own_inputs = 3

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        x, w = in_type(node, 0), in_type(node, 1)
        if x.dtype != "float32":
            raise unsupported(node, f"only float32 convolution is supported, got {x.dtype}")
        if len(x.shape) < 3:
            raise invalid(node, f"input must be N x C x spatial..., got rank {len(x.shape)}")
        node.attrs.setdefault("group", 1)
        if len(w.shape) != len(x.shape):
            raise invalid(node, f"weight {list(w.shape)} must have the input's rank {len(x.shape)}")
        if "kernel_shape" in node.attrs and list(node.attrs["kernel_shape"]) != list(w.shape[2:]):
            raise invalid(node, f"kernel_shape {list(node.attrs['kernel_shape'])} disagrees with the "
                                f"weight's spatial shape {list(w.shape[2:])} (weight {list(w.shape)})")
        window_attrs(node, x.shape[2:], w.shape[2:])

    def infer(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        a = node.attrs
        g = a["group"]
        if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
            raise invalid(node, f"channels {x.shape[1]} do not match weights {w.shape} with group={g}")
        rank = len(x.shape) - 2
        out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], a["strides"][i], a["dilations"][i],
                             a["pads"][i], a["pads"][rank + i]) for i in range(rank)]
        if min(out) <= 0:
            raise invalid(node, f"output spatial size {out} is empty")
        return [TensorType("float32", (x.shape[0], w.shape[0], *out))]

    def reference(self, node, x, w, b=None):
        a = node.attrs
        rank = x.ndim - 2
        pads = [(0, 0), (0, 0)] + [(a["pads"][i], a["pads"][rank + i]) for i in range(rank)]
        xp = np.pad(x.astype(np.float64), pads)
        (n, oc, *out) = self.infer(node)[0].shape
        g = a["group"]
        cg, ocg = w.shape[1], oc // g
        y = np.zeros((n, oc, *out))
        for kidx in itertools.product(*[range(s) for s in w.shape[2:]]):
            sl = tuple(slice(kidx[i] * a["dilations"][i],
                             kidx[i] * a["dilations"][i] + (out[i] - 1) * a["strides"][i] + 1,
                             a["strides"][i]) for i in range(rank))
            patch = xp[(slice(None), slice(None)) + sl]  # n, C, out...
            for gi in range(g):
                xs = patch[:, gi * cg:(gi + 1) * cg]
                ws = w[(slice(gi * ocg, (gi + 1) * ocg), slice(None)) + kidx]  # ocg, cg
                y[:, gi * ocg:(gi + 1) * ocg] += np.einsum("nc...,oc->no...", xs, ws)
        if b is not None:
            y += b.reshape((1, -1) + (1,) * rank)
        return [y.astype(x.dtype)]

    def macs(self, node):
        out = node.outputs[0].type
        w = in_type(node, 1)
        return out.size * int(np.prod(w.shape[1:]))

    def partition(self, node):
        """By output channels: a piece reads the whole input and its rows of the weights and
        bias; grouped, whole groups, each reading its groups' input channels."""
        groups, w = node.attrs["group"], in_type(node, 1).shape
        if groups == 1:
            return Partition(axis=1, inputs=(None, (0, 1, 1), (0, 1, 1)))
        per_group = w[0] // groups
        return Partition(axis=1, inputs=((1, w[1], per_group), (0, 1, 1), (0, 1, 1)), quantum=per_group,
                         groups=True)

    def vjp(self, b, node, cotangents):
        """dx: ConvTranspose of dy with the same weights; dw: a Conv over the input with
        batch and channels swapped (strides and dilations trade places), dy as its kernel.
        With stride 1, dx is a Conv (flipped, channel-swapped weights), with stride 2 a Conv
        per phase of the input, a small ungrouped kernel's dw a Gemm per tap and a depthwise
        one's a depthwise Conv widened to whole vectors (ops/conv_grad.py): the scheduled
        kernels run them."""
        a, g = node.attrs, cotangents[0]
        groups = a["group"]
        x, w = node.inputs[:2]
        xs, ws, ys = x.type.shape, w.type.shape, node.outputs[0].type.shape
        rank, s, d, p = len(xs) - 2, a["strides"], a["dilations"], a["pads"]
        span = [(ys[2 + i] - 1) * s[i] + (ws[2 + i] - 1) * d[i] + 1 for i in range(rank)]
        out_pad = [xs[2 + i] + p[i] + p[rank + i] - span[i] for i in range(rank)]
        gx = input_grad_as_conv(b, g, b.primal(w), xs, ws, groups, s, d, p)  # stride 1: scheduled
        if gx is None:  # stride 2: a stride-1 Conv per phase of the input
            gx = subpixel_input_grad(b, g, b.primal(w), xs, ws, groups, s, d, p)
        if gx is None:  # or over the cotangent spread out with zeros (other ranks, dilations)
            gx = strided_input_grad_as_conv(b, g, b.primal(w), xs, ws, groups, s, d, p)
        if gx is None:
            gx = b.op("ConvTranspose", [g, b.primal(w)], group=groups, kernel_shape=list(ws[2:]), strides=list(s),
                      dilations=list(d), output_padding=out_pad, pads=list(p))
        gw = few_channel_weight_grad(b, b.primal(x), g, xs, ws, ys, s, d, p, groups, getattr(b, "vector", None))
        if gw is None:  # a Gemm per tap
            gw = weight_grad_by_taps(b, b.primal(x), g, xs, ws, ys, s, d, p, groups)
        if gw is None:  # depthwise: one Conv, dy its kernel, no Transpose, whole vectors
            gw = depthwise_weight_grad(b, b.primal(x), g, xs, ws, ys, s, d, p, groups, getattr(b, "vector", None))
        if gw is not None:
            grads = [gx, gw]
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                grads.append(bias_grad(b, g))
            return grads
        xv, end = reached_input(b, b.primal(x), xs, ws, ys, s, d, p)
        xs = tuple(xv.type.shape)
        swap = [1, 0, *range(2, rank + 2)]
        xt = b.op("Transpose", [xv], perm=swap)
        gt = b.op("Transpose", [g], perm=swap)
        window = dict(kernel_shape=list(ys[2:]), strides=list(d), dilations=list(s), pads=list(p[:rank]) + end)
        if groups == 1:
            gw = b.op("Transpose", [b.op("Conv", [xt, gt], group=1, **window)], perm=swap)
        else:
            gw = self._grouped_weight_grad(b, xt, gt, xs, ws, groups, window)
        grads = [gx, gw]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            grads.append(bias_grad(b, g))
        return grads

    def jvp(self, b, node, tangents):
        """Linear in each operand: Conv(dx, w, db) + Conv(x, dw), same window and groups. With
        the model's weights (constants) that is the Conv of the tangent with those weights."""
        (x, w), (tx, tw) = node.inputs[:2], tangents[:2]
        tb = tangents[2] if len(tangents) > 2 else None
        terms = []
        for data, weights, tangent in ((tx, w, tx), (x, tw, tw)):
            if tangent is not None:
                terms.append(b.op("Conv", [data, weights] + ([tb] if tb is not None else []), **node.attrs))
                tb = None  # added once, as the bias of the first term
        if tb is not None:
            ys = node.outputs[0].type.shape
            terms.append(b.expand(b.reshape(tb, (1, ys[1]) + (1,) * (len(ys) - 2)), ys))
        return [b.add(terms)]

    @staticmethod
    def _grouped_weight_grad(b, xt, gt, xs, ws, groups, window):
        """dw of a grouped convolution as one grouped Conv of batch 1: input channel c*N+n
        is item n's channel c, and each input channel c (of group c // cg) meets the m
        output channels of its group, so out channel c*m+j is dw[(c // cg)*m + j, c % cg]."""
        n, c = xs[0], xs[1]
        o, cg = ws[0], ws[1]
        m = o // groups
        spatial = tuple(xs[2:])
        xin = b.reshape(xt, (1, c * n) + spatial)
        kernel = gt  # (O, N, oh, ow): row c*m+j must be dy's channel (c // cg)*m + j
        if cg > 1:
            idx = np.array([(ci // cg) * m + j for ci in range(c) for j in range(m)], np.int64)
            kernel = b.op("Gather", [gt, b.g.const("channels", idx)], axis=0)
        out = b.op("Conv", [xin, kernel], group=c, **window)  # (1, C*m, k...)
        out = b.reshape(out, (groups, cg, m) + tuple(ws[2:]))
        out = b.op("Transpose", [out], perm=[0, 2, 1, *range(3, 3 + len(ws) - 2)])
        return b.reshape(out, ws)

    def workspace(self, node):
        """Run-time weights in a by-lane column tile: their packed copy (Conv lowering packs
        them there first, a pass over the weights, then reads whole vectors of lanes output
        channels per tap instead of a broadcast per channel)."""
        s = getattr(node, "schedule", None)
        if s is not None and s.kind == "conv-columns" and s.packing == "by-lane" and not node.inputs[1].is_const:
            o, cg, kh, kw = in_type(node, 1).shape
            return [TensorType(in_type(node, 1).dtype, (o // s.lanes, cg, kh, kw, s.lanes))]
        return []

    def schedule(self, node, vec):
        a = node.attrs
        layer = ConvLayer(in_type(node, 0).shape, in_type(node, 1).shape, node.outputs[0].type.shape,
                          tuple(a["strides"]), tuple(a["dilations"]), tuple(a["pads"]), a["group"],
                          node.inputs[1].is_const)
        return conv_schedule(vec, layer)

    def lower(self, k, node, ins, outs):
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 else None
        a, s = node.attrs, node.schedule
        if s.kind in ("pointwise", "pointwise-by-channels"):
            return conv_pointwise(k, s, x, w, bias, y, node.inputs[1])
        if s.kind == "conv-channels":
            return conv2d_channels(k, s, a, x, bias, y, node.inputs[1].data)
        if s.kind in ("conv-columns", "conv-depthwise"):
            return conv2d_columns(k, s, a, x, w, bias, y, node.inputs[1], outs[1] if len(outs) > 1 else None)
        if s.kind == "conv-taps-reduce":
            return conv2d_taps_reduce(k, s, a, x, w, bias, y)
        with k.loops(y.shape) as (n, oc, *o):
            conv_point(k, a, x, w, bias, y, n, oc, o)



# Gemm with run-time transB weights: dot products (matmul_by_dots) in blocks of this many
# rows of a times 4 rows of b (16 accumulators: a 32-register file; 2 rows with 16). On
# cortex-a76: FC autoencoder's forward Gemms (1 row) 2.5 -> 0.6 instructions per MAC, KWS's
# pointwise weight gradients (64 x 64 x 125) 0.61 -> ~0.4 against the register tile.
DOT_BLOCK_ROWS = 4


@register("Gemm")
class Gemm(Op):
    fusable_epilogue = True
    own_inputs = 3

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        for key, default in (("alpha", 1.0), ("beta", 1.0), ("transA", 0), ("transB", 0)):
            node.attrs.setdefault(key, default)
        w = node.inputs[1]
        if node.attrs["transB"] and w.is_const:
            # weights stored (N, K), as exporters write them: transpose them once, at compile
            # time, so the kernel reads rows of B contiguously along N (see tiled_matmul)
            data = np.ascontiguousarray(w.data.T)
            node.inputs[1] = Value(f"{w.name}_t", TensorType.of(data), data=data)
            node.attrs["transB"] = 0

    def _mnk(self, node):
        a, b = in_type(node, 0).shape, in_type(node, 1).shape
        if len(a) != 2 or len(b) != 2:
            raise invalid(node, f"Gemm needs 2-D operands, got {a} and {b}")
        m_, ka = a[::-1] if node.attrs["transA"] else a
        kb, n = b[::-1] if node.attrs["transB"] else b
        if ka != kb:
            raise invalid(node, f"inner dimensions differ: {a} x {b}")
        return m_, n, ka

    def infer(self, node):
        m_, n, _ = self._mnk(node)
        return [TensorType(in_type(node, 0).dtype, (m_, n))]

    def schedule(self, node, vec):
        m_, n, kk = self._mnk(node)
        # a's rows run along k in memory unless transposed (then only a single row does)
        return matmul_schedule(vec, m_, n, kk, a_contiguous=not node.attrs["transA"] or m_ == 1,
                               b_const=node.inputs[1].is_const)

    def reference(self, node, a, b, c=None):
        at = node.attrs
        a = a.T if at["transA"] else a
        b = b.T if at["transB"] else b
        y = at["alpha"] * (a.astype(np.float64) @ b)
        if c is not None:
            y = y + at["beta"] * c
        return [y.astype(a.dtype)]

    def macs(self, node):
        m_, n, kk = self._mnk(node)
        return m_ * n * kk

    def partition(self, node):
        """One row (a fully-connected layer): by columns, each piece its columns of b;
        more rows: by rows, each piece its rows of a. c follows where it spans the cut."""
        m_, _, _ = self._mnk(node)
        a = node.attrs
        if m_ == 1:
            return Partition(axis=1, inputs=(None, (0, 1, 1) if a["transB"] else (1, 1, 1), "broadcast"))
        return Partition(axis=0, inputs=((1, 1, 1) if a["transA"] else (0, 1, 1), None, "broadcast"))

    def vjp(self, b, node, cotangents):
        """y = alpha a' b' + beta c: da' = alpha dy b'^T, db' = alpha a'^T dy, dc = beta dy
        (summed over broadcast axes); each product is one Gemm with transposed operands."""
        at, g = node.attrs, cotangents[0]
        ta, tb, alpha = at["transA"], at["transB"], at["alpha"]
        a, w = b.primal(node.inputs[0]), b.primal(node.inputs[1])
        if not ta:
            ga = b.op("Gemm", [g, w], alpha=alpha, beta=1.0, transA=0, transB=1 - tb)
        else:
            ga = b.op("Gemm", [w, g], alpha=alpha, beta=1.0, transA=tb, transB=1)
        if not tb:
            gw = b.op("Gemm", [a, g], alpha=alpha, beta=1.0, transA=1 - ta, transB=0)
        else:
            gw = b.op("Gemm", [g, a], alpha=alpha, beta=1.0, transA=1, transB=ta)
        grads = [ga, gw]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            gc = g if at["beta"] == 1.0 else b.op("Mul", [g, b.scalar(at["beta"])])
            grads.append(b.unbroadcast(gc, c.type.shape))
        return grads

    def jvp(self, b, node, tangents):
        """alpha (da b' + a' db) + beta dc, as at most two Gemms chained through their C input."""
        at, (a, w), (ta, tw) = node.attrs, node.inputs[:2], tangents[:2]
        tc = tangents[2] if len(tangents) > 2 else None
        r = None
        for x, y, tangent in ((ta, w, ta), (a, tw, tw)):
            if tangent is None:
                continue
            c, beta = (r, 1.0) if r is not None else (tc, at["beta"])
            r = b.op("Gemm", [x, y] + ([c] if c is not None else []), **{**at, "beta": beta})
            tc = None
        if tc is not None:
            scaled = tc if at["beta"] == 1.0 else b.op("Mul", [tc, b.scalar(at["beta"])])
            r = b.expand(scaled, node.outputs[0].type.shape)
        return [r]

    def lower(self, k, node, ins, outs):
        at = node.attrs
        a = ins[0].transpose((1, 0)) if at["transA"] else ins[0]
        b = ins[1].transpose((1, 0)) if at["transB"] else ins[1]
        c = ins[2].broadcast_to(outs[0].shape) if len(ins) > 2 and ins[2] is not None else None
        y = outs[0]
        alpha, beta = at["alpha"], at["beta"]

        def init(i, j, w):
            if c is None or alpha != 1.0:
                return k.zeros(w, y.dtype)
            start = k.vload(c, (i, j), w)
            return start if beta == 1.0 else start * beta

        # a C of the output's own shape may be the output's own bytes (train.py's SGD update
        # accumulates onto the weight in place): whole vector stores (Tensor.store_vector)
        whole = c is not None and tuple(ins[2].shape) == tuple(y.shape)

        def store(i, j, v):
            if alpha == 1.0:  # c, if any, was the start value
                return y.store_vector((i, j), v, whole=whole)
            for ln, x in enumerate(k.lanes(v)):
                x = x * alpha
                y[i, j + ln] = x + c[i, j + ln] * beta if c is not None else x

        b_value = node.inputs[1]
        if (at["transB"] and not at["transA"] and not b_value.is_const and k.explicit_vectors
                and a.shape[1] >= k.vector_lanes > 1):
            # run-time weights (a training step) read along their rows: dot products, not
            # vectors gathered from columns a whole row apart
            return matmul_by_dots(k, y.shape[0], y.shape[1], a.shape[1], a, ins[1], init, store,
                                  a_rows=DOT_BLOCK_ROWS if k.vector.registers >= 32 else 2)
        b_const = (b_value.data.T if at["transB"] else b_value.data) if b_value.is_const else None
        tiled_matmul(k, node.schedule, y.shape[0], y.shape[1], a.shape[1], lambda i, kk: (a, (i, kk)),
                     lambda kk, j: (b, (kk, j)), init, store, b_const)


def matmul_shapes(node, a, b):
    """numpy.matmul's shape rule, including 1-D promotion and batch broadcasting."""
    if not a or not b:
        raise invalid(node, "MatMul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise invalid(node, f"inner dimensions differ: {a} x {b}")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise invalid(node, f"batch dimensions of {a} and {b} do not broadcast") from None
    out = tuple(batch) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return a2, b2, tuple(batch), out


@register("MatMul")
class MatMul(Op):
    fusable_epilogue = True
    own_inputs = 2

    def item_wise(self, node):
        return True

    def infer(self, node):
        return [TensorType(in_type(node, 0).dtype,
                           matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)[3])]

    def reference(self, node, a, b):
        return [np.matmul(a.astype(np.float64), b).astype(a.dtype)]

    def macs(self, node):
        a2, b2, batch, _ = matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)
        return int(np.prod(batch, dtype=np.int64)) * a2[-2] * a2[-1] * b2[-1]

    def partition(self, node):
        """As Gemm's: one row by columns of b, more rows by rows of a (matrices, or a batch of one)."""
        a, b = in_type(node, 0).shape, in_type(node, 1).shape
        rank = len(node.outputs[0].type.shape)
        if len(a) < 2 or len(b) < 2:
            return None
        if a[-2] == 1:
            return Partition(axis=rank - 1, inputs=(None, (len(b) - 1, 1, 1)))
        return Partition(axis=rank - 2, inputs=((len(a) - 2, 1, 1), None))

    def vjp(self, b, node, cotangents):
        """da = dy b^T, db = a^T dy (1-D operands promoted as numpy does; summed over
        broadcast batch axes)."""
        x, w = node.inputs
        a2, b2, batch, _ = matmul_shapes(node, x.type.shape, w.type.shape)
        g = b.reshape(cotangents[0], batch + (a2[-2], b2[-1]))

        def swapped(v, shape2):
            perm = list(range(len(shape2)))
            perm[-2:] = perm[-1], perm[-2]
            return b.op("Transpose", [b.reshape(b.primal(v), shape2)], perm=perm)

        ga = b.op("MatMul", [g, swapped(w, b2)])
        gw = b.op("MatMul", [swapped(x, a2), g])
        return [b.reshape(b.unbroadcast(ga, a2), x.type.shape), b.reshape(b.unbroadcast(gw, b2), w.type.shape)]

    def jvp(self, b, node, tangents):
        (x, w), (tx, tw) = node.inputs, tangents
        return [b.add([tx and b.op("MatMul", [tx, w]), tw and b.op("MatMul", [x, tw])])]

    def schedule(self, node, vec):
        a2, b2, _, _ = matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)
        b = node.inputs[1]
        if in_type(node, 0).dtype != "float32":
            return None  # register tiles are float32's: other types take the plain loop nest
        return matmul_schedule(vec, a2[-2], b2[-1], a2[-1], b_const=b.is_const and len(b.type.shape) <= 2)

    def lower(self, k, node, ins, outs):
        a2, b2, batch, _ = matmul_shapes(node, ins[0].shape, ins[1].shape)
        a = ins[0].reshape(a2).broadcast_to(batch + a2[-2:])
        b = ins[1].reshape(b2).broadcast_to(batch + b2[-2:])
        y = outs[0].reshape(batch + (a2[-2], b2[-1]))
        if node.schedule is None:  # float64 (and integers): accumulated in the input's type, in order
            with k.loops(batch + (a2[-2], b2[-1])) as idx:
                *bi, i, j = idx
                acc = k.var(k.lift(0, like=LLVM_TYPES[y.dtype]))
                with k.loop(a2[-1]) as kk:
                    acc.value = acc.value + a[(*bi, i, kk)] * b[(*bi, kk, j)]
                y[idx] = acc.value
            return
        b_value = node.inputs[1]
        # one matrix shared by the whole batch, known at compile time: packed panels
        b_const = b_value.data if b_value.is_const and len(b_value.data.shape) <= 2 else None
        with k.loops(batch) as bi:
            tiled_matmul(k, node.schedule, a2[-2], b2[-1], a2[-1], lambda i, kk: (a, (*bi, i, kk)), lambda kk, j: (b, (*bi, kk, j)),
                         lambda i, j, w: k.zeros(w, y.dtype), lambda i, j, v: y.store_vector((*bi, i, j), v), b_const)


# -- softmax ------------------------------------------------------------------------------
@register("Softmax", "LogSoftmax")
class Softmax(Op):
    def canonicalize(self, node, opset):
        shape = in_type(node, 0).shape
        axis = norm_axis(node.attrs.get("axis", -1 if opset >= 13 else 1), len(shape), node)
        # Before opset 13 the input is coerced to 2-D at `axis`: normalize over all of axis..end.
        node.attrs["axis"] = axis
        node.attrs["coerce_2d"] = int(opset < 13)

    def item_wise(self, node):
        return node.attrs["axis"] != 0

    def infer(self, node):
        t = in_type(node, 0)
        if t.dtype not in ("float32", "float64"):
            raise unsupported(node, f"needs float32 or float64 input, got {t.dtype}")
        return [t]

    def vjp(self, b, node, cotangents):
        """Softmax: dx = y (dy - sum(dy y)); LogSoftmax: dx = dy - exp(y) sum(dy), the sums
        over the normalized axes."""
        g, y = cotangents[0], b.primal(node.outputs[0])
        ax, rank = node.attrs["axis"], len(node.outputs[0].type.shape)
        axes = list(range(ax, rank)) if node.attrs["coerce_2d"] else [ax]
        if node.op == "Softmax":
            total = b.op("ReduceSum", [b.op("Mul", [g, y])], axes=axes, keepdims=1)
            return [b.op("Mul", [y, b.op("Sub", [g, total])])]
        total = b.op("ReduceSum", [g], axes=axes, keepdims=1)
        return [b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), total])])]

    def jvp(self, b, node, tangents):
        """Softmax: dy = y (dx - sum(y dx)); LogSoftmax: dy = dx - sum(exp(y) dx)."""
        t, y = tangents[0], node.outputs[0]
        ax, rank = node.attrs["axis"], len(y.type.shape)
        axes = list(range(ax, rank)) if node.attrs["coerce_2d"] else [ax]
        p = y if node.op == "Softmax" else b.op("Exp", [y])
        dot = b.op("ReduceSum", [b.op("Mul", [p, t])], axes=axes, keepdims=1)
        return [b.op("Mul", [y, b.op("Sub", [t, dot])]) if node.op == "Softmax" else b.op("Sub", [t, dot])]

    def _rows(self, shape, node):
        """(outer, n, inner): softmax runs over n, rows are outer x inner."""
        ax = node.attrs["axis"]
        outer = int(np.prod(shape[:ax], dtype=np.int64))
        if node.attrs["coerce_2d"]:
            return outer, int(np.prod(shape[ax:], dtype=np.int64)), 1
        return outer, shape[ax], int(np.prod(shape[ax + 1:], dtype=np.int64))

    def reference(self, node, x):
        o, n, i = self._rows(x.shape, node)
        x3 = x.reshape(o, n, i).astype(np.float64)
        z = x3 - x3.max(axis=1, keepdims=True)
        if node.op == "LogSoftmax":
            y = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        else:
            e = np.exp(z)
            y = e / e.sum(axis=1, keepdims=True)
        return [y.reshape(x.shape).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        o, n, inner = self._rows(ins[0].shape, node)
        x, y = ins[0].reshape((o, n, inner)), outs[0].reshape((o, n, inner))
        lanes = k.vector.lanes
        # rows contiguous and whole vectors long (attention's scores): the max of a row in
        # whole-vector steps, then across the lanes (max is exact in any order)
        by_vector = inner == 1 and lanes > 1 and n % lanes == 0 and n > lanes and x.dtype == "float32"
        with k.loops((o, inner)) as (a, c):
            if by_vector:
                rows = ins[0].reshape((o, n))
                vmx = k.var(k.vload(rows, (a, 0), lanes))
                with k.loop(n, start=lanes, step=lanes) as j:
                    vmx.value = k.max(vmx.value, k.vload(rows, (a, j), lanes))
                parts = k.lanes(vmx.value)
                mx = k.var(parts[0])
                for p in parts[1:]:
                    mx.value = k.max(mx.value, p)
            else:
                mx = k.var(x[a, 0, c])
                with k.loop(n) as j:
                    mx.value = k.max(mx.value, x[a, j, c])
            total = k.var(k.lift(0.0, like=mx.value))
            with k.loop(n) as j:
                e = m.exp(k, x[a, j, c] - mx.value, nonpositive=True)  # x - max <= 0 or NaN
                if node.op == "Softmax":
                    y[a, j, c] = e
                total += e
            if node.op == "Softmax":
                inv = 1.0 / total.value
                with k.loop(n) as j:
                    y[a, j, c] = y[a, j, c] * inv
            else:
                # (x - max) - log(sum), not x - (max + log(sum)) (nor reassociated into it): that
                # rounds the shift at the magnitude of max and loses the low bits when |max| is large
                lse = m.log(k, total.value)
                with k.loop(n) as j, k.precise():
                    y[a, j, c] = (x[a, j, c] - mx.value) - lse
