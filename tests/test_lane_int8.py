"""The pixels-in-lanes integer convolution's compile-time decisions (kernel/lane_int8.py):
the packed weights, read the way the kernel reads them, give numpy's convolution sums, and
the register tile fits the registers and covers awkward grids. (Its results on the target:
test_quant.py's awkward convolutions, run on cortex-a76.)"""
from __future__ import annotations

import numpy as np
import pytest

from toolchain.kernel.lane_int8 import GROUP, LANES, lane_groups, lane_tile, pack_lane_weights


@pytest.mark.parametrize("oc, cg, kh, kw", [(5, 3, 3, 3), (8, 8, 1, 1), (9, 6, 3, 2), (1, 1, 10, 4)])
def test_packed_weights_read_as_the_kernel_reads_them_give_the_window_sums(oc, cg, kh, kw):
    rng = np.random.default_rng(oc * 100 + cg)
    w = rng.integers(-128, 128, (oc, cg, kh, kw)).astype(np.int8)
    window = rng.integers(-128, 128, (cg, kh, kw)).astype(np.int64)
    packed = pack_lane_weights(w)
    quads = -(-cg // GROUP)
    assert packed.shape == (-(-oc // GROUP), lane_groups(cg, kh, kw), GROUP * GROUP)
    # the window as the gather lays it out: group (channel quad, row, column), 4 channels each,
    # channels past the last read the last one again
    chans = [min(q, cg - 1) for q in range(quads * GROUP)]
    groups = window[chans].reshape(quads, GROUP, kh, kw).transpose(0, 2, 3, 1).reshape(-1, GROUP)
    for o in range(oc):
        lanes = packed[o // GROUP, :, (o % GROUP) * GROUP:(o % GROUP + 1) * GROUP].astype(np.int64)
        assert (lanes * groups).sum() == (w[o].astype(np.int64) * window).sum()


# (registers, pixel vectors, channel quads) -> tile, worked out by hand: a 32-pixel block of
# 16 channels takes 3x2 tiles (29 instructions a group) and a 2x2 edge: 156 a group, against
# 160 for 2x3 and 168 for 6x1 or 4x1
# broadcast (x86's 16 registers, each channel's weights broadcast from memory, two instructions
# a dot product): 2x1 tiles take 22 instructions a group, 352 over the block, against 400 for
# 1x2 or 1x3 and 416 for 1x1
@pytest.mark.parametrize("registers, vectors, quads, broadcast, tile", [
    (32, 8, 4, False, (3, 2)), (32, 1, 1, False, (1, 1)), (32, 32, 2, False, (3, 2)), (16, 2, 1, False, (2, 1)),
    (16, 8, 4, True, (2, 1))])
def test_the_register_tile_fits_and_is_the_cheapest(registers, vectors, quads, broadcast, tile):
    tp, tc = lane_tile(registers, vectors, quads, broadcast)
    assert LANES * tp * tc + tp + (1 if broadcast else tc) < registers
    assert (tp, tc) == tile
