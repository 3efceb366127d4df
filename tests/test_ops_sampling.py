"""GridSample, AffineGrid and Resize's cubic / tf_crop_and_resize / half_pixel_symmetric /
antialias forms against onnxruntime (natively on x86-64-v3) and onnx's ReferenceEvaluator,
one model on every target, and the bad inputs."""
import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from helpers import assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(11)


def reference_outputs(model, feeds):
    return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]


def sized(nodes, inputs, inits, opset, oracle=onnxruntime_outputs):
    """The model with its output shape filled in from the oracle's answer, and that answer."""
    spec = {k: (v.dtype, v.shape) for k, v in inputs.items()}
    probe = make_model(nodes, spec, {"y": (F, None)}, inits, opset=opset)
    want = oracle(probe, inputs)
    return make_model(nodes, spec, {"y": (F, want[0].shape)}, inits, opset=opset), want


def run_native(model, feeds, workdir):
    return compile_and_run(model, T, feeds, workdir)[0]


def check_many(cases, feeds, inits, opset, workdir, target=T):
    """One model computing every case (node, oracle) side by side, so one build checks them
    all: each output against its oracle's (onnxruntime, or onnx's reference where onnxruntime
    departs from the spec), output shapes from onnx's reference."""
    nodes = []
    for j, (node, _) in enumerate(cases):
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.output[0] = f"y{j}"
        nodes.append(node)
    spec = {k: (v.dtype, v.shape) for k, v in feeds.items()}
    probe = make_model(nodes, spec, {f"y{j}": (F, None) for j in range(len(cases))}, inits, opset=opset)
    only_ort = all(o == "ort" for _, o in cases)  # (onnx's reference knows no opset-16 GridSample names)
    ref = onnxruntime_outputs(probe, feeds) if only_ort else reference_outputs(probe, feeds)
    m = make_model(nodes, spec, {f"y{j}": (F, w.shape) for j, w in enumerate(ref)}, inits, opset=opset)
    ort = ref if only_ort else onnxruntime_outputs(m, feeds) if any(o == "ort" for _, o in cases) else None
    got = compile_and_run(m, target, feeds, workdir)[0]
    for j, (node, oracle) in enumerate(cases):
        want = ort[j] if oracle == "ort" else ref[j]
        attrs = [(a.name, helper.get_attribute_value(a)) for a in node.attribute]
        assert_close(got[j], want, what=f"{target} {node.op_type} {oracle} {attrs}")
    return got


# -- GridSample ---------------------------------------------------------------------------------
def grid_inputs(spatial_in, spatial_out, spread=1.4, n=2, c=3, suffix=""):
    r = len(spatial_in)
    x = rng.standard_normal((n, c) + spatial_in).astype(F)
    g = rng.uniform(-spread, spread, (n,) + spatial_out + (r,)).astype(F)
    # exact borders, centres and corners, where rounding and padding choices show
    g.reshape(-1)[:8] = [-1, 1, 0, -1.5, 1.5, 0.5, -0.5, 1 / 3]
    return {"x" + suffix: x, "g" + suffix: g}


GS_CASES = [(mode, pad, align) for mode in ("linear", "nearest", "cubic")
            for pad in ("zeros", "border", "reflection") for align in (0, 1)]
PADS = ("zeros", "border", "reflection")


def gs(mode, pad, align=0, suffix=""):
    return helper.make_node("GridSample", ["x" + suffix, "g" + suffix], ["y"], mode=mode, padding_mode=pad,
                            align_corners=align)


def test_gridsample_2d(workdir):
    """onnxruntime clamps a cubic tap's position with border padding even inside the border
    band [-0.5, 0) (align_corners=0) and beyond; the spec (onnx's reference) clamps only positions
    outside the band and then each tap's index: onnx's reference is the oracle there."""
    feeds = grid_inputs((5, 6), (4, 7))
    cases = [(gs(*c), "ref" if c[:2] == ("cubic", "border") else "ort") for c in GS_CASES]
    check_many(cases, feeds, {}, 20, workdir)


def test_gridsample_opset16_names(workdir):
    feeds = grid_inputs((4, 3), (3, 5), spread=2.5)
    cases = [(gs(mode, "reflection"), "ort") for mode in ("bilinear", "nearest", "bicubic")]
    check_many(cases, feeds, {}, 16, workdir)


def test_gridsample_volumetric_and_1d(workdir):
    """3 spatial axes, and 1: checked against onnx's reference (onnxruntime has no N-D cubic)."""
    feeds = {**grid_inputs((3, 4, 2), (2, 3, 4), suffix="3"), **grid_inputs((6,), (9,), suffix="1")}
    cases = [(gs(mode, pad, align, s), "ref")
             for s, forms in [("3", [("linear", "zeros", 0), ("nearest", "border", 1), ("cubic", "reflection", 0)]),
                              ("1", [("linear", "reflection", 1), ("cubic", "border", 0), ("nearest", "zeros", 0)])]
             for mode, pad, align in forms]
    check_many(cases, feeds, {}, 20, workdir)


def test_gridsample_reference_agrees_with_onnxruntime():
    """Our numpy reference (the interpreter's and constant folding's) is an oracle too."""
    from toolchain.frontend.onnx_import import import_model
    from toolchain.interpreter import interpret
    feeds = grid_inputs((4, 5), (3, 3), spread=3.0)
    for mode, pad, align in GS_CASES:
        m, want = sized([gs(mode, pad, align)], feeds, {}, 20, oracle=reference_outputs)
        got = interpret(import_model(m), [feeds["x"], feeds["g"]])
        assert_close(got[0], want[0], what=f"{mode} {pad} {align}")


def test_gridsample_nan_grid_reads_inside_the_input(workdir):
    """A NaN or huge grid value may give any value but must not read outside X (the harness's
    arena guard would see it) nor crash."""
    feeds = grid_inputs((3, 3), (2, 4))
    feeds["g"].reshape(-1)[:4] = [np.nan, 1e30, -1e30, np.inf]
    nodes = [gs("cubic", pad) for pad in PADS]
    for j, n in enumerate(nodes):
        n.output[0] = f"y{j}"
    m = make_model(nodes, {k: (F, v.shape) for k, v in feeds.items()}, {f"y{j}": (F, (2, 3, 2, 4)) for j in range(3)},
                   {}, opset=20)
    for got in run_native(m, feeds, workdir):
        assert got.shape == (2, 3, 2, 4)
        assert np.isfinite(got[1]).all()  # the second item's grid is ordinary


# -- AffineGrid ---------------------------------------------------------------------------------
def test_affine_grid_onnx_node_cases_with_constant_size(workdir):
    m, feeds, want, names = onnx_node_cases("affinegrid", "AffineGrid", 20)
    assert len(names) == 4
    for g, w, name in zip(run_native(m, feeds, workdir), want, names):
        assert_close(g, w, what=name)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # onnx's reference, one-point axis
def test_affine_grid(workdir):
    """An axis of one point with align_corners=1 sits at -1 (onnx's reference, PyTorch's
    linspace(-1, 1, 1)); onnxruntime puts it at +1: onnx's reference is the oracle there."""
    feeds, inits, cases = {}, {}, []
    for j, size in enumerate([(2, 3, 5, 4), (1, 2, 3, 4, 2), (2, 1, 1, 3)]):
        r = len(size) - 2
        feeds[f"t{j}"] = rng.standard_normal((size[0], r, r + 1)).astype(F)
        inits[f"s{j}"] = np.array(size, np.int64)
        for align in (0, 1):
            oracle = "ref" if align and 1 in size[2:] else "ort"
            cases.append((helper.make_node("AffineGrid", [f"t{j}", f"s{j}"], ["y"], align_corners=align), oracle))
    check_many(cases, feeds, inits, 20, workdir)


# -- Resize: cubic, antialias, tf_crop_and_resize, half_pixel_symmetric ---------------------------
def onnx_node_cases(module, cls, opset):
    """onnx's own node cases of one op (their expected outputs come from onnx's test code),
    each case's parameters after input 0 (scales, sizes, roi, size: graph inputs there) made
    initializers, all in one model."""
    import importlib

    import onnx.backend.test.case.node as node_cases
    cls = getattr(importlib.import_module(f"onnx.backend.test.case.node.{module}"), cls)
    collected, names_taken = node_cases._NodeTestCases, node_cases._existing_names
    saved = list(collected), dict(names_taken)
    collected.clear()
    names_taken.clear()
    try:  # onnx keeps its cases in module globals other tests read (node_suite.materialize)
        for name in dir(cls):
            if name.startswith("export"):
                getattr(cls, name)()
        cases = [c for c in collected if "expanded" not in c.name]
    finally:
        collected[:] = saved[0]
        names_taken.clear()
        names_taken.update(saved[1])
    nodes, inputs, inits, feeds, want, names = [], {}, {}, {}, [], []
    for j, case in enumerate(cases):
        node = onnx.NodeProto.FromString(case.model.graph.node[0].SerializeToString())
        data, outputs = case.data_sets[0]
        values = dict(zip([i.name for i in case.model.graph.input], data))
        wired = []
        for i, nm in enumerate(node.input):
            if i == 0:
                wired.append(f"x{j}")
                feeds[f"x{j}"] = values[nm]
                inputs[f"x{j}"] = (F, values[nm].shape)
            elif nm:
                wired.append(f"c{j}_{nm}")
                inits[f"c{j}_{nm}"] = np.asarray(values[nm])
            else:
                wired.append("")
        del node.input[:]
        node.input.extend(wired)
        node.output[0] = f"y{j}"
        node.name = case.name
        nodes.append(node)
        want.append(outputs[0])
        names.append(case.name)
    outs = {f"y{j}": (F, w.shape) for j, w in enumerate(want)}
    return make_model(nodes, inputs, outs, inits, opset=opset), feeds, want, names


# The spec's align_corners divides by (length_resized - 1), the output's length; the cases'
# expected outputs divide by scale * length_original - 1 (a fraction when the scale does not
# give a whole length). onnxruntime follows the spec; so do we.
SPEC_OVER_CASE = ("test_resize_downsample_scales_cubic_align_corners",
                  "test_resize_downsample_scales_linear_align_corners")


def test_resize_onnx_node_cases_with_constant_parameters(workdir):
    m, feeds, want, names = onnx_node_cases("resize", "Resize", 19)
    assert len(names) >= 39 and any("cubic" in n for n in names) and any("tf_crop" in n for n in names)
    got = run_native(m, feeds, workdir)
    ort = onnxruntime_outputs(m, feeds)
    for g, w, o, name in zip(got, want, ort, names):
        assert_close(g, o if name in SPEC_OVER_CASE else w, what=name)


def resize_node(mode, coord, kind, j, **attrs):
    ins = ["x", f"roi{j}" if coord == "tf_crop_and_resize" else "", f"s{j}" if kind == "scales" else "",
           f"z{j}" if kind == "sizes" else ""]
    while not ins[-1]:
        ins.pop()
    return helper.make_node("Resize", ins, ["y"], mode=mode, coordinate_transformation_mode=coord, **attrs)


RESIZE_FORMS = [("cubic", {}), ("cubic", dict(cubic_coeff_a=-0.5, exclude_outside=1)),
                ("linear", dict(antialias=1)), ("cubic", dict(antialias=1)), ("nearest", dict(nearest_mode="ceil")),
                ("linear", {})]
RESIZE_COORDS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric",
                 "tf_crop_and_resize")


def test_resize_new_forms_against_onnxruntime(workdir):
    """Every new form under every coordinate transformation, up or down, by scales or by
    sizes in turn (scales giving whole lengths: see SPEC_OVER_CASE), with a roi reaching
    outside the input."""
    x = rng.standard_normal((1, 2, 6, 8)).astype(F)
    params = [("scales", np.array([1, 1, 2.5, 0.5], F)), ("sizes", np.array([1, 2, 3, 13], np.int64)),
              ("scales", np.array([1, 1, 0.5, 0.25], F))]
    cases, inits = [], {}
    for mode, attrs in RESIZE_FORMS:
        for coord in RESIZE_COORDS:
            if mode in ("linear", "nearest") and coord in ("half_pixel", "asymmetric") and not attrs:
                continue  # the kernel-computed path: tests/test_ops_more.py
            for kind, value in params[len(cases) % 3:][:1]:
                j = len(cases)
                inits[f"s{j}" if kind == "scales" else f"z{j}"] = value
                inits[f"roi{j}"] = np.array([0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3], F)
                cases.append((resize_node(mode, coord, kind, j, extrapolation_value=2.5, **attrs), "ort"))
    check_many(cases, {"x": x}, inits, 19, workdir)


def test_resize_reference_agrees_with_onnxruntime():
    from toolchain.frontend.onnx_import import import_model
    from toolchain.interpreter import interpret
    x = rng.standard_normal((1, 2, 5, 7)).astype(F)
    for mode, attrs in RESIZE_FORMS:
        for coord in RESIZE_COORDS:
            node = resize_node(mode, coord, "sizes", 0, extrapolation_value=-3.0, **attrs)
            inits = {"z0": np.array([1, 2, 9, 3], np.int64), "roi0": np.array([0, 0, -0.3, 0.2, 1, 1, 1.1, 0.7], F)}
            m, want = sized([node], {"x": x}, inits, 19)
            assert_close(interpret(import_model(m), [x])[0], want[0], what=f"{mode} {attrs} {coord}")


def test_resize_axes_roi_and_keep_aspect_ratio(workdir):
    x = rng.standard_normal((1, 2, 6, 8)).astype(F)
    inits = {"roi": np.array([0.8, 0.1, 0.2, 1.0], F), "z": np.array([5, 4], np.int64)}
    cases = [(helper.make_node("Resize", ["x", "roi", "", "z"], ["y"], mode="cubic", axes=[3, 2],
                               coordinate_transformation_mode="tf_crop_and_resize"), "ort"),
             (helper.make_node("Resize", ["x", "", "", "z"], ["y"], mode="cubic", axes=[2, 3],
                               keep_aspect_ratio_policy="not_larger"), "ort"),
             (helper.make_node("Resize", ["x", "", "", "z"], ["y"], mode="linear", axes=[2, 3], antialias=1,
                               keep_aspect_ratio_policy="not_smaller"), "ort")]
    check_many(cases, {"x": x}, inits, 19, workdir)


def test_sampling_ops_on_target(target, workdir):
    """A spatial transformer (theta -> grid -> sample) and the new Resize forms, on every target."""
    x = rng.standard_normal((2, 3, 6, 5)).astype(F)
    theta = np.array([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.2]], [[1.2, 0.0, 0.4], [0.1, 0.8, 0.0]]], F)
    inits = {"size": np.array([2, 3, 4, 7], np.int64), "roi0": np.array([0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3], F),
             "s0": np.array([1, 1, 0.5, 1.5], F), "z1": np.array([2, 3, 3, 3], np.int64)}
    feeds = {"x": x, "th": theta}
    nodes = [helper.make_node("AffineGrid", ["th", "size"], ["g"], align_corners=0),
             helper.make_node("GridSample", ["x", "g"], ["y0"], mode="cubic", padding_mode="zeros"),
             helper.make_node("GridSample", ["x", "g"], ["s1"], mode="linear", padding_mode="reflection"),
             helper.make_node("Relu", ["s1"], ["y1"]),  # fused into the sampler's store
             helper.make_node("Resize", ["x", "roi0", "s0"], ["y2"], mode="cubic",
                              coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0),
             helper.make_node("Resize", ["x", "", "", "z1"], ["y3"], mode="linear", antialias=1)]
    spec = {k: (v.dtype, v.shape) for k, v in feeds.items()}
    outs = ["y0", "y1", "y2", "y3"]
    want = onnxruntime_outputs(make_model(nodes, spec, {o: (F, None) for o in outs}, inits, opset=20), feeds)
    m = make_model(nodes, spec, {o: (F, w.shape) for o, w in zip(outs, want)}, inits, opset=20)
    check_against_onnxruntime(m, feeds, target, workdir)


def test_sampling_ops_c_path_without_undefined_behaviour(workdir):
    """The C path, under clang's undefined-behaviour sanitizer (trap mode), with NaN and huge
    grid values: no out-of-range float-to-int conversion, no out-of-bounds read."""
    from test_c_backend import run_c_path
    feeds = grid_inputs((4, 3), (3, 5))
    feeds["g"].reshape(-1)[:4] = [np.nan, 3e9, -3e9, np.inf]
    cases = [gs(mode, pad) for mode in ("cubic", "nearest") for pad in PADS]
    cases.append(helper.make_node("Resize", ["x", "roi", "s"], ["y"], mode="cubic", antialias=1,
                                  coordinate_transformation_mode="tf_crop_and_resize"))
    for j, n in enumerate(cases):
        n.output[0] = f"y{j}"
    inits = {"roi": np.array([0, 0, -0.5, 0.1, 1, 1, 0.9, 1.2], F), "s": np.array([1, 1, 0.5, 2], F)}
    spec = {k: (F, v.shape) for k, v in feeds.items()}
    want = onnxruntime_outputs(make_model(cases, spec, {f"y{j}": (F, None) for j in range(len(cases))}, inits,
                                          opset=20), feeds)
    m = make_model(cases, spec, {f"y{j}": (F, w.shape) for j, w in enumerate(want)}, inits, opset=20)
    got, _ = run_c_path(m, T, feeds, workdir, flags=["-fsanitize=undefined", "-fsanitize-trap=undefined"],
                        tag="-ubsan")
    assert_close(got[-1], want[-1], what="Resize")
    for g in got[:-1]:
        assert np.isfinite(g[1]).all()  # the second item's grid is ordinary


# -- bad inputs -----------------------------------------------------------------------------------
def compile_error(nodes, inputs, inits, opset=20):
    m = make_model(nodes, inputs, {"y": (F, None)}, inits, opset=opset)
    with pytest.raises(CompileError) as e:
        compile_onnx(m, T)
    return e.value


def test_gridsample_bad_inputs_are_named():
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="gs")
    e = compile_error([node], {"x": (F, (1, 2, 4, 4)), "g": (F, (1, 3, 3, 3))}, {})
    assert isinstance(e, InvalidModelError) and "gs" in str(e) and "GridSample" in str(e)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="gs", mode="cubic")
    e = compile_error([node], {"x": (F, (1, 2, 4, 4)), "g": (F, (1, 3, 3, 2))}, {}, opset=16)
    assert isinstance(e, CompileError) and "gs" in str(e) and "cubic" in str(e)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="gs", padding_mode="mirror")
    e = compile_error([node], {"x": (F, (1, 2, 4, 4)), "g": (F, (1, 3, 3, 2))}, {})
    assert isinstance(e, CompileError) and "gs" in str(e) and "mirror" in str(e)


def test_affine_grid_bad_inputs_are_named():
    node = helper.make_node("AffineGrid", ["x", "s"], ["y"], name="ag")
    e = compile_error([node], {"x": (F, (2, 2, 3)), "s": (np.int64, (4,))}, {})
    assert isinstance(e, UnsupportedError) and "ag" in str(e) and "compile-time constant" in str(e)
    e = compile_error([node], {"x": (F, (2, 2, 3))}, {"s": np.array([3, 1, 4, 4], np.int64)})
    assert isinstance(e, InvalidModelError) and "ag" in str(e) and "AffineGrid" in str(e)


def test_resize_bad_parameters_are_named():
    x = {"x": (F, (1, 1, 4, 4))}
    node = helper.make_node("Resize", ["x", "roi", "", "z"], ["y"], name="rs", mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize")
    inputs = {**x, "roi": (F, (8,))}
    e = compile_error([node], inputs, {"z": np.array([1, 1, 3, 3], np.int64)})
    assert isinstance(e, UnsupportedError) and "rs" in str(e) and "roi" in str(e)
    e = compile_error([node], x, {"z": np.array([1, 1, 3, 3], np.int64), "roi": np.zeros(6, F)})
    assert isinstance(e, InvalidModelError) and "rs" in str(e) and "roi" in str(e)
    node = helper.make_node("Resize", ["x", "", "", "z"], ["y"], name="rs", keep_aspect_ratio_policy="fit")
    e = compile_error([node], x, {"z": np.array([1, 1, 3, 3], np.int64)})
    assert isinstance(e, CompileError) and "rs" in str(e) and "fit" in str(e)
    node = helper.make_node("Resize", ["x", "", "", "z"], ["y"], name="rs", mode="nearest", antialias=1)
    e = compile_error([node], x, {"z": np.array([1, 1, 3, 3], np.int64)})
    assert isinstance(e, InvalidModelError) and "rs" in str(e) and "antialias" in str(e)
