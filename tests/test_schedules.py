"""Schedules are data, pinned per vector unit: a table of (profile, layer shape) ->
the tile chosen, checked in milliseconds without building anything. A change to a cost
model or a profile that moves a tile fails here, before any benchmark runs; if the move
is intended, update the table in the same commit and say why (with the benchmark)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import make_model
from toolchain.backends.c import PORTABLE_C
from toolchain.schedules import KINDS, ConvLayer, Schedule, conv_schedule, matmul_schedule
from toolchain.targets import all_profiles

CONV = {  # name -> (x, w, y, strides, dilations, pads, group): layers of the real models
    "kws-conv1 10x4 s2": ((1, 1, 49, 10), (64, 1, 10, 4), (1, 64, 25, 5), (2, 2), (1, 1), (4, 1, 5, 2), 1),
    "kws-depthwise 3x3": ((1, 64, 25, 5), (64, 1, 3, 3), (1, 64, 25, 5), (1, 1), (1, 1), (1, 1, 1, 1), 64),
    "kws-pointwise 64->64": ((1, 64, 25, 5), (64, 64, 1, 1), (1, 64, 25, 5), (1, 1), (1, 1), (0, 0, 0, 0), 1),
    "resnet8-3x3 16ch 32x32": ((1, 16, 32, 32), (16, 16, 3, 3), (1, 16, 32, 32), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    "resnet8-3x3 s2 32ch": ((1, 16, 32, 32), (32, 16, 3, 3), (1, 32, 16, 16), (2, 2), (1, 1), (1, 1, 1, 1), 1),
    "resnet8-3x3 64ch 8x8": ((1, 64, 8, 8), (64, 64, 3, 3), (1, 64, 8, 8), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    "mobilenet-pointwise 3x3 plane": ((1, 128, 3, 3), (256, 128, 1, 1), (1, 256, 3, 3), (1, 1), (1, 1),
                                      (0, 0, 0, 0), 1),
    "grouped 3x3 g4": ((1, 32, 16, 16), (32, 8, 3, 3), (1, 32, 16, 16), (1, 1), (1, 1), (1, 1, 1, 1), 4),
    "regnetx grouped 3x3 g25 2x2": ((1, 400, 2, 2), (400, 16, 3, 3), (1, 400, 2, 2), (1, 1), (1, 1), (1, 1, 1, 1), 25),
    "conv3d": ((1, 4, 8, 8, 8), (8, 4, 3, 3, 3), (1, 8, 6, 6, 6), (1, 1, 1), (1, 1, 1), (0,) * 6, 1),
}
MATMUL = {  # name -> (m, n, k, constant b)
    "fc 1x64 -> 12": (1, 12, 64, True),
    "gemm 512^3": (512, 512, 512, True),
    "matmul runtime 64^3": (64, 64, 64, False),
}
EXPECTED = {
    "cortex-a76": {
        "kws-conv1 10x4 s2": "conv-columns 8x3x4 packed by-lane",
        "kws-depthwise 3x3": "conv-depthwise 6x2x4 taps",
        "kws-pointwise 64->64": "pointwise 6x3x4 rows spread ~0.322/MAC",
        "resnet8-3x3 16ch 32x32": "conv-columns 8x3x4 packed by-lane",
        "resnet8-3x3 s2 32ch": "conv-columns 8x3x4 packed by-lane",
        "resnet8-3x3 64ch 8x8": "conv-columns 8x3x4 packed by-lane",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x4x4 splat panels ~0.368/MAC",
        "grouped 3x3 g4": "conv-columns 8x3x4 packed by-lane",
        "regnetx grouped 3x3 g25 2x2": "conv-columns 8x3x4 packed by-lane",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x4 rows panels ~0.521/MAC",
        "gemm 512^3": "matmul 6x3x4 rows panels ~0.313/MAC",
        "matmul runtime 64^3": "matmul 6x3x4 rows ~0.316/MAC",
    },
    "rv64gc": {
        "kws-conv1 10x4 s2": "conv-columns 6x4x1 splat",
        "kws-depthwise 3x3": "conv-depthwise 6x2x1",
        "kws-pointwise 64->64": "pointwise 6x4x1 splat ~1.428/MAC",
        "resnet8-3x3 16ch 32x32": "conv-columns 6x4x1 splat",
        "resnet8-3x3 s2 32ch": "conv-columns 6x4x1 splat",
        "resnet8-3x3 64ch 8x8": "conv-columns 6x4x1 splat",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x4x1 splat panels ~1.472/MAC",
        "grouped 3x3 g4": "conv-columns 4x4x1 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-columns 4x4x1 splat",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x1 splat panels ~2.250/MAC",
        "gemm 512^3": "matmul 6x4x1 splat panels ~1.418/MAC",
        "matmul runtime 64^3": "matmul 6x4x1 splat ~1.422/MAC",
    },
    "rv64gcv": {
        "kws-conv1 10x4 s2": "conv-channels 4x2x8 channels-last ~0.237/MAC",
        "kws-depthwise 3x3": "conv-depthwise 6x1x8",
        "kws-pointwise 64->64": "pointwise 4x2x8 splat ~0.242/MAC",
        "resnet8-3x3 16ch 32x32": "conv-channels 4x2x8 channels-last ~0.188/MAC",
        "resnet8-3x3 s2 32ch": "conv-channels 4x2x8 channels-last ~0.219/MAC",
        "resnet8-3x3 64ch 8x8": "conv-channels 4x2x8 channels-last ~0.188/MAC",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 4x2x8 splat panels ~0.229/MAC",
        "grouped 3x3 g4": "conv-columns 4x2x8 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-channels 2x2x8 channels-last ~0.229/MAC",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x8 splat panels ~0.417/MAC",
        "gemm 512^3": "matmul 4x2x8 splat panels ~0.219/MAC",
        "matmul runtime 64^3": "matmul 4x2x8 splat ~0.219/MAC",
    },
    "x86-64-v3": {
        "kws-conv1 10x4 s2": "conv-channels 2x4x8 channels-last ~0.231/MAC",
        "kws-depthwise 3x3": "conv-depthwise 1x2x8",
        "kws-pointwise 64->64": "pointwise 6x2x8 splat ~0.231/MAC",
        "resnet8-3x3 16ch 32x32": "conv-channels 4x2x8 channels-last ~0.188/MAC",
        "resnet8-3x3 s2 32ch": "conv-channels 4x2x8 channels-last ~0.219/MAC",
        "resnet8-3x3 64ch 8x8": "conv-channels 4x2x8 channels-last ~0.188/MAC",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x2x8 splat panels ~0.215/MAC",
        "grouped 3x3 g4": "conv-columns 4x2x8 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-channels 2x2x8 channels-last ~0.229/MAC",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x8 splat panels ~0.417/MAC",
        "gemm 512^3": "matmul 6x2x8 splat panels ~0.208/MAC",
        "matmul runtime 64^3": "matmul 6x2x8 splat ~0.209/MAC",
    },
    "cortex-m4": {
        "kws-conv1 10x4 s2": "conv-columns 6x4x1 splat",
        "kws-depthwise 3x3": "conv-depthwise 6x2x1",
        "kws-pointwise 64->64": "pointwise 6x4x1 splat ~1.428/MAC",
        "resnet8-3x3 16ch 32x32": "conv-columns 6x4x1 splat",
        "resnet8-3x3 s2 32ch": "conv-columns 6x4x1 splat",
        "resnet8-3x3 64ch 8x8": "conv-columns 6x4x1 splat",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x4x1 splat panels ~1.472/MAC",
        "grouped 3x3 g4": "conv-columns 4x4x1 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-columns 4x4x1 splat",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x1 splat panels ~2.250/MAC",
        "gemm 512^3": "matmul 6x4x1 splat panels ~1.418/MAC",
        "matmul runtime 64^3": "matmul 6x4x1 splat ~1.422/MAC",
    },
    "cortex-m7": {
        "kws-conv1 10x4 s2": "conv-columns 6x4x1 splat",
        "kws-depthwise 3x3": "conv-depthwise 6x2x1",
        "kws-pointwise 64->64": "pointwise 6x4x1 splat ~1.428/MAC",
        "resnet8-3x3 16ch 32x32": "conv-columns 6x4x1 splat",
        "resnet8-3x3 s2 32ch": "conv-columns 6x4x1 splat",
        "resnet8-3x3 64ch 8x8": "conv-columns 6x4x1 splat",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x4x1 splat panels ~1.472/MAC",
        "grouped 3x3 g4": "conv-columns 4x4x1 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-columns 4x4x1 splat",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x1 splat panels ~2.250/MAC",
        "gemm 512^3": "matmul 6x4x1 splat panels ~1.418/MAC",
        "matmul runtime 64^3": "matmul 6x4x1 splat ~1.422/MAC",
    },
    "cortex-m33": {
        "kws-conv1 10x4 s2": "conv-columns 6x4x1 splat",
        "kws-depthwise 3x3": "conv-depthwise 6x2x1",
        "kws-pointwise 64->64": "pointwise 6x4x1 splat ~1.428/MAC",
        "resnet8-3x3 16ch 32x32": "conv-columns 6x4x1 splat",
        "resnet8-3x3 s2 32ch": "conv-columns 6x4x1 splat",
        "resnet8-3x3 64ch 8x8": "conv-columns 6x4x1 splat",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x4x1 splat panels ~1.472/MAC",
        "grouped 3x3 g4": "conv-columns 4x4x1 splat",
        "regnetx grouped 3x3 g25 2x2": "conv-columns 4x4x1 splat",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x1 splat panels ~2.250/MAC",
        "gemm 512^3": "matmul 6x4x1 splat panels ~1.418/MAC",
        "matmul runtime 64^3": "matmul 6x4x1 splat ~1.422/MAC",
    },
    "cortex-m55": {
        "kws-conv1 10x4 s2": "conv-channels 2x2x4 channels-last ~0.525/MAC",
        "kws-depthwise 3x3": "conv-depthwise 4x1x4",
        "kws-pointwise 64->64": "pointwise 2x2x4 splat ~0.512/MAC",
        "resnet8-3x3 16ch 32x32": "conv-channels 5x1x4 channels-last ~0.424/MAC",
        "resnet8-3x3 s2 32ch": "conv-channels 2x2x4 channels-last ~0.500/MAC",
        "resnet8-3x3 64ch 8x8": "conv-channels 5x1x4 channels-last ~0.438/MAC",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 2x2x4 splat panels ~0.514/MAC",
        "grouped 3x3 g4": "conv-channels 4x1x4 channels-last ~0.438/MAC",
        "regnetx grouped 3x3 g25 2x2": "conv-channels 2x2x4 channels-last ~0.458/MAC",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x3x4 splat panels ~0.583/MAC",
        "gemm 512^3": "matmul 2x2x4 splat panels ~0.500/MAC",
        "matmul runtime 64^3": "matmul 2x2x4 splat ~0.500/MAC",
    },
    "portable-c": {
        "kws-conv1 10x4 s2": "conv-channels 2x4x4 channels-last ~0.463/MAC",
        "kws-depthwise 3x3": "conv-depthwise 3x1x4",
        "kws-pointwise 64->64": "pointwise 6x2x4 splat ~0.428/MAC",
        "resnet8-3x3 16ch 32x32": "conv-channels 4x2x4 channels-last ~0.375/MAC",
        "resnet8-3x3 s2 32ch": "conv-channels 4x2x4 channels-last ~0.438/MAC",
        "resnet8-3x3 64ch 8x8": "conv-channels 4x2x4 channels-last ~0.375/MAC",
        "mobilenet-pointwise 3x3 plane": "pointwise-by-channels 6x2x4 splat panels ~0.431/MAC",
        "grouped 3x3 g4": "conv-channels 4x2x4 channels-last ~0.375/MAC",
        "regnetx grouped 3x3 g25 2x2": "conv-channels 2x4x4 channels-last ~0.417/MAC",
        "conv3d": "loop",
        "fc 1x64 -> 12": "matmul 1x4x4 splat panels ~0.583/MAC",
        "gemm 512^3": "matmul 6x2x4 splat panels ~0.417/MAC",
        "matmul runtime 64^3": "matmul 6x2x4 splat ~0.418/MAC",
    },
}
UNITS = {**{name: p.vector_unit for name, p in all_profiles().items()}, "portable-c": PORTABLE_C}


def choose(unit, layer) -> Schedule:
    if layer in CONV:
        x, w, y, s, d, p, g = CONV[layer]
        return conv_schedule(UNITS[unit], ConvLayer(x, w, y, s, d, p, g, True))
    m, n, k, b_const = MATMUL[layer]
    return matmul_schedule(UNITS[unit], m, n, k, b_const=b_const)


@pytest.mark.parametrize("unit,layer", [(u, layer) for u in EXPECTED for layer in EXPECTED[u]])
def test_schedule_table(unit, layer):
    assert str(choose(unit, layer)) == EXPECTED[unit][layer]


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_tiles_are_of_the_unit_and_fit_its_registers(unit):
    """Independent of the cost models: every tile's accumulators fit the register file
    with room for an operand, its vectors are the unit's width, and its kind is known."""
    vec = UNITS[unit]
    for layer in [*CONV, *MATMUL]:
        s = choose(unit, layer)
        assert s.kind in KINDS
        if s.kind != "loop":
            assert s.lanes == vec.lanes, (layer, s)
            assert s.rows * s.vectors < vec.registers - 1, (layer, s)


def test_every_profile_is_pinned():
    """A new profile gets its row of the table (IREE pins each target's strategy too)."""
    runnable = {name for name, p in all_profiles().items() if p.vector_bits != 128 or not p.vector_fma_by_lane}
    assert runnable <= set(EXPECTED), sorted(runnable - set(EXPECTED))


def test_the_lowering_carries_out_the_recorded_schedule(tmp_path, monkeypatch):
    """The record drives the code: the same MatMul built with its chosen tile and with a
    hand-set 1x1 tile gives different objects, and both compute the product (natively,
    against onnxruntime)."""
    import dataclasses

    from onnx import helper

    from helpers import assert_close, compile_and_run, onnxruntime_outputs
    from toolchain.ops import registry

    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 40)).astype(np.float32)
    x = rng.standard_normal((24, 48)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": (np.float32, (24, 48))},
                       {"y": (np.float32, (24, 40))}, {"w": w})
    want = onnxruntime_outputs(model, {"x": x})[0]
    got, chosen, _ = compile_and_run(model, "x86-64-v3", {"x": x}, _dir(tmp_path, "chosen"))
    assert_close(got[0], want, what="chosen tile")
    assert chosen.manifest["schedules"]["MatMul_0"].startswith("matmul 6x2x8 splat panels")

    op = registry.get("MatMul")
    original = op.schedule
    monkeypatch.setattr(op, "schedule", lambda node, vec: dataclasses.replace(original(node, vec), rows=1, vectors=1))
    got, forced, _ = compile_and_run(model, "x86-64-v3", {"x": x}, _dir(tmp_path, "forced"))
    assert_close(got[0], want, what="hand-set tile")
    assert forced.manifest["schedules"]["MatMul_0"].startswith("matmul 1x1x8")
    assert forced.paths["object"].read_bytes() != chosen.paths["object"].read_bytes()


def _dir(root, name):
    (root / name).mkdir()
    return root / name


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_a_kernel_with_many_taps_is_a_loop_not_unrolled(unit):
    """A weight gradient's Conv has the output's spatial extent as its kernel (32x32 in
    ResNet-8's pullback): beyond MAX_UNROLLED_TAPS taps, no register tile (which unrolls every
    tap) but the plain loop nest; an 11x11 kernel (121 taps, about KWS's 25x5 weight
    gradients) still gets a tile. A large kernel over a few outputs per channel (the 32x32
    one's 3x3) is the "conv-taps-reduce" tile on a vector unit (its kernel rows a run-time
    loop: nothing unrolled per tap), the loop nest on a scalar one."""
    from toolchain.schedules import MAX_UNROLLED_TAPS

    def layer(k):
        return ConvLayer((16, 1, 34, 34), (8, 1, k, k), (16, 8, 35 - k, 35 - k), (1, 1), (1, 1), (0, 0, 0, 0))

    assert MAX_UNROLLED_TAPS == 128
    few = "conv-taps-reduce" if UNITS[unit].lanes > 1 else "loop"
    assert conv_schedule(UNITS[unit], layer(32)).kind == few
    assert conv_schedule(UNITS[unit], layer(12)).kind == "loop"
    assert conv_schedule(UNITS[unit], layer(11)).kind != "loop"


def test_an_edge_is_one_predicated_vector_where_the_unit_masks():
    """vector_chunks: 11 columns on 4 lanes are 4, 4, 2, 1 without masking, 4, 4, 3 with it;
    the tile cost model counts the fewer steps (a 7-column Gemm output, MVE's unit)."""
    import dataclasses

    from toolchain.schedules.cost import matmul_tile_cost, vector_chunks
    from toolchain.targets import get_profile

    assert vector_chunks(11, 4) == [4, 4, 2, 1] and vector_chunks(11, 4, masked=True) == [4, 4, 3]
    assert vector_chunks(8, 4, masked=True) == [4, 4] and vector_chunks(3, 1, masked=True) == [1, 1, 1]
    mve = get_profile("cortex-m55").vector_unit
    unmasked = dataclasses.replace(mve, masked_tails=False)
    assert matmul_tile_cost(mve, 5, 7) < matmul_tile_cost(unmasked, 5, 7)
