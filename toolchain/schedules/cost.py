"""Cost models of the register tiles: instructions per multiply-accumulate, counted per
step of the reduction from the vector unit's facts (lanes, registers, FMA forms). Pure
arithmetic on shapes: the schedule choices in this package are made with these."""
from __future__ import annotations

import itertools

from ..targets import VectorUnit


def vector_chunks(n, lanes, masked=False):
    """Widths that cover n columns with the fewest vectors: full registers, then the rest
    as one predicated vector where loads and stores can be masked (`masked`, the vector
    unit's masked_tails), else halves, quarters... down to a scalar."""
    if masked:
        return [lanes] * (n // lanes) + ([n % lanes] if n % lanes else [])
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


def blocks(n, size):
    """The sizes of consecutive blocks of at most `size` covering n."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def left_operand(vec: VectorUnit, left, rows):
    """(loads per step, registers) of `rows` rows of the left operand, as register_tile
    describes each way it comes."""
    return {"splat": (rows, 1), "rows": (rows / vec.lanes, rows),
            "packed": (rows / vec.lanes, rows // vec.lanes)}[left]


def register_tile(vec: VectorUnit, left="splat", max_rows=8, max_vectors=4):
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
            loads, regs = left_operand(vec, left, mr)
            if mr * nv + nv + regs > vec.registers - 1:
                continue
            key = ((loads + nv + mr * nv) / (mr * nv), -mr * nv)
            if best is None or key < best[0]:
                best = (key, mr, nv)
    return best[1], best[2]


def matmul_tile_cost(vec: VectorUnit, m_, n, left="splat"):
    """Instructions per MAC of tiled_matmul's tiles (register_tile's MR rows x NV vectors
    of columns) over an m_ x n output, per step along the reduction: the left operand's
    loads, NV loads of the right one, MR x NV FMAs. Columns not a multiple of the lanes,
    or fewer than a tile, leave lanes or vectors idle. The convolution's column tiles
    have the same shape (output channels x output columns, per tap)."""
    mr, nv = register_tile(vec, left, max_rows=min(8, m_))
    chunks = vector_chunks(n, vec.lanes, vec.masked_tails)
    insns = macs = 0
    for rows in blocks(m_, mr):
        left_loads, _ = left_operand(vec, left, rows)
        for c0 in range(0, len(chunks), nv):
            tile = chunks[c0:c0 + nv]
            insns += left_loads + len(tile) + rows * len(tile)
            macs += rows * sum(tile)
    return insns / macs


def channel_tile(vec: VectorUnit, n_vectors, width, max_pixels=8, max_vectors=4, shared_columns=1):
    """(pixels, vectors, instructions per MAC) of a channel-vector convolution tile: the
    fewest instructions per FMA over one output row and all channel vectors (the last
    tiles of each may be smaller), fitting the register file with two registers to
    spare. Per tap a tile loads `vectors` weight vectors and broadcasts one input value
    per pixel. A row's kernel columns are unrolled, and at stride 1 pixel p's input at
    column kw+1 is pixel p+1's at kw: LLVM shares that broadcast and keeps it live across
    the row, so where the broadcast takes a vector register it takes one per pixel (and
    a tile counting one in all spills). With a scalar FMA operand (RVV) the inputs stay
    in scalar registers. shared_columns: the kernel's width at stride 1 (1 otherwise): a
    row of p pixels over kw columns then broadcasts p + kw - 1 inputs, not p * kw."""
    splat_regs = 0 if vec.fma_scalar_operand else 1
    best = None
    for nv in range(1, min(max_vectors, n_vectors) + 1):
        for px in range(1, min(max_pixels, width) + 1):
            if px * nv + nv + px * splat_regs > vec.registers - 2:
                continue
            insns = fmas = 0
            for v in blocks(n_vectors, nv):
                for p in blocks(width, px):
                    insns += (p + shared_columns - 1) / shared_columns + v + p * v
                    fmas += p * v
            key = (insns / fmas, -px * nv)
            if best is None or key < best[0]:
                best = (key, px, nv)
    (per_fma, _), px, nv = best
    return px, nv, per_fma / vec.lanes


def depthwise_tile(vec: VectorUnit, kh, kw, sh, dh, out_h, max_vectors, max_rows=6):
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


def a_by_lane(vec: VectorUnit, kdim, a_contiguous=True) -> bool:
    """Whether tiled_matmul takes a's values by lane: FMA by lane, and a row of a runs
    along kk in memory for at least one vector."""
    return vec.fma_by_lane and vec.lanes > 1 and a_contiguous and kdim >= vec.lanes
