"""Neural-network ops with a reduction inside: convolution, GEMM/MatMul, softmax.

GEMM/MatMul, 1x1 and 2-D convolutions lower to register tiles of explicit short vectors
(kernel.py), shaped from the target's vector unit (lanes, registers, FMA by lane): the
accumulators stay in registers across the whole reduction. Other shapes (N-d convolution)
take the plain loop nest.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..codegen import mathfns as m
from ..errors import CompileError
from ..ir import TensorType, Value
from . import Op, in_type, norm_axis, register


def _err(node, msg):
    return CompileError(msg, node=node.name, op=node.op)


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
        raise _err(node, f"unknown auto_pad {mode}")
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
    node.attrs["pads"] = resolve_auto_pad(node, spatial_in, kernel, node.attrs["strides"], node.attrs["dilations"])


def window_in_bounds(k, coords, sizes):
    """Conjunction of 0 <= c < size over the coordinates that are runtime values."""
    cond = True
    for c, size in zip(coords, sizes):
        if isinstance(c, int):
            if not 0 <= c < size:
                return False
            continue
        inside = (c >= 0) & (c < size)
        cond = inside if cond is True else cond & inside
    return cond


@register("Conv")
class Conv(Op):
    fusable_epilogue = True
    own_inputs = 3

    def canonicalize(self, node, opset):
        x, w = in_type(node, 0), in_type(node, 1)
        if x.dtype != "float32":
            raise _err(node, f"only float32 convolution is supported, got {x.dtype}")
        if len(x.shape) < 3:
            raise _err(node, f"input must be N x C x spatial..., got rank {len(x.shape)}")
        node.attrs.setdefault("group", 1)
        window_attrs(node, x.shape[2:], w.shape[2:])

    def infer(self, node):
        x, w = in_type(node, 0), in_type(node, 1)
        a = node.attrs
        g = a["group"]
        if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
            raise _err(node, f"channels {x.shape[1]} do not match weights {w.shape} with group={g}")
        rank = len(x.shape) - 2
        out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], a["strides"][i], a["dilations"][i],
                             a["pads"][i], a["pads"][rank + i]) for i in range(rank)]
        if min(out) <= 0:
            raise _err(node, f"output spatial size {out} is empty")
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
        return [y.astype(np.float32)]

    def macs(self, node):
        out = node.outputs[0].type
        w = in_type(node, 1)
        return out.size * int(np.prod(w.shape[1:]))

    def lower(self, k, node, ins, outs):
        x, w, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 else None
        a = node.attrs
        rank = x.rank - 2
        if _conv_is_pointwise(node, w):
            return _lower_pointwise_conv(k, x, w, bias, y, node.inputs[1])
        if rank == 2 and _channel_vectors_suit(k.vector, a, w.shape, y.shape, node.inputs[1]):
            return _lower_channel_vector_conv2d(k, a, x, bias, y, node.inputs[1].data)
        if rank == 2:
            return _lower_tiled_conv2d(k, a, x, w, bias, y, node.inputs[1])
        with k.loops(y.shape) as (n, oc, *o):
            _conv_point(k, a, x, w, bias, y, n, oc, o)


def _conv_point(k, a, x, w, bias, y, n, oc, o):
    """One output element with every bounds check: the general N-d form, and the border
    columns of the tiled 2-D form."""
    rank = x.rank - 2
    g = a["group"]
    cg, ocg = w.shape[1], y.shape[1] // g
    acc = k.var(bias[oc] if bias is not None else 0.0)
    ci0 = (oc // ocg) * cg if g > 1 else 0
    with k.loop(cg) as ci:
        with k.loops(w.shape[2:]) as kk:
            coords = [o[i] * a["strides"][i] - a["pads"][i] + kk[i] * a["dilations"][i] for i in range(rank)]
            with k.if_(window_in_bounds(k, coords, x.shape[2:])):
                acc += x[(n, ci0 + ci, *coords)] * w[(oc, ci, *kk)]
    y[(n, oc, *o)] = acc.value


def _interior_columns(a, in_w, kw, out_w):
    """[lo, hi): output columns whose whole kernel window lies inside the input row, so
    their loads need no checks (padding only touches the columns outside)."""
    s, d, p = a["strides"][1], a["dilations"][1], a["pads"][1]
    lo = -(-p // s)
    hi = (in_w - 1 + p - (kw - 1) * d) // s + 1
    lo, hi = max(0, min(lo, out_w)), max(0, min(hi, out_w))
    return (lo, hi) if hi > lo else (0, 0)


def _column_taps(x, a, kw_, ow_):
    """x seen from each kernel column kw: element [n, c, ih, ow] is the input that output
    column ow reads there (stride and kernel-column offset folded into the view)."""
    xt = x.strides[3]
    sw, dw, pw = a["strides"][1], a["dilations"][1], a["pads"][1]
    return [x.view(x.shape[:3] + (ow_,), x.strides[:3] + (xt * sw,), x.offset + (kw * dw - pw) * xt)
            for kw in range(kw_)]


def _column_tiles(a, w_in, kw_, ow_, step):
    """How a row of ow_ output columns splits into tiles `step` wide: (left, right) bounds
    a loop of interior tiles (whole window inside the row: no checks), and `fixed` lists
    (start, width) of the tiles at fixed positions over the left border (rounded up to
    whole tiles) and over what is left on the right."""
    lo, hi = _interior_columns(a, w_in, kw_, ow_)
    left = min(ow_, -(-lo // step) * step)
    right = left + max(0, (hi - left) // step) * step
    fixed = [(s, min(step, left - s)) for s in range(0, left, step)]
    fixed += [(s, min(step, ow_ - s)) for s in range(right, ow_, step)]
    return left, right, fixed


def _lower_tiled_conv2d(k, a, x, w, bias, y, w_value):
    """2-D convolution (any groups, strides, dilations, pads) in register tiles: MR output
    channels x OR output rows x NV vectors of output columns, accumulating over (input
    channel, kernel row, kernel column). An input row segment is loaded once per kernel
    column and feeds the MR channels and every output row of the tile whose window holds
    that row; each weight is broadcast once per use. A kernel row in the padding is
    skipped as a whole. Tiles of several channels (MR, sized by register_tile) serve the
    ordinary convolution; a depthwise one (one input channel per output channel) has no
    channels to share its loads with, so it shares them across output rows instead (OR,
    sized by depthwise_tile). Interior columns (whole window inside the row) run in a loop
    of full tiles; the border columns are tiles at fixed positions, where the lanes whose
    tap falls in the padding are known at compile time: they read nothing and add nothing.
    No per-element checks. Each accumulator sums its taps in (channel, kh, kw) order."""
    n_, oc_, oh_, ow_ = y.shape
    h_, w_in = x.shape[2:]
    g = a["group"]
    cg, ocg = w.shape[1], oc_ // g
    kh_, kw_ = w.shape[2:]
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    vec, lanes = k.vector, k.vector_lanes
    by_lane = vec.fma_by_lane and lanes > 1 and w_value.is_const
    wp = wdw = None
    if cg == 1 and ocg == 1:
        out_rows, nv = depthwise_tile(vec, kh_, kw_, sh, dh, oh_, len(vector_chunks(ow_, lanes)))
        mr = 1
        if by_lane:
            # one channel's taps in ceil(taps/lanes) vectors, held across the tile
            wdw = k.constant(np.ascontiguousarray(w_value.data.reshape(-1)))
    else:
        if by_lane and ocg % lanes == 0:
            # lanes output channels' weight for one tap in one vector; each FMA takes its lane
            kern = w_value.data.reshape(oc_ // lanes, lanes, cg, kh_, kw_).transpose(0, 2, 3, 4, 1)
            wp = k.constant(np.ascontiguousarray(kern))
        best_rows, nv = register_tile(vec, "packed" if wp is not None else "splat")
        mr = best_rows if g == 1 else max(m for m in range(1, best_rows + 1) if ocg % m == 0)
        mr, out_rows = min(mr, oc_), 1
    nr = nv * lanes
    taps = _column_taps(x, a, kw_, ow_)

    def lanes_inside(ow0, wd, kw):
        """The lanes whose input column lies in the row (all of them in an interior tile),
        and with stride 1 the lane offsets that may be read (the whole row)."""
        if not isinstance(ow0, int):
            return range(wd), None
        valid = [ln for ln in range(wd) if 0 <= (ow0 + ln) * sw - pw + kw * dw < w_in]
        first = pw - kw * dw - ow0  # lane offset of input column 0
        return valid, range(first, first + w_in) if sw == 1 else None

    def multipliers(oc0, rows, ci, orows):
        """weight(r, kh, kw, width) for this tile and input channel. Taps used by several
        output rows are loaded here, ahead of every row's use (a value made inside one
        row's bounds check cannot serve the next)."""
        if wdw is not None:
            n_taps = kh_ * kw_  # the last vector reads only the channel's own taps
            held = [k.vload(wdw, (oc0 * n_taps + q,), lanes, range(min(lanes, n_taps - q)))
                    for q in range(0, n_taps, lanes)]
            return lambda r, kh, kw, wd: k.lane_splat(held[(kh * kw_ + kw) // lanes], (kh * kw_ + kw) % lanes, wd)
        if orows > 1:
            held = {(r, kh, kw): w[oc0 + r, ci, kh, kw]
                    for r in range(rows) for kh in range(kh_) for kw in range(kw_)}
            return lambda r, kh, kw, wd: k.splat(held[r, kh, kw], wd)
        return None

    def tile(n, oc0, rows, oh0, orows, ow0, widths):
        ci0 = (oc0 // ocg) * cg if g > 1 else 0
        offs = chunk_offsets(widths)
        acc = [[[k.var(k.splat(bias[oc0 + r] if bias is not None else 0.0, wd)) for wd in widths]
                for r in range(rows)] for _ in range(orows)]
        with k.in_order(), k.loop(cg) as ci:
            weight = multipliers(oc0, rows, ci, orows)
            for ih_rel in range((orows - 1) * sh + (kh_ - 1) * dh + 1):
                # (output row, kernel row) pairs that read input row ih_rel of the tile
                users = [(o, (ih_rel - o * sh) // dh) for o in range(orows)
                         if 0 <= ih_rel - o * sh <= (kh_ - 1) * dh and (ih_rel - o * sh) % dh == 0]
                if not users:
                    continue
                ih = oh0 * sh - ph + ih_rel
                with k.if_(window_in_bounds(k, [ih], [h_])):
                    for kw in range(kw_):
                        xs = []
                        for off, wd in zip(offs, widths):
                            valid, readable = lanes_inside(ow0 + off, wd, kw)
                            xs.append(k.vload(taps[kw], (n, ci0 + ci, ih, ow0 + off), wd, valid, readable)
                                      if valid else None)
                        if all(v is None for v in xs):
                            continue
                        for o, kh in users:
                            tap_weight = weight or _one_tap(k, w, wp, oc0, rows, ci, kh, kw)
                            for r in range(rows):
                                for c, xv in enumerate(xs):
                                    if xv is not None:
                                        acc[o][r][c] += tap_weight(r, kh, kw, widths[c]) * xv
        for o in range(orows):
            store_tile(acc[o], offs, lambda r, col, v: y.store_vector((n, oc0 + r, oh0 + o, ow0 + col), v))

    left, right, fixed = _column_tiles(a, w_in, kw_, ow_, nr)

    def row_of_tiles(n, oc0, rows, oh0, orows):
        if right > left:
            with k.loop(right, start=left, step=nr) as ow0:
                tile(n, oc0, rows, oh0, orows, ow0, [lanes] * nv)
        for start, width in fixed:
            tile(n, oc0, rows, oh0, orows, start, vector_chunks(width, lanes))

    def rows_of_tiles(n, oc0, rows):
        full = oh_ - oh_ % out_rows
        with k.loop(full, step=out_rows) as oh0:
            row_of_tiles(n, oc0, rows, oh0, out_rows)
        if full < oh_:
            row_of_tiles(n, oc0, rows, full, oh_ - full)

    full = oc_ - oc_ % mr
    with k.loop(n_) as n:
        with k.loop(full, step=mr) as oc0:
            rows_of_tiles(n, oc0, mr)
        if full < oc_:
            rows_of_tiles(n, full, oc_ - full)


def _channel_vectors_suit(vec, a, w_shape, y_shape, w_value) -> bool:
    """Whether a 2-D convolution is better tiled with its vectors along output channels
    (_lower_channel_vector_conv2d) than along output columns (_lower_tiled_conv2d).
    Vectors along columns lose lanes where an output row is narrow (a row of 5 in 8
    lanes is a 4-lane vector and a scalar) or shorter than the tile (an 8-wide row fills
    one of x86's two tile vectors), and with a stride each input vector is gathered from
    a span and shuffled. Vectors along channels read the packed weights whole at any row
    width and stride, and the input is one broadcast scalar per pixel, shared by the
    tile's channel vectors (so there must be two or more). So: the tile with fewer
    instructions per MAC by the two cost models, channels always under a stride. Where
    the FMA takes its multiplier by lane, the column tile's weights cost 1/lanes loads,
    which pays for both (cortex-a76, KWS's 25x5 first layer: 0.39 insns/MAC in columns,
    0.43 in channels); without it (x86: 0.83 -> 0.29) the channel tile wins. Its store
    transposes the tile (channels lie a plane apart), so each output needs enough taps
    to hide that."""
    lanes = vec.lanes
    _, oc_, _, ow_ = y_shape
    taps = int(np.prod(w_shape[1:]))
    if (a["group"] != 1 or lanes == 1 or vec.fma_by_lane or not w_value.is_const or oc_ % lanes
            or oc_ < 2 * lanes or taps < 4 * lanes):
        return False
    _, _, channel_cost = channel_tile(vec, oc_ // lanes, ow_)
    return a["strides"][1] > 1 or channel_cost < matmul_tile_cost(vec, oc_, ow_)


def matmul_tile_cost(vec, m_, n, left="splat"):
    """Instructions per MAC of tiled_matmul's tiles (register_tile's MR rows x NV vectors
    of columns) over an m_ x n output, per step along the reduction: the left operand's
    loads, NV loads of the right one, MR x NV FMAs. Columns not a multiple of the lanes,
    or fewer than a tile, leave lanes or vectors idle. The convolution's column tiles
    have the same shape (output channels x output columns, per tap)."""
    mr, nv = register_tile(vec, left, max_rows=min(8, m_))
    chunks = vector_chunks(n, vec.lanes)
    insns = macs = 0
    for rows in _blocks(m_, mr):
        left_loads, _ = _left_operand(vec, left, rows)
        for c0 in range(0, len(chunks), nv):
            tile = chunks[c0:c0 + nv]
            insns += left_loads + len(tile) + rows * len(tile)
            macs += rows * sum(tile)
    return insns / macs


def channel_tile(vec, n_vectors, width, max_pixels=8, max_vectors=4):
    """(pixels, vectors, instructions per MAC) of a channel-vector convolution tile: the
    fewest instructions per FMA over one output row and all channel vectors (the last
    tiles of each may be smaller), fitting the register file with two registers to
    spare. Per tap a tile loads `vectors` weight vectors and broadcasts one input value
    per pixel. A row's kernel columns are unrolled, and at stride 1 pixel p's input at
    column kw+1 is pixel p+1's at kw: LLVM shares that broadcast and keeps it live across
    the row, so where the broadcast takes a vector register it takes one per pixel.
    Counting one in all, ResNet-8's 64-channel 3x3 chose 6 pixels x 2 vectors on x86 and
    spilled 94 times (66 GFLOP/s against 115 at 4 x 2); 3 x 3, leaving one register,
    still spilled 8 times (94 GFLOP/s). With a scalar FMA operand (RVV) the inputs stay
    in scalar registers."""
    splat_regs = 0 if vec.fma_scalar_operand else 1
    best = None
    for nv in range(1, min(max_vectors, n_vectors) + 1):
        for px in range(1, min(max_pixels, width) + 1):
            if px * nv + nv + px * splat_regs > vec.registers - 2:
                continue
            insns = fmas = 0
            for v in _blocks(n_vectors, nv):
                for p in _blocks(width, px):
                    insns += p + v + p * v
                    fmas += p * v
            key = (insns / fmas, -px * nv)
            if best is None or key < best[0]:
                best = (key, px, nv)
    (per_fma, _), px, nv = best
    return px, nv, per_fma / vec.lanes


def _blocks(n, size):
    """The sizes of consecutive blocks of at most `size` covering n."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def _lower_channel_vector_conv2d(k, a, x, bias, y, w_data):
    """2-D convolution (group 1) in register tiles of PX output pixels (consecutive columns
    of one output row) x NV vectors of output channels. The weights are packed at compile
    time as [in channel][kh][kw][out channel], so a tap's weights for a tile are NV whole
    vector loads; each input value is broadcast once and feeds the NV vectors. Neither the
    row width nor the stride shapes a vector: this is the tile for narrow output rows
    (keyword spotting's 25x5 maps) and strided convolutions. Kernel rows in the padding are
    skipped as a whole; in the border tiles, fixed at compile time, a pixel whose tap falls
    in the padding reads nothing. Each accumulator sums its taps in (channel, kh, kw)
    order. Channels lie a plane apart in NCHW, so the tile is transposed at its store."""
    n_, oc_, oh_, ow_ = y.shape
    h_, w_in = x.shape[2:]
    _, cg, kh_, kw_ = w_data.shape
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    lanes = k.vector_lanes
    wt = k.constant(np.ascontiguousarray(w_data.transpose(1, 2, 3, 0)))
    n_vectors = oc_ // lanes
    px, nv, _ = channel_tile(k.vector, n_vectors, ow_)
    taps = _column_taps(x, a, kw_, ow_)

    def inside(ow, kw):
        return not isinstance(ow, int) or 0 <= ow * sw - pw + kw * dw < w_in

    def tile(n, oc0, vectors, oh, ow0, pixels):
        offs = [v * lanes for v in range(vectors)]
        acc = [[k.var(k.vload(bias, (oc0 + off,), lanes) if bias is not None else k.splat(0.0, lanes))
                for off in offs] for _ in range(pixels)]
        with k.in_order(), k.loop(cg) as ci, k.loop(kh_) as kh:
            ih = oh * sh - ph + kh * dh
            with k.if_(window_in_bounds(k, [ih], [h_])):
                for kw in range(kw_):
                    used = [p for p in range(pixels) if inside(ow0 + p, kw)]
                    if not used:
                        continue
                    ws = [k.vload(wt, (ci, kh, kw, oc0 + off), lanes) for off in offs]
                    for p in used:
                        xv = k.splat(taps[kw][n, ci, ih, ow0 + p], lanes)
                        for c, wv in enumerate(ws):
                            acc[p][c] += xv * wv
        # transposed: one vector per channel across the tile's pixels (contiguous in its
        # row), so a fused epilogue (a residual Add's operand) runs on vectors too
        for c, off in enumerate(offs):
            by_pixel = [k.lanes(acc[p][c].value) for p in range(pixels)]
            for ln in range(lanes):
                y.store_vector((n, oc0 + off + ln, oh, ow0), k.pack([by_pixel[p][ln] for p in range(pixels)]))

    left, right, fixed = _column_tiles(a, w_in, kw_, ow_, px)

    def channel_block(n, oc0, vectors):
        with k.loop(oh_) as oh:
            if right > left:
                with k.loop(right, start=left, step=px) as ow0:
                    tile(n, oc0, vectors, oh, ow0, px)
            for start, pixels in fixed:
                tile(n, oc0, vectors, oh, start, pixels)

    full = (n_vectors - n_vectors % nv) * lanes
    with k.loop(n_) as n:
        with k.loop(full, step=nv * lanes) as oc0:
            channel_block(n, oc0, nv)
        if full < oc_:
            channel_block(n, full, n_vectors % nv)


def _one_tap(k, w, wp, oc0, rows, ci, kh, kw):
    """weight(r, kh, kw, width) for one tap, loaded where it is used: the `rows` channels'
    packed weight vectors (FMA by lane), or one broadcast per channel."""
    if wp is not None:
        vecs = [k.vload(wp, (oc0 // k.vector_lanes + q, ci, kh, kw, 0), k.vector_lanes)
                for q in range(rows // k.vector_lanes)]
        return lambda r, kh_, kw_, wd: k.lane_splat(vecs[r // k.vector_lanes], r % k.vector_lanes, wd)
    splats = {}

    def weight(r, kh_, kw_, wd):
        if (r, wd) not in splats:
            splats[r, wd] = k.splat(w[oc0 + r, ci, kh, kw], wd)
        return splats[r, wd]
    return weight


def depthwise_tile(vec, kh, kw, sh, dh, out_h, max_vectors, max_rows=6):
    """(output rows, vectors) of a depthwise tile (one channel) with the fewest
    instructions per FMA that fits the register file with one register to spare. With
    several output rows an input row segment, loaded once, feeds each output row whose
    window holds it, and the kh*kw weights stay in registers across the tile (taps/lanes
    vectors with FMA by lane; none where the FMA takes a scalar register). Where an FMA
    reads memory, a load used once costs nothing: one output row then loads nothing.
    A depthwise accumulator gets only kh*kw FMAs, so its start value and store count, and
    so does each input row's bounds check."""
    taps = kh * kw
    if vec.fma_by_lane and vec.lanes > 1:
        w_loads = w_regs = -(-taps // vec.lanes)
    else:
        w_loads, w_regs = taps, 0 if vec.fma_scalar_operand else taps
    best = None
    for nv in range(1, max(1, min(max_vectors, 4)) + 1):
        for rows in range(1, min(max_rows, out_h) + 1):
            rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
            fmas = rows * nv * taps
            loads = 0 if rows == 1 and vec.fma_memory_operand else rows_in * kw * nv
            if rows * nv + (kw * nv + w_regs if rows > 1 else nv + 1) > vec.registers - 1:
                continue
            cost = fmas + loads + w_loads + 2 * rows * nv + 2 * rows_in
            key = (cost / fmas, -rows * nv)
            if best is None or key < best[0]:
                best = (key, rows, nv)
    return best[1], best[2]


def _conv_is_pointwise(node, w):
    a = node.attrs
    return (a["group"] == 1 and all(d == 1 for d in w.shape[2:]) and all(st == 1 for st in a["strides"])
            and not any(a["pads"]))


def _lower_pointwise_conv(k, x, w, bias, y, w_value):
    """1x1 convolution, stride 1, no padding: per image, a matrix product
    W (out_ch x in_ch) @ X (in_ch x pixels), pixels contiguous: the GEMM register tiles."""
    n_, c_ = x.shape[:2]
    pixels = x.size // (n_ * c_)
    oc_ = y.shape[1]
    x3, y3, w2 = x.reshape((n_, c_, pixels)), y.reshape((n_, oc_, pixels)), w.reshape((oc_, c_))
    w_data = w_value.data.reshape(oc_, c_) if w_value.is_const else None
    if w_data is not None and _pointwise_by_channels(k.vector, oc_, pixels, c_):
        return _lower_pointwise_by_channels(k, x3, w2, bias, y3, w_data)
    with k.loop(n_) as n:
        tiled_matmul(k, oc_, pixels, c_, lambda o, ci: (w2, (o, ci)), lambda ci, p: (x3, (n, ci, p)),
                     lambda o, p, w: k.splat(bias[o] if bias is not None else 0.0, w),
                     lambda o, p, v: y3.store_vector((n, o, p), v),
                     a_const=w_data)


def _pointwise_by_channels(vec, oc_, pixels, c_):
    """Whether a pointwise convolution's vectors should run along output channels rather
    than pixels: where a plane has few pixels (MobileNet's last 3x3 maps: 9 pixels are two
    4-lane vectors and a scalar per row of the tile), by the two tile cost models. Along
    pixels the weights may come by lane (NEON); along channels every input value is a
    broadcast, since an input channel's pixels lie a plane apart, and each output is
    stored on its own: counted as 3 instructions (RVV takes a lane out by a slide and a
    move); at 1, KWS's 125-pixel planes went along channels on rv64gcv and took 21% more
    instructions than along pixels."""
    along_pixels = matmul_tile_cost(vec, oc_, pixels, "rows" if a_by_lane(vec, c_) else "splat") + 1 / (vec.lanes * c_)
    along_channels = matmul_tile_cost(vec, pixels, oc_) + 3 / c_  # lane out, address, store
    return along_channels < along_pixels


def _lower_pointwise_by_channels(k, x3, w2, bias, y3, w_data):
    """The pointwise product transposed: Y^T (pixels x out_ch) = X^T @ W^T, vectors along
    output channels, W^T packed into tiled_matmul's panels. Each output vector holds
    channels a plane apart, so it is stored lane by lane (an epilogue runs per lane)."""
    n_, c_, pixels = x3.shape
    oc_ = y3.shape[1]
    xt = x3.view((n_, pixels, c_), (x3.strides[0], 1, pixels))
    yt = y3.view((n_, pixels, oc_), (y3.strides[0], 1, pixels))
    wt = w2.view((c_, oc_), (1, c_))
    with k.loop(n_) as n:
        tiled_matmul(k, pixels, oc_, c_, lambda p, ci: (xt, (n, p, ci)), lambda ci, o: (wt, (ci, o)),
                     lambda p, o, wd: k.vload(bias, (o,), wd) if bias is not None else k.splat(0.0, wd),
                     lambda p, o, v: yt.store_vector((n, p, o), v), b_const=w_data.T)


# -- matrix products --------------------------------------------------------------------
def vector_chunks(n, lanes):
    """Widths that cover n columns with the fewest vectors: full registers, then halves,
    quarters... down to a scalar (no masked lanes at an edge)."""
    out, w = [], lanes
    while n:
        while w > n:
            w //= 2
        out.append(w)
        n -= w
    return out


def chunk_offsets(widths):
    """Where each chunk of a tile row starts."""
    return list(itertools.accumulate(widths[:-1], initial=0))


def store_tile(acc, offs, put_vector):
    """put_vector(row, column, vector) for every chunk of the accumulators acc[row][chunk]
    (a row's chunks lie along memory)."""
    for r, row in enumerate(acc):
        for off, var in zip(offs, row):
            put_vector(r, off, var.value)


def register_tile(vec, left="splat", max_rows=8, max_vectors=4):
    """(rows, vectors) of the accumulator tile that needs the fewest instructions per FMA
    and fits the register file with one register to spare. Per step: the left operand's
    loads, `vectors` loads of the right one, rows*vectors FMAs. How the left operand comes
    (`left`): "splat", one broadcast load per row (one register); "rows", with FMA by lane,
    one vector load brings a row's next `lanes` steps (a register per row); "packed", with
    FMA by lane, one vector load brings `lanes` rows' weights, packed so at compile time."""
    best = None
    for nv in range(1, max_vectors + 1):
        for mr in (1, 2, 3, 4, 6, 8):
            if mr > max_rows or (left == "packed" and mr % vec.lanes):
                continue
            loads, regs = _left_operand(vec, left, mr)
            if mr * nv + nv + regs > vec.registers - 1:
                continue
            key = ((loads + nv + mr * nv) / (mr * nv), -mr * nv)
            if best is None or key < best[0]:
                best = (key, mr, nv)
    return best[1], best[2]


def _row_distance(at):
    """Elements from row kk=0 to row kk=1 of an operand given as at(kk, j) -> (tensor,
    index); index entries that are the same loop variable in both cancel."""
    t, i0 = at(0, 0)
    _, i1 = at(1, 0)
    return sum((b - a) * s for a, b, s in zip(i0, i1, t.strides) if a is not b)


def _left_operand(vec, left, rows):
    """(loads per step, registers) of `rows` rows of the left operand, as register_tile
    describes each way it comes."""
    return {"splat": (rows, 1), "rows": (rows / vec.lanes, rows),
            "packed": (rows / vec.lanes, rows // vec.lanes)}[left]


def a_by_lane(vec, kdim, a_contiguous=True) -> bool:
    """Whether tiled_matmul takes a's values by lane: FMA by lane, and a row of a runs
    along kk in memory for at least one vector."""
    return vec.fma_by_lane and vec.lanes > 1 and a_contiguous and kdim >= vec.lanes


def tiled_matmul(k, m_, n, kdim, a_at, b_at, init, store, b_const=None, a_const=None):
    """y[i, j:] = store(i, j, init[i, j:] + sum_kk a[i, kk] * b[kk, j:]) in register tiles of
    MR rows x NV vectors of columns (sized from the profile by register_tile): the MR*NV
    accumulators stay in registers across the whole kk loop, each b row segment is loaded
    once per kk and reused by the MR rows, each a value once and reused by all columns.
    a_at(i, kk) / b_at(kk, j) give (tensor, index): b's last axis runs along j (vector
    loads), a's along kk; init(i, j, w) gives the w start values from (i, j) as a vector,
    and store(i, j, v) takes a vector of results from (i, j) on (Tensor.store_vector, so a
    fused epilogue may run on whole vectors).
    Where the target has FMA by lane and a is contiguous along kk, a
    row's next `lanes` values come in one vector load and each FMA takes its lane.
    b_const: b's values when known at compile time (weights); they are then packed into
    panels of one tile's columns, kk-major, so a tile streams its b operand from one
    contiguous run (paired and post-incremented loads, one cache line after the next)
    instead of one row of b per kk.
    a_const: a's values when known at compile time. Where a row of b is not a whole number
    of vectors long (KWS's 125-pixel planes), the rows kk..kk+3 that one by-lane vector of
    a serves lie at offsets no load instruction can encode (NEON's scaled offsets are
    multiples of 16 bytes), so each needs an address of its own: 8 of 103 instructions of
    KWS's pointwise loop on cortex-a76. Then a is packed so that one vector holds kk,
    kk+lanes, kk+2 lanes, ... ("spread"): those rows lie lanes rows apart, a multiple of
    the vector size, and one address serves the step.
    Reductions run in order (no reassociation), except where spread: kk in that order.
    Every y element is stored once (epilogues)."""
    vec = k.vector
    t_a, _ = a_at(0, 0)
    lanes = vec.lanes
    by_lane = a_by_lane(vec, kdim, t_a.strides[-1] == 1)
    spread = (by_lane and a_const is not None and b_const is None and kdim % (lanes * lanes) == 0
              and _row_distance(b_at) % lanes != 0)
    if spread:
        # a_spread[i, j, blk * lanes + u] = a[i, blk * lanes^2 + j + lanes * u]
        a_spread = k.constant(np.ascontiguousarray(
            np.asarray(a_const, np.float32).reshape(m_, -1, lanes, lanes).transpose(0, 3, 1, 2).reshape(m_, lanes, -1)))
    mr, nv = register_tile(vec, "rows" if by_lane else "splat", max_rows=min(8, m_))
    nr = nv * lanes
    full = n - n % nr
    if b_const is not None:
        b_const = np.asarray(b_const, np.float32).reshape(kdim, n)
        panels = k.constant(np.ascontiguousarray(b_const[:, :full].reshape(kdim, -1, nr).transpose(1, 0, 2))) \
            if full else None
        tail = k.constant(np.ascontiguousarray(b_const[:, full:])) if n % nr else None

    def b_row(j0, widths, offs):
        """b_row(kk) -> the tile's b values at kk, one vector per chunk."""
        if b_const is None:
            return lambda kk: [k.vload(*b_at(kk, j0 + off), w) for off, w in zip(offs, widths)]
        if isinstance(j0, int) and j0 == full:
            return lambda kk: [k.vload(tail, (kk, off), w) for off, w in zip(offs, widths)]
        return lambda kk: [k.vload(panels, (j0 // nr, kk, off), w) for off, w in zip(offs, widths)]

    def step(acc, rows, widths, bs, a_vals):
        for r in range(rows):
            for c, w in enumerate(widths):
                acc[r][c] += a_vals(r, w) * bs[c]

    def tile(i0, rows, j0, widths):
        offs = chunk_offsets(widths)
        b_at_kk = b_row(j0, widths, offs)
        acc = [[k.var(init(i0 + r, j0 + off, w)) for off, w in zip(offs, widths)] for r in range(rows)]
        with k.in_order():
            main = kdim - kdim % lanes if by_lane else 0
            if spread:
                with k.loop(lanes) as j, k.loop(kdim // (lanes * lanes)) as blk:
                    rows_v = [k.vload(a_spread, (i0 + r, j, blk * lanes), lanes) for r in range(rows)]
                    for u in range(lanes):
                        step(acc, rows, widths, b_at_kk(blk * (lanes * lanes) + j + lanes * u),
                             lambda r, w: k.lane_splat(rows_v[r], u, w))
            elif main:
                with k.loop(main, step=lanes) as kk:
                    rows_v = [k.vload(*a_at(i0 + r, kk), lanes) for r in range(rows)]
                    for u in range(lanes):
                        step(acc, rows, widths, b_at_kk(kk + u), lambda r, w: k.lane_splat(rows_v[r], u, w))
            if kdim > main:
                with k.loop(kdim, start=main) as kk:
                    scal = [k.vload(*a_at(i0 + r, kk), 1) for r in range(rows)]
                    step(acc, rows, widths, b_at_kk(kk), lambda r, w: k.splat(scal[r], w))
        store_tile(acc, offs, lambda r, col, v: store(i0 + r, j0 + col, v))

    def columns(i0, rows):
        if full:
            with k.loop(full, step=nr) as j0:
                tile(i0, rows, j0, [vec.lanes] * nv)
        if n % nr:
            tile(i0, rows, full, vector_chunks(n % nr, vec.lanes))

    full_rows = m_ - m_ % mr
    if full_rows:
        with k.loop(full_rows, step=mr) as i0:
            columns(i0, mr)
    if m_ % mr:
        columns(full_rows, m_ % mr)


@register("Gemm")
class Gemm(Op):
    fusable_epilogue = True
    own_inputs = 3

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
            raise _err(node, f"Gemm needs 2-D operands, got {a} and {b}")
        m_, ka = a[::-1] if node.attrs["transA"] else a
        kb, n = b[::-1] if node.attrs["transB"] else b
        if ka != kb:
            raise _err(node, f"inner dimensions differ: {a} x {b}")
        return m_, n, ka

    def infer(self, node):
        m_, n, _ = self._mnk(node)
        return [TensorType(in_type(node, 0).dtype, (m_, n))]

    def reference(self, node, a, b, c=None):
        at = node.attrs
        a = a.T if at["transA"] else a
        b = b.T if at["transB"] else b
        y = at["alpha"] * (a.astype(np.float64) @ b)
        if c is not None:
            y = y + at["beta"] * c
        return [y.astype(np.float32)]

    def macs(self, node):
        m_, n, kk = self._mnk(node)
        return m_ * n * kk

    def lower(self, k, node, ins, outs):
        at = node.attrs
        a = ins[0].transpose((1, 0)) if at["transA"] else ins[0]
        b = ins[1].transpose((1, 0)) if at["transB"] else ins[1]
        c = ins[2].broadcast_to(outs[0].shape) if len(ins) > 2 and ins[2] is not None else None
        y = outs[0]
        alpha, beta = at["alpha"], at["beta"]

        def init(i, j, w):
            if c is None or alpha != 1.0:
                return k.splat(0.0, w)
            start = k.vload(c, (i, j), w)
            return start if beta == 1.0 else start * beta

        def store(i, j, v):
            if alpha == 1.0:  # c, if any, was the start value
                return y.store_vector((i, j), v)
            for ln, x in enumerate(k.lanes(v)):
                x = x * alpha
                y[i, j + ln] = x + c[i, j + ln] * beta if c is not None else x

        b_value = node.inputs[1]
        b_const = (b_value.data.T if at["transB"] else b_value.data) if b_value.is_const else None
        tiled_matmul(k, y.shape[0], y.shape[1], a.shape[1], lambda i, kk: (a, (i, kk)), lambda kk, j: (b, (kk, j)),
                     init, store, b_const)


def matmul_shapes(node, a, b):
    """numpy.matmul's shape rule, including 1-D promotion and batch broadcasting."""
    if not a or not b:
        raise _err(node, "MatMul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _err(node, f"inner dimensions differ: {a} x {b}")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise _err(node, f"batch dimensions of {a} and {b} do not broadcast") from None
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

    def infer(self, node):
        return [TensorType(in_type(node, 0).dtype,
                           matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)[3])]

    def reference(self, node, a, b):
        return [np.matmul(a.astype(np.float64), b).astype(a.dtype)]

    def macs(self, node):
        a2, b2, batch, _ = matmul_shapes(node, in_type(node, 0).shape, in_type(node, 1).shape)
        return int(np.prod(batch, dtype=np.int64)) * a2[-2] * a2[-1] * b2[-1]

    def lower(self, k, node, ins, outs):
        a2, b2, batch, _ = matmul_shapes(node, ins[0].shape, ins[1].shape)
        a = ins[0].reshape(a2).broadcast_to(batch + a2[-2:])
        b = ins[1].reshape(b2).broadcast_to(batch + b2[-2:])
        y = outs[0].reshape(batch + (a2[-2], b2[-1]))
        b_value = node.inputs[1]
        # one matrix shared by the whole batch, known at compile time: packed panels
        b_const = b_value.data if b_value.is_const and len(b_value.data.shape) <= 2 else None
        with k.loops(batch) as bi:
            tiled_matmul(k, a2[-2], b2[-1], a2[-1], lambda i, kk: (a, (*bi, i, kk)), lambda kk, j: (b, (*bi, kk, j)),
                         lambda i, j, w: k.splat(0.0, w), lambda i, j, v: y.store_vector((*bi, i, j), v), b_const)


# -- softmax ------------------------------------------------------------------------------
@register("Softmax", "LogSoftmax")
class Softmax(Op):
    def canonicalize(self, node, opset):
        shape = in_type(node, 0).shape
        axis = norm_axis(node.attrs.get("axis", -1 if opset >= 13 else 1), len(shape), node)
        # Before opset 13 the input is coerced to 2-D at `axis`: normalize over all of axis..end.
        node.attrs["axis"] = axis
        node.attrs["coerce_2d"] = int(opset < 13)

    def infer(self, node):
        t = in_type(node, 0)
        if t.dtype != "float32":
            raise _err(node, "needs float32 input")
        return [t]

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
        return [y.reshape(x.shape).astype(np.float32)]

    def lower(self, k, node, ins, outs):
        o, n, inner = self._rows(ins[0].shape, node)
        x, y = ins[0].reshape((o, n, inner)), outs[0].reshape((o, n, inner))
        with k.loops((o, inner)) as (a, c):
            mx = k.var(x[a, 0, c])
            with k.loop(n) as j:
                mx.value = k.max(mx.value, x[a, j, c])
            total = k.var(0.0)
            with k.loop(n) as j:
                e = m.exp(k, x[a, j, c] - mx.value)
                if node.op == "Softmax":
                    y[a, j, c] = e
                total += e
            if node.op == "Softmax":
                inv = 1.0 / total.value
                with k.loop(n) as j:
                    y[a, j, c] = y[a, j, c] * inv
            else:
                shift = mx.value + m.log(k, total.value)
                with k.loop(n) as j:
                    y[a, j, c] = x[a, j, c] - shift
