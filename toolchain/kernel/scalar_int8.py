"""Integer convolution with output pixels in the vector lanes and each weight a scalar
operand (VectorUnit.int8_mac_by_scalar): a unit with no int8 dot product but a widening
multiply-accumulate by a scalar (RVV `vwmacc.vx`: int16 lanes times an int16 scalar into
int32 lanes) takes 16 pixels' bytes of one reduction index, sign-extended once (`vsext.vf2`)
and shared by a tile of channels, times each channel's weight a step. Nothing is summed
across lanes at the end, the requantized vector is 16 consecutive pixels of an output plane,
and every vector instruction of the loop works on 16-bit elements (no `vsetvli` between
them, where int8 products widened to int16 then int32 switch element widths twice a tap).

The windows of a block of output rows are gathered transposed (gather_rows): for each
reduction index (input channel, kernel row, kernel column) the block's pixels one after
the other, so that the gather is, row by row, a copy of an input row's span and the dot
products read 16 bytes a load. The workspace holds (reduction rounded up to UNROLL, pixels
rounded up to whole vectors) bytes."""
from __future__ import annotations

from llvmlite import ir

from .int8_dot import first_lanes
from .llvm import I8, I16, I32
from .tiled_int8 import as_signed, copy_bytes, in_steps

WIDTH = 16  # pixels a step: int8 in one register, their int32 sums in four
UNROLL = 4  # reduction indices a loop step


def padded_reduction(k_: int) -> int:
    return -(-k_ // UNROLL) * UNROLL


def padded_pixels(pixels: int) -> int:
    return -(-pixels // WIDTH) * WIDTH


def gather_rows(k, x, col, n, cg, oy, p0, ow, a, kernel, zero_point, flip_sign):
    """Output row oy's windows into col (reduction x pixels) at pixels p0 .. p0 + ow: for
    each (channel, kernel row, kernel column) the input row's span that the output columns
    read (every sw-th byte), the columns whose tap lies in the padding the zero point."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    zp = k.lift(zero_point, like=I8)

    def fill(r, start, count):
        if count:
            copy_bytes(k, None, None, col, (r, p0 + start), count, raw=True, value=zp)

    def kernel_row(c, i):
        iy = oy * sh + i * dh - ph
        inside = (k.lift(iy) >= 0) & (k.lift(iy) < h)
        for j in range(kw):
            r = (c * kh + i) * kw + j
            lo = max(0, min(ow, -(-(pw - j * dw) // sw)))  # the first column whose tap lies in the row
            hi = max(lo, min(ow, (w_in - 1 + pw - j * dw) // sw + 1))
            with k.if_(inside):
                fill(r, 0, lo)
                fill(r, hi, ow - hi)
                if hi > lo:  # tap column ox * sw + j * dw - pw
                    src = x.view(x.shape, x.strides[:3] + (sw * x.strides[3],), x.offset + j * dw - pw)
                    copy_bytes(k, src, (n, c, iy, lo), col, (r, p0 + lo), hi - lo,
                               lambda v: as_signed(k, v, flip_sign), raw=True)
            with k.if_(~inside):
                fill(r, 0, ow)

    with k.loop(cg) as c:
        for i in range(kh):
            kernel_row(c, i)


def scalar_weight_dots(k, pixels, channels, reduction, col, weight, tile, store):
    """For every pixel < pixels and channel < channels: the sum over the reduction of
    col[r, pixel] * weight(channel, r) (an int8 scalar), WIDTH pixels a step, `tile` channels
    sharing each load of col. store(c, p0, count, totals): channel c's totals of pixels
    p0 .. p0 + count (count static; the block's last vector cut to its pixels)."""
    acc_type = ir.VectorType(I32, WIDTH)

    def vector(p0, count, c0, nc):
        accs = [k.var(k.lift(0, like=acc_type)) for _ in range(nc)]
        with k.loop(reduction, step=UNROLL) as r:
            xs = [k.cast(k.vload(col, (r + t, p0), WIDTH), I16) for t in range(UNROLL)]
            for c in range(nc):
                for t in range(UNROLL):  # int16 x int16 -> int32 (RVV vwmacc.vx)
                    w = k.splat(k.cast(weight(c0 + c, r + t), I32), WIDTH)
                    accs[c].value = accs[c].value + k.cast(xs[t], I32) * w
        for c in range(nc):
            store(c0 + c, p0, count, first_lanes(k, accs[c].value, count))

    in_steps(k, channels, tile, lambda c0, nc: in_steps(k, pixels, WIDTH, lambda p0, count: vector(p0, count, c0, nc)))
