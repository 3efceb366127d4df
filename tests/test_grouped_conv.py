"""Grouped convolutions in channel-vector tiles (schedule "conv-channels" with groups: a
tile's channels stay in one group, its input channels are the group's): RegNetX-style
layers (16 channels per group, small maps, stride 1 and 2, a fused bias and Relu, a
group of 24 channels whose last block is partial) against onnxruntime on every unit that
chooses that tile: x86-64-v3 natively, rv64gcv under qemu-user, the Cortex-M55 board, and
the C path."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import check_against_onnxruntime, make_model

R = np.random.default_rng(11)


def grouped(c, groups, hw, stride, relu):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c" if relu else "y"], group=groups, pads=[1, 1, 1, 1],
                              strides=[stride, stride])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    out = (hw + 2 - 3) // stride + 1
    return make_model(nodes, {"x": (np.float32, [1, c, hw, hw])}, {"y": (np.float32, [1, c, out, out])},
                      {"W": (R.standard_normal((c, c // groups, 3, 3)) * 0.2).astype(np.float32),
                       "B": R.standard_normal(c).astype(np.float32)})


CASES = {
    "g25x16 2x2": (400, 25, 2, 1, True),
    "g10x16 4x4 s2": (160, 10, 4, 2, False),
    "g4x24 5x5": (96, 4, 5, 1, True),  # 24 = 16 + a partial block of 8 on 8 lanes
}


@pytest.mark.parametrize("where", ["x86-64-v3", "rv64gcv", "cortex-m55", "x86-64-v3 c"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_channel_tiles_match_onnxruntime(case, where, tmp_path):
    target, _, emit = where.partition(" ")
    model = grouped(*CASES[case])
    c, _, hw, _, _ = CASES[case]
    feeds = {"x": R.standard_normal((1, c, hw, hw)).astype(np.float32)}
    res, _ = check_against_onnxruntime(model, feeds, target, tmp_path, emit=emit or "object")
    assert any(s.startswith("conv-channels") for s in res.manifest["schedules"].values()), res.manifest["schedules"]
