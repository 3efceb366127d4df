"""Each pass does its one rewrite, keeps the graph valid, and keeps its meaning: the
reference interpreter gives onnxruntime's answer before and after the pipeline. The
memory planner never lets two live tensors overlap."""
import numpy as np
import pytest
from onnx import helper

from helpers import ROOT, assert_close, check_against_onnxruntime, make_model, onnxruntime_outputs
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret
from toolchain.memory import plan_memory
from toolchain.passes import PIPELINE, run_pipeline
from toolchain.passes.cleanup import eliminate_common_subexpressions, eliminate_dead_code
from toolchain.passes.fuse import fold_batchnorm, fuse_activations, fuse_residuals

F = np.float32
rng = np.random.default_rng(7)


def randn(*shape):
    return rng.standard_normal(shape).astype(F)


def conv_bn_relu_model():
    c = 6
    bn = {"s": randn(c) + 2, "beta": randn(c), "mean": randn(c), "var": np.abs(randn(c)) + 0.5}
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["n"], epsilon=1e-3, name="bn"),
         helper.make_node("Relu", ["n"], ["y"], name="relu")],
        {"x": (F, (1, 3, 8, 8))}, {"y": (F, (1, c, 8, 8))},
        {"w": randn(c, 3, 3, 3), "b": randn(c), **bn})


def run_one(pass_fn, model):
    g = import_model(model)
    before = g.op_counts()
    changed = pass_fn(g)
    g.verify()
    return g, before, changed


def test_fold_batchnorm_removes_bn_and_keeps_values():
    m = conv_bn_relu_model()
    x = randn(1, 3, 8, 8)
    g, before, changed = run_one(fold_batchnorm, m)
    assert changed and before.get("BatchNormalization") == 1
    assert "BatchNormalization" not in g.op_counts()
    assert_close(interpret(g, [x])[0], onnxruntime_outputs(m, {"x": x})[0], what="after fold-batchnorm")


def test_fuse_activation_into_producer():
    m = conv_bn_relu_model()
    g = import_model(m)
    fold_batchnorm(g)
    assert fuse_activations(g)
    g.verify()
    assert g.op_counts() == {"Conv": 1}
    conv = g.nodes[0]
    assert [s.op for s in conv.epilogue] == ["Relu"]
    x = randn(1, 3, 8, 8)
    assert_close(interpret(g, [x])[0], onnxruntime_outputs(m, {"x": x})[0], what="after fusion")


def test_fused_conv_runs_on_target(workdir):
    m = conv_bn_relu_model()
    res, _ = check_against_onnxruntime(m, {"x": randn(1, 3, 8, 8)}, "x86-64-v3", workdir)
    assert res.manifest["ops"] == {"Conv": 1}


def test_activation_with_two_readers_is_not_fused():
    """Fusing would hide the pre-activation value from its other reader."""
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                    helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Add", ["h", "r"], ["y"])],
                   {"x": (F, (2, 4))}, {"y": (F, (2, 3))}, {"w": randn(4, 3)})
    g = import_model(m)
    fuse_activations(g)
    assert g.op_counts() == {"MatMul": 1, "Relu": 1, "Add": 1}


def residual_block_model():
    """A ResNet block with a projection shortcut computed before the block's second conv."""
    c = 4
    return make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["x", "ws", "bs"], ["s"]),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="second"),
         helper.make_node("Add", ["c2", "s"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        {"x": (F, (1, c, 7, 9))}, {"y": (F, (1, c, 7, 9))},
        {"w1": randn(c, c, 3, 3), "b1": randn(c), "w2": randn(c, c, 3, 3), "b2": randn(c),
         "ws": randn(c, c, 1, 1), "bs": randn(c)})


def skip_minus_matmul_model():
    """The computed value on the right of a Sub: the operand order must survive fusion."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                       helper.make_node("Sub", ["x", "h"], ["y"])],
                      {"x": (F, (3, 5))}, {"y": (F, (3, 5))}, {"w": randn(5, 5)})


def small_plane_bottleneck_model():
    """A residual Add into a pointwise conv on a 3x3 plane, whose vectors run along output
    channels: its epilogue reads the operand lane by lane, a plane apart."""
    return make_model(
        [helper.make_node("Conv", ["x", "ws"], ["s"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["x", "wp", "bp"], ["p"], name="pointwise"),
         helper.make_node("Add", ["s", "p"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        {"x": (F, (1, 128, 3, 3))}, {"y": (F, (1, 32, 3, 3))},
        {"ws": randn(32, 128, 3, 3) * 0.1, "wp": randn(32, 128, 1, 1) * 0.1, "bp": randn(32)})


@pytest.mark.parametrize("make,fused,steps", [(residual_block_model, "second", ["Add", "Relu"]),
                                              (small_plane_bottleneck_model, "pointwise", ["Add", "Relu"]),
                                              (skip_minus_matmul_model, None, ["Sub"])])
def test_fuse_residual_into_producer(make, fused, steps):
    m = make()
    g = import_model(m)
    fuse_activations(g)
    assert fuse_residuals(g)
    g.verify()
    assert not {"Add", "Sub"} & set(g.op_counts())
    node = next(n for n in g.nodes if n.epilogue and (fused is None or n.name == fused))
    assert [s.op for s in node.epilogue] == steps
    x = randn(*[d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim])
    assert_close(interpret(g, [x])[0], onnxruntime_outputs(m, {"x": x})[0], what="after fuse-residuals")


@pytest.mark.parametrize("make", [residual_block_model, small_plane_bottleneck_model, skip_minus_matmul_model])
def test_fused_residual_runs_on_target(make, target, workdir):
    m = make()
    x = randn(*[d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim])
    res, _ = check_against_onnxruntime(m, {"x": x}, target, workdir)
    assert not {"Add", "Sub"} & set(res.manifest["ops"])


def test_residual_fusion_never_grows_the_arena():
    without = [(name, fn) for name, fn in PIPELINE if name != "fuse-residuals"]
    fused = run_pipeline(import_model(residual_block_model()))
    plain = run_pipeline(import_model(residual_block_model()), passes=without)
    assert "Add" in plain.op_counts() and "Add" not in fused.op_counts()
    assert plan_memory(fused, 64).arena_size <= plan_memory(plain, 64).arena_size


def test_residual_computed_after_the_producer_is_not_fused():
    """Running the Conv after the Exp would keep the Conv's input alive longer."""
    m = make_model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("Exp", ["x"], ["e"]),
                    helper.make_node("Add", ["c", "e"], ["y"])],
                   {"x": (F, (1, 2, 4, 4))}, {"y": (F, (1, 2, 4, 4))}, {"w": randn(2, 2, 1, 1)})
    g = import_model(m)
    assert not fuse_residuals(g)
    assert g.op_counts() == {"Add": 1, "Conv": 1, "Exp": 1}


def test_cse_merges_identical_nodes_and_constants():
    w = randn(4, 3)
    m = make_model([helper.make_node("MatMul", ["x", "w1"], ["a"]),
                    helper.make_node("MatMul", ["x", "w2"], ["b"]),
                    helper.make_node("Add", ["a", "b"], ["y"])],
                   {"x": (F, (2, 4))}, {"y": (F, (2, 3))}, {"w1": w, "w2": w.copy()})
    g, before, changed = run_one(eliminate_common_subexpressions, m)
    assert changed and before["MatMul"] == 2 and g.op_counts()["MatMul"] == 1
    x = randn(2, 4)
    assert_close(interpret(g, [x])[0], 2 * (x @ w))


def test_dce_drops_unused_branch():
    m = make_model([helper.make_node("Relu", ["x"], ["y"]),
                    helper.make_node("Exp", ["x"], ["unused"])],
                   {"x": (F, (5,))}, {"y": (F, (5,))})
    g, before, changed = run_one(eliminate_dead_code, m)
    assert changed and "Exp" in before and g.op_counts() == {"Relu": 1}


def test_constant_subgraph_is_folded_away():
    """Shape arithmetic on constants disappears; only real work is left."""
    m = make_model([helper.make_node("Shape", ["x"], ["s"]),
                    helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                    helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
                    helper.make_node("Reshape", ["x", "shape"], ["r"]),
                    helper.make_node("Add", ["c1", "c2"], ["c"]),
                    helper.make_node("Mul", ["r", "c"], ["y"])],
                   {"x": (F, (2, 3, 4))}, {"y": (F, (2, 12))},
                   {"zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
                    "c1": np.full(12, 2, F), "c2": np.full(12, 1, F)})
    g = run_pipeline(import_model(m))
    assert set(g.op_counts()) <= {"Mul", "Reshape", "edgec.Copy"}, g.op_counts()
    x = randn(2, 3, 4)
    assert_close(interpret(g, [x])[0], x.reshape(2, 12) * 3)


def test_pipeline_names_the_failing_pass():
    from toolchain.errors import CompileError

    def broken(g):
        g.nodes[0].inputs = []
        return True

    g = import_model(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, (3,))}, {"y": (F, (3,))}))
    with pytest.raises(CompileError, match="broken-pass"):
        run_pipeline(g, passes=[("broken-pass", broken)])


# -- memory planner -----------------------------------------------------------------
def chain_model(width=64, depth=8, branches=False):
    nodes, inits = [], {}
    prev = "x"
    for i in range(depth):
        inits[f"w{i}"] = randn(width, width) * 0.1
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        if branches and i % 2:
            nodes.append(helper.make_node("Add", [f"h{i}", f"h{i - 1}"], [f"s{i}"]))
            prev = f"s{i}"
        else:
            prev = f"h{i}"
    nodes.append(helper.make_node("Tanh", [prev], ["y"]))
    return make_model(nodes, {"x": (F, (4, width))}, {"y": (F, (4, width))}, inits)


def live_ranges(g):
    index = {id(n): t for t, n in enumerate(g.nodes)}
    first, last = {}, {}
    for t, n in enumerate(g.nodes):
        for v in n.outputs:
            first[id(v)] = t
        for v in n.inputs:
            if v is not None:
                last[id(v)] = t
    return index, first, last


@pytest.mark.parametrize("branches", [False, True])
def test_planner_never_overlaps_live_tensors(branches):
    g = run_pipeline(import_model(chain_model(branches=branches)))
    plan = plan_memory(g, 64)
    _, first, last = live_ranges(g)
    arena = [v for n in g.nodes for v in n.outputs if plan.of(v).kind == "arena"]
    assert arena, "expected intermediates in the arena"
    for v in arena:
        off = plan.of(v).index
        assert off % 64 == 0 and off + v.type.nbytes <= plan.arena_size
    for i, a in enumerate(arena):
        for b in arena[i + 1:]:
            oa, ob = plan.of(a).index, plan.of(b).index
            overlap = oa < ob + b.type.nbytes and ob < oa + a.type.nbytes
            live_together = (first[id(a)] <= last.get(id(b), first[id(b)])
                             and first[id(b)] <= last.get(id(a), first[id(a)]))
            if overlap and live_together:
                # only allowed when b overwrites a in place at a's last use (or a view of it)
                assert oa == ob and (last.get(id(a)) == first[id(b)] or last.get(id(b)) == first[id(a)]), \
                    f"{a.name} and {b.name} overlap while both live"
    assert plan.lower_bound <= plan.arena_size


def test_planner_reuses_memory_in_a_chain():
    """A chain of eight 1 KiB tensors needs two buffers at a time, not eight."""
    g = run_pipeline(import_model(chain_model(width=64, depth=8)))
    plan = plan_memory(g, 16)
    one = 4 * 64 * 4
    assert plan.arena_size <= 2 * one
    assert plan.lower_bound == plan.arena_size


def test_pipeline_keeps_meaning_on_random_graph():
    m = chain_model(width=32, depth=6, branches=True)
    x = randn(4, 32)
    g = import_model(m)
    before = interpret(g, [x])[0]
    run_pipeline(g)
    assert_close(interpret(g, [x])[0], before)
    assert_close(before, onnxruntime_outputs(m, {"x": x})[0])
    assert len(PIPELINE) >= 6


def test_buffers_are_aligned_to_a_vector_not_to_the_arena():
    """Each buffer is aligned as far as its kernels read it (one vector register, at least 16
    bytes), the arena itself to its profile's alignment; the fully-connected autoencoder's
    arena meets its lower bound, 1024 bytes (1088 when every buffer sat on 64 bytes and
    equal-size buffers were placed in one order only)."""
    import onnx

    from toolchain.compiler import compile_onnx
    from toolchain.targets import get_profile

    model = onnx.load(ROOT / "tests" / "models" / "fc_autoencoder.onnx")
    for target, vector_bytes in (("cortex-a76", 16), ("x86-64-v3", 32)):
        compiled = compile_onnx(model, target)
        plan = compiled.plan
        assert plan.alignment == get_profile(target).arena_align == 64
        assert all(b.offset % vector_bytes == 0 for b in plan.buffers)
        assert plan.arena_size == plan.lower_bound == 1024


def test_placement_retries_equal_size_orders_until_the_lower_bound():
    """Eight 512-byte buffers in a chain with a 32-byte one in the middle: first fit by size
    alternates the big ones from the start, leaving the small one no room beside them
    (1056 bytes); another order of the equal-size buffers reaches the bound, 1024."""
    from toolchain.memory import Buffer, _place, _place_in_order

    def chain():
        big = [Buffer(512, t, t + 1) for t in (0, 1, 2, 3, 5, 6, 7, 8)]
        return big + [Buffer(32, 4, 5)]

    first = chain()
    assert _place_in_order(sorted(first, key=lambda b: (-b.size, b.start)), 16) == 1056
    again = chain()
    _place(again, 16, lower=1024)
    assert max(b.offset + b.size for b in again) == 1024
    for i, a in enumerate(again):  # and nothing alive at once overlaps
        for b in again[i + 1:]:
            if a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    repeat = chain()
    _place(repeat, 16, lower=1024)
    assert [b.offset for b in repeat] == [b.offset for b in again]  # reproducible
