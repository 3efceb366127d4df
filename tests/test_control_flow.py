"""If, Loop and Scan inlined at import (toolchain/frontend/control_flow.py): an If whose
condition is known at compile time imports its taken branch, one computed at run time
both branches and a Where; a Loop with a compile-time trip count and a Scan are unrolled
(up to UNROLL_LIMIT nodes). Built for the host and compared with onnxruntime; refusals
name the node and op and say why."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from helpers import assert_close, compile_and_run, onnxruntime_outputs
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError
from toolchain.frontend.control_flow import UNROLL_LIMIT
from toolchain.frontend.onnx_import import import_model

HOST = "x86-64-v3"
F = TP.FLOAT
RNG = np.random.default_rng(21)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "cf", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, 8)
    onnx.checker.check_model(m)
    return m


def const(name, array):
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(array), name))


def check(m, *feed_sets, workdir):
    """Build once per feed set, run on the host, compare with onnxruntime."""
    for feeds in feed_sets:
        got, _, _ = compile_and_run(m, HOST, feeds, workdir)
        want = onnxruntime_outputs(m, feeds)
        assert len(got) == len(want)
        for j, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, what=f"output {j}")


def refused(m, kind=CompileError):
    with pytest.raises(kind) as e:
        import_model(m)
    return e.value


# -- If ---------------------------------------------------------------------------------
def shape_test_if():
    """cond = Size(x) == 6, known at compile time: the branches' outputs differ in shape
    (valid only because one is taken), and both read outer-scope names."""
    then_g = helper.make_graph([helper.make_node("Reshape", ["x", "flat"], ["t"])], "then", [],
                               [vi("t", F, None)])
    else_g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["e"], keepdims=0)], "else", [],
                               [vi("e", F, None)])
    nodes = [helper.make_node("Size", ["x"], ["n"]), const("six", np.int64(6)),
             helper.make_node("Equal", ["n", "six"], ["c"]),
             helper.make_node("If", ["c"], ["r"], name="pick", then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["r", "r"], ["y"])]
    return nodes, then_g, else_g


def test_if_with_a_folded_condition_imports_the_taken_branch_only(workdir):
    nodes, _, _ = shape_test_if()
    flat = helper.make_tensor("flat", TP.INT64, [1], [-1])
    m = model(nodes, [vi("x", F, [2, 3])], [vi("y", F, [6])], [flat])
    g = import_model(m)
    assert not any("/else/" in n.name or n.op == "Where" for n in g.nodes)
    assert any(n.name.startswith("pick/then/") for n in g.nodes)
    check(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, workdir=workdir)
    m3 = model(nodes, [vi("x", F, [2, 2])], [vi("y", F, [])], [flat])  # Size 4: the else branch
    g3 = import_model(m3)
    assert any(n.name.startswith("pick/else/") for n in g3.nodes) and not any("/then/" in n.name for n in g3.nodes)
    check(m3, {"x": RNG.standard_normal((2, 2)).astype(np.float32)}, workdir=workdir)


def runtime_if(else_out_shape=(2, 3)):
    """cond = ReduceSum(x) > 0 at run time; then: x * w (an initializer), else: x - 1 (or a
    transposed copy when else_out_shape differs); plus an output both branches share."""
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["t"]), helper.make_node("Identity", ["w"], ["tw"])],
                               "then", [], [vi("t", F, None), vi("tw", F, None)])
    if else_out_shape == (2, 3):
        body = [const("one", np.float32(1)), helper.make_node("Sub", ["x", "one"], ["e"])]
    else:
        body = [helper.make_node("Transpose", ["x"], ["e"], perm=[1, 0])]
    body.append(helper.make_node("Identity", ["w"], ["ew"]))
    else_g = helper.make_graph(body, "else", [], [vi("e", F, None), vi("ew", F, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), const("zero", np.float32(0)),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["r", "same"], name="sel", then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["r", "same"], ["y"])]
    w = onnx.numpy_helper.from_array(RNG.standard_normal((2, 3)).astype(np.float32), "w")
    return model(nodes, [vi("x", F, [2, 3])], [vi("y", F, [2, 3])], [w])


def test_if_with_a_run_time_condition_computes_both_and_selects(workdir):
    m = runtime_if()
    g = import_model(m)
    assert [n.op for n in g.nodes].count("Where") == 2
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    check(m, {"x": np.abs(x)}, {"x": -np.abs(x)}, workdir=workdir)


def test_if_with_a_run_time_condition_and_branches_of_different_shapes_is_refused():
    e = refused(runtime_if(else_out_shape=(3, 2)), UnsupportedError)
    assert e.node == "sel" and e.op == "If"
    assert "computed at run time" in str(e) and "f32[2,3]" in str(e) and "f32[3,2]" in str(e)


def test_if_condition_with_several_elements_is_invalid():
    br = helper.make_graph([const("o", np.float32(1))], "b", [], [vi("o", F, [])])
    m = model([helper.make_node("If", ["c"], ["y"], name="iff", then_branch=br, else_branch=br)],
              [vi("c", TP.BOOL, [2])], [vi("y", F, [])])
    e = refused(m, InvalidModelError)
    assert e.node == "iff" and "one element" in str(e)


# -- Loop -------------------------------------------------------------------------------
def loop_body(extra=(), cond_out="cond_in"):
    """(i, cond, acc) -> (cond, acc + x * float(i), scan: acc * 2): reads outer-scope x."""
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["x", "fi"], ["xi"]),
             helper.make_node("Add", ["acc", "xi"], ["acc_out"]), const("two", np.float32(2)),
             helper.make_node("Mul", ["acc_out", "two"], ["s"]), *extra]
    if cond_out == "cond_in":
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    return helper.make_graph(nodes, "body", [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []),
                                             vi("acc", F, [3])],
                             [vi("cond_out", TP.BOOL, []), vi("acc_out", F, [3]), vi("s", F, [3])])


def loop_model(trips, body=None, cond_input="", m_input=False, scan_len=None):
    inits = [] if m_input else [helper.make_tensor("M", TP.INT64, [], [trips])]
    ins = [vi("x", F, [3]), vi("a0", F, [3])] + ([vi("M", TP.INT64, [])] if m_input else [])
    if cond_input:
        ins.append(vi(cond_input, TP.BOOL, []))
    nodes = [helper.make_node("Loop", ["M", cond_input, "a0"], ["acc", "scan"], name="loop",
                              body=body or loop_body())]
    return model(nodes, ins, [vi("acc", F, [3]), vi("scan", F, [scan_len or trips, 3])], inits)


def loop_feeds():
    return {"x": RNG.standard_normal(3).astype(np.float32), "a0": RNG.standard_normal(3).astype(np.float32)}


def test_loop_with_a_constant_trip_count_is_unrolled(workdir):
    m = loop_model(4)
    g = import_model(m)
    assert any(n.name.startswith("loop/3/") for n in g.nodes) and not any("loop/4/" in n.name for n in g.nodes)
    check(m, loop_feeds(), workdir=workdir)


def test_loop_body_condition_known_each_iteration_stops_it(workdir):
    """cond_out = i < 2: false after iteration 2, so 3 iterations of M = 10 run."""
    body = loop_body(extra=[const("lim", np.int64(2)), helper.make_node("Less", ["i", "lim"], ["cond_out"])],
                     cond_out=None)
    check(loop_model(10, body, scan_len=3), loop_feeds(), workdir=workdir)


def while_model(m_value, stop_after=2):
    """M (absent when m_value is None), cond a constant true, the body's condition i < stop_after."""
    extra = [const("lim", np.int64(stop_after)), helper.make_node("Less", ["i", "lim"], ["cond_out"])]
    inits = [helper.make_tensor("go", TP.BOOL, [], [True])]
    if m_value is not None:
        inits.append(helper.make_tensor("M", TP.INT64, [], [m_value]))
    nodes = [helper.make_node("Loop", ["M" if m_value is not None else "", "go", "a0"], ["acc", "scan"], name="loop",
                              body=loop_body(extra, cond_out=None))]
    return model(nodes, [vi("x", F, [3]), vi("a0", F, [3])],
                 [vi("acc", F, [3]), vi("scan", F, [stop_after + 1, 3])], inits)


def test_while_loops_whose_condition_is_known_each_iteration(workdir):
    """No trip count, or 2**63 - 1 of them: the loop runs until i < 2 turns false."""
    for m_value in (None, np.iinfo(np.int64).max):
        check(while_model(m_value), loop_feeds(), workdir=workdir)


def test_loop_that_never_stops_is_refused():
    e = refused(while_model(None, stop_after=10 ** 6), UnsupportedError)
    assert e.node == "loop" and "until its condition turns false" in str(e) and str(UNROLL_LIMIT) in str(e)
    body = loop_body()
    m = model([helper.make_node("Loop", ["", "", "a0"], ["acc", "scan"], name="loop", body=body)],
              [vi("x", F, [3]), vi("a0", F, [3])], [vi("acc", F, [3]), vi("scan", F, [1, 3])])
    e = refused(m, UnsupportedError)
    assert e.node == "loop" and "infinite loop" in str(e)


def test_loop_with_a_run_time_trip_count_or_condition_is_refused():
    e = refused(loop_model(4, m_input=True), UnsupportedError)
    assert e.node == "loop" and e.op == "Loop" and "trip count" in str(e) and "compile-time constant" in str(e)
    e = refused(loop_model(4, cond_input="go"), UnsupportedError)
    assert e.node == "loop" and "data-dependent termination" in str(e)
    # the body's condition output computed from data
    body = loop_body(extra=[helper.make_node("ReduceSum", ["acc_out"], ["tot"], keepdims=0),
                            const("z", np.float32(0)), helper.make_node("Less", ["tot", "z"], ["cond_out"])],
                     cond_out=None)
    e = refused(loop_model(4, body), UnsupportedError)
    assert e.node == "loop" and "iteration 0" in str(e) and "data-dependent termination" in str(e)


def test_loop_over_the_unroll_limit_is_refused():
    trips = UNROLL_LIMIT // 6 + 1  # the body has 6 nodes
    e = refused(loop_model(trips), UnsupportedError)
    assert e.node == "loop" and str(UNROLL_LIMIT) in str(e) and str(trips * 6) in str(e)


def test_loop_of_no_iterations_gives_the_initial_state_and_an_empty_scan(workdir):
    check(loop_model(0), loop_feeds(), workdir=workdir)


# -- nested -----------------------------------------------------------------------------
def test_if_inside_a_loop_body(workdir):
    """In the unrolled body, If(i < 2) has a constant condition each iteration (the
    iteration number is a constant there); a second If on data is selected at run time."""
    br = lambda op, out: helper.make_graph([helper.make_node(op, ["acc", "x"], [out])], op, [],  # noqa: E731
                                           [vi(out, F, [3])])
    nodes = [const("lim", np.int64(2)), helper.make_node("Less", ["i", "lim"], ["early"]),
             helper.make_node("If", ["early"], ["step"], name="phase", then_branch=br("Add", "pa"),
                              else_branch=br("Mul", "pm")),
             helper.make_node("ReduceMax", ["step"], ["mx"], keepdims=0), const("one", np.float32(1)),
             helper.make_node("Greater", ["mx", "one"], ["big"]),
             helper.make_node("If", ["big"], ["acc_out"], name="clip", then_branch=br("Sub", "ps"),
                              else_branch=helper.make_graph([helper.make_node("Identity", ["step"], ["pi"])], "id",
                                                            [], [vi("pi", F, [3])])),
             helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc_out"], ["s"])]
    body = helper.make_graph(nodes, "body", [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("acc", F, [3])],
                             [vi("cond_out", TP.BOOL, []), vi("acc_out", F, [3]), vi("s", F, [3])])
    m = loop_model(5, body)
    g = import_model(m)
    names = [n.name for n in g.nodes]
    assert any(n.startswith("loop/0/phase/then/") for n in names) and any(n.startswith("loop/4/phase/else/")
                                                                          for n in names)
    assert [n.op for n in g.nodes].count("Where") == 5  # one per iteration, for "clip"
    check(m, loop_feeds(), {"x": np.float32([0.5, -0.2, 0.1]), "a0": np.float32([0.1, 0.2, -0.3])}, workdir=workdir)


# -- Scan -------------------------------------------------------------------------------
def test_scan_with_axes_and_directions(workdir):
    """Two states, two scan inputs (one read backwards on axis 1), two scan outputs (one
    stacked on axis 1, one in reverse); the body reads an outer-scope initializer."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s0", "a"], ["s0o"]), helper.make_node("Mul", ["b", "k"], ["bk"]),
         helper.make_node("Sub", ["s1", "bk"], ["s1o"]), helper.make_node("Mul", ["s0o", "s1o"], ["y0"]),
         helper.make_node("Max", ["a", "b"], ["y1"])],
        "scan_body", [vi("s0", F, [2]), vi("s1", F, [2]), vi("a", F, [2]), vi("b", F, [2])],
        [vi("s0o", F, [2]), vi("s1o", F, [2]), vi("y0", F, [2]), vi("y1", F, [2])])
    node = helper.make_node("Scan", ["i0", "i1", "xa", "xb"], ["f0", "f1", "o0", "o1"], name="scan", body=body,
                            num_scan_inputs=2, scan_input_axes=[0, 1], scan_input_directions=[0, 1],
                            scan_output_axes=[1, 0], scan_output_directions=[0, 1])
    k = onnx.numpy_helper.from_array(np.float32([0.5, -1.5]), "k")
    m = model([node], [vi("i0", F, [2]), vi("i1", F, [2]), vi("xa", F, [4, 2]), vi("xb", F, [2, 4])],
              [vi("f0", F, [2]), vi("f1", F, [2]), vi("o0", F, [2, 4]), vi("o1", F, [4, 2])], [k])
    feeds = {n: RNG.standard_normal(s).astype(np.float32)
             for n, s in (("i0", 2), ("i1", 2), ("xa", (4, 2)), ("xb", (2, 4)))}
    check(m, feeds, workdir=workdir)


def test_scan8_with_a_batch_axis(workdir):
    body = helper.make_graph([helper.make_node("Add", ["s", "e"], ["so"]), helper.make_node("Neg", ["so"], ["y"])],
                             "b", [vi("s", F, [3]), vi("e", F, [3])], [vi("so", F, [3]), vi("y", F, [3])])
    node = helper.make_node("Scan", ["", "s0", "x"], ["sf", "ys"], name="scan8", body=body, num_scan_inputs=1,
                            directions=[1])
    m = model([node], [vi("s0", F, [2, 3]), vi("x", F, [2, 4, 3])], [vi("sf", F, [2, 3]), vi("ys", F, [2, 4, 3])],
              opset=8)
    check(m, {"s0": RNG.standard_normal((2, 3)).astype(np.float32),
              "x": RNG.standard_normal((2, 4, 3)).astype(np.float32)}, workdir=workdir)


def test_scan_inputs_of_different_lengths_are_invalid():
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "b", [vi("a", F, [2]), vi("b", F, [2])],
                             [vi("y", F, [2])])
    node = helper.make_node("Scan", ["xa", "xb"], ["o"], name="sc", body=body, num_scan_inputs=2)
    m = model([node], [vi("xa", F, [3, 2]), vi("xb", F, [4, 2])], [vi("o", F, [3, 2])])
    e = refused(m, InvalidModelError)
    assert e.node == "sc" and e.op == "Scan" and "sequence lengths differ" in str(e)


def test_unsupported_op_inside_a_body_names_the_inner_node():
    body = helper.make_graph([helper.make_node("Multinomial", ["e"], ["y"], name="draw")], "b", [vi("e", F, [1, 2])],
                             [vi("y", TP.INT32, None)])
    node = helper.make_node("Scan", ["x"], ["o"], name="sc", body=body, num_scan_inputs=1)
    m = model([node], [vi("x", F, [3, 1, 2])], [vi("o", TP.INT32, [3, 1, 1])])
    e = refused(m)
    assert e.node is not None and e.node.startswith("sc/") and "draw" in e.node


def nested_loops(outer, inner):
    """acc += x, inner times per outer iteration (the inner trip count an outer-scope initializer)."""
    inner_body = helper.make_graph([helper.make_node("Add", ["a", "x"], ["a_out"]),
                                    helper.make_node("Identity", ["ci"], ["co"])], "inner",
                                   [vi("j", TP.INT64, []), vi("ci", TP.BOOL, []), vi("a", F, [3])],
                                   [vi("co", TP.BOOL, []), vi("a_out", F, [3])])
    outer_body = helper.make_graph([helper.make_node("Loop", ["N", "", "acc"], ["acc_in"], name="inner",
                                                     body=inner_body),
                                    helper.make_node("Neg", ["acc_in"], ["acc_out"]),
                                    helper.make_node("Identity", ["cond_in"], ["cond_out"])], "outer",
                                   [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("acc", F, [3])],
                                   [vi("cond_out", TP.BOOL, []), vi("acc_out", F, [3])])
    nodes = [helper.make_node("Loop", ["M", "", "a0"], ["acc"], name="outer", body=outer_body)]
    inits = [helper.make_tensor("M", TP.INT64, [], [outer]), helper.make_tensor("N", TP.INT64, [], [inner])]
    return model(nodes, [vi("x", F, [3]), vi("a0", F, [3])], [vi("acc", F, [3])], inits)


def test_nested_loops(workdir):
    check(nested_loops(3, 4), loop_feeds(), workdir=workdir)


def test_nested_loops_share_the_outermost_unroll_budget():
    """50 x 30 two-node inner bodies: each inner loop (60 nodes) and the outer one (150)
    are small, the 3,000 nodes they unroll into are not."""
    e = refused(nested_loops(50, 30), UnsupportedError)
    assert e.op == "Loop" and e.node.startswith("outer/") and "inner" in e.node
    assert "inside the unrolled 'outer'" in str(e) and str(UNROLL_LIMIT) in str(e)


def test_unrolled_loop_and_selected_if_on_every_target(target, workdir):
    """The dataflow control flow becomes (Gather, Reshape, Concat, Where on a 0-d bool)
    runs on each target: a Scan whose body holds an If on data."""
    br = lambda op, out: helper.make_graph([helper.make_node(op, ["s", "e"], [out])], op, [],  # noqa: E731
                                           [vi(out, F, [4])])
    body = helper.make_graph(
        [helper.make_node("ReduceSum", ["e"], ["tot"], keepdims=0), const("z", np.float32(0)),
         helper.make_node("Greater", ["tot", "z"], ["pos"]),
         helper.make_node("If", ["pos"], ["so"], name="pick", then_branch=br("Add", "pa"), else_branch=br("Max", "pm")),
         helper.make_node("Mul", ["so", "e"], ["y"])],
        "body", [vi("s", F, [4]), vi("e", F, [4])], [vi("so", F, [4]), vi("y", F, [4])])
    node = helper.make_node("Scan", ["s0", "x"], ["sf", "ys"], name="scan", body=body, num_scan_inputs=1,
                            scan_output_axes=[1])
    m = model([node], [vi("s0", F, [4]), vi("x", F, [5, 4])], [vi("sf", F, [4]), vi("ys", F, [4, 5])])
    feeds = {"s0": RNG.standard_normal(4).astype(np.float32), "x": RNG.standard_normal((5, 4)).astype(np.float32)}
    got, _, _ = compile_and_run(m, target, feeds, workdir)
    for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(m, feeds))):
        assert_close(g, w, what=f"{target} output {j}")


def test_unsupported_ops_in_every_subgraph_are_listed_at_once():
    """Validation walks the subgraphs: both bodies' unsupported ops in one error, named as
    the importer names them."""
    def branch(op, out):
        return helper.make_graph([helper.make_node(op, ["x"], [out], name=f"n_{op}")], op, [], [vi(out, F, [2])])
    m = model([helper.make_node("If", ["c"], ["y"], name="iff", then_branch=branch("Multinomial", "a"),
                                else_branch=branch("NonZero", "b"))],
              [vi("c", TP.BOOL, []), vi("x", F, [1, 2])], [vi("y", F, [2])])
    e = refused(m, UnsupportedError)
    assert "2 problems" in str(e) and "'iff/then/n_Multinomial'" in str(e) and "'iff/else/n_NonZero'" in str(e)


# -- bounded batch (--dim N<=4) -----------------------------------------------------------
def batched_scan(opset):
    """A Scan whose inputs carry a batch N on axis 0: Scan-9+ scans axis 1 (item-wise);
    Scan-8 scans per batch item, so its unrolled structure depends on N."""
    per = ["N", 3] if opset > 8 else [3]
    body = helper.make_graph([helper.make_node("Add", ["s", "e"], ["so"]), helper.make_node("Tanh", ["so"], ["y"])],
                             "b", [vi("s", F, per), vi("e", F, per)], [vi("so", F, per), vi("y", F, per)])
    ins = ["s0", "x"] if opset > 8 else ["", "s0", "x"]
    axes = dict(scan_input_axes=[1], scan_output_axes=[1]) if opset > 8 else {}
    node = helper.make_node("Scan", ins, ["sf", "ys"], name="scan", body=body, num_scan_inputs=1, **axes)
    return model([node], [vi("s0", F, ["N", 3]), vi("x", F, ["N", 4, 3])],
                 [vi("sf", F, ["N", 3]), vi("ys", F, ["N", 4, 3])], opset=opset)


def test_unrolled_scan_under_a_bounded_batch(workdir):
    from toolchain.compiler import build
    from toolchain.harness.runner import link_harness, run_model
    from toolchain.targets import get_profile

    m = batched_scan(16)
    path = workdir / "batched_scan.onnx"
    onnx.save(m, path)
    out = workdir / "bounded-scan"
    build(path, HOST, "model", out, dims={"N": (1, 4)})
    profile = get_profile(HOST)
    exe = link_harness(out, "model", profile)
    for n in (1, 3):
        f = {"s0": RNG.standard_normal((n, 3)).astype(np.float32),
             "x": RNG.standard_normal((n, 4, 3)).astype(np.float32)}
        got = run_model(exe, profile, [f["s0"], f["x"]], [(np.float32, (n, 3)), (np.float32, (n, 4, 3))],
                        env={"EDGEC_DIMS": str(n)}).outputs
        for j, (g, w) in enumerate(zip(got, onnxruntime_outputs(m, f))):
            assert_close(g, w, what=f"N={n} output {j}")
    from toolchain.frontend.batching import import_batched
    with pytest.raises(UnsupportedError, match="different structure"):
        import_batched(batched_scan(8), "m", {"N": (1, 4)})


def guarded_if(op, divisor=None):
    """If (c) then x op d else x on int32 values, c a run-time condition: d != 0 for a
    run-time d, a bool input beside a constant d."""
    then_g = helper.make_graph([helper.make_node(op, ["x", "d"], ["t"])], "then", [], [vi("t", TP.INT32, [3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", TP.INT32, [3])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="guard", then_branch=then_g, else_branch=else_g)]
    if divisor is None:
        nodes[:0] = [const("z", np.int32(0)), helper.make_node("Equal", ["d", "z"], ["dz"]),
                     helper.make_node("Not", ["dz"], ["c"])]
        return model(nodes, [vi("x", TP.INT32, [3]), vi("d", TP.INT32, [])], [vi("y", TP.INT32, [3])])
    return model(nodes, [vi("x", TP.INT32, [3]), vi("c", TP.BOOL, [])], [vi("y", TP.INT32, [3])],
                 [helper.make_tensor("d", TP.INT32, [], [divisor])])


def test_run_time_if_guarding_an_integer_division_is_refused():
    """Both branches run: x / d with d == 0 would trap where the If would not."""
    for op in ("Div", "Mod"):
        e = refused(guarded_if(op), UnsupportedError)
        assert e.node == "guard" and e.op == "If" and f"({op})" in str(e) and "then branch" in str(e)
        assert "zero" in str(e)


def test_run_time_if_dividing_by_a_nonzero_constant_runs(workdir):
    m = guarded_if("Div", divisor=3)
    check(m, {"x": np.int32([7, -8, 9]), "c": np.array(True)}, {"x": np.int32([0, 5, -6]), "c": np.array(False)},
          workdir=workdir)


def test_run_time_if_gathering_at_run_time_indices_is_refused():
    then_g = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["t"])], "then", [], [vi("t", F, [])])
    else_g = helper.make_graph([const("e", np.float32(0))], "else", [], [vi("e", F, [])])
    nodes = [const("n", np.int64(4)), helper.make_node("Less", ["i", "n"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="bounds", then_branch=then_g, else_branch=else_g)]
    m = model(nodes, [vi("x", F, [4]), vi("i", TP.INT64, [])], [vi("y", F, [])])
    e = refused(m, UnsupportedError)
    assert e.node == "bounds" and "(Gather)" in str(e) and "indices computed at run time" in str(e)
