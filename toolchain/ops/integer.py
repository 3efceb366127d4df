"""Integer ops: a quantized Conv and MatMul with int8/uint8 inputs, int8 weights, int32
accumulation and fixed-point requantization to an int8/uint8 output. They are made by the
quantization pass (passes/quantize.py) from DequantizeLinear -> Conv/MatMul/Gemm ->
[Relu/Clip] -> QuantizeLinear; no model names them (internal ops). (ONNX's MatMulInteger
and ConvInteger, exact int32 results: integer_onnx.py.)

Inputs: x (int8/uint8), w (int8, constant), bias (int32 [C], in units of x_scale *
w_scale[c]), multiplier (int32 [C]), left, right (int8 [C]: shifts of 0..31); attributes
x_zp, y_zp (the zero points), lo, hi (the output clamp: the type's range narrowed by a fused
Relu/Clip), out (the output type), and the convolution's group, strides, pads, dilations,
kernel_shape.

    acc[c]  = bias[c] + sum (x - x_zp) * w                         (exact, int32)
    y[c]    = clamp(requantize(acc[c], multiplier[c], left[c], right[c]) + y_zp, lo, hi)

Requantization multiplies by M[c] = x_scale * w_scale[c] / y_scale (computed in float32, as
onnxruntime computes it), held as M = multiplier * 2^(e - 31) with multiplier in
[2^30, 2^31) (quantize_multiplier: exact, a float32 having a 24-bit mantissa), with
TFLite's and gemmlowp's reference primitives:

    high   = SaturatingRoundingDoublingHighMul(acc << left, multiplier)
           = (a * multiplier + (a * multiplier >= 0 ? 2^30 : 1 - 2^30)) / 2^31, a = acc << left,
             the division truncating toward zero (int64 intermediate): round to nearest, ties
             away from zero; the saturating case (both operands -2^31) cannot occur, the
             multiplier being positive
    result = RoundingDivideByPOT(high, right)
           = (high >> right) + ((high & mask) > (mask >> 1) + (high < 0) ? 1 : 0),
             mask = 2^right - 1: an arithmetic shift rounding to nearest, ties away from zero

with left - right = e. TFLite takes left = max(e, 0), right = max(-e, 0): with M < 1, the
product is rounded to an integer by the high multiply, and that integer again by the shift,
and the double rounding moves 0.1-0.3% of the outputs of a layer by 1 LSB against a single
rounding (measured on the MLPerf Tiny models against onnxruntime, which rounds float(acc) * M
once, ties to even; compounded over 10-30 layers, up to 8% of a model's outputs).
Here left is as large as the accumulator's compile-time bound allows (|acc << left| < 2^31,
the bound being sum |w| * max |x - x_zp| + |bias| per channel; right = left - e <= 31), so
the high multiply keeps `right` fraction bits and the result is acc * M rounded once to
nearest, ties away from zero, except where the discarded bits happen to make an exact tie
(probability about 2^-right; right is typically 15-25). What remains against onnxruntime:
exact ties (away from zero here, to even there) and float(acc) * M's float32 rounding there.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel.int8_dot import DOT_BYTES, rounding_high_mul, rounding_shift_right, width_of
from ..kernel.llvm import I8, I32, I64
from ..kernel import scalar_int8
from ..kernel.lane_int8 import (GROUP, LANES, channel_quads, copy_span, fill_groups, lane_dot_blocks, lane_groups,
                                lane_weights, padded_pixels)
from ..kernel.tiled_int8 import (as_signed, by_words, depthwise_flat, dot_blocks, flat_geometry,
                                 im2col_row, in_steps, padded_length, weight_word_pairs)
from .base import Op, in_type, register
from .nn import conv_out_size

QCONV, QMATMUL = "edgec.QConv", "edgec.QMatMul"


def quantize_multiplier(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (multiplier, exponent e): m = multiplier * 2^(e - 31), multiplier in
    [2^30, 2^31) (0 and shift 0 for m == 0 or m below 2^-31)."""
    mult, shift = [], []
    for v in np.asarray(m, np.float64).ravel():
        if v <= 0:
            mult.append(0), shift.append(0)
            continue
        q, e = np.frexp(v)
        qf = int(round(q * (1 << 31)))
        if qf == 1 << 31:
            qf, e = qf // 2, e + 1
        if e < -31:
            qf, e = 0, 0
        mult.append(qf), shift.append(e)
    return np.array(mult, np.int32), np.array(shift, np.int32)


def shifts(exponent: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (left, right), left - right = exponent: left as large as |acc| <= bound
    allows (|acc << left| < 2^31), right <= 31 (module docstring)."""
    left, right = [], []
    for e, b in zip(np.asarray(exponent).ravel().tolist(), np.asarray(bound).ravel().tolist()):
        room = 31 - int(b).bit_length()
        lft = max(0, e, min(room, 31 + e))
        left.append(lft), right.append(lft - e)
    return np.array(left, np.int32), np.array(right, np.int32)


def requantize_np(acc, mult, left, right):
    """The numpy twin of requantize(): int64 arrays broadcasting together."""
    acc, mult, left, right = (np.asarray(a, np.int64) for a in (acc, mult, left, right))
    x = acc * (np.int64(1) << left)
    ab = x * mult
    v = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(v) * (np.abs(v) >> 31)  # division by 2^31 truncating toward zero
    e = right
    mask = (np.int64(1) << e) - 1
    rem = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> e) + (rem > threshold)


def requantize(k, acc, mult, left, right):
    """acc (int32 Expr, a scalar or a vector of outputs) times multiplier * 2^(left - right - 31),
    gemmlowp's rounding (module doc); mult, left, right: scalars or acc's width."""
    n = width_of(acc)
    left, right = k.cast(left, I32), k.cast(right, I32)  # stored as int8 (0..31)
    mult, left, right = (k.splat(v, n) if n > 1 and width_of(v) == 1 else v for v in (mult, left, right))
    one, zero = k.lift(1, like=acc), k.lift(0, like=acc)
    x = acc << left
    high = rounding_high_mul(k, x, mult) if k.explicit_vectors else None
    if high is None:
        ab = k.cast(x, I64) * k.cast(mult, I64)
        if k.explicit_vectors:  # the same as the nudge and truncating division: floor((ab + 2^30) / 2^31)
            high = k.cast((ab + k.lift(1 << 30, like=ab)) >> k.lift(31, like=ab), I32)
        else:  # C: no right shift of a negative number (implementation-defined in C99)
            nudge = k.select(ab >= k.lift(0, like=ab), k.lift(1 << 30, like=ab), k.lift(1 - (1 << 30), like=ab))
            high = k.cast((ab + nudge) / k.lift(1 << 31, like=ab), I32)
    shifted = rounding_shift_right(k, high, right) if k.explicit_vectors else None
    if shifted is not None:
        return shifted
    mask = (one << right) - one
    threshold = (mask >> one) + k.select(high < zero, one, zero)
    return (high >> right) + k.select((high & mask) > threshold, one, zero)


def _finish(k, node, acc, mult, left, right):
    """The int8/uint8 output of int32 accumulators (a scalar or a vector)."""
    a = node.attrs
    r = requantize(k, acc, mult, left, right) + a["y_zp"]
    r = k.min(k.max(r, k.lift(a["lo"], like=r)), k.lift(a["hi"], like=r))
    return k.cast(r, I8)


def _finish_channel(k, node, totals, bias, mult, left, right, c):
    """Output channel c's int8/uint8 outputs of its int32 totals (a scalar or a vector of
    pixels): the channel's folded bias added, then requantized (_finish)."""
    return _finish(k, node, totals + k.splat(bias[c], width_of(totals)), mult[c], left[c], right[c])


def _finish_np(node, acc, mult, left, right):
    a = node.attrs
    r = requantize_np(acc, mult, left, right) + a["y_zp"]
    return np.clip(r, a["lo"], a["hi"]).astype(a["out"])


class _Integer(Op):
    foldable = False  # never has constant inputs only; and the reference is not a float op

    def macs(self, node):
        return 0


@register(QCONV, internal=True)
class QConv(_Integer):
    """2-D convolution (N, C, H, W), any group, strides, dilations and pads."""

    def infer(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        a = node.attrs
        out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], a["strides"][i], a["dilations"][i],
                             a["pads"][i], a["pads"][2 + i]) for i in range(2)]
        return [TensorType(a["out"], (x.shape[0], w.shape[0], *out))]

    def macs(self, node):
        return node.outputs[0].type.size * int(np.prod(in_type(node, 1).shape[1:]))

    def reference(self, node, x, w, bias, mult, left, right):
        a = node.attrs
        xs = x.astype(np.int64) - a["x_zp"]
        pads = [(0, 0), (0, 0), (a["pads"][0], a["pads"][2]), (a["pads"][1], a["pads"][3])]
        xp = np.pad(xs, pads)  # padding is the zero point: 0 after the subtraction
        n, oc, oh, ow = self.infer(node)[0].shape
        g = a["group"]
        cg, ocg = w.shape[1], oc // g
        acc = np.zeros((n, oc, oh, ow), np.int64) + bias.astype(np.int64).reshape(1, -1, 1, 1)
        (sh, sw), (dh, dw) = a["strides"], a["dilations"]
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                patch = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                for gi in range(g):
                    xs_g = patch[:, gi * cg:(gi + 1) * cg]
                    ws = w[gi * ocg:(gi + 1) * ocg, :, i, j].astype(np.int64)
                    acc[:, gi * ocg:(gi + 1) * ocg] += np.einsum("nchw,oc->nohw", xs_g, ws)
        return [_finish_np(node, acc, *(p.reshape(1, -1, 1, 1) for p in (mult, left, right)))]

    def workspace(self, node):
        """A block of output rows' windows, in the largest of the three convolution forms'
        layouts (_window_bytes, _scalar_bytes); a depthwise convolution's padded plane and
        flat outputs (flat_geometry), split by stride phases or not."""
        w = in_type(node, 1).shape
        _, _, oh, ow = self.infer(node)[0].shape
        if _depthwise(node):
            # (split on vector units, not on the DSP cores: the target's kernel picks one)
            geos = [flat_geometry(in_type(node, 0).shape[2:], (oh, ow), w[2:], node.attrs, split) for split in (1, 0)]
            return [TensorType("int8", (max(g.bytes for g in geos),)), TensorType("int8", (max(g.flat for g in geos),))]
        # the target's kernel picks one of the three forms
        return [TensorType("int8", (max(*_window_bytes(w, oh, ow), _scalar_bytes(w, _scalar_rows(w, oh, ow), ow)),))]

    def lower(self, k, node, ins, outs):
        x, w, bias, mult, left, right = ins[:6]
        y = outs[0]
        a = node.attrs
        unsigned = in_type(node, 0).dtype == "uint8"
        dots = _dot_operands(node, 1, unsigned) if k.explicit_vectors else None  # the C path: the loops below
        if dots is not None and _depthwise(node):
            return _depthwise_by_lanes(k, node, x, y, outs[1], outs[2], dots[1], mult, left, right, unsigned)
        if dots is not None and k.vector.int8_dot_by_lane and a["group"] == 1 and _quads_filled(w.shape[1]):
            return _conv_by_lanes(k, node, x, y, outs[1], dots[1], mult, left, right, unsigned)
        if dots is not None and k.vector.int8_mac_by_scalar and a["group"] == 1:
            return _conv_by_scalars(k, node, x, y, outs[1], dots[1], mult, left, right, unsigned)
        if dots is not None:
            return _conv_by_dots(k, node, x, y, outs[1], *dots, mult, left, right, unsigned)
        _, _, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        ocg = oc // a["group"]
        (sh, sw), (dh, dw), pads = a["strides"], a["dilations"], a["pads"]
        padded = any(pads)
        with k.loops(y.shape) as (n, o, oy, ox):
            acc = k.var(bias[o])
            c0 = 0 if a["group"] == 1 else (o // ocg) * cg
            with k.loops((cg, kh, kw)) as (c, i, j):
                iy = oy * sh + i * dh - pads[0]
                ix = ox * sw + j * dw - pads[1]

                def step():
                    xv = k.cast(x[n, c0 + c, iy, ix], I32, unsigned=unsigned) - a["x_zp"]
                    acc.value = acc.value + xv * k.cast(w[o, c, i, j], I32)

                if padded:
                    inside = (k.lift(iy) >= 0) & (k.lift(iy) < h) & (k.lift(ix) >= 0) & (k.lift(ix) < wd)
                    with k.if_(inside):
                        step()
                else:
                    step()
            y[n, o, oy, ox] = _finish(k, node, acc.value, mult[o], left[o], right[o])


def _dot_operands(node, w_index, unsigned):
    """(weights packed for dot products, bias with the input's zero point folded in) as
    constants, or None where the weights or bias are not constants or the folded bias would
    leave int32. The packed weights are one row per output channel, the reduction padded
    with zeros to whole dot-product steps; a uint8 input is read as int8 (x - 128), its zero
    point moving with it: bias - zp * sum(w) over the channel's real weights."""
    wv, bv = node.inputs[w_index], node.inputs[w_index + 1]
    if not (wv.is_const and bv.is_const):
        return None
    w = wv.data.reshape(wv.data.shape[0], -1)
    bias = bv.data.astype(np.int64) - _stored_zero_point(node, unsigned) * w.astype(np.int64).sum(axis=1)
    if np.abs(bias).max(initial=0) >= 2 ** 31:
        return None
    packed = np.zeros((w.shape[0], padded_length(w.shape[1])), np.int8)
    packed[:, :w.shape[1]] = w
    return packed, bias.astype(np.int32)


def _stored_zero_point(node, unsigned):
    """The input's zero point as the kernels see it: a uint8 input is stored as int8 (x - 128)."""
    return node.attrs["x_zp"] - (128 if unsigned else 0)


# output pixels a block of rows should hold at least (narrow maps: keyword spotting's 25x5)
BLOCK_PIXELS = 32


def _block_rows(oh, ow):
    """Output rows gathered and multiplied together: enough for whole register tiles, and,
    down to half that, a divisor of the output's rows (no shorter last block: its tiles would
    be code of their own; keyword spotting's 25 rows of 5 in blocks of 5)."""
    want = max(1, min(oh, -(-BLOCK_PIXELS // ow)))
    return next((r for r in range(want, (want - 1) // 2, -1) if oh % r == 0), want)


def _conv_by_dots(k, node, x, y, col, packed, bias, mult, left, right, unsigned):
    """QConv as dot products (kernel/tiled_int8.py): per block of output rows and group, the
    windows gathered into col, then every (pixel, channel) dot product of the block in
    register tiles, requantized a vector of pixels at a time (an output plane's pixels are
    contiguous across its rows)."""
    a = node.attrs
    n_, oc, oh, ow = y.shape
    _, cg, kh, kw = in_type(node, 1).shape
    g = a["group"]
    ocg = oc // g
    wt, bt = k.constant(packed), k.constant(bias)
    zero_point = _stored_zero_point(node, unsigned)
    kp = packed.shape[1]
    planes = y.reshape((n_, oc, oh * ow))
    rows = _block_rows(oh, ow)
    col = col.reshape((rows * ow, kp))

    def block(n, oy0, nrows, gi):
        for r in range(nrows):
            part = col.view((ow, kp), col.strides, col.offset + r * ow * kp)
            im2col_row(k, x, part, n, gi * cg if g > 1 else 0, cg, oy0 + r, a, (kh, kw), zero_point, unsigned)
        o0 = gi * ocg if g > 1 else 0

        def store(c, p0, totals):
            o = o0 + c
            planes.store_vector((n, o, oy0 * ow + p0), _finish_channel(k, node, totals, bt, mult, left, right, o))

        dot_blocks(k, nrows * ow, ocg, kp, lambda p, kk: (col, (p, kk)), lambda c, kk: (wt, (o0 + c, kk)), store)

    with k.loop(n_) as n, k.loop(g) as gi:
        in_steps(k, oh, rows, lambda oy0, nrows: block(n, oy0, nrows, gi))


def _quads_filled(channels) -> bool:
    """Input channels fill at least three quarters of their 4-channel groups (lane_int8): a
    convolution of 1 or 2 channels (keyword spotting's input layer) would multiply mostly
    padding; it keeps the windows by pixel."""
    return channels >= 0.75 * channel_quads(channels) * GROUP


def _conv_by_lanes(k, node, x, y, col, bias, mult, left, right, unsigned):
    """QConv with pixels in the lanes (kernel/lane_int8.py): per block of output rows, the
    windows gathered as 4-channel groups, then every (pixel, channel) dot product of the
    block in register tiles, requantized and stored a vector of pixels at a time."""
    a = node.attrs
    n_, oc, oh, ow = y.shape
    w = node.inputs[1].data
    _, cg, kh, kw = w.shape
    wt, bt = k.constant(lane_weights(k, w)), k.constant(bias)
    zero_point = _stored_zero_point(node, unsigned)
    groups = lane_groups(cg, kh, kw)
    planes = y.reshape((n_, oc, oh * ow))
    rows = _block_rows(oh, ow)
    col = col.reshape((groups, padded_pixels(rows * ow), GROUP))
    pointwise = (kh, kw) == (1, 1) and tuple(a["strides"]) == (1, 1) and not any(a["pads"])

    def block(n, oy0, nrows):
        if pointwise:  # the block's pixels are one run of the input planes
            flat = x.reshape(x.shape[:2] + (x.shape[2] * x.shape[3],))
            _gather_pointwise(k, flat, col, n, cg, oy0 * ow, nrows * ow, zero_point, unsigned)
        else:
            for r in range(nrows):
                _gather_row(k, x, col, n, cg, oy0 + r, r * ow, ow, a, (kh, kw), zero_point, unsigned)

        def store(c, p0, count, totals):
            planes.store_vector((n, c, oy0 * ow + p0), _finish_channel(k, node, totals, bt, mult, left, right, c))

        lane_dot_blocks(k, nrows * ow, oc, groups, lambda pv, g: (col, (g, LANES * pv, 0)),
                        wt, store)

    with k.loop(n_) as n:
        in_steps(k, oh, rows, lambda oy0, nrows: block(n, oy0, nrows))


def _window_bytes(w, oh, ow):
    """Workspace bytes of the windows by pixel (tiled_int8) and by lane (lane_int8) of a block
    of _block_rows."""
    pixels = _block_rows(oh, ow) * ow
    return pixels * padded_length(int(np.prod(w[1:]))), lane_groups(*w[1:]) * GROUP * padded_pixels(pixels)


def _scalar_bytes(w, rows, ow):
    """Workspace bytes of the transposed windows (scalar_int8) of a block of `rows` rows."""
    return scalar_int8.padded_reduction(int(np.prod(w[1:]))) * scalar_int8.padded_pixels(rows * ow)


def _scalar_rows(w, oh, ow):
    """Output rows a block of scalar_int8 holds: as many as _block_rows, fewer where their
    pixels rounded up to whole vectors would need more workspace than the other kernels'
    (at least one row)."""
    budget = max(_window_bytes(w, oh, ow))
    fits = [r for r in range(1, _block_rows(oh, ow) + 1) if _scalar_bytes(w, r, ow) <= budget]
    return fits[-1] if fits else 1


def _conv_by_scalars(k, node, x, y, col, bias, mult, left, right, unsigned):
    """QConv with pixels in the lanes and each weight a scalar operand (kernel/scalar_int8.py):
    per block of output rows, the windows gathered transposed (each reduction index's pixels
    contiguous), then every channel's dot products 16 pixels a step."""
    a = node.attrs
    n_, oc, oh, ow = y.shape
    w = node.inputs[1].data
    _, cg, kh, kw = w.shape
    kp = scalar_int8.padded_reduction(cg * kh * kw)
    packed = np.zeros((oc, kp), np.int8)
    packed[:, :cg * kh * kw] = w.reshape(oc, -1)
    wt, bt = k.constant(packed), k.constant(bias)
    zero_point = _stored_zero_point(node, unsigned)
    planes = y.reshape((n_, oc, oh * ow))
    rows = _scalar_rows(w.shape, oh, ow)
    col = col.reshape((kp, scalar_int8.padded_pixels(rows * ow)))

    def block(n, oy0, nrows):
        for r in range(nrows):
            scalar_int8.gather_rows(k, x, col, n, cg, oy0 + r, r * ow, ow, a, (kh, kw), zero_point, unsigned)

        def store(c, p0, count, totals):
            planes.store_vector((n, c, oy0 * ow + p0), _finish_channel(k, node, totals, bt, mult, left, right, c))

        scalar_int8.scalar_weight_dots(k, nrows * ow, oc, kp, col, lambda c, r: wt[c, r], k.vector.int8_tile[1], store)

    with k.loop(n_) as n:
        in_steps(k, oh, rows, lambda oy0, nrows: block(n, oy0, nrows))


def _quads(k, cg, body):
    """body(c4, channel) for each quad of input channels, channel(q) the q-th channel of the
    quad read (past the last channel: the last one again, its weights being zero)."""
    with k.loop(cg // GROUP) as c4:
        body(c4, lambda q: c4 * GROUP + q)
    if cg % GROUP:
        last = cg // GROUP
        body(last, lambda q: min(last * GROUP + q, cg - 1))


def _gather_pointwise(k, flat, col, n, cg, start, pixels, zero_point, unsigned):
    """A 1x1 convolution's block: pixels start .. start + pixels of each input plane."""
    def quad(c4, channel):
        def rows(q, ox, width):
            idx = (n, channel(q), start + ox)
            return flat[idx] if width == 1 else k.vload(flat, idx, width)
        copy_span(k, rows, col, c4, 0, 0, pixels, unsigned)
    _quads(k, cg, quad)


def _gather_row(k, x, col, n, cg, oy, p0, ow, a, kernel, zero_point, unsigned):
    """Output row oy's windows into col (groups x pixels x 4) at pixels p0 .. p0 + ow. Which
    columns of a kernel column's taps fall in the padding is known at compile time; whether a
    kernel row does depends on oy. The kernel rows are a run-time loop (code per kernel
    column, not per tap: the unrolled gathers were most of the lane kernels' code)."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    zp = k.lift(zero_point, like=I8)

    def kernel_row(c4, channel, i):
        iy = oy * sh + i * dh - ph
        row_inside = (k.lift(iy) >= 0) & (k.lift(iy) < h)
        with k.if_(row_inside):
            for j in range(kw):
                g = (c4 * kh + i) * kw + j
                lo = max(0, min(ow, -(-(pw - j * dw) // sw)))  # first column whose tap lies in the row
                hi = max(lo, min(ow, (w_in - 1 + pw - j * dw) // sw + 1))
                fill_groups(k, col, g, p0, lo, zp)
                fill_groups(k, col, g, p0 + hi, ow - hi, zp)
                src = x.view(x.shape, x.strides[:3] + (sw * x.strides[3],), x.offset + j * dw - pw)

                def rows(q, ox, width, src=src):
                    idx = (n, channel(q), iy, ox)
                    return src[idx] if width == 1 else k.vload(src, idx, width)
                copy_span(k, rows, col, g, p0, lo, hi, unsigned)
        with k.if_(~row_inside):
            for j in range(kw):
                fill_groups(k, col, (c4 * kh + i) * kw + j, p0, ow, zp)

    def quad(c4, channel):
        with k.loop(kh) as i:
            kernel_row(c4, channel, i)
    _quads(k, cg, quad)


def _depthwise(node) -> bool:
    """One input channel per output channel, and column strides vload reads as one span."""
    w = in_type(node, 1).shape
    return w[1] == 1 and node.attrs["group"] == w[0] == in_type(node, 0).shape[1] and node.attrs["strides"][1] <= 4


def _depthwise_by_lanes(k, node, x, y, plane, grid, bias, mult, left, right, unsigned):
    """Depthwise QConv channel by channel over the flat padded plane (tiled_int8.depthwise_flat)."""
    a = node.attrs
    n_, oc, oh, ow = y.shape
    kh, kw = in_type(node, 1).shape[2:]
    w = node.inputs[1].data.reshape(oc, kh, kw)
    words = k.constant(weight_word_pairs(w)) if by_words(k, a) else None
    wt, bt = k.constant(w) if words is None else None, k.constant(bias)
    with k.loop(n_) as n, k.loop(oc) as c:
        def weight(i, j):
            return wt[c, i, j]

        def weight_words(i, t):
            return words[c, i, t, 0], words[c, i, t, 1]

        def finish(acc):
            return _finish_channel(k, node, acc, bt, mult, left, right, c)

        def store(oy, ox, v):
            y.store_vector((n, c, oy, ox), v)

        depthwise_flat(k, x, plane, grid, n, c, (kh, kw), (oh, ow), a, _stored_zero_point(node, unsigned), unsigned,
                       weight, finish, store, weight_words if words is not None else None,
                       pairable=not (w == -128).any())


@register(QMATMUL, internal=True)
class QMatMul(_Integer):
    """x (..., M, K) times w^T, w (N, K) constant (stored output-channel major, as a Conv's
    weights: each output's K weights are contiguous). The zero point of x is folded into the
    bias at compile time by the pass (bias[n] -= x_zp * sum_k w[n, k]), so x_zp here is 0
    unless the op is made otherwise."""

    def infer(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        return [TensorType(node.attrs["out"], x.shape[:-1] + (w.shape[0],))]

    def macs(self, node):
        return node.outputs[0].type.size * in_type(node, 1).shape[1]

    def reference(self, node, x, w, bias, mult, left, right):
        acc = (x.astype(np.int64) - node.attrs["x_zp"]) @ w.T.astype(np.int64) + bias.astype(np.int64)
        return [_finish_np(node, acc, mult, left, right)]

    def workspace(self, node):
        """x's rows padded to whole dot-product steps (and a uint8 x read as int8), where x
        itself cannot be read 16 bytes at a time."""
        kk = in_type(node, 1).shape[1]
        if kk % DOT_BYTES == 0 and in_type(node, 0).dtype == "int8":
            return []
        return [TensorType("int8", (in_type(node, 0).size // kk, padded_length(kk)))]

    def lower(self, k, node, ins, outs):
        x, w, bias, mult, left, right = ins[:6]
        nn, kk = w.shape
        rows = x.size // kk
        x2, y2 = x.reshape((rows, kk)), outs[0].reshape((rows, nn))
        unsigned = in_type(node, 0).dtype == "uint8"
        dots = _dot_operands(node, 1, unsigned) if k.explicit_vectors else None  # the C path: the loops below
        if dots is not None:
            packed, folded = dots
            if len(outs) > 1:  # the padded copy
                with k.loops((rows, kk)) as (r, i):
                    outs[1][r, i] = as_signed(k, x2[r, i], unsigned)
                x2 = outs[1]
            wt, bt = k.constant(packed), k.constant(folded)
            yt = y2.transpose((1, 0))

            def store(j, r0, totals):
                yt.store_vector((j, r0), _finish_channel(k, node, totals, bt, mult, left, right, j))

            # a vector of channels requantized at once where the unit has a high multiply or
            # takes int64 lanes cheaply (AArch64, AVX2); RVV's int64 lanes (LMUL 8 for 16 lanes,
            # vsetvli between widths) are slower than RV64's scalar 64-bit multiply
            def store_channels(j0, r, totals):
                n = width_of(totals)
                y2.store_vector((r, j0), _finish(k, node, totals + k.vload(bt, (j0,), n), k.vload(mult, (j0,), n),
                                                 k.vload(left, (j0,), n), k.vload(right, (j0,), n)))

            return dot_blocks(k, rows, nn, packed.shape[1], lambda r, i: (x2, (r, i)), lambda j, i: (wt, (j, i)), store,
                              store_channels if k.vector.int8_high_mul or k.vector.int8_dot_by_lane else None)
        with k.loops((rows, nn)) as (r, j):
            acc = k.var(bias[j])
            with k.loop(kk) as i:
                xv = k.cast(x2[r, i], I32, unsigned=unsigned)
                if node.attrs["x_zp"]:
                    xv = xv - node.attrs["x_zp"]
                acc.value = acc.value + xv * k.cast(w[j, i], I32)
            y2[r, j] = _finish(k, node, acc.value, mult[j], left[j], right[j])
