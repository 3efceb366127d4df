"""ConvTranspose (N-d, groups, strides, dilations, pads, output_padding, output_shape,
auto_pad). The lowering is the gather form: each output element sums the inputs whose
window reaches it, so it is written once with its final value (fusable epilogue)."""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from .base import Op, in_type, invalid, register



def _full_size(size, k, s, d, op):
    """Output length before any padding is cropped."""
    return s * (size - 1) + op + (k - 1) * d + 1


@register("ConvTranspose")
class ConvTranspose(Op):
    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        x, w = in_type(node, 0).shape, in_type(node, 1).shape
        rank = len(x) - 2
        if rank < 1 or len(w) != rank + 2:
            raise invalid(node, f"input {x} and weight {w} ranks do not fit")
        a = node.attrs
        a["group"] = int(a.get("group", 1))
        a["kernel_shape"] = list(a.get("kernel_shape", w[2:]))
        for key in ("strides", "dilations"):
            a[key] = list(a.get(key, [1] * rank))
        a["output_padding"] = list(a.get("output_padding", [0] * rank))
        mode = a.pop("auto_pad", "NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        out_shape = a.pop("output_shape", None)
        if out_shape is not None:
            out_shape = list(out_shape)[-rank:]
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            out_shape = [size * s for size, s in zip(x[2:], a["strides"])]
        if out_shape is None:
            a["pads"] = list(a.get("pads", [0] * (2 * rank))) if mode != "VALID" else [0] * (2 * rank)
            return
        begin, end = [], []
        for i in range(rank):
            total = _full_size(x[2 + i], a["kernel_shape"][i], a["strides"][i], a["dilations"][i],
                               a["output_padding"][i]) - out_shape[i]
            small, big = total // 2, total - total // 2
            upper = mode == "SAME_UPPER"  # the spec puts the odd pixel first otherwise
            begin.append(small if upper else big)
            end.append(big if upper else small)
        a["pads"] = begin + end

    def _geometry(self, node):
        """Per spatial dim: (in, kernel, stride, dilation, pad_begin, out)."""
        a = node.attrs
        x = in_type(node, 0).shape
        rank = len(x) - 2
        dims = []
        for i in range(rank):
            full = _full_size(x[2 + i], a["kernel_shape"][i], a["strides"][i], a["dilations"][i],
                              a["output_padding"][i])
            dims.append((x[2 + i], a["kernel_shape"][i], a["strides"][i], a["dilations"][i], a["pads"][i],
                         full - a["pads"][i] - a["pads"][i + rank]))
        return dims

    def infer(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        g = node.attrs["group"]
        if x.dtype != "float32" or x.shape[1] != w.shape[0] or x.shape[1] % g:
            raise invalid(node, f"input {x} and weight {w} do not fit (group {g})")
        if list(w.shape[2:]) != node.attrs["kernel_shape"]:
            raise invalid(node, f"kernel_shape {node.attrs['kernel_shape']} != weight {w.shape}")
        out_ch = w.shape[1] * g
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].type.shape != (out_ch,):
            raise invalid(node, f"bias shape {node.inputs[2].type.shape} != ({out_ch},)")
        dims = self._geometry(node)
        if min(d[-1] for d in dims) <= 0:
            raise invalid(node, "pads leave an empty output")
        return [TensorType(x.dtype, (x.shape[0], out_ch) + tuple(d[-1] for d in dims))]

    def macs(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        return x.size * int(np.prod(w.shape[1:], dtype=np.int64))

    def reference(self, node, x, w, b=None):
        g = node.attrs["group"]
        dims = self._geometry(node)
        n, cin = x.shape[:2]
        cout_g = w.shape[1]
        full = [_full_size(i, k, s, d, op) for (i, k, s, d, _, _), op in zip(dims, node.attrs["output_padding"])]
        y = np.zeros((n, cout_g * g, *full))
        cin_g = cin // g
        for gi in range(g):
            xs = x[:, gi * cin_g:(gi + 1) * cin_g].astype(np.float64)
            for kk in itertools.product(*[range(d[1]) for d in dims]):
                wk = w[(slice(gi * cin_g, (gi + 1) * cin_g), slice(None)) + kk].astype(np.float64)
                contrib = np.einsum("nc...,co->no...", xs, wk)
                sl = tuple(slice(k_ * d, k_ * d + s * (i - 1) + 1, s) for k_, (i, _, s, d, _, _) in zip(kk, dims))
                y[(slice(None), slice(gi * cout_g, (gi + 1) * cout_g)) + sl] += contrib
        crop = tuple(slice(pb, pb + out) for (_, _, _, _, pb, out) in dims)
        y = y[(slice(None), slice(None)) + crop]
        if b is not None:
            y = y + b.reshape((1, -1) + (1,) * len(dims))
        return [y.astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 else None
        g = node.attrs["group"]
        dims = self._geometry(node)
        cin_g, cout_g = x.shape[1] // g, w.shape[1]
        with k.loops(y.shape) as (n, oc, *o):
            acc = k.var(bias[oc] if bias is not None else 0.0)
            grp = oc // cout_g if g > 1 else 0
            ocl = oc % cout_g if g > 1 else oc
            with k.loops([d[1] for d in dims]) as kk:
                # input position i with i*s - pb + kk*d == o: t = o + pb - kk*d must be a
                # non-negative multiple of s below s*in
                conds, coords = [], []
                for oi, ki, (size, _, s, d, pb, _) in zip(o, kk, dims):
                    t = k.lift(oi) + (pb - 0) - k.lift(ki) * d
                    ok = (t >= 0) & (t < s * size)
                    if s > 1:
                        ok = ok & (t % s).eq(0)
                    conds.append(ok)
                    coords.append(t // s if s > 1 else t)
                cond = conds[0]
                for c in conds[1:]:
                    cond = cond & c
                with k.if_(cond):
                    with k.loop(cin_g) as ci:
                        ic = grp * cin_g + ci if g > 1 else ci
                        acc += x[(n, ic, *coords)] * w[(ic, ocl, *kk)]
            y[(n, oc, *o)] = acc.value
