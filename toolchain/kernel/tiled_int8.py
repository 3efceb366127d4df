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

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from .int8_dot import (DOT_BYTES, byte_pairs, dot, dot_totals, dot_zero, dual_mac, load_as, load_bytes, store_bytes,
                       width_of)
from .llvm import I8, I16, I32, Expr


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


def dot_blocks(k, pixels: int, channels: int, kp: int, x_at, w_at, store, store_channels=None):
    """For every pixel p < pixels and channel c < channels, the dot product of the kp bytes
    at x_at(p, kk) with those at w_at(c, kk) (each a (tensor, index) of the step's first
    byte). In tiles of VectorUnit.int8_tile (pixels x channels): a step loads each tile
    pixel's and channel's 16 bytes once and feeds pixels x channels accumulators.
    store(c, p0, totals): channel c's totals of pixels p0, p0 + 1, ... as one int32 vector
    (one pixel: a scalar). store_channels(c0, p, totals), where given, takes a tile of one
    pixel instead: channels c0, c0 + 1, ...'s totals as one vector (a matrix-vector
    product's outputs requantized a vector at a time, not one by one)."""
    tp, tc = k.vector.int8_tile

    def tile(p0, np_, c0, nc):
        accs = [[k.var(dot_zero(k)) for _ in range(nc)] for _ in range(np_)]
        with k.loop(kp, step=DOT_BYTES) as kk:
            xs = [load_bytes(k, *x_at(p0 + p, kk)) for p in range(np_)]
            ws = [load_bytes(k, *w_at(c0 + c, kk)) for c in range(nc)]
            for p in range(np_):
                for c in range(nc):
                    accs[p][c].value = dot(k, accs[p][c].value, xs[p], ws[c])
        if store_channels is not None and np_ == 1 and nc > 1:
            store_channels(c0, p0, dot_totals(k, [accs[0][c].value for c in range(nc)]))
            return
        for c in range(nc):
            store(c0 + c, p0, dot_totals(k, [accs[p][c].value for p in range(np_)]))

    in_steps(k, channels, tc, lambda c0, nc: in_steps(k, pixels, tp, lambda p0, np_: tile(p0, np_, c0, nc)))


def in_steps(k, n, step, body):
    """body(i, count) over 0 .. n in steps: the whole steps in a loop (count = step), then
    the last, shorter one built apart (count static)."""
    full = n - n % step
    with k.loop(full, step=step) as i:
        body(i, step)
    if full < n:
        body(full, n - full)


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


@dataclass(frozen=True)
class Plane:
    """A depthwise convolution's padded input plane read as one long row. Split (`phases`
    (sh, sw)): the padded plane cut into sh x sw phase planes, phase (a, b) holding padded
    rows a, a + sh, ... and of each columns b, b + sw, ...; a strided convolution then reads
    each tap's inputs as consecutive bytes of one phase plane, like a stride-1 one. Not split
    (phases (1, 1), strides kept): the DSP cores' word reads (tap_words) need a kernel row's
    taps adjacent. `pitch`: a row of one phase plane; `per_row`: flat outputs per output row
    (output (oy, ox) is flat index q = oy * per_row + ox); `flat`: the flat outputs computed
    (whole vectors of DOT_BYTES; the columns past each row's end are computed and dropped);
    `length`: one phase plane's bytes (everything the steps read)."""

    phases: tuple
    step: int  # bytes between consecutive flat outputs' inputs (sw where not split, else 1)
    pitch: int
    per_row: int
    flat: int
    length: int
    taps: tuple  # (phase plane, offset) of each tap (kernel row major): q's input is at q * step + offset

    @property
    def bytes(self) -> int:
        return self.phases[0] * self.phases[1] * self.length

    def at(self, row: int, col: int) -> tuple[int, int]:
        """(phase plane, offset in it) of padded position (row, col)."""
        (sh, sw), pitch = self.phases, self.pitch
        return (row % sh) * sw + col % sw, (row // sh) * pitch + col // sw


def flat_geometry(in_hw, out_hw, kernel, a, split=True) -> Plane:
    (h, w), (oh, _), (kh, kw) = in_hw, out_hw, kernel
    (sh, sw), (dh, dw), (ph0, pw0, ph1, pw1) = a["strides"], a["dilations"], a["pads"]
    if split:
        pitch = -(-(w + pw0 + pw1) // sw)
        rows = -(-(h + ph0 + ph1) // sh)
        per_row, step, phases = pitch, 1, (sh, sw)
    else:
        pitch = -(-(w + pw0 + pw1) // sw) * sw
        rows = h + ph0 + ph1
        per_row, step, phases = pitch * sh // sw, sw, (1, 1)
    flat = -(-(oh * per_row) // DOT_BYTES) * DOT_BYTES
    probe = Plane(phases, step, pitch, per_row, flat, 0, ())
    taps = tuple(probe.at(i * dh, j * dw) for i in range(kh) for j in range(kw))
    # a step reads `step` bytes a lane; a word read by tap_words may run up to 3 bytes past a
    # kernel row's last tap
    reach = step * flat + max(off for _, off in taps) + (-kw) % 4
    length = -(-max(reach, rows * pitch) // DOT_BYTES) * DOT_BYTES
    return Plane(phases, step, pitch, per_row, flat, length, taps)


def depthwise_flat(k, x, plane, grid, n, c, kernel, out_hw, a, zero_point, flip_sign, weight, finish, store,
                   weight_words=None, pairable=False):
    """One channel of a depthwise convolution over its padded plane read as one long row
    (flat_geometry): `width` outputs a step (depthwise_width), each tap one load of the plane
    and a widening multiply by the tap's weight (weight(i, j): its int8 scalar) into int32
    lanes, two taps' products summed in int16 first where they cannot overflow it (pairable:
    no weight is -128). Either the output rows one after the other, whole vectors of their
    own columns stored as they are (the last one overlapping the one before), or, where that
    takes more steps (narrow maps: keyword spotting's rows are 5 wide), the plane's flat
    outputs all (the columns past each row's end computed and dropped) into grid, then each
    row's own columns copied out (depthwise_steps). finish(acc) gives the int8 vector;
    store(oy, ox, v) stores a vector (or a scalar) of outputs from (oy, ox) on. The plane is
    the zero point everywhere the input is not. weight_words(i, t): the packed pairs of
    kernel row i's word t (weight_word_pairs), where the taps are read as words (by_words)."""
    _, _, h, w_in = x.shape
    kh, kw = kernel
    oh, ow = out_hw
    geo = flat_geometry((h, w_in), (oh, ow), kernel, a, split=weight_words is None)
    fill = k.splat(k.lift(zero_point, like=I8), DOT_BYTES)
    with k.loop(geo.bytes, step=DOT_BYTES) as i:
        plane.store_vector((i,), fill)
    with k.loop(h) as r:
        _plane_row(k, x, plane, geo, n, c, r, a["pads"][:2], lambda v: as_signed(k, v, flip_sign))
    if weight_words is not None:
        _tap_words(k, plane, kernel, out_hw, geo, a, weight_words, finish, store)
        return
    width = depthwise_width(k)
    taps = [(t, weight(t // kw, t % kw)) for t in range(kh * kw)]

    def outputs(q):  # the `width` flat outputs from q on
        def tap(t):
            phase, offset = geo.taps[t]
            at = phase * geo.length + geo.step * q + offset
            span = load_as(k, plane, (at,), ir.VectorType(I8, width * geo.step))
            if geo.step == 1:
                return span
            pick = ir.Constant(ir.VectorType(I32, width), list(range(0, width * geo.step, geo.step)))
            return Expr(k, k.b.shuffle_vector(span.v, span.v, pick))
        return finish(tap_sum(k, tap, taps, pairable))

    if depthwise_steps(out_hw, geo.per_row, width)[0] == "rows":
        with k.loop(oh) as oy:
            for ox in _runs(ow, width):
                store(oy, ox, outputs(oy * geo.per_row + ox))
        return
    with k.loop(geo.flat, step=width) as q0:
        grid.store_vector((q0,), outputs(q0))
    with k.loop(oh) as oy:
        copy_bytes(k, grid, (oy * geo.per_row,), None, None, ow, store=lambda ox, v: store(oy, ox, v))


def _plane_row(k, x, plane, geo, n, c, r, pads, transform):
    """Input row r of channel c into the phase planes: columns one phase plane's worth a
    move (NEON `ld2`/`ld3`/`ld4` of `sw` registers, each stored to its phase plane), the last
    move overlapping the one before; the columns no whole move covers byte by byte."""
    ph0, pw0 = pads
    (sh, sw), w_in = geo.phases, x.shape[3]
    pr = r + ph0
    row_base = pr * geo.pitch if sh == 1 else (pr % sh) * sw * geo.length + (pr // sh) * geo.pitch
    # (the phase row's start in column phase 0)

    def dest(col):  # the plane element of input column col, in its column phase
        return row_base + (col + pw0) % sw * geo.length + (col + pw0) // sw
    if sw == 1:
        copy_bytes(k, x, (n, c, r, 0), plane, (dest(0),), w_in, transform, raw=True)
        return
    first = (-pw0) % sw  # the first column of column phase 0
    for width in (16, 8, 4):
        span = width * sw
        if first + span <= w_in:
            last = first + (w_in - first - span) // sw * sw  # the last move's first column
            starts = list(range(first, last + 1, span))
            starts += [last] if starts[-1] != last else []
            for c0 in starts:
                whole = load_as(k, x, (n, c, r, c0), ir.VectorType(I8, span)).v
                for b in range(sw):  # column c0 + b's phase: (c0 + pw0) is whole phases
                    v = Expr(k, k.b.shuffle_vector(whole, whole, ir.Constant(ir.VectorType(I32, width),
                                                                             list(range(b, span, sw)))))
                    store_bytes(k, plane, (dest(c0 + b),), transform(v))
            covered = range(first, last + span)
            break
    else:
        covered = range(0)
    for col in range(w_in):
        if col not in covered:
            plane[dest(col)] = transform(x[n, c, r, col])


def depthwise_width(k) -> int:
    """Outputs a depthwise step computes: a register of bytes; half that on a unit of 8
    registers (MVE: its int32 sums take 4), a quarter without a vector unit. (RVV's 12 values
    of two registers: a register of bytes, its sums in two values.)"""
    return DOT_BYTES // 4 if k.vector_lanes == 1 else DOT_BYTES if k.vector.registers >= 12 else DOT_BYTES // 2


def depthwise_steps(out_hw, per_row, width) -> tuple[str, int]:
    """("rows", steps) where the output rows one by one take no more vector steps than the
    flat plane, ("flat", steps) otherwise; rows need whole vectors (width <= the row)."""
    oh, ow = out_hw
    flat = -(-oh * per_row // width)
    rows = oh * len(_runs(ow, width)) if ow >= width else None
    return ("rows", rows) if rows is not None and rows <= flat else ("flat", flat)


def _runs(n, width):
    """Starts of `width`-wide runs covering 0 .. n (n >= width), the last one overlapping."""
    starts = list(range(0, n - width + 1, width))
    return starts + ([n - width] if starts[-1] + width < n else [])


def tap_sum(k, load, taps, pairable):
    """The sum of load(t) * w over taps (t, w: an int8 scalar) in int32 lanes. Products summed
    two by two in int16 first where pairable (|x w| <= 128 * 127, two of them within int16):
    one widening per pair (NEON `smull` + `smlal`, then `saddw`). On a unit that multiplies
    by a scalar widening (int8_mac_by_scalar) each load sign-extended to int16 once and
    multiplied-accumulated into int32 (RVV `vsext.vf2` + `vwmacc.vx`: one element width,
    where int8 products widened twice switch it back and forth)."""
    acc = None
    if k.vector.int8_mac_by_scalar:
        for tap, w in taps:
            x = k.cast(load(tap), I16)
            prod = k.cast(x, I32) * k.splat(k.cast(w, I32), width_of(x))
            acc = prod if acc is None else acc + prod
        return acc
    step = 2 if pairable else 1
    for t in range(0, len(taps), step):
        pair = None
        for tap, w in taps[t:t + step]:
            x = k.cast(load(tap), I16)
            prod = x * k.splat(k.cast(w, I16), width_of(x))
            pair = prod if pair is None else pair + prod
        acc = k.cast(pair, I32) if acc is None else acc + k.cast(pair, I32)
    return acc


def copy_bytes(k, src, src_idx, dst, dst_idx, n, transform=None, raw=False, store=None, value=None):
    """n bytes (n static) from src at src_idx on (along its last axis) to dst at dst_idx on, in
    moves of 16, 8 or 4 bytes, the last one overlapping the one before; byte by byte under 4.
    transform(v) applies to each move's bytes; raw: dst is scratch (one plain store, no fused
    epilogue); store(i, v): where the bytes go instead of dst (i: the offset from the first);
    value: a byte written n times instead of src's."""
    def at(idx, i):
        return tuple(idx[:-1]) + (idx[-1] + i,)

    def move(i, width):
        if value is not None:
            v = k.splat(value, width)
        else:
            v = k.vload(src, at(src_idx, i), width) if width > 1 else src[at(src_idx, i)]
        v = transform(v) if transform else v
        if store is not None:
            store(i, v)
        elif raw and width > 1:
            store_bytes(k, dst, at(dst_idx, i), v)
        else:
            dst.store_vector(at(dst_idx, i), v)
    if not in_runs(k, 0, n, (16, 8, 4), move):
        for i in range(n):
            move(i, 1)


def in_runs(k, start, stop, widths, body) -> bool:
    """body(i, width) over runs start .. stop of the widest of `widths` that fits, the whole
    runs in a loop and the last one overlapping the one before (so every body writes whole
    vectors); False, and nothing built, where the span is narrower than every width."""
    n = stop - start
    for width in widths:
        if n >= width:
            whole = start + n // width * width
            with k.loop(whole, start=start, step=width) as i:
                body(i, width)
            if whole < stop:
                body(stop - width, width)
            return True
    return False


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


def _tap_words(k, plane, kernel, out_hw, geo, a, weight_words, finish, store):
    """One output a step, straight to store (only the output's own columns): each kernel
    row's taps as words of 4 input bytes, two dual multiply-accumulates a word against the
    pairs weight_words(i, t) gives (weight_word_pairs)."""
    (kh, kw), (oh, ow), sw, dh = kernel, out_hw, a["strides"][1], a["dilations"][0]
    per_row, pitch = geo.per_row, geo.pitch
    words = -(-kw // 4)
    pairs = [(i, t, weight_words(i, t)) for i in range(kh) for t in range(words)]
    with k.loop(oh) as oy, k.loop(ow) as ox:
        acc = k.lift(0, like=I32)
        for i, t, (even, odd) in pairs:
            word = k.lanes(load_bytes(k, plane, (sw * (oy * per_row + ox) + i * dh * pitch + 4 * t,), 4))[0]
            x_even, x_odd = byte_pairs(k, word)
            acc = dual_mac(k, dual_mac(k, acc, x_even, even), x_odd, odd)
        store(oy, ox, finish(acc))
