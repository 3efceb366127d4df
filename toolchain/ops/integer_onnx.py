"""ONNX's MatMulInteger and ConvInteger: int8/uint8 inputs and zero points, exact int32
results, no requantization (the integer ops the quantization pass makes are in integer.py)."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel.llvm import I32
from .base import Op, in_type, invalid, register, unsupported
from .nn import conv_out_size, matmul_shapes, window_attrs


def _zero_point(node, i, x_index, what):
    """Input i (a zero point), checked against input x_index's type; None when absent."""
    if len(node.inputs) <= i or node.inputs[i] is None:
        return None
    z, x = in_type(node, i), in_type(node, x_index)
    if z.dtype != x.dtype:
        raise invalid(node, f"{what} type {z.dtype} differs from its input's {x.dtype}")
    return z


def _int8_inputs(node, *indices):
    for i in indices:
        if in_type(node, i).dtype not in ("int8", "uint8"):
            raise invalid(node, f"input {i} is {in_type(node, i).dtype}; int8 or uint8 expected")


def _zp_value(k, t, idx, unsigned):
    """A zero point tensor's element (idx: its index, 0 for a per-tensor one) as int32."""
    return k.cast(t.reshape((t.size,))[idx if t.size > 1 else 0], I32, unsigned=unsigned)


@register("MatMulInteger")
class MatMulInteger(Op):
    """Y = (A - a_zero_point) @ (B - b_zero_point), exact int32 (numpy's matmul broadcasting).
    a_zero_point: per tensor or per row of A (M); b_zero_point: per tensor or per column (N)."""

    def infer(self, node):
        _int8_inputs(node, 0, 1)
        a, b = in_type(node, 0).shape, in_type(node, 1).shape
        a2, b2, _, out = matmul_shapes(node, a, b)
        for i, x, n, what in ((2, 0, a2[-2], "a_zero_point (per row)"), (3, 1, b2[-1], "b_zero_point (per column)")):
            z = _zero_point(node, i, x, what.split()[0])
            if z is not None and z.size != 1 and (len(z.shape) != 1 or z.size != n):
                raise invalid(node, f"{what} has shape {list(z.shape)}; 1 or {n} elements expected")
        return [TensorType("int32", out)]

    def macs(self, node):
        a2, b2, batch, _ = matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)
        return int(np.prod(batch, dtype=np.int64)) * a2[-2] * a2[-1] * b2[-1]

    def reference(self, node, a, b, az=None, bz=None):
        a2, b2, _, out = matmul_shapes(node, a.shape, b.shape)
        a = a.astype(np.int64).reshape(a2) - (0 if az is None else az.astype(np.int64).reshape(-1, 1))
        b = b.astype(np.int64).reshape(b2) - (0 if bz is None else bz.astype(np.int64).reshape(-1))
        return [np.matmul(a, b).reshape(out).astype(np.int32)]

    def lower(self, k, node, ins, outs):
        a2, b2, batch, _ = matmul_shapes(node, ins[0].shape, ins[1].shape)
        a = ins[0].reshape(a2).broadcast_to(batch + a2[-2:])
        b = ins[1].reshape(b2).broadcast_to(batch + b2[-2:])
        y = outs[0].reshape(batch + (a2[-2], b2[-1]))
        ua, ub = (in_type(node, i).dtype == "uint8" for i in (0, 1))
        az = ins[2] if len(ins) > 2 and node.inputs[2] is not None else None
        bz = ins[3] if len(ins) > 3 and node.inputs[3] is not None else None
        with k.loops(batch + (a2[-2], b2[-1])) as idx:
            *bi, i, j = idx
            acc = k.var(k.lift(0, like=I32))
            zb = _zp_value(k, bz, j, ub) if bz is not None else None
            za = _zp_value(k, az, i, ua) if az is not None else None
            with k.loop(a2[-1]) as kk:
                av = k.cast(a[(*bi, i, kk)], I32, unsigned=ua)
                bv = k.cast(b[(*bi, kk, j)], I32, unsigned=ub)
                if za is not None:
                    av = av - za
                if zb is not None:
                    bv = bv - zb
                acc.value = acc.value + av * bv
            y[(*bi, i, j)] = acc.value


@register("ConvInteger")
class ConvInteger(Op):
    """Y = conv(X - x_zero_point, W - w_zero_point), exact int32; 2-D; the padding is the zero
    point (0 after the subtraction). w_zero_point: per tensor or per output channel."""

    def canonicalize(self, node, opset):
        x, w = in_type(node, 0), in_type(node, 1)
        if len(x.shape) != 4 or len(w.shape) != 4:
            raise unsupported(node, f"only 2-D ConvInteger is supported (input rank {len(x.shape)})")
        node.attrs.setdefault("group", 1)
        if "kernel_shape" in node.attrs and list(node.attrs["kernel_shape"]) != list(w.shape[2:]):
            raise invalid(node, f"kernel_shape {list(node.attrs['kernel_shape'])} disagrees with the weight's "
                                f"{list(w.shape[2:])}")
        window_attrs(node, x.shape[2:], w.shape[2:])

    def infer(self, node):
        _int8_inputs(node, 0, 1)
        x, w = in_type(node, 0), in_type(node, 1)
        a = node.attrs
        if x.shape[1] != w.shape[1] * a["group"] or w.shape[0] % a["group"]:
            raise invalid(node, f"channels {x.shape[1]} do not match weights {w.shape} with group={a['group']}")
        xz = _zero_point(node, 2, 0, "x_zero_point")
        if xz is not None and xz.size != 1:
            raise invalid(node, f"x_zero_point has shape {list(xz.shape)}; a scalar expected")
        wz = _zero_point(node, 3, 1, "w_zero_point")
        if wz is not None and wz.size != 1 and (len(wz.shape) != 1 or wz.size != w.shape[0]):
            raise invalid(node, f"w_zero_point has shape {list(wz.shape)}; 1 or {w.shape[0]} (output channels) "
                                f"elements expected")
        out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], a["strides"][i], a["dilations"][i], a["pads"][i],
                             a["pads"][2 + i]) for i in range(2)]
        if min(out) <= 0:
            raise invalid(node, f"output spatial size {out} is empty")
        return [TensorType("int32", (x.shape[0], w.shape[0], *out))]

    def macs(self, node):
        return node.outputs[0].type.size * int(np.prod(in_type(node, 1).shape[1:]))

    def reference(self, node, x, w, xz=None, wz=None):
        a = node.attrs
        xs = x.astype(np.int64) - (0 if xz is None else int(xz.ravel()[0]))
        ws = w.astype(np.int64) - (0 if wz is None else wz.astype(np.int64).reshape(-1, 1, 1, 1))
        pads = [(0, 0), (0, 0), (a["pads"][0], a["pads"][2]), (a["pads"][1], a["pads"][3])]
        xp = np.pad(xs, pads)
        n, oc, oh, ow = self.infer(node)[0].shape
        g = a["group"]
        cg, ocg = w.shape[1], oc // g
        acc = np.zeros((n, oc, oh, ow), np.int64)
        (sh, sw), (dh, dw) = a["strides"], a["dilations"]
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                patch = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                for gi in range(g):
                    acc[:, gi * ocg:(gi + 1) * ocg] += np.einsum(
                        "nchw,oc->nohw", patch[:, gi * cg:(gi + 1) * cg], ws[gi * ocg:(gi + 1) * ocg, :, i, j])
        return [acc.astype(np.int32)]

    def lower(self, k, node, ins, outs):
        x, w, y = ins[0], ins[1], outs[0]
        a = node.attrs
        ux, uw = (in_type(node, i).dtype == "uint8" for i in (0, 1))
        xz = ins[2] if len(ins) > 2 and node.inputs[2] is not None else None
        wz = ins[3] if len(ins) > 3 and node.inputs[3] is not None else None
        _, _, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        ocg = oc // a["group"]
        (sh, sw), (dh, dw), pads = a["strides"], a["dilations"], a["pads"]
        with k.loops(y.shape) as (n, o, oy, ox):
            acc = k.var(k.lift(0, like=I32))
            zx = _zp_value(k, xz, 0, ux) if xz is not None else None
            zw = _zp_value(k, wz, o, uw) if wz is not None else None
            c0 = 0 if a["group"] == 1 else (o // ocg) * cg
            with k.loops((cg, kh, kw)) as (c, i, j):
                iy = oy * sh + i * dh - pads[0]
                ix = ox * sw + j * dw - pads[1]
                inside = (k.lift(iy) >= 0) & (k.lift(iy) < h) & (k.lift(ix) >= 0) & (k.lift(ix) < wd)
                with k.if_(inside):
                    xv = k.cast(x[n, c0 + c, iy, ix], I32, unsigned=ux)
                    wv = k.cast(w[o, c, i, j], I32, unsigned=uw)
                    acc.value = acc.value + (xv - zx if zx is not None else xv) * (wv - zw if zw is not None else wv)
            y[n, o, oy, ox] = acc.value
