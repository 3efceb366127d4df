"""Concat by placement: producers write straight into the concatenated buffer and the
Concat emits no code, when its inputs are contiguous blocks of the output and die there."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_against_onnxruntime, make_model
from onnx import helper

from toolchain.compiler import compile_onnx
from toolchain.memory import plan_memory
from toolchain.ops import registry

F = np.float32
RNG = np.random.default_rng(11)


def fire(extra_use=False, nested=False, axis=1):
    """SqueezeNet's fire module: squeeze 1x1, then expand 1x1 and 3x3 concatenated."""
    w = lambda *s: (RNG.standard_normal(s) * 0.3).astype(F)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], name="squeeze"),
             helper.make_node("Relu", ["s"], ["sr"], name="squeeze_relu"),
             helper.make_node("Conv", ["sr", "w1"], ["e1"], name="expand1x1"),
             helper.make_node("Relu", ["e1"], ["e1r"], name="relu1"),
             helper.make_node("Conv", ["sr", "w3"], ["e3"], pads=[1, 1, 1, 1], name="expand3x3"),
             helper.make_node("Relu", ["e3"], ["e3r"], name="relu3"),
             helper.make_node("Concat", ["e1r", "e3r"], ["cat"], axis=axis, name="cat")]
    last = "cat"
    if nested:
        nodes += [helper.make_node("Conv", ["sr", "w1"], ["e5"], name="expand_more"),
                  helper.make_node("Concat", ["cat", "e5"], ["cat2"], axis=1, name="cat2")]
        last = "cat2"
    if extra_use:  # an input read again after the Concat: it must keep its own bytes
        nodes += [helper.make_node("Add", ["e1r", "e1r"], ["twice"], name="again"),
                  helper.make_node("ReduceSum", ["twice"], ["t"], keepdims=0, name="sum")]
    channels = 16 + (8 if nested else 0)
    nodes.append(helper.make_node("Conv", [last, "wo"], ["y"], name="out"))
    inits = {"ws": w(4, 8, 1, 1), "w1": w(8, 4, 1, 1), "w3": w(8, 4, 3, 3), "wo": w(4, channels, 1, 1)}
    outs = {"y": (F, [1, 4, 6, 6])}
    if extra_use:
        outs["t"] = (F, [])
    return make_model(nodes, {"x": (F, [1, 8, 6, 6])}, outs, inits)


def concat_nodes(g):
    return [n for n in g.nodes if n.op == "Concat"]


@pytest.mark.parametrize("case", ["fire", "nested", "extra-use"])
def test_matches_onnxruntime_on_target(case, target, workdir):
    model = fire(extra_use=case == "extra-use", nested=case == "nested")
    x = RNG.standard_normal((1, 8, 6, 6)).astype(F)
    check_against_onnxruntime(model, {"x": x}, target, workdir)


def test_the_concat_is_elided_and_the_arena_shrinks(monkeypatch):
    c = compile_onnx(fire(), "cortex-a76")
    (cat,) = concat_nodes(c.graph)
    assert id(cat) in c.plan.elided
    # the two halves are the inputs' own storage, back to back
    a, b = (c.plan.of(v).index for v in cat.inputs)
    assert c.plan.of(cat.outputs[0]).index == a and b == a + cat.inputs[0].type.nbytes
    monkeypatch.setattr(registry.get("Concat"), "joins_inputs", False)
    copying = plan_memory(c.graph, 64)  # the same graph, the Concat copying its inputs
    assert not copying.elided
    print(f"fire module arena: joined {c.plan.arena_size} B, copying {copying.arena_size} B")
    assert c.plan.arena_size < copying.arena_size


def test_nested_joins_are_resolved_and_both_elided():
    c = compile_onnx(fire(nested=True), "x86-64-v3")
    assert {id(n) for n in concat_nodes(c.graph)} <= c.plan.elided


def test_an_input_read_later_is_not_joined():
    c = compile_onnx(fire(extra_use=True), "x86-64-v3")
    (cat,) = concat_nodes(c.graph)
    assert id(cat) not in c.plan.elided


def test_a_concat_on_an_inner_axis_is_not_joined():
    model = fire()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    for vi in model.graph.output:
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    c = compile_onnx(model, "x86-64-v3")  # batch 2: channel blocks are not contiguous
    assert not c.plan.elided
