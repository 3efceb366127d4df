"""Schedules: how a layer is tiled on a vector unit, decided before any code is written.

A choice is a pure function of (layer shape, vector unit) returning a small frozen
record, `Schedule`. The pass `choose-schedules` records each node's on the node; `--dump-ir`
prints it, the manifest lists it per node, tests pin it per profile in milliseconds, and
the lowering (toolchain.kernel.tiled_*) carries it out without deciding anything again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..targets import VectorUnit
from .cost import (a_by_lane, channel_tile, depthwise_tile, matmul_tile_cost, register_tile,
                   vector_chunks)

# kind -> what the tile is
KINDS = {
    "matmul": "rows x vectors of output columns, the reduction in registers (Gemm, MatMul)",
    "pointwise": "1x1 convolution as W @ X: output channels x vectors of pixels",
    "pointwise-by-channels": "1x1 convolution as X^T @ W^T: pixels x vectors of output channels",
    "conv-columns": "output channels x vectors of output columns, per tap",
    "conv-depthwise": "output rows x vectors of output columns of one channel",
    "conv-channels": "output pixels x vectors of output channels (weights channels-last)",
    "conv-taps-reduce": "one vector accumulator per output element, summed along kernel columns",
    "loop": "the plain loop nest (no register tile)",
}


@dataclass(frozen=True)
class Schedule:
    """kind: one of KINDS. rows x vectors: the register tile (rows are output channels,
    matrix rows, output rows or pixels as the kind says; vectors of `lanes` lanes).
    left: how a matmul-like tile's left operand enters each step ("splat": a broadcast per
    row; "rows": a vector per row, FMA by lane; "packed": one vector for `lanes` rows).
    packing: the compile-time layout of constant operands ("panels", "spread", "by-lane",
    "taps", "channels-last"; "" for none). cost: the model's instructions per MAC."""

    kind: str
    lanes: int = 1
    rows: int = 1
    vectors: int = 1
    left: str = ""
    packing: str = ""
    cost: float = 0.0

    def __str__(self):
        if self.kind == "loop":
            return "loop"
        extra = "".join(f" {x}" for x in (self.left, self.packing) if x)
        cost = f" ~{self.cost:.3f}/MAC" if self.cost else ""
        return f"{self.kind} {self.rows}x{self.vectors}x{self.lanes}{extra}{cost}"


@dataclass(frozen=True)
class ConvLayer:
    """What a convolution's schedule depends on: shapes (N, C, spatial...), weights
    (OC, C/group, kernel...), window attributes, and whether the weights are constant."""

    x: tuple
    w: tuple
    y: tuple
    strides: tuple
    dilations: tuple
    pads: tuple
    group: int = 1
    weights_const: bool = True

    @property
    def pointwise(self) -> bool:
        return (self.group == 1 and all(d == 1 for d in self.w[2:]) and all(s == 1 for s in self.strides)
                and not any(self.pads))


def matmul_schedule(vec: VectorUnit, m: int, n: int, k: int, *, a_contiguous=True, a_const=False,
                    b_const=False, b_row_stride=0, kind="matmul") -> Schedule:
    """tiled_matmul's tile for an m x n output over a reduction of k. Where the target has
    FMA by lane and a row of a runs along k in memory, a's values come by lane ("rows").
    Constant b is packed into panels of one tile's columns. Constant a, with b's rows not
    a whole number of vectors apart (KWS's 125-pixel planes: rows kk..kk+3 at offsets no
    load can encode), is packed "spread" so one address serves a step."""
    by_lane = a_by_lane(vec, k, a_contiguous)
    lanes = vec.lanes
    spread = (by_lane and a_const and not b_const and k % (lanes * lanes) == 0 and b_row_stride % lanes != 0)
    left = "rows" if by_lane else "splat"
    rows, vectors = register_tile(vec, left, max_rows=min(8, m))
    packing = "spread" if spread else "panels" if b_const else ""
    return Schedule(kind, lanes, rows, vectors, left, packing, round(matmul_tile_cost(vec, m, n, left), 4))


def pointwise_by_channels(vec: VectorUnit, oc_, pixels, c_) -> bool:
    """Whether a pointwise convolution's vectors should run along output channels rather
    than pixels: where a plane has few pixels (MobileNet's last 3x3 maps: 9 pixels are two
    4-lane vectors and a scalar per row of the tile), by the two tile cost models. Along
    pixels the weights may come by lane (NEON); along channels every input value is a
    broadcast, since an input channel's pixels lie a plane apart, and each output is
    stored on its own: counted as 3 instructions (lane out, address, store)."""
    along_pixels = matmul_tile_cost(vec, oc_, pixels, "rows" if a_by_lane(vec, c_) else "splat") + 1 / (vec.lanes * c_)
    along_channels = matmul_tile_cost(vec, pixels, oc_) + 3 / c_
    return along_channels < along_pixels


def channel_vectors_suit(vec: VectorUnit, layer: ConvLayer) -> bool:
    """Whether a 2-D convolution is better tiled with its vectors along output channels
    than along output columns. Vectors along columns lose lanes where an output row is
    narrow (a row of 5 in 8 lanes is a 4-lane vector and a scalar) or shorter than the
    tile, and with a stride each input vector is gathered from a span and shuffled.
    Vectors along channels read the packed weights whole at any row width and stride, and
    the input is one broadcast per pixel shared by the tile's channel vectors (so there
    must be two or more). So: the tile with fewer instructions per MAC by the two cost
    models, channels always under a stride. Where the FMA takes its multiplier by lane,
    the column tile's weights cost 1/lanes loads, which pays for both. The channel tile's
    store transposes it, so each output needs enough taps to hide that."""
    lanes = vec.lanes
    _, oc_, _, ow_ = layer.y
    ocg = oc_ // layer.group  # a tile's channels stay in one group
    taps = 1
    for d in layer.w[1:]:
        taps *= d
    if (lanes == 1 or vec.fma_by_lane or not layer.weights_const or ocg % lanes
            or ocg < 2 * lanes or taps < 3 * lanes):
        return False
    _, _, channel_cost = channel_tile(vec, ocg // lanes, ow_, shared_columns=_shared_columns(vec, layer))
    return layer.strides[1] > 1 or channel_cost < matmul_tile_cost(vec, ocg, ow_)


def _shared_columns(vec: VectorUnit, layer: ConvLayer) -> int:
    """How many kernel columns share an input broadcast in the channel tile: all of them at
    stride 1 (counted, ResNet-8 took the channel tile on x86-64-v3: -7% instructions, the
    M55: -21%, rv64gcv: +2.7%)."""
    return layer.w[3] if layer.strides[1] == 1 and layer.dilations[1] == 1 else 1


# The register tiles unroll a kernel's taps into straight-line code: fine for the 1x1 to
# 10x4 kernels of real networks, not for a weight gradient's Conv, whose "kernel" is the
# output's whole spatial extent (32x32 taps in ResNet-8's pullback: 454 KB of code per
# node, minutes of LLVM). Beyond this many taps a convolution is the plain loop nest. 128
# takes KWS's weight gradients (25x5 feature maps: 125 taps, the plain loop ran them at
# about 8 instructions per MAC) and still leaves ResNet-8's 32x32 and 16x16 ones alone.
MAX_UNROLLED_TAPS = 128

# conv-taps-reduce: at most this many outputs per output channel (one vector accumulator
# each) and kernel columns (one vector of the kernel row held per chunk of lanes)
REDUCE_MAX_OUTPUTS = 16
REDUCE_MAX_COLUMNS = 128


def taps_reduce_suits(vec: VectorUnit, layer: ConvLayer) -> bool:
    """A weight gradient's Conv (its "kernel" the cotangent's whole map, its output the
    few taps of the real kernel) vectorized along the kernel's columns instead of the
    output's: a vector accumulator per output element, the kernel rows a run-time loop, so
    the code holds one kernel row however many rows the map has."""
    if len(layer.x) != 4 or vec.lanes <= 1:
        return False
    oh_, ow_ = layer.y[2:]
    return oh_ * ow_ <= REDUCE_MAX_OUTPUTS and vec.lanes <= layer.w[3] <= REDUCE_MAX_COLUMNS


def conv_schedule(vec: VectorUnit, layer: ConvLayer) -> Schedule:
    """The tile of a convolution: a pointwise one as a matrix product (along pixels or
    along channels), a 2-D one in channel-vector, depthwise or column tiles, and any other
    rank as the plain loop nest."""
    lanes = vec.lanes
    if layer.pointwise:
        n_, c_ = layer.x[:2]
        pixels = 1
        for d in layer.x[2:]:
            pixels *= d
        oc_ = layer.y[1]
        if layer.weights_const and pointwise_by_channels(vec, oc_, pixels, c_):
            return matmul_schedule(vec, pixels, oc_, c_, a_contiguous=pixels == 1, b_const=True,
                                   kind="pointwise-by-channels")
        return matmul_schedule(vec, oc_, pixels, c_, a_const=layer.weights_const, b_row_stride=pixels,
                               kind="pointwise")
    if len(layer.x) != 4 or layer.w[2] * layer.w[3] > MAX_UNROLLED_TAPS:
        if taps_reduce_suits(vec, layer):
            return Schedule("conv-taps-reduce", lanes)
        return Schedule("loop")
    if channel_vectors_suit(vec, layer):
        px, nv, cost = channel_tile(vec, layer.y[1] // layer.group // lanes, layer.y[3],
                                    shared_columns=_shared_columns(vec, layer))
        return Schedule("conv-channels", lanes, px, nv, packing="channels-last", cost=round(cost, 4))
    _, oc_, oh_, ow_ = layer.y
    cg, kh_, kw_ = layer.w[1:]
    ocg = oc_ // layer.group
    by_lane = vec.fma_by_lane and lanes > 1 and layer.weights_const
    if cg == 1 and ocg == 1:
        rows, nv = depthwise_tile(vec, kh_, kw_, layer.strides[0], layer.dilations[0], oh_,
                                  len(vector_chunks(ow_, lanes, vec.masked_tails)))
        return Schedule("conv-depthwise", lanes, rows, nv, packing="taps" if by_lane else "")
    # run-time weights (a training step's) too: packed by the kernel into a workspace first
    packed = vec.fma_by_lane and lanes > 1 and ocg % lanes == 0
    best_rows, nv = register_tile(vec, "packed" if packed else "splat")
    rows = best_rows if layer.group == 1 else max(m for m in range(1, best_rows + 1) if ocg % m == 0)
    return Schedule("conv-columns", lanes, min(rows, oc_), nv, "packed" if packed else "splat",
                    "by-lane" if packed else "")
