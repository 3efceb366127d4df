"""Quantization ops: QuantizeLinear and DequantizeLinear (ONNX opsets 10-21+), and the
integer ops the quantization pass (passes/quantize.py) makes from DQ -> Conv/MatMul/Gemm -> Q.

    QuantizeLinear    y = saturate(round_half_even(x / scale) + zero_point)
    DequantizeLinear  y = (x - zero_point) * scale

Scales are per tensor (a scalar or a 1-element tensor), per axis (1-D, the length of
dimension `axis`) or blocked (opset 21: the rank of x, dimension `axis` split into blocks of
`block_size`). Quantized types: int8, uint8, int16, uint16 and float8 e5m2 (and int32 input
for DequantizeLinear, whose zero point must then be 0). Scales are float32. The division is a
true IEEE division (as the spec's formula, onnx's reference and onnxruntime compute it), never
a multiplication by a reciprocal: the lowering runs in strict floating point. The rounding and
the conversion to an integer are one float addition (x + 1.5 * 2^23 puts round-half-even(x) in
the low mantissa bits, for the clamped |x| <= 2^17), no float->int instruction.

float8: y = float8(x / scale), rounded to nearest even and saturating per the `saturate`
attribute (kernel/float8.py), and x = float32(y) * scale. The spec's float8 zero point is 0
("usually not used"): a constant one must be 0 and one given at run time is not read (onnx's
reference ignores it when quantizing and refuses a nonzero one when dequantizing).

DynamicQuantizeLinear computes its uint8 scale and zero point at run time from the input's
range (widened to include 0), then quantizes with them: one pass for the range, one for y.
"""
from __future__ import annotations

import numpy as np

from ..ir import DTYPES, TensorType
from ..kernel import float8
from ..kernel.llvm import F32, I32, LLVM_TYPES
from .base import Op, in_type, invalid, norm_axis, register, unsupported
from .cast import saturated
from .elementwise import _broadcast_loop

RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-2 ** 15, 2 ** 15 - 1), "uint16": (0, 2 ** 16 - 1),
          "int32": (-2 ** 31, 2 ** 31 - 1)}
QTYPES = ("int8", "uint8", "int16", "uint16", "float8_e5m2")  # what QuantizeLinear makes
# TensorProto.DataType values we take
ONNX_CODES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 19: "float8_e5m2"}
OTHER_CODES = {17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 20: "float8_e5m2fnuz", 21: "uint4", 22: "int4",
               23: "float4_e2m1", 25: "uint2", 26: "int2"}  # named in the refusal
MAGIC, MAGIC_BITS = 12582912.0, 0x4B400000  # 1.5 * 2^23 and its float32 bits


def _params(node, qtype: str):
    """Checks scale and zero point against x (input 0) and the quantized type; returns the
    kind of scaling ("tensor", "axis" or "blocked"), the axis and the block size."""
    x, s = in_type(node, 0), in_type(node, 1)
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if s.dtype != "float32":
        raise unsupported(node, f"only float32 scales are supported, got {s.dtype}")
    rank = len(x.shape)
    block = node.attrs.get("block_size", 0)
    if block < 0:
        raise invalid(node, f"block_size {block} is negative")
    per_tensor = s.size == 1 and len(s.shape) <= 1 and not block
    kind, axis = "tensor", 0 if per_tensor else norm_axis(node.attrs["axis"], rank, node)
    if per_tensor:
        pass
    elif block:
        if len(s.shape) != rank or any(d != e for i, (d, e) in enumerate(zip(s.shape, x.shape)) if i != axis):
            raise invalid(node, f"blocked scale shape {s.shape} does not match input {x.shape} on axis {axis}")
        if s.shape[axis] != -(-x.shape[axis] // block):
            raise invalid(node, f"blocked scale has {s.shape[axis]} blocks on axis {axis}, expected "
                                f"ceil({x.shape[axis]}/{block})")
        if x.shape[axis] % block:
            raise unsupported(node, f"a last partial block (dim {x.shape[axis]}, block_size {block})")
        kind = "blocked"
    elif len(s.shape) == 1 and rank:
        if s.shape[0] != x.shape[axis]:
            raise invalid(node, f"per-axis scale has {s.shape[0]} elements, axis {axis} of the input has "
                                f"{x.shape[axis]}")
        kind = "axis"
    else:
        raise invalid(node, f"scale of shape {s.shape} is neither per tensor nor per axis of input {x.shape}")
    if zp is not None:
        if zp.type.shape != s.shape and not (kind == "tensor" and zp.type.size == 1):
            raise invalid(node, f"zero point shape {zp.type.shape} differs from scale shape {s.shape}")
        if qtype in float8.FLOAT8:
            if zp.is_const and zp.data.astype(np.float32).any():  # -0 is 0 too
                raise unsupported(node, f"a {qtype} zero point other than 0 (the spec's float8 zero point is 0)")
        elif zp.is_const:
            lo, hi = RANGES[qtype]
            data = zp.data.astype(np.int64)
            if data.size and (data.min() < lo or data.max() > hi):
                bad = data[(data < lo) | (data > hi)].ravel()[0]
                raise invalid(node, f"zero point {bad} out of range for {qtype} [{lo}, {hi}]")
            if qtype == "int32" and data.any():
                raise invalid(node, "the zero point of int32 input must be 0")
        if zp.type.dtype != qtype:
            raise invalid(node, f"zero point type {zp.type.dtype} differs from the quantized type {qtype}")
    if node.inputs[1].is_const:
        sd = node.inputs[1].data
        if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
            bad = sd[~(np.isfinite(sd) & (sd > 0))].ravel()[0]
            raise invalid(node, f"scale {bad} is not a positive finite number")
    return kind, axis, block


def _shaped(kind, axis, block, arr, rank):
    """A parameter array (numpy) reshaped to broadcast against x (blocked: repeated)."""
    arr = np.asarray(arr)
    if kind == "tensor":
        return arr.reshape(())
    if kind == "axis":
        return arr.reshape([1] * axis + [-1] + [1] * (rank - axis - 1))
    return np.repeat(arr, block, axis=axis)


def _views(ins, kind, axis, block, out_shape):
    """(x, [scale, zero point], loop shape) as kernel tensors broadcasting together, with x
    flattened as far as the scaling allows: per tensor one flat loop, per axis (outer, axis,
    inner), blocked (outer, blocks, block_size, inner). (A deeper nest of small dimensions
    vectorizes into RVV segment loads, on which qemu-riscv64 7.2 aborts.)"""
    x, s = ins[0], ins[1]
    params = [t for t in (s, ins[2] if len(ins) > 2 else None) if t is not None]
    size = x.size
    if kind == "tensor":
        return x.reshape((size,)), [t.reshape((1,)) for t in params], (size,)
    outer = int(np.prod(out_shape[:axis], dtype=np.int64))
    inner = int(np.prod(out_shape[axis + 1:], dtype=np.int64))
    if kind == "axis":
        shape = (outer, out_shape[axis], inner)
        return x.reshape(shape), [t.reshape((1, out_shape[axis], 1)) for t in params], shape
    blocks = out_shape[axis] // block
    shape = (outer, blocks, block, inner)
    return x.reshape(shape), [t.reshape((outer, blocks, 1, inner)) for t in params], shape


@register("QuantizeLinear")
class QuantizeLinear(Op):
    def canonicalize(self, node, opset):
        node.attrs.setdefault("axis", 1)
        node.attrs.setdefault("block_size", 0)
        if node.attrs.pop("precision", 0) not in (0, 1):  # opset 23: the type x / scale is computed in
            raise unsupported(node, "unsupported precision (float32 division only)")
        saturate = node.attrs.pop("saturate", 1)
        code = node.attrs.pop("output_dtype", 0)
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if code:
            if code not in ONNX_CODES or ONNX_CODES[code] == "int32":
                name = ONNX_CODES.get(code) or OTHER_CODES.get(code, code)
                raise unsupported(node, f"unsupported output type {name} "
                                        f"({', '.join(QTYPES)} are supported)")
            if zp is not None and zp.type.dtype != ONNX_CODES[code]:
                raise invalid(node, f"output_dtype {ONNX_CODES[code]} differs from the zero point's "
                                    f"{zp.type.dtype}")
            node.attrs["to"] = ONNX_CODES[code]
        else:
            node.attrs["to"] = zp.type.dtype if zp is not None else "uint8"
        if node.attrs["to"] not in QTYPES:
            raise unsupported(node, f"quantizing to {node.attrs['to']} ({', '.join(QTYPES)} are supported)")
        if node.attrs["to"] in float8.FLOAT8:
            node.attrs["saturate"] = int(saturate)
        if in_type(node, 0).dtype != "float32":
            raise unsupported(node, f"only float32 input is supported, got {in_type(node, 0).dtype}")

    def infer(self, node):
        _params(node, node.attrs["to"])
        return [TensorType(node.attrs["to"], in_type(node, 0).shape)]

    def reference(self, node, x, scale, zp=None):
        kind, axis, block = _params(node, node.attrs["to"])
        rank = x.ndim
        s = _shaped(kind, axis, block, scale, rank).astype(np.float32)
        if node.attrs["to"] in float8.FLOAT8:
            with np.errstate(all="ignore"):
                v = (x.astype(np.float32) / s).astype(np.float32)
            return [saturated(v, node.attrs["to"], node.attrs["saturate"])]
        z = 0 if zp is None else _shaped(kind, axis, block, zp, rank).astype(np.float64)
        lo, hi = RANGES[node.attrs["to"]]
        with np.errstate(all="ignore"):
            q = np.rint((x.astype(np.float32) / s).astype(np.float32)).astype(np.float64) + z
        return [np.clip(q, lo, hi).astype(node.attrs["to"])]

    def lower(self, k, node, ins, outs):
        kind, axis, block = _params(node, node.attrs["to"])
        x, params, shape = _views(ins, kind, axis, block, outs[0].shape)
        y = outs[0].reshape(shape)
        to = node.attrs["to"]
        if to in float8.FLOAT8:  # the zero point (0) is not read
            sat = bool(node.attrs["saturate"])
            with k.precise():
                _broadcast_loop(k, [x] + params[:1], y, lambda xv, s: float8.narrow(k, xv / s, sat))
            return
        with k.precise():
            _broadcast_loop(k, [x] + params, y, lambda xv, s, z=None: quantize_value(k, xv, s, z, to))


def quantize_value(k, xv, s, z, to, lo=None, hi=None):
    """QuantizeLinear of one float32 value: saturate(round_half_even(x / s) + zp) into `to`'s
    range (or [lo, hi] inside it). Equal to round(clamp(x / s, lo - zp, hi - zp)) + zp (the
    bounds are integers, rounding is monotonic); v + 1.5 * 2^23 rounds v (|v| <= 383) to an
    integer, ties to even, and leaves it in the low mantissa bits: no float->int conversion
    instruction (qemu-riscv64 7.2 aborts on some vfcvt.rtz sequences). z: None, an Expr of
    `to`'s type or a Python int. Strict float (Kernel.precise) is the caller's."""
    rlo, rhi = RANGES[to]
    lo, hi = rlo if lo is None else lo, rhi if hi is None else hi
    if isinstance(z, int):
        zi = k.lift(z, like=I32)
    else:
        zi = k.lift(0, like=I32) if z is None else k.cast(z, I32, unsigned=to in ("uint8", "uint16"))
    zf = k.cast(zi, F32)
    v = k.min(k.max(xv / s, zf * -1.0 + float(lo)), zf * -1.0 + float(hi))
    r = k.bitcast(v + MAGIC, I32) - MAGIC_BITS
    return k.cast(r + zi, LLVM_TYPES[to])


def dequantize_value(k, xv, s, z, src):
    """DequantizeLinear of one integer value: float32(x - zp) * s (z: None, an Expr of src's
    type or a Python int)."""
    unsigned = src in ("uint8", "uint16")
    xi = k.cast(xv, I32, unsigned=unsigned)
    if z is not None:
        xi = xi - (z if isinstance(z, int) else k.cast(z, I32, unsigned=unsigned))
    return k.cast(xi, F32) * s


@register("DequantizeLinear")
class DequantizeLinear(Op):
    # Not folded at import: the quantization pass must see DQ(constant int8 weights) -> op -> Q.
    # The pass folds the DQ nodes it leaves (the float fallback) itself.
    foldable = False

    def canonicalize(self, node, opset):
        node.attrs.setdefault("axis", 1)
        node.attrs.setdefault("block_size", 0)
        if node.attrs.pop("output_dtype", 0) not in (0, 1):
            raise unsupported(node, "only float32 output is supported")
        if in_type(node, 0).dtype not in QTYPES + ("int32",):
            raise unsupported(node, f"dequantizing {in_type(node, 0).dtype} ({', '.join(QTYPES)} and int32 are "
                                    f"supported)")

    def infer(self, node):
        _params(node, in_type(node, 0).dtype)
        return [TensorType("float32", in_type(node, 0).shape)]

    def reference(self, node, x, scale, zp=None):
        kind, axis, block = _params(node, in_type(node, 0).dtype)
        s = _shaped(kind, axis, block, scale, x.ndim).astype(np.float32)
        if x.dtype == DTYPES["float8_e5m2"]:
            return [(x.astype(np.float32) * s).astype(np.float32)]
        z = 0 if zp is None else _shaped(kind, axis, block, zp, x.ndim).astype(np.int64)
        return [((x.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)]

    def lower(self, k, node, ins, outs):
        kind, axis, block = _params(node, in_type(node, 0).dtype)
        x, params, shape = _views(ins, kind, axis, block, outs[0].shape)
        y = outs[0].reshape(shape)
        src = in_type(node, 0).dtype
        if src in float8.FLOAT8:  # the zero point (0) is not read
            with k.precise():
                _broadcast_loop(k, [x] + params[:1], y, lambda xv, s: float8.WIDEN[src](k, xv) * s)
            return
        with k.precise():
            _broadcast_loop(k, [x] + params, y, lambda xv, s, z=None: dequantize_value(k, xv, s, z, src))


@register("DynamicQuantizeLinear")
class DynamicQuantizeLinear(Op):
    """y, y_scale, y_zero_point = DynamicQuantizeLinear(x), uint8, per the spec:
        lo, hi = min(0, min(x)), max(0, max(x))
        y_scale = (hi - lo) / 255 (all zeros, hi == lo: 1 / 255 as onnx's reference computes;
                  onnxruntime gives 1.0; y and the zero point are 0 either way)
        y_zero_point = saturate(round_half_even(0 - lo / y_scale))
        y = saturate(round_half_even(x / y_scale) + y_zero_point)
    all in float32, divisions true IEEE ones. NaN inputs are skipped by the range (they
    quantize to 0: the clamp's lower bound)."""

    def infer(self, node):
        x = in_type(node)
        if x.dtype != "float32":
            raise unsupported(node, f"only float32 input is supported, got {x.dtype}")
        if len(node.outputs) != 3:
            raise invalid(node, f"has 3 outputs (y, y_scale, y_zero_point), got {len(node.outputs)}")
        return [TensorType("uint8", x.shape), TensorType("float32", ()), TensorType("uint8", ())]

    def reference(self, node, x):
        x = x.astype(np.float32)
        f = np.float32
        hi = f(max(0.0, np.nanmax(x))) if x.size and not np.isnan(x).all() else f(0)
        lo = f(min(0.0, np.nanmin(x))) if x.size and not np.isnan(x).all() else f(0)
        scale = f(f(1.0) if hi == lo else f(hi - lo)) / f(255)
        zp = np.rint(np.clip(f(0) - f(lo / scale), 0, 255))
        with np.errstate(invalid="ignore"):
            y = np.clip(np.nan_to_num(np.rint((x / scale).astype(np.float32)) + zp, nan=0.0), 0, 255)
        return [y.astype(np.uint8), np.array(scale, np.float32), np.array(zp, np.uint8)]

    def lower(self, k, node, ins, outs):
        x = ins[0].flat()
        y, ys, yz = outs[0].flat(), outs[1].reshape((1,)), outs[2].reshape((1,))
        with k.precise():
            lo, hi = k.var(0.0), k.var(0.0)  # the range always includes 0
            with k.loop(x.size) as i:
                v = x[i]
                lo.value = k.min(lo.value, v)  # a NaN v fails both compares: skipped
                hi.value = k.max(hi.value, v)
            lo, hi = lo.value, hi.value
            scale = k.select(hi.eq(lo), k.lift(1.0), hi - lo) / 255.0
            # zero point: round(clamp(0 - lo / scale, 0, 255)), ties to even (1.5 * 2^23 trick)
            zf = k.min(k.max(0.0 - lo / scale, 0.0), 255.0)
            zi = k.bitcast(zf + MAGIC, I32) - MAGIC_BITS
            zf = k.cast(zi, F32)
            ys[(0,)] = scale
            yz[(0,)] = k.cast(zi, LLVM_TYPES["uint8"])
            with k.loop(x.size) as i:
                # saturate(round(v) + zp) = round(clamp(v, -zp, 255 - zp)) + zp: integer bounds;
                # a NaN fails the first compare and goes to the lower bound (y = 0)
                v = x[i] / scale
                v = k.min(k.select(v > 0.0 - zf, v, 0.0 - zf), 255.0 - zf)
                r = k.bitcast(v + MAGIC, I32) - MAGIC_BITS
                y[i] = k.cast(r + zi, LLVM_TYPES["uint8"])


def _quantized_np(v, t):
    """QuantizeLinear of float32 values by attrs sy, zy into [lo, hi] of type `out` (QAdd's
    and QAveragePool's references)."""
    q = np.rint((v / np.float32(t["sy"])).astype(np.float32)) + t["zy"]
    return np.clip(q, t["lo"], t["hi"]).astype(t["out"])


QADD = "edgec.QAdd"


@register(QADD, internal=True)
class QAdd(Op):
    """DequantizeLinear(a) + DequantizeLinear(b) [-> Relu] -> QuantizeLinear in one loop, made
    by the quantization pass from a residual Add between quantized tensors: each element
    dequantized, added and quantized in float32 registers, the graph's own arithmetic in its
    own order (so the result is the QDQ graph's, bit for bit), and no float tensor in the
    arena. attrs: sa, za, sb, zb (the inputs' scales and zero points), sy, zy, lo, hi (the
    output's, and its range narrowed by a fused Relu), out (its type)."""

    foldable = False

    def infer(self, node):
        a, b = in_type(node, 0), in_type(node, 1)
        return [TensorType(node.attrs["out"], tuple(np.broadcast_shapes(a.shape, b.shape)))]

    def reference(self, node, a, b):
        t = node.attrs
        fa = (a.astype(np.int64) - t["za"]).astype(np.float32) * np.float32(t["sa"])
        fb = (b.astype(np.int64) - t["zb"]).astype(np.float32) * np.float32(t["sb"])
        return [_quantized_np((fa + fb).astype(np.float32), t)]

    def lower(self, k, node, ins, outs):
        t = node.attrs
        src = [in_type(node, i).dtype for i in (0, 1)]

        def body(av, bv):
            v = (dequantize_value(k, av, k.lift(float(t["sa"]), like=F32), t["za"], src[0])
                 + dequantize_value(k, bv, k.lift(float(t["sb"]), like=F32), t["zb"], src[1]))
            return quantize_value(k, v, k.lift(float(t["sy"]), like=F32), t["zy"], t["out"], t["lo"], t["hi"])

        with k.precise():
            _broadcast_loop(k, list(ins[:2]), outs[0], body)


QAVGPOOL = "edgec.QAveragePool"


@register(QAVGPOOL, internal=True)
class QAveragePool(Op):
    """DequantizeLinear -> AveragePool / GlobalAveragePool -> QuantizeLinear over 2-D windows
    without padding, made by the quantization pass: a window's sum of (x - zx) exact in int32,
    then float32(sum) * sx / count quantized. The graph sums the dequantized floats instead, so
    a result can differ from it by one step where its float rounding lands on the other side of
    a tie. attrs: kernel_shape, strides, sx, zx, sy, zy, lo, hi, out."""

    foldable = False

    def infer(self, node):
        n, c, h, w = in_type(node, 0).shape
        (kh, kw), (sh, sw) = node.attrs["kernel_shape"], node.attrs["strides"]
        return [TensorType(node.attrs["out"], (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1))]

    def reference(self, node, x):
        t = node.attrs
        (kh, kw), (sh, sw) = t["kernel_shape"], t["strides"]
        xs = x.astype(np.int64) - t["zx"]
        _, _, oh, ow = self.infer(node)[0].shape
        sums = np.zeros(x.shape[:2] + (oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                sums += xs[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
        v = (sums.astype(np.float32) * np.float32(t["sx"])).astype(np.float32) / np.float32(kh * kw)
        return [_quantized_np(v.astype(np.float32), t)]

    def lower(self, k, node, ins, outs):
        t = node.attrs
        x, y = ins[0], outs[0]
        (kh, kw), (sh, sw) = t["kernel_shape"], t["strides"]
        unsigned = in_type(node, 0).dtype == "uint8"
        with k.loops(y.shape) as (n, c, oy, ox):
            acc = k.var(k.lift(0, like=I32))
            with k.loops((kh, kw)) as (i, j):
                acc.value = acc.value + k.cast(x[n, c, oy * sh + i, ox * sw + j], I32, unsigned=unsigned)
            with k.precise():
                total = acc.value - t["zx"] * kh * kw
                v = k.cast(total, F32) * k.lift(float(t["sx"]), like=F32) / k.lift(float(kh * kw), like=F32)
                y[n, c, oy, ox] = quantize_value(k, v, k.lift(float(t["sy"]), like=F32), t["zy"], t["out"], t["lo"],
                                                 t["hi"])
