"""float16 as a storage type (bits in 16-bit buffers, arithmetic in float32: kernel/half.py,
frontend/float16.py) and empty tensors (a zero-sized dimension: 0-byte buffers, loops that
emit nothing). References are numpy's conversions and onnxruntime, never our own outputs."""
from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_close, compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain import compile_model
from toolchain.compiler import build
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError
from toolchain.frontend.float16 import refuse_computed_float16
from toolchain.frontend.onnx_import import import_model
from toolchain.ir import Graph, TensorType, Value
from toolchain.backends.c import compile_c
from toolchain.inspect.elf import check_self_contained, read_object
from toolchain.targets import all_profiles, get_profile

T = "x86-64-v3"
H = np.float16
RNG = np.random.default_rng(16)
N = 1 << 16


# -- the conversions, exhaustively ---------------------------------------------------------------
def _conversion_model():
    nodes = [helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["d"], ["dh"], to=TensorProto.FLOAT16)]
    return make_model(nodes, {"h": (H, [N]), "x": (np.float32, [N]), "d": (np.float64, [N])},
                      {"f": (np.float32, [N]), "xh": (H, [N]), "dh": (H, [N])}, opset=13)


def _conversion_feeds():
    """Every float16 bit pattern; float32 and float64 values at every float16 midpoint (ties:
    round half to even), one float32 ulp either side of it, and random bits (NaN payloads,
    infinities, float32 subnormals, values far beyond 65504)."""
    h = np.arange(N, dtype=np.uint32).astype(np.uint16).view(H)
    with np.errstate(over="ignore", invalid="ignore"):
        up = np.nextafter(h, H(np.inf)).astype(np.float64)
        mids = (h.astype(np.float64) + up) / 2
    mids = mids[np.isfinite(mids)]
    m32 = mids.astype(np.float32)  # exact: a float16 midpoint has 12 significant bits
    q = N // 4
    x = np.concatenate([m32[:q], (m32.view(np.uint32)[:q] + 1).view(np.float32),
                        (m32.view(np.uint32)[:q] - 1).view(np.float32),
                        RNG.integers(0, 2 ** 32, N - 3 * q, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    d = np.concatenate([mids[q:2 * q], np.nextafter(mids[q:2 * q], 0), np.nextafter(mids[q:2 * q], np.inf),
                        RNG.standard_normal(N - 3 * q) * 3e4])
    x[:8] = [np.inf, -np.inf, np.nan, -0.0, 65504.0, 65519.99, 65520.0, 2.0 ** -25]
    d[:6] = [np.inf, -np.nan, 1e300, -1e-300, 65520.0, 2.0 ** -25 * (1 + 2.0 ** -40)]
    return {"h": h, "x": x, "d": d}


def _same_bits(got, want, what):
    assert got.dtype == want.dtype, what
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all(), f"{what}: NaN not kept"
    ity = np.uint16 if got.dtype == H else np.uint32
    bad = np.flatnonzero(~nan & (got.view(ity) != want.view(ity)))
    assert bad.size == 0, f"{what}: {bad.size} differ, first at {bad[:4]}: got {got[bad[:4]]}, want {want[bad[:4]]}"


@pytest.mark.parametrize("emit", ["object", "c"])
def test_conversions_are_exact_and_round_to_nearest_even(emit, workdir):
    feeds = _conversion_feeds()
    model = _conversion_model()
    if emit == "c":
        got, _ = run_c_path(model, T, feeds, workdir)
    else:
        got, _, _ = compile_and_run(model, T, feeds, workdir)
    with np.errstate(over="ignore", invalid="ignore"):
        want = [feeds["h"].astype(np.float32), feeds["x"].astype(H), feeds["d"].astype(H)]
    for g_, w_, what in zip(got, want, ["float16->float32", "float32->float16", "float64->float16"]):
        _same_bits(g_, w_, f"{emit} {what}")


INTS = ["int32", "int8", "uint8", "int64", "bool"]


@pytest.mark.parametrize("emit", ["object", "c"])
def test_casts_between_float16_and_integers(emit, workdir):
    """float16 -> integers truncate toward zero (values in range), bool is != 0; integers ->
    float16 round to nearest even (2049 -> 2048, 2051 -> 2052; beyond 65504: infinity)."""
    nodes = [helper.make_node("Cast", ["h"], [f"h_{t}"], to=helper.np_dtype_to_tensor_dtype(np.dtype(t)))
             for t in INTS]
    nodes += [helper.make_node("Cast", [f"i_{t}"], [f"f_{t}"], to=TensorProto.FLOAT16) for t in INTS]
    n = 16
    h = np.array([0, -0.0, 0.5, -0.99, 1.5, -2.5, 100.7, -127.9, 127.9, 255.5, 3.0, -3.0, 0.0001, 7, 1, 9], H)
    ints = {"int32": np.array([0, 1, -1, 2049, 2051, -2051, 65504, 65519, 65520, -70000, 4097, 12345, -7, 3, 2, 1],
                              np.int32),
            "int8": np.array([0, 1, -1, 127, -128, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, -15], np.int8),
            "uint8": np.array([0, 1, 255, 128, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 200], np.uint8),
            "int64": np.array([0, 1, -1, 2049, 2051, -2051, 65504, 65519, 65520, -70000, 4097, 2 ** 40, -7, 3, 2, 1],
                              np.int64),
            "bool": np.arange(n) % 3 == 0}
    inputs = {"h": (H, [n]), **{f"i_{t}": (np.dtype(t), [n]) for t in INTS}}
    outputs = {**{f"h_{t}": (np.dtype(t), [n]) for t in INTS}, **{f"f_{t}": (H, [n]) for t in INTS}}
    model = make_model(nodes, inputs, outputs, opset=13)
    feeds = {"h": h, **{f"i_{t}": ints[t] for t in INTS}}
    if emit == "c":
        got, _ = run_c_path(model, T, feeds, workdir)
    else:
        got, _, _ = compile_and_run(model, T, feeds, workdir)
    for t, g_ in zip(INTS, got[:len(INTS)]):
        if t == "bool":
            np.testing.assert_array_equal(g_, h != 0, err_msg="float16 -> bool")
            continue
        whole = np.trunc(h.astype(np.float64))
        fits = (whole >= np.iinfo(t).min) & (whole <= np.iinfo(t).max)  # out of range: undefined
        np.testing.assert_array_equal(g_[fits], whole[fits].astype(t), err_msg=f"float16 -> {t}")
    for t, g_ in zip(INTS, got[len(INTS):]):
        with np.errstate(over="ignore"):
            _same_bits(g_, ints[t].astype(np.float64).astype(H), f"{t} -> float16")


# -- a float16 model on every target -------------------------------------------------------------
def _half_model():
    """Computing ops (wrapped in Casts by the importer), moving ops (float16 as is), a float16
    initializer, a Cast out to float32 and to int32."""
    w = (RNG.standard_normal((4, 3)) * 2).astype(H)
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "y"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["g"]), helper.make_node("Transpose", ["g"], ["t"], perm=[1, 0]),
             helper.make_node("Max", ["y", "x"], ["mx"]), helper.make_node("IsNaN", ["y"], ["nan"]),
             helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT)]
    return make_model(nodes, {"x": (H, [4, 3]), "y": (H, [4, 3])},
                      {"t": (H, [3, 4]), "tf": (np.float32, [3, 4]), "mx": (H, [4, 3]), "nan": (np.bool_, [4, 3])},
                      {"w": w}, opset=13)


def _half_feeds():
    x = (RNG.standard_normal((4, 3)) * 3).astype(H)
    y = (RNG.standard_normal((4, 3)) * 3).astype(H)
    y[0, 0], y[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    return {"x": x, "y": y}


def _check_half(got, model, feeds, what):
    want = onnxruntime_outputs(model, feeds)
    for j, (g_, w_) in enumerate(zip(got, want)):
        assert g_.dtype == w_.dtype, f"{what} output {j}: {g_.dtype} != {w_.dtype}"
        # one rounding to float16 per op, as onnxruntime: within a float16 ulp or two
        assert_close(g_, w_, rtol=2e-3, atol=1e-3, what=f"{what} output {j}")


def test_float16_model_on_every_target(target, workdir):
    model, feeds = _half_model(), _half_feeds()
    got, res, _ = compile_and_run(model, target, feeds, workdir)
    _check_half(got, model, feeds, target)
    assert [i["dtype"] for i in res.manifest["inputs"]] == ["float16"] * 2
    assert res.manifest["outputs"][0]["bytes"] == 3 * 4 * 2


def test_float16_model_c_path_on_every_target(target, workdir):
    model, feeds = _half_model(), _half_feeds()
    got, res = run_c_path(model, target, feeds, workdir)
    _check_half(got, model, feeds, f"{target} C")
    header = res.paths["header"].read_text()
    assert '#define MODEL_INPUT0_DTYPE "float16"' in header
    assert re.search(r"#define MODEL_INPUT0_DTYPE_ID 10\b", header)  # ONNX TensorProto.FLOAT16


def test_float16_builds_self_contained_for_every_profile(tmp_path):
    """build() checks the object: no undefined symbol (no __extendhfsf2/__truncsfhf2 from a
    half-precision conversion) on any profile, the Cortex-M boards included."""
    path = tmp_path / "h.onnx"
    path.write_bytes(_half_model().SerializeToString())
    for name in all_profiles():
        res = build(path, name, "model", tmp_path / f"out-{name}")
        assert res.manifest["outputs"][0]["dtype"] == "float16", name


def test_float16_on_a_board(workdir):
    model, feeds = _half_model(), _half_feeds()
    got, _, _ = compile_and_run(model, "cortex-m4", feeds, workdir)
    _check_half(got, model, feeds, "cortex-m4")


def test_the_importer_wraps_computing_ops_only():
    g = import_model(_half_model())
    casts = [n for n in g.nodes if n.op == "Cast"]
    widen = sorted(n.inputs[0].name for n in casts if n.attrs["to"] == "float32")
    narrow = [n for n in casts if n.attrs["to"] == "float16"]
    # x, y widened once each (x feeds Mul and Max, y Add, Max and IsNaN); each op's result
    # rounded to float16 and widened again for the next (Mul -> Add -> Sigmoid), as
    # onnxruntime rounds every op's result; the float16 weight converted at compile time;
    # t: the model's own Cast
    assert widen == ["m_f16", "s_f16", "t", "x", "y"]
    assert sorted(n.inputs[0].producer.op for n in narrow) == ["Add", "Max", "Mul", "Sigmoid"]
    transpose = next(n for n in g.nodes if n.op == "Transpose")
    assert transpose.inputs[0].type.dtype == transpose.outputs[0].type.dtype == "float16"
    assert all(v.type.dtype != "float16" for n in g.nodes if n.op in ("Mul", "Add", "Sigmoid", "Max", "IsNaN")
               for v in n.inputs + n.outputs)
    assert [v.type.dtype for v in g.outputs] == ["float16", "float32", "float16", "bool"]


def test_float16_run_in_process_checks_the_dtype():
    model, feeds = _half_model(), _half_feeds()
    fn = compile_model(model, T)
    got = fn(feeds["x"], feeds["y"])
    _check_half(got, model, feeds, "in process")
    with pytest.raises(CompileError, match="float16"):
        fn(feeds["x"].astype(np.float32), feeds["y"])


def test_a_float16_result_known_from_shapes_is_a_constant(workdir):
    """EyeLike(dtype=float16) reads only its input's shape: a float16 constant, copied out."""
    node = helper.make_node("EyeLike", ["x"], ["y"], dtype=TensorProto.FLOAT16, k=1)
    m = make_model([node], {"x": (np.float32, [3, 4])}, {"y": (H, [3, 4])}, opset=13)
    feeds = {"x": np.zeros((3, 4), np.float32)}
    got, _, _ = compile_and_run(m, T, feeds, workdir)
    _same_bits(got[0], np.eye(3, 4, k=1, dtype=H), "EyeLike")  # onnxruntime has no float16 EyeLike


def test_a_float16_result_computed_without_a_lowering_is_refused():
    """The importer's safety net: an op outside the float16-moving ones whose own result is
    float16 at run time is refused, never computed on the bits as integers."""
    g = Graph("g")
    x = Value("x", TensorType("float32", (2,)))
    y = Value("y", TensorType("float16", (2,)))
    node = g.add_node("Relu", "r", [x], [y])
    with pytest.raises(UnsupportedError, match="float16"):
        refuse_computed_float16(node, "Relu")
    refuse_computed_float16(g.add_node("Transpose", "t", [y], [Value("z", TensorType("float16", (2,)))]), "Transpose")


def test_a_float16_input_beside_float32_is_invalid():
    node = helper.make_node("Add", ["x", "y"], ["z"])
    m = make_model([node], {"x": (H, [2]), "y": (np.float32, [2])}, {"z": (H, [2])}, opset=13)
    with pytest.raises(InvalidModelError):
        import_model(m)


# -- empty tensors --------------------------------------------------------------------------------
def _empty_model():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("CastLike", ["z", "x"], ["zc"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1),
             helper.make_node("Concat", ["x", "z2"], ["c"], axis=1),
             helper.make_node("Slice", ["z2", "st", "en"], ["e"]),
             helper.make_node("MatMul", ["x", "k0"], ["mk"]),  # K = 0: zeros
             helper.make_node("Transpose", ["z2"], ["z2t"]), helper.make_node("MatMul", ["k0", "z2t"], ["mm"])]
    return make_model(nodes, {"x": (np.float32, [2, 0]), "z": (H, [3]), "z2": (np.float32, [2, 3]),
                              "k0": (np.float32, [0, 3])},
                      {"y": (np.float32, [2, 0]), "zc": (np.float32, [3]), "s": (np.float32, [1, 1]),
                       "c": (np.float32, [2, 3]), "e": (np.float32, [0, 3]), "mk": (np.float32, [2, 3]),
                       "mm": (np.float32, [0, 2])},
                      {"st": np.array([2], np.int64), "en": np.array([1], np.int64)}, opset=15)


def _empty_feeds():
    return {"x": np.zeros((2, 0), np.float32), "z": np.array([1.5, -2, 65504], H),
            "z2": RNG.standard_normal((2, 3)).astype(np.float32), "k0": np.zeros((0, 3), np.float32)}


def _check_empty(got, what):
    want = onnxruntime_outputs(_empty_model(), EMPTY_FEEDS)
    assert [g_.shape for g_ in got] == [w_.shape for w_ in want], what
    for j, (g_, w_) in enumerate(zip(got, want)):
        assert_close(g_, w_, what=f"{what} output {j}")


EMPTY_FEEDS = _empty_feeds()


def test_empty_tensors_on_every_target(target, workdir):
    got, res, _ = compile_and_run(_empty_model(), target, EMPTY_FEEDS, workdir)
    _check_empty(got, target)
    assert res.manifest["inputs"][0]["bytes"] == 0 and res.manifest["outputs"][0]["bytes"] == 0


def test_empty_tensors_on_a_board(workdir):
    got, _, _ = compile_and_run(_empty_model(), "cortex-m4", EMPTY_FEEDS, workdir)
    _check_empty(got, "cortex-m4")


def test_empty_tensors_c_path(workdir):
    got, res = run_c_path(_empty_model(), T, EMPTY_FEEDS, workdir)
    _check_empty(got, "C")
    header = res.paths["header"].read_text()
    assert re.search(r"#define MODEL_INPUT0_ELEMS 0u", header)
    assert re.search(r"#define MODEL_OUTPUT0_ELEMS 0u", header)


def test_empty_tensors_in_process():
    fn = compile_model(_empty_model(), T)
    _check_empty(fn(*[EMPTY_FEEDS[k] for k in ("x", "z", "z2", "k0")]), "in process")
    with pytest.raises(CompileError, match="shape"):
        fn(np.zeros((2, 1), np.float32), EMPTY_FEEDS["z"], EMPTY_FEEDS["z2"], EMPTY_FEEDS["k0"])


def test_a_negative_dimension_is_still_invalid():
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (np.float32, [2, 3])},
                   {"y": (np.float32, [2, 3])}, opset=13)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -1
    with pytest.raises(InvalidModelError, match="negative dimension"):
        import_model(m)


def test_gathers_and_slices_move_float16_bits(workdir):
    """The moving ops keep float16 as it is (no Cast): every bit pattern survives, NaN
    payloads and signed zeros included."""
    data = np.arange(64, dtype=np.uint16).view(H).reshape(8, 8)
    data.view(np.uint16)[0, :4] = [0x7C01, 0xFE00, 0x8000, 0xFC00]  # NaN payloads, -0, -inf
    idx = np.array([[0, 7], [3, 0]], np.int64)
    nodes = [helper.make_node("GatherElements", ["d", "i"], ["ge"], axis=1),
             helper.make_node("GatherND", ["d", "i"], ["gn"]),
             helper.make_node("Slice", ["d", "st", "en"], ["sl"]),
             helper.make_node("Concat", ["d", "d"], ["cc"], axis=0),
             helper.make_node("Where", ["m", "d", "d2"], ["wh"])]
    m = make_model(nodes, {"d": (H, [8, 8]), "i": (np.int64, [2, 2]), "m": (np.bool_, [8, 8]), "d2": (H, [8, 8])},
                   {"ge": (H, [2, 2]), "gn": (H, [2]), "sl": (H, [1, 4]), "cc": (H, [16, 8]), "wh": (H, [8, 8])},
                   {"st": np.array([0, 0], np.int64), "en": np.array([1, 4], np.int64)}, opset=13)
    g = import_model(m)
    assert "Cast" not in g.op_counts()
    mask = RNG.random((8, 8)) < 0.5
    d2 = -data
    got, _, _ = compile_and_run(m, T, {"d": data, "i": idx, "m": mask, "d2": d2}, workdir)
    want = [np.take_along_axis(data[:2], idx, axis=1), data[idx[:, 0], idx[:, 1]], data[:1, :4],
            np.concatenate([data, data]), np.where(mask, data, d2)]
    for g_, w_ in zip(got, want):
        np.testing.assert_array_equal(g_.view(np.uint16), w_.view(np.uint16))


def test_float16_c_source_compiles_strict_and_self_contained(tmp_path):
    """The conversions in C: -std=c99 -Wall -Wextra -Werror -pedantic, no undefined symbol
    (no __extendhfsf2/__truncsfhf2, no _Float16), for a Cortex-M and with gcc."""
    path = tmp_path / "h.onnx"
    path.write_bytes(_half_model().SerializeToString())
    src = build(path, T, "net", tmp_path / "c", emit="c").paths["source"].read_text()
    assert "_Float16" not in src and "__fp16" not in src
    for name, opt in (("cortex-m4", "-Os"), ("cortex-m33", "-O0"), ("rv64gc", "-O2")):
        profile = get_profile(name)
        flags = ["-fno-sanitize=undefined"] if opt == "-O0" else []
        info = read_object(compile_c(src, profile, flags=flags, opt=opt))
        assert info.undefined == [], (name, opt, info.undefined)
        check_self_contained(info, profile, "net")
    gcc = shutil.which("gcc")
    if gcc:
        assert read_object(compile_c(src, None, cc=[gcc], opt="-O0")).undefined == []


def test_an_op_given_float16_directly_refuses_it():
    """Past the importer no computing op takes float16 (its lowering would read the bits
    as integers): the shape rule refuses it."""
    from toolchain.ops import registry
    for op in ("Relu", "Abs", "Add"):
        x = Value("x", TensorType("float16", (2,)))
        g = Graph("g")
        node = g.add_node(op, "n", [x] * (2 if op == "Add" else 1), [Value("y", None)])
        with pytest.raises(UnsupportedError):
            registry.get(op).infer(node)
