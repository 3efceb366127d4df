"""Convolution loop nests, as a schedule says: column tiles (channels x vectors of output
columns), depthwise row tiles, channel-vector tiles, the pointwise product, and the
plain loop nest with every bounds check for any other rank."""
from __future__ import annotations

import numpy as np

from ..schedules.cost import chunk_offsets, vector_chunks
from .tiled_matmul import check_lanes, store_tile, tiled_matmul


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


def conv_point(k, a, x, w, bias, y, n, oc, o):
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


def conv2d_columns(k, schedule, a, x, w, bias, y, w_value, packed=None):
    """2-D convolution (any groups, strides, dilations, pads) in register tiles: MR output
    channels x OR output rows x NV vectors of output columns (schedule "conv-columns" or
    "conv-depthwise"), accumulating over (input
    channel, kernel row, kernel column). An input row segment is loaded once per kernel
    column and feeds the MR channels and every output row of the tile whose window holds
    that row; each weight is broadcast once per use. A kernel row in the padding is
    skipped as a whole. Tiles of several channels (MR) serve the
    ordinary convolution; a depthwise one (one input channel per output channel) has no
    channels to share its loads with, so it shares them across output rows instead (OR). Interior columns (whole window inside the row) run in a loop
    of full tiles; the border columns are tiles at fixed positions, where the lanes whose
    tap falls in the padding are known at compile time: they read nothing and add nothing.
    No per-element checks. Each accumulator sums its taps in (channel, kh, kw) order."""
    n_, oc_, oh_, ow_ = y.shape
    h_, w_in = x.shape[2:]
    g = a["group"]
    cg, ocg = w.shape[1], oc_ // g
    kh_, kw_ = w.shape[2:]
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    lanes = check_lanes(k, schedule)
    nv = schedule.vectors
    wp = wdw = None
    if schedule.kind == "conv-depthwise":
        out_rows, mr = schedule.rows, 1
        if schedule.packing == "taps":
            # one channel's taps in ceil(taps/lanes) vectors, held across the tile
            wdw = k.constant(np.ascontiguousarray(w_value.data.reshape(-1)))
    else:
        if schedule.packing == "by-lane" and w_value.is_const:
            # lanes output channels' weight for one tap in one vector; each FMA takes its lane
            kern = w_value.data.reshape(oc_ // lanes, lanes, cg, kh_, kw_).transpose(0, 2, 3, 4, 1)
            wp = k.constant(np.ascontiguousarray(kern))
        elif schedule.packing == "by-lane":  # run-time weights: packed the same way, here
            wp = packed
            with k.loops(wp.shape) as (q, ci, kh, kw, ln):
                wp[(q, ci, kh, kw, ln)] = w[(q * lanes + ln, ci, kh, kw)]
        mr, out_rows = schedule.rows, 1
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
            tile(n, oc0, rows, oh0, orows, start, vector_chunks(width, lanes, k.vector.masked_tails))

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


def conv2d_taps_reduce(k, schedule, a, x, w, bias, y):
    """2-D convolution whose kernel is large and whose output is a few elements per channel
    (schedule "conv-taps-reduce": a weight gradient's Conv, the cotangent's map its kernel,
    the real kernel's taps its output). Vectors run along the kernel's columns: per kernel
    row, its columns are loaded once (whole vectors, the last one's lanes past the row
    zero) and multiply, for each output element, the input row segment that element's
    window reads there (a strided view where the Conv dilates: the forward stride), into
    one vector accumulator per output element, summed across its lanes at the end. The
    kernel rows are a run-time loop (the code holds one row, not the map), a row outside
    the input skipped per output row; the lanes whose column falls in the padding are known
    at compile time and read nothing."""
    n_, oc_, oh_, ow_ = y.shape
    h_, w_in = x.shape[2:]
    g = a["group"]
    cg, ocg = w.shape[1], oc_ // g
    kh_, kw_ = w.shape[2:]
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    lanes = check_lanes(k, schedule)
    starts = list(range(0, kw_, lanes))
    xt = x.strides[3]
    # x seen from output column q: element [n, c, ih, kw] is input column q*sw - pw + kw*dw
    views = [x.view(x.shape[:3] + (kw_,), x.strides[:3] + (xt * dw,), x.offset + (q * sw - pw) * xt)
             for q in range(ow_)]

    def valid(q, kw0):
        inside = [ln for ln in range(lanes) if kw0 + ln < kw_ and 0 <= q * sw - pw + (kw0 + ln) * dw < w_in]
        return range(inside[0], inside[-1] + 1) if inside else None

    # dilation 2 at stride 1 (a stride-2 Conv's weight gradient): output columns q and q + 1
    # read the even and the odd input columns of one span of 2 * lanes, where all of it
    # lies in the row and the chunk is whole (`paired` holds (q, chunk start) of the even
    # one; pairs from column 0 or from column 1, whichever reads fewer spans in the padding)
    paired = set()
    if dw == 2 and sw == 1 and x.strides[3] == 1:
        options = []
        for q0 in (0, 1):
            pairs = {(q, kw0) for q in range(q0, ow_ - 1, 2) for kw0 in starts
                     if kw0 + lanes <= kw_ and 0 <= q - pw + dw * kw0 and q - pw + dw * kw0 + 2 * lanes <= w_in}
            options.append(pairs)
        paired = max(options, key=len)

    def shifted(q, kw0):
        """A column next to a pair (q - 1 or q + 2 unpaired) reads the pair's lanes moved by
        one: (pair, half, pair of the other chunk, lane offset into the two), or None."""
        if (q + 1, kw0) in paired and (q + 1, kw0 - lanes) in paired:  # odd lanes, one chunk back
            return (q + 1, kw0 - lanes), 1, (q + 1, kw0), lanes - 1
        if (q - 2, kw0) in paired and (q - 2, kw0 + lanes) in paired:  # even lanes, one chunk on
            return (q - 2, kw0), 0, (q - 2, kw0 + lanes), 1
        return None

    with k.loop(n_) as n, k.loop(oc_) as oc:
        ci0 = (oc // ocg) * cg if g > 1 else 0
        acc = [[k.var(k.splat(0.0, lanes)) for _ in range(ow_)] for _ in range(oh_)]
        with k.in_order(), k.loop(cg) as ci, k.loop(kh_) as kh:
            kern = [k.vload(w, (oc, ci, kh, kw0), lanes, range(min(lanes, kw_ - kw0))) for kw0 in starts]
            for o in range(oh_):
                ih = kh * dh + (o * sh - ph)
                with k.if_(window_in_bounds(k, [ih], [h_])):
                    loaded = {}

                    def pair(q, kw0):
                        if (q, kw0) not in loaded:
                            loaded[(q, kw0)] = k.vload_pairs(x, (n, ci0 + ci, ih, q - pw + dw * kw0), lanes)
                        return loaded[(q, kw0)]

                    for kv, kw0 in zip(kern, starts):
                        for q in range(ow_):
                            if (q, kw0) in paired:
                                even, odd = pair(q, kw0)
                                acc[o][q] += kv * even
                                acc[o][q + 1] += kv * odd
                                continue
                            if (q - 1, kw0) in paired:
                                continue
                            lanes_in = valid(q, kw0)
                            if lanes_in is None:
                                continue
                            near = shifted(q, kw0) if len(lanes_in) == lanes else None
                            if near is not None:
                                first, half, second, at = near
                                a_, b_ = sorted((first, second), key=lambda key: key[1])
                                xv = k.join_lanes(pair(*a_)[half], pair(*b_)[half], at)
                            else:
                                xv = k.vload(views[q], (n, ci0 + ci, ih, kw0), lanes,
                                             None if len(lanes_in) == lanes else lanes_in)
                            acc[o][q] += kv * xv
        for o in range(oh_):
            for q in range(ow_):
                parts = k.lanes(acc[o][q].value)
                total = parts[0]
                for v in parts[1:]:
                    total = total + v
                if bias is not None:
                    total = total + bias[oc]
                y[(n, oc, o, q)] = total


def conv2d_channels(k, schedule, a, x, bias, y, w_data):
    """2-D convolution (any groups of whole vectors; schedule "conv-channels") in register
    tiles of PX output pixels (consecutive columns of one output row) x NV vectors of one
    group's output channels. The weights are packed at compile time in blocks of NV vectors
    of output channels within a group (_channel_blocks), so a tap's weights for a tile are
    NV whole vector loads, the next tap's right after them; each input value is broadcast
    once and feeds the NV vectors. Neither the row width nor the stride shapes a vector:
    this is the tile for narrow output rows (keyword spotting's 25x5 maps), small maps with
    many channels and strided convolutions. Kernel rows in the padding are skipped as a
    whole; in the border tiles, fixed at compile time, a pixel whose tap falls in the
    padding reads nothing. Each accumulator sums its taps in (channel, kh, kw) order.
    Channels lie a plane apart in NCHW, so the tile is transposed at its store."""
    n_, oc_, oh_, ow_ = y.shape
    h_, w_in = x.shape[2:]
    _, cg, kh_, kw_ = w_data.shape
    (sh, sw), (dh, dw), (ph, pw) = a["strides"], a["dilations"], a["pads"][:2]
    groups = a.get("group", 1)
    ocg = oc_ // groups
    lanes = check_lanes(k, schedule)
    n_vectors = ocg // lanes  # per group
    px, nv = schedule.rows, schedule.vectors
    block = nv * lanes
    per_group = -(-ocg // block)  # blocks of one group
    wt = k.constant(_channel_blocks(w_data, block, groups))
    taps = _column_taps(x, a, kw_, ow_)

    def inside(ow, kw):
        return not isinstance(ow, int) or 0 <= ow * sw - pw + kw * dw < w_in

    def tile(n, blk, oc0, c0, vectors, oh, ow0, pixels):
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
                    ws = [k.vload(wt, (blk, ci, kh, kw, off), lanes) for off in offs]
                    for p in used:
                        xv = k.splat(taps[kw][n, c0 + ci, ih, ow0 + p], lanes)
                        for c, wv in enumerate(ws):
                            acc[p][c] += xv * wv
        # transposed: one vector per channel across the tile's pixels (contiguous in its
        # row), so a fused epilogue (a residual Add's operand) runs on vectors too
        for c, off in enumerate(offs):
            by_pixel = [k.lanes(acc[p][c].value) for p in range(pixels)]
            for ln in range(lanes):
                y.store_vector((n, oc0 + off + ln, oh, ow0), k.pack([by_pixel[p][ln] for p in range(pixels)]))

    left, right, fixed = _column_tiles(a, w_in, kw_, ow_, px)

    def channel_block(n, g, b, vectors):
        blk, oc0, c0 = g * per_group + b, g * ocg + b * block, g * cg
        with k.loop(oh_) as oh:
            if right > left:
                with k.loop(right, start=left, step=px) as ow0:
                    tile(n, blk, oc0, c0, vectors, oh, ow0, px)
            for start, pixels in fixed:
                tile(n, blk, oc0, c0, vectors, oh, start, pixels)

    full = n_vectors // nv
    with k.loop(n_) as n, k.loop(groups) as g:
        with k.loop(full) as b:
            channel_block(n, g, b, nv)
        if full * block < ocg:
            channel_block(n, g, full, n_vectors % nv)


def _channel_blocks(w_data, block, groups=1):
    """The weights [out channel][in channel][kh][kw] as [block][in channel][kh][kw][block's
    out channels], a group's channels in blocks of their own: a tile reads its block's taps
    one after another, a stream the prefetcher follows (channels-last over all out channels
    puts a tap's few vectors a row apart); a group's last block's missing channels are
    zeros, never read."""
    oc, cg, kh, kw = w_data.shape
    ocg = oc // groups
    per_group = -(-ocg // block)
    packed = np.zeros((groups * per_group, cg, kh, kw, block), w_data.dtype)
    taps_last = w_data.transpose(1, 2, 3, 0)
    for g in range(groups):
        for b in range(per_group):
            lo = g * ocg + b * block
            width = min(block, (g + 1) * ocg - lo)
            packed[g * per_group + b, ..., :width] = taps_last[..., lo:lo + width]
    return packed


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


def conv_pointwise(k, schedule, x, w, bias, y, w_value):
    """1x1 convolution, stride 1, no padding: per image, a matrix product
    W (out_ch x in_ch) @ X (in_ch x pixels), pixels contiguous: the GEMM register tiles
    (schedule "pointwise"), or its transpose (schedule "pointwise-by-channels")."""
    n_, c_ = x.shape[:2]
    pixels = x.size // (n_ * c_)
    oc_ = y.shape[1]
    x3, y3, w2 = x.reshape((n_, c_, pixels)), y.reshape((n_, oc_, pixels)), w.reshape((oc_, c_))
    w_data = w_value.data.reshape(oc_, c_) if w_value.is_const else None
    if schedule.kind == "pointwise-by-channels":
        return _pointwise_by_channels(k, schedule, x3, w2, bias, y3, w_data)
    with k.loop(n_) as n:
        tiled_matmul(k, schedule, oc_, pixels, c_, lambda o, ci: (w2, (o, ci)), lambda ci, p: (x3, (n, ci, p)),
                     lambda o, p, w: k.splat(bias[o] if bias is not None else 0.0, w),
                     lambda o, p, v: y3.store_vector((n, o, p), v),
                     a_const=w_data)


def _pointwise_by_channels(k, schedule, x3, w2, bias, y3, w_data):
    """The pointwise product transposed: Y^T (pixels x out_ch) = X^T @ W^T, vectors along
    output channels, W^T packed into tiled_matmul's panels. Each output vector holds
    channels a plane apart, so it is stored lane by lane (an epilogue runs per lane)."""
    n_, c_, pixels = x3.shape
    oc_ = y3.shape[1]
    xt = x3.view((n_, pixels, c_), (x3.strides[0], 1, pixels))
    yt = y3.view((n_, pixels, oc_), (y3.strides[0], 1, pixels))
    wt = w2.view((c_, oc_), (1, c_))
    with k.loop(n_) as n:
        tiled_matmul(k, schedule, pixels, oc_, c_, lambda p, ci: (xt, (n, p, ci)), lambda ci, o: (wt, (ci, o)),
                     lambda p, o, wd: k.vload(bias, (o,), wd) if bias is not None else k.splat(0.0, wd),
                     lambda p, o, v: yt.store_vector((n, p, o), v), b_const=w_data.T)
