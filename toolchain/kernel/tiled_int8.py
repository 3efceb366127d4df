"""Integer dot products in register tiles: the int8 convolution and matrix product as
(pixels x channels) blocks of dot products over a reduction axis laid out contiguously in
both operands, 16 bytes a step (Kernel.int8_dot: `sdot` on AArch64 with the dot-product
feature, `vpmaddwd` on AVX2, `vwmul`/`vwadd` on RVV, `vmlava` on MVE).

A convolution's reduction (input channel, kernel row, kernel column) is not contiguous in
NCHW, so each output row first gathers its pixels' windows into a row of the node's
workspace (`im2col_row`): K bytes per pixel, the padding holding the input's zero point, so
every window is the same dense dot product. The bytes past K in a pixel's row are never
written: the packed weights are zero there, and any int8 times zero is zero."""
from __future__ import annotations

from contextlib import ExitStack

from .llvm import DOT_BYTES, I8


def padded_length(k_: int) -> int:
    """A reduction of k_ bytes rounded up to whole dot-product steps."""
    return -(-k_ // DOT_BYTES) * DOT_BYTES


def dot_blocks(k, pixels: int, channels: int, kp: int, x_at, w_at, store):
    """For every pixel p < pixels and channel c < channels, the dot product of the kp bytes
    at x_at(p, kk) with those at w_at(c, kk) (each a (tensor, index) of the step's first
    byte). In tiles of VectorUnit.int8_tile (pixels x channels): a step loads each tile
    pixel's and channel's 16 bytes once and feeds pixels x channels accumulators.
    store(c, p0, totals): channel c's totals of pixels p0, p0 + 1, ... as one int32 vector
    (one pixel: a scalar)."""
    tp, tc = k.vector.int8_tile

    def tile(p0, np_, c0, nc):
        accs = [[k.var(k.int8_dot_zero()) for _ in range(nc)] for _ in range(np_)]
        with k.loop(kp, step=DOT_BYTES) as kk:
            xs = [k.load_bytes(*x_at(p0 + p, kk)) for p in range(np_)]
            ws = [k.load_bytes(*w_at(c0 + c, kk)) for c in range(nc)]
            for p in range(np_):
                for c in range(nc):
                    accs[p][c].value = k.int8_dot(accs[p][c].value, xs[p], ws[c])
        for c in range(nc):
            store(c0 + c, p0, k.int8_dot_totals([accs[p][c].value for p in range(np_)]))

    def pixel_tiles(c0, nc):
        full = pixels - pixels % tp
        with k.loop(full, step=tp) as p0:
            tile(p0, tp, c0, nc)
        if full < pixels:
            tile(full, pixels - full, c0, nc)

    full = channels - channels % tc
    with k.loop(full, step=tc) as c0:
        pixel_tiles(c0, tc)
    if full < channels:
        pixel_tiles(full, channels - full)


def im2col_row(k, x, col, n, ci0, cg, oy, a, kernel, zero_point, flip_sign):
    """Row oy of the output's windows into col (output column x K bytes, K ordered as
    (channel, kernel row, kernel column) like the weights): channels ci0 .. ci0 + cg of
    image n. A tap in the padding is the zero point. flip_sign: the input is uint8, stored
    as int8 by flipping its top bit (x - 128). Which columns of a kernel column's taps fall
    in the padding is known at compile time; whether a kernel row does depends on oy."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    ow = col.shape[0]
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    zp = k.lift(zero_point, like=I8)

    def value(v):
        return v ^ k.lift(-128, like=I8) if flip_sign else v

    with k.loop(cg) as c:
        for i in range(kh):
            iy = oy * sh + i * dh - ph
            row_inside = (k.lift(iy) >= 0) & (k.lift(iy) < h)
            with ExitStack() as stack:
                stack.enter_context(k.if_(row_inside))
                for j in range(kw):
                    tap = c * (kh * kw) + (i * kw + j)
                    first = -(-(pw - j * dw) // sw)  # first column whose tap lies in the row
                    lo = max(0, min(ow, first))
                    hi = max(lo, min(ow, (w_in - 1 + pw - j * dw) // sw + 1))
                    for start, stop in ((0, lo), (hi, ow)):
                        with k.loop(stop, start=start) as ox:
                            col[ox, tap] = zp
                    with k.loop(hi, start=lo) as ox:
                        col[ox, tap] = value(x[n, ci0 + c, iy, ox * sw + (j * dw - pw)])
            with k.if_(~row_inside):
                with k.loop(ow) as ox, k.loop(kw) as j:
                    col[ox, c * (kh * kw) + i * kw + j] = zp
