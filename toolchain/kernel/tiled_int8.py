"""Integer dot products in register tiles: the int8 convolution and matrix product as
(pixels x channels) blocks of dot products over a reduction axis laid out contiguously in
both operands, 16 bytes a step (int8_dot.dot: `sdot` on AArch64 with the dot-product
feature, `vpmaddwd` on AVX2, `vwmul`/`vwadd` on RVV, `vmlava` on MVE: kernel/int8_dot.py).

A convolution's reduction (input channel, kernel row, kernel column) is not contiguous in
NCHW, so each block of output rows first gathers its pixels' windows into the node's
workspace (`im2col_row`, row by row): K bytes per pixel, the padding holding the input's zero point, so
every window is the same dense dot product. The bytes past K in a pixel's row are never
written: the packed weights are zero there, and any int8 times zero is zero."""
from __future__ import annotations

import numpy as np

from .int8_dot import DOT_BYTES, byte_pairs, dot, dot_totals, dot_zero, dual_mac, load_bytes
from .llvm import I8, I16, I32


# kernels up to this many taps have their rows unrolled (fewer instructions for the common 3x3);
# larger ones loop over their rows (less code: KWS's 10x4 input layer)
STATIC_TAPS = 16


def as_signed(k, v, flip_sign):
    """int8/uint8 bytes (a scalar or a vector) as the kernels store them: a uint8 byte with its
    top bit flipped, x - 128 as int8 (flip_sign); an int8 one as it is."""
    return v ^ k.lift(-128, like=v) if flip_sign else v


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
        accs = [[k.var(dot_zero(k)) for _ in range(nc)] for _ in range(np_)]
        with k.loop(kp, step=DOT_BYTES) as kk:
            xs = [load_bytes(k, *x_at(p0 + p, kk)) for p in range(np_)]
            ws = [load_bytes(k, *w_at(c0 + c, kk)) for c in range(nc)]
            for p in range(np_):
                for c in range(nc):
                    accs[p][c].value = dot(k, accs[p][c].value, xs[p], ws[c])
        for c in range(nc):
            store(c0 + c, p0, dot_totals(k, [accs[p][c].value for p in range(np_)]))

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
    in the padding is known at compile time; whether a kernel row does depends on oy. Kernels of
    more than STATIC_TAPS taps loop over their rows (code per kernel column, not per tap)."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    ow = col.shape[0]
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    zp = k.lift(zero_point, like=I8)

    def kernel_row(c, i):
        iy = oy * sh + i * dh - ph
        row_inside = (k.lift(iy) >= 0) & (k.lift(iy) < h)
        with k.if_(row_inside):
            for j in range(kw):
                tap = c * (kh * kw) + i * kw + j
                first = -(-(pw - j * dw) // sw)  # first column whose tap lies in the row
                lo = max(0, min(ow, first))
                hi = max(lo, min(ow, (w_in - 1 + pw - j * dw) // sw + 1))
                for start, stop in ((0, lo), (hi, ow)):
                    with k.loop(stop, start=start) as ox:
                        col[ox, tap] = zp
                with k.loop(hi, start=lo) as ox:
                    col[ox, tap] = as_signed(k, x[n, ci0 + c, iy, ox * sw + (j * dw - pw)], flip_sign)
        with k.if_(~row_inside):
            with k.loop(ow) as ox, k.loop(kw) as j:
                col[ox, c * (kh * kw) + i * kw + j] = zp

    with k.loop(cg) as c:
        if kh * kw <= STATIC_TAPS:
            for i in range(kh):
                kernel_row(c, i)
        else:
            with k.loop(kh) as i:
                kernel_row(c, i)


def flat_geometry(in_hw, out_hw, kernel, a):
    """The padded input plane of a depthwise convolution read as one long row: its row pitch
    (the padded width rounded up to the column stride sw), the flat outputs per output row
    (pitch * sh / sw: output (oy, ox) at flat index q = oy * per_row + ox then reads input
    sw * q + kernel row * dh * pitch + kernel column * dw of the plane), the flat outputs
    computed (whole vectors of DOT_BYTES; the columns past the output's width are computed
    and dropped) and the plane's length (everything those vectors read)."""
    (h, w), (oh, ow), (kh, kw) = in_hw, out_hw, kernel
    (sh, sw), (dh, dw), (ph0, pw0, ph1, pw1) = a["strides"], a["dilations"], a["pads"]
    pitch = -(-(w + pw0 + pw1) // sw) * sw
    per_row = pitch * sh // sw
    flat = -(-(oh * per_row) // DOT_BYTES) * DOT_BYTES
    # (a word read by tap_words may run up to 3 bytes past a kernel row's last tap)
    reach = sw * (flat - 1) + (kh - 1) * dh * pitch + (kw - 1) * dw + 1 + (-kw) % 4
    length = -(-max(reach, (h + ph0 + ph1) * pitch) // DOT_BYTES) * DOT_BYTES
    return pitch, per_row, flat, length


def depthwise_flat(k, x, plane, grid, n, c, kernel, out_hw, a, zero_point, flip_sign, weight, finish, store,
                   weight_words=None):
    """One channel of a depthwise convolution over its padded plane read as one long row
    (flat_geometry): DOT_BYTES flat outputs a step (half that on a unit of 8 registers, a
    quarter without a vector unit), each tap one load of the plane (every sw-th byte) and a
    widening multiply by the tap's weight (weight(i, j): its int8 scalar) into int32 lanes,
    whatever the width of the map (keyword spotting's rows are 5 wide).
    finish(acc) gives the int8 vector; the flat results go to grid, then the output's own
    columns to store(oy, ox, value). The plane is the zero point everywhere the input is not.
    weight_words(i, t): the packed pairs of kernel row i's word t (weight_word_pairs), where
    the taps are read as words (by_words)."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    oh, ow = out_hw
    sw, (dh, dw), (ph0, pw0) = a["strides"][1], a["dilations"], a["pads"][:2]
    pitch, per_row, flat, length = flat_geometry((h, w_in), (oh, ow), kernel, a)
    fill = k.splat(k.lift(zero_point, like=I8), DOT_BYTES)
    with k.loop(length, step=DOT_BYTES) as i:
        plane.store_vector((i,), fill)
    rows = plane.view((h, w_in), (pitch, 1), ph0 * pitch + pw0)
    whole = w_in - w_in % DOT_BYTES
    with k.loop(h) as r:
        with k.loop(whole, step=DOT_BYTES) as col:
            rows.store_vector((r, col), as_signed(k, k.vload(x, (n, c, r, col), DOT_BYTES), flip_sign))
        for col in range(whole, w_in):
            rows[r, col] = as_signed(k, x[n, c, r, col], flip_sign)
    if weight_words is not None:
        _tap_words(k, plane, kernel, out_hw, per_row, pitch, a, weight_words, finish, store)
        return
    _tap_vectors(k, plane, grid, kernel, flat, pitch, a, weight, finish)
    with k.loop(oh) as oy:
        for ox in range(ow):
            store(oy, ox, grid[oy * per_row + ox])


def by_words(k, a) -> bool:
    """A depthwise kernel row is read as words of 4 taps (tap_words) on DSP cores where its
    taps are adjacent bytes (column dilation 1)."""
    return k.vector.int8_dot == "dsp" and a["dilations"][1] == 1


def weight_word_pairs(w: np.ndarray) -> np.ndarray:
    """Depthwise weights (channels, kh, kw) int8 -> (channels, kh, words, 2) int32: for each
    word of 4 taps (the last zero-padded), taps 0 and 2, and 1 and 3, as int16 halves, as
    byte_pairs makes the input word's bytes (the low half is the first tap: little-endian)."""
    c, kh, kw = w.shape
    words = -(-kw // 4)
    wp = np.zeros((c, kh, 4 * words), np.int16)
    wp[..., :kw] = w
    pairs = np.stack([wp[..., 0::4], wp[..., 2::4], wp[..., 1::4], wp[..., 3::4]], axis=-1)
    return np.ascontiguousarray(pairs).view(np.int32).reshape(c, kh, words, 2)


def _tap_words(k, plane, kernel, out_hw, per_row, pitch, a, weight_words, finish, store):
    """One output a step, straight to store (only the output's own columns): each kernel
    row's taps as words of 4 input bytes, two dual multiply-accumulates a word against the
    pairs weight_words(i, t) gives (weight_word_pairs)."""
    (kh, kw), (oh, ow), sw, dh = kernel, out_hw, a["strides"][1], a["dilations"][0]
    words = -(-kw // 4)
    pairs = [(i, t, weight_words(i, t)) for i in range(kh) for t in range(words)]
    with k.loop(oh) as oy, k.loop(ow) as ox:
        acc = k.lift(0, like=I32)
        for i, t, (even, odd) in pairs:
            word = k.lanes(load_bytes(k, plane, (sw * (oy * per_row + ox) + i * dh * pitch + 4 * t,), 4))[0]
            x_even, x_odd = byte_pairs(k, word)
            acc = dual_mac(k, dual_mac(k, acc, x_even, even), x_odd, odd)
        store(oy, ox, finish(acc))


def _tap_vectors(k, plane, grid, kernel, flat, pitch, a, weight, finish):
    """`width` flat outputs a step, each tap a widening multiply of a load of the plane by
    the tap's weight (weight(i, j), an int8 scalar)."""
    (kh, kw), sw, (dh, dw) = kernel, a["strides"][1], a["dilations"]
    # a vector unit of 8 registers (MVE): half the lanes; no vector unit: a quarter
    width = DOT_BYTES // 4 if k.vector_lanes == 1 else DOT_BYTES if k.vector.registers >= 16 else DOT_BYTES // 2
    taps = [(i, j, k.splat(k.cast(weight(i, j), I16), width)) for i in range(kh) for j in range(kw)]
    with k.loop(flat, step=width) as q0:
        acc = None
        for i, j, wv in taps:
            src = plane.view((flat,), (sw,), i * dh * pitch + j * dw)
            prod = k.cast(k.vload(src, (q0,), width), I16) * wv
            acc = k.cast(prod, I32) if acc is None else acc + k.cast(prod, I32)
        grid.store_vector((q0,), finish(acc))
