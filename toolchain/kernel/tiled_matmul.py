"""The register-tiled matrix product, as a schedule ("matmul", "pointwise",
"pointwise-by-channels") says: MR rows x NV vectors of accumulators kept in registers
across the whole reduction. Used by Gemm, MatMul and the 1x1 convolution."""
from __future__ import annotations

import numpy as np

from ..errors import InternalError
from ..schedules.cost import chunk_offsets, vector_chunks


def check_lanes(k, schedule) -> int:
    """The schedule was chosen for this kernel's vector unit (not another backend's)."""
    if schedule.lanes != k.vector.lanes:
        raise InternalError(f"schedule {schedule} was chosen for {schedule.lanes} lanes, the kernel has "
                            f"{k.vector.lanes} ({k.vector.name})")
    return schedule.lanes


def store_tile(acc, offs, put_vector):
    """put_vector(row, column, vector) for every chunk of the accumulators acc[row][chunk]
    (a row's chunks lie along memory)."""
    for r, row in enumerate(acc):
        for off, var in zip(offs, row):
            put_vector(r, off, var.value)


def matmul_by_dots(k, m_, n, kdim, a, b_rows, init, store, rows=4, a_rows=1):
    """y[i, j:j+r] = store(i, j, init(i, j, r) + [dot(a[i, :], b_rows[j + t, :]) for t < r]):
    both operands contiguous along the reduction (a Gemm with transB=1 whose weights are
    run-time values, as a training step's Gemms: no panels to pack them into, and b's
    columns a whole row apart). A block of a_rows rows of a times `rows` rows of b keeps
    a_rows * rows vector accumulators along kk (each vector load serves a whole row or
    column of the block), summed across lanes at the end, then a scalar tail of kk. Rows
    left over on either side go one at a time."""
    lanes = k.vector_lanes
    main = kdim - kdim % lanes

    def block(i, j, ra, rb):
        accs = [[k.var(k.zeros(lanes)) for _ in range(rb)] for _ in range(ra)]
        with k.loop(main, step=lanes) as kk:
            avs = [k.vload(a, (i + s, kk), lanes) for s in range(ra)]
            bvs = [k.vload(b_rows, (j + t, kk), lanes) for t in range(rb)]
            for s in range(ra):
                for t in range(rb):
                    accs[s][t].value = accs[s][t].value + avs[s] * bvs[t]
        sums = []
        for row in accs:
            for acc in row:
                parts = k.lanes(acc.value)
                while len(parts) > 1:  # pairwise across lanes
                    parts = [parts[q] + parts[q + len(parts) // 2] for q in range(len(parts) // 2)]
                sums.append(k.var(parts[0]))
        with k.loop(kdim, start=main) as kk:
            xs = [a[i + s, kk] for s in range(ra)]
            for t in range(rb):
                bt = b_rows[j + t, kk]
                for s in range(ra):
                    tot = sums[s * rb + t]
                    tot.value = tot.value + xs[s] * bt
        for s in range(ra):
            store(i + s, j, init(i + s, j, rb) + k.pack([sums[s * rb + t].value for t in range(rb)]))

    def over_columns(i, ra):
        whole = n - n % rows
        with k.loop(whole, step=rows) as j:
            block(i, j, ra, rows)
        with k.loop(n, start=whole) as j:
            block(i, j, ra, 1)

    whole_i = m_ - m_ % a_rows
    with k.loop(whole_i, step=a_rows) as i:
        over_columns(i, a_rows)
    with k.loop(m_, start=whole_i) as i:
        over_columns(i, 1)


def tiled_matmul(k, schedule, m_, n, kdim, a_at, b_at, init, store, b_const=None, a_const=None):
    """y[i, j:] = store(i, j, init[i, j:] + sum_kk a[i, kk] * b[kk, j:]) in register tiles of
    MR rows x NV vectors of columns (sized from the profile by register_tile): the MR*NV
    accumulators stay in registers across the whole kk loop, each b row segment is loaded
    once per kk and reused by the MR rows, each a value once and reused by all columns.
    a_at(i, kk) / b_at(kk, j) give (tensor, index): b's last axis runs along j (vector
    loads), a's along kk; init(i, j, w) gives the w start values from (i, j) as a vector,
    and store(i, j, v) takes a vector of results from (i, j) on (Tensor.store_vector, so a
    fused epilogue may run on whole vectors).
    The tile (MR, NV) and how the operands come are the schedule's (matmul_schedule):
    with left="rows" (FMA by lane, a contiguous along kk) a row's next `lanes` values
    come in one vector load and each FMA takes its lane.
    b_const: b's values when known at compile time (weights); with packing "panels" they are packed into
    panels of one tile's columns, kk-major, so a tile streams its b operand from one
    contiguous run (paired and post-incremented loads, one cache line after the next)
    instead of one row of b per kk.
    a_const: a's values when known at compile time. Where a row of b is not a whole number
    of vectors long (KWS's 125-pixel planes), the rows kk..kk+3 that one by-lane vector of
    a serves lie at offsets no load instruction can encode (NEON's scaled offsets are
    multiples of 16 bytes), so each needs an address of its own. With packing "spread"
    a is packed so that one vector holds kk,
    kk+lanes, kk+2 lanes, ... ("spread"): those rows lie lanes rows apart, a multiple of
    the vector size, and one address serves the step.
    Reductions run in order (no reassociation), except where spread: kk in that order.
    Every y element is stored once (epilogues)."""
    vec = k.vector
    lanes = check_lanes(k, schedule)
    # packed copies keep the computation's precision (float16 storage is computed in float32)
    packed = lambda data: np.asarray(data, np.float64 if np.asarray(data).dtype == np.float64 else np.float32)
    by_lane = schedule.left == "rows"
    spread = schedule.packing == "spread"
    if (spread and a_const is None) or (schedule.packing == "panels" and b_const is None):
        raise InternalError(f"schedule {schedule} needs a constant operand")
    if spread:
        # a_spread[i, j, blk * lanes + u] = a[i, blk * lanes^2 + j + lanes * u]
        a_spread = k.constant(np.ascontiguousarray(
            packed(a_const).reshape(m_, -1, lanes, lanes).transpose(0, 3, 1, 2).reshape(m_, lanes, -1)))
    mr, nv = schedule.rows, schedule.vectors
    nr = nv * lanes
    full = n - n % nr
    if b_const is not None:
        b_const = packed(b_const).reshape(kdim, n)
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
                # two vectors of a's row per trip where they divide the reduction: the loop's
                # counter, pointer updates, compare and branch (5 of ~90 instructions of a
                # 6x3 tile's trip on NEON) once per 2 * lanes steps
                unroll = 2 if main % (2 * lanes) == 0 and main > 2 * lanes else 1
                with k.loop(main, step=lanes * unroll) as kk0:
                    for half in range(unroll):
                        kk = kk0 + half * lanes if half else kk0
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
            tile(i0, rows, full, vector_chunks(n % nr, vec.lanes, vec.masked_tails))

    full_rows = m_ - m_ % mr
    if full_rows:
        with k.loop(full_rows, step=mr) as i0:
            columns(i0, mr)
    if m_ % mr:
        columns(full_rows, m_ % mr)
