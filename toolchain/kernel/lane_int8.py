"""Integer convolution with output pixels in the vector lanes, for a unit that sums four
products per int32 lane against one channel's weights taken whole (VectorUnit.int8_dot_by_lane:
AArch64 `sdot v.4s, v.16b, v.4b[i]`, the weights a lane of a register of four channels';
AVX2 `vpmaddwd` against them broadcast). An int32 lane is one pixel's sum of four products;
a 16-byte register holds four pixels' 4-byte groups of the reduction. At the end the lanes
already hold consecutive pixels of an output plane: no sums across lanes, and the
requantized vector is stored as it is.

The reduction is ordered (channel quad, kernel row, kernel column, channel in the quad): a
group is 4 input channels at one tap. Gathering a block of output rows' windows
(gather_row) is then, for a run of 16 output columns, four loads of input rows and one
interleaving store (NEON `st4`), where windows laid out pixel by pixel take a byte at a time
(tiled_int8.im2col_row). Channels past the last whole quad read the last channel again: their
weights are zero. The workspace holds (groups, pixels, 4) bytes."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from .int8_dot import _intrinsic, first_lanes, load_as, load_bytes, store_bytes
from .llvm import I8, I16, I32, I64, Expr, Tensor
from .tiled_int8 import as_signed, in_runs

GROUP = 4  # reduction bytes in one lane's dot product
LANES = 4  # int32 accumulators (pixels) in a 128-bit register
UNROLL = 2  # groups a loop step (half the loop's counting and branching per dot product)


def channel_quads(channels: int) -> int:
    return -(-channels // GROUP)


def lane_groups(cg: int, kh: int, kw: int) -> int:
    """4-byte groups in a window: channel quads x taps."""
    return channel_quads(cg) * kh * kw


def padded_pixels(pixels: int) -> int:
    """A block's pixels rounded up to whole registers (the lanes past the block are computed
    from bytes never written, and dropped)."""
    return -(-pixels // LANES) * LANES


def pack_lane_weights(w: np.ndarray) -> np.ndarray:
    """(oc, cg, kh, kw) int8 -> (oc quads, groups, 16): for each quad of output channels and
    group (channel quad, kernel row, kernel column), the four channels' 4 bytes one after the
    other (lane i of the register is channel i's group); zero past the real channels."""
    oc, cg, kh, kw = w.shape
    oq, cq = channel_quads(oc), channel_quads(cg)
    wp = np.zeros((oq * GROUP, cq * GROUP, kh, kw), np.int8)
    wp[:oc, :cg] = w
    wp = wp.reshape(oq, GROUP, cq, GROUP, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(wp).reshape(oq, cq * kh * kw, GROUP * GROUP)


def lane_tile(registers: int, pixel_vectors: int, quads: int, broadcast: bool = False) -> tuple[int, int]:
    """(pixel vectors, channel quads) of the register tile: of the tiles whose accumulators
    (4 per vector and quad) and operands fit in the registers, the one with the fewest
    instructions per group over this block (loads plus dot products, the partial tiles at
    the edges counted as they are). Operands: a register per pixel vector and per channel
    quad ("sdot"), or per pixel vector and one channel's weights broadcast at a time, a
    load and two instructions a dot product (broadcast: "pmaddwd")."""
    def cost(tp, tc):
        total = 0
        for p in _tile_sizes(pixel_vectors, tp):
            for c in _tile_sizes(quads, tc):
                total += p + GROUP * c + 2 * LANES * p * c if broadcast else p + c + LANES * p * c
        return total

    fits = [(tp, tc) for tp in range(1, min(8, pixel_vectors) + 1) for tc in range(1, min(8, quads) + 1)
            if LANES * tp * tc + tp + (1 if broadcast else tc) < registers]
    return min(fits, key=lambda t: (cost(*t), -t[0] * t[1]))


def _tile_sizes(n, t):
    return [t] * (n // t) + ([n % t] if n % t else [])


def opaque(k, t):
    """t with its address hidden from LLVM (an empty inline asm returns it): packed weights
    are constants LLVM would otherwise fold into a fully unrolled group loop, hoisting every
    lane broadcast out of the pixel loop and spilling them, where `sdot` reads a lane itself."""
    asm = ir.InlineAsm(ir.FunctionType(t.ptr.type, [t.ptr.type]), "", "=r,0")
    return Tensor(k, k.b.call(asm, [t.ptr]), t.dtype, t.shape, t.strides, t.offset)


def interleave(k, vs: list) -> Expr:
    """Four vectors of n bytes as 4n bytes, lane by lane: v0[0] v1[0] v2[0] v3[0] v0[1] ...
    (stored, LLVM's interleaved-access pass makes it one NEON `st4`)."""
    n = vs[0].v.type.count
    b = k.b

    def join(x, y):
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n))))

    pick = [p + q * n for p in range(n) for q in range(GROUP)]
    return Expr(k, b.shuffle_vector(join(vs[0].v, vs[1].v), join(vs[2].v, vs[3].v),
                                    ir.Constant(ir.VectorType(I32, 4 * n), pick)))


def fill_groups(k, col, g, p0, count, zp):
    """Pixels p0 .. p0 + count of group g hold the zero point (all four bytes)."""
    flat, start = col.flat(), col.index((g, p0, 0))
    in_runs(k, 0, 4 * count, (16, 4), lambda b, width: store_bytes(k, flat, (start + b,), k.splat(zp, width)))


def copy_span(k, rows, col, g, p0, lo, hi, flip_sign):
    """Pixels lo .. hi of group g (at p0 + ox) from rows(q, ox, n): input channel q's bytes of
    output columns ox .. ox + n (n = 1: a scalar). Runs of 16 (or 8) columns are four loads
    and one interleaving store, the last run overlapping the one before; a span narrower than
    8 goes byte by byte."""
    def run(ox, width):
        vs = [as_signed(k, rows(q, ox, width), flip_sign) for q in range(GROUP)]
        store_bytes(k, col, (g, p0 + ox, 0), interleave(k, vs))
    if not in_runs(k, lo, hi, (16, 8), run):
        with k.loop(hi, start=lo) as ox:
            for q in range(GROUP):
                col[g, p0 + ox, q] = as_signed(k, rows(q, ox, 1), flip_sign)


def lane_zero(k) -> Expr:
    """An accumulator of 4 pixels: 4 int32 lanes ("sdot"), 8 ("pmaddwd": two partial sums a
    pixel, added at the end by pixel_totals)."""
    return k.lift(0, like=ir.VectorType(I32, 2 * LANES if k.vector.int8_dot_by_lane == "pmaddwd" else LANES))


def by_lane_dot(k, acc: Expr, x: Expr, w: Expr, lane: int) -> Expr:
    """acc + per pixel p: sum over b < 4 of x[4p + b] * w[4 lane + b] (x, w: 16 int8).
    "sdot": AArch64 `sdot v.4s, v.16b, v.4b[lane]` (w: 4 channels' 16 bytes). "pmaddwd"
    (AVX2): x sign-extended to 16 int16 (`vpmovsxbw`, once per register: LLVM shares it
    between the calls), w the channel's weights already broadcast (broadcast_weights),
    `vpmaddwd` sums products two by two: lanes 2p and 2p + 1 hold pixel p's two halves."""
    b = k.b
    v4, v16 = ir.VectorType(I32, LANES), ir.VectorType(I8, 16)
    if k.vector.int8_dot_by_lane == "sdot":
        fn = _intrinsic(k, "llvm.aarch64.neon.sdot.v4i32.v16i8", v4, [v4, v16, v16])
        words = b.bitcast(w.v, v4)
        dup = b.shuffle_vector(words, words, ir.Constant(v4, [lane] * LANES))
        return Expr(k, b.call(fn, [acc.v, x.v, b.bitcast(dup, v16)]))
    h16, v8 = ir.VectorType(I16, 16), ir.VectorType(I32, 8)
    fn = _intrinsic(k, "llvm.x86.avx2.pmadd.wd", v8, [h16, h16])
    return Expr(k, b.add(acc.v, b.call(fn, [b.sext(x.v, h16), w.v])))


def broadcast_weights(k, weights, idx) -> Expr:
    """One channel's 4 int16 weights (packed as int16: lane_weights) in every pixel's place of
    16 int16 lanes: one `vpbroadcastq` from memory."""
    return k.bitcast(k.splat(load_as(k, weights, idx, I64), 4), ir.VectorType(I16, 16))


def lane_weights(k, w: np.ndarray) -> np.ndarray:
    """The packed weights (pack_lane_weights) as the profile's form reads them: int8 for
    "sdot" (a register of 4 channels, lane-indexed), int16 for "pmaddwd" (each channel's 4
    weights broadcast from memory as they are, no sign extension in the loop)."""
    packed = pack_lane_weights(w)
    return packed.astype(np.int16) if k.vector.int8_dot_by_lane == "pmaddwd" else packed


def pixel_totals(k, acc: ir.Value) -> ir.Value:
    """An accumulator's 4 pixel totals (int32): "pmaddwd"'s two halves a pixel added."""
    if acc.type.count == LANES:
        return acc
    pick = [ir.Constant(ir.VectorType(I32, LANES), list(range(h, 2 * LANES, 2))) for h in (0, 1)]
    return k.b.add(k.b.shuffle_vector(acc, acc, pick[0]), k.b.shuffle_vector(acc, acc, pick[1]))


def lane_dot_blocks(k, pixels: int, channels: int, groups: int, x_at, weights, store):
    """For pixels 0 .. pixels and output channels 0 .. channels, every pixel's dot product
    with every channel over `groups` 4-byte groups: x_at(pv, g) the (tensor, index) of pixel
    vector pv's 16 bytes of group g; weights the packed constants (lane_weights). In register
    tiles (lane_tile); the partial tiles at the ends are built apart, so every channel and
    pixel a tile stores is known to exist. store(c, p0, n, totals): channel c's totals of pixels
    p0 .. p0 + n (an int32 vector of n lanes, n static; n = 1: a scalar)."""
    quads = channel_quads(channels)
    broadcast = k.vector.int8_dot_by_lane == "pmaddwd"
    tp, tc = lane_tile(k.vector.registers, -(-pixels // LANES), quads, broadcast)
    zero = lane_zero(k)
    weights = opaque(k, weights)

    def tile(pv0, np_, oq0, nq, valid, live):
        accs = [[k.var(zero) for _ in range(GROUP * nq)] for _ in range(np_)]
        def group(g):
            xs = [load_bytes(k, *x_at(pv0 + p, g)) for p in range(np_)]
            ws = [None if broadcast else load_bytes(k, weights, (oq0 + c, g, 0)) for c in range(nq)]
            for c in range(nq):
                for lane in range(GROUP):
                    if GROUP * c + lane < live:
                        w = broadcast_weights(k, weights, (oq0 + c, g, GROUP * lane)) if broadcast else ws[c]
                        for p in range(np_):
                            a = accs[p][GROUP * c + lane]
                            a.value = by_lane_dot(k, a.value, xs[p], w, lane)
        pairs = groups - groups % UNROLL
        with k.loop(pairs, step=UNROLL) as g:
            for u in range(UNROLL):
                group(g + u)
        for g in range(pairs, groups):
            group(g)
        for c in range(live):  # a register at a time (joined, an odd count would round up to 16 lanes)
            for p in range(np_):
                count = min(LANES, valid - LANES * p)
                totals = first_lanes(k, Expr(k, pixel_totals(k, accs[p][c].value.v)), count)
                store(GROUP * oq0 + c, LANES * (pv0 + p), count, totals)

    def pixel_tiles(oq0, nq, live):
        step = LANES * tp
        full = pixels // step
        with k.loop(full * tp, step=tp) as pv0:
            tile(pv0, tp, oq0, nq, step, live)
        rest = pixels - full * step
        if rest:
            tile(full * tp, -(-rest // LANES), oq0, nq, rest, live)

    full = channels // (GROUP * tc) * tc
    with k.loop(full, step=tc) as oq0:
        pixel_tiles(oq0, tc, GROUP * tc)
    if full < quads:
        pixel_tiles(full, quads - full, channels - GROUP * full)
