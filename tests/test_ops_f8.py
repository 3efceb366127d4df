"""float8 e5m2 as a storage type (kernel/float8.py, ops/cast.py), QuantizeLinear and
DequantizeLinear to/from int16, uint16 and float8 e5m2 (ops/quant.py), DynamicQuantizeLinear.

References are independent of our code: ml_dtypes' conversions (what onnx's reference runs,
with onnx.numpy_helper.saturate_cast for saturate=1), onnx's ReferenceEvaluator and
onnxruntime. Conversions are compared bit for bit, NaNs included, over every e5m2 and
float16 bit pattern and a float32/float64 sweep of ties, their neighbours, overflow,
subnormals, infinities and NaN payloads."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from helpers import compile_and_run, make_model, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, UnsupportedError

T = "x86-64-v3"
E = ml_dtypes.float8_e5m2
F = np.float32
RNG = np.random.default_rng(58)
E5M2 = TensorProto.FLOAT8E5M2
N = 1 << 14


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def same_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.flatnonzero(bits(got).ravel() != bits(want).ravel())
    assert bad.size == 0, (f"{what}: {bad.size} differ, first at {bad[:4]}: got {bits(got).ravel()[bad[:4]]}, "
                           f"want {bits(want).ravel()[bad[:4]]} (input value {bad[:4]})")


# -- the conversions, exhaustively ---------------------------------------------------------------
def sweep():
    """float32 and float64 inputs: every e5m2 midpoint (ties: to even), one ulp either side,
    random bit patterns (NaN payloads, infinities, float32 subnormals, huge values) and the
    edges of the overflow rules (57344 the largest finite, 61440 the first value rounding
    past it) and of the subnormals (2^-16 the smallest, 2^-17 its half)."""
    e = np.arange(256, dtype=np.uint8).view(E).astype(np.float64)
    e = np.sort(e[np.isfinite(e)])
    mids = (e[:-1] + e[1:]) / 2
    mids = mids[np.isfinite(mids)]
    m32 = mids.astype(F)  # exact: an e5m2 midpoint has 4 significant bits
    x = np.concatenate([m32, (bits(m32) + 1).view(F), (bits(m32) - 1).view(F), e.astype(F),
                        RNG.integers(0, 2 ** 32, N, dtype=np.uint64).astype(np.uint32).view(F),
                        (RNG.standard_normal(N) * 4e4).astype(F), (RNG.standard_normal(N) * 1e-4).astype(F)])
    special = [np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 57344.0, -57344.0, 57344.5, 61439.996, 61440.0,
               -61440.0, 65536.0, 1e38, 2.0 ** -16, 2.0 ** -17, 2.0 ** -17 * 1.0001, 3 * 2.0 ** -17,
               2.0 ** -14 - 2.0 ** -18, 1e-45, -1e-40]
    x = np.concatenate([np.array(special, F), (np.uint32([0x7F800001, 0xFFC00123, 0x7FA00000])).view(F), x])
    d = np.concatenate([np.array(special + [1e300, -1e300, 1e-300], np.float64), mids,
                        np.nextafter(mids, 0), np.nextafter(mids, np.inf),
                        mids * (1 + 2.0 ** -40), mids * (1 - 2.0 ** -40),
                        RNG.standard_normal(N) * 3e4])
    return x, d


def conversion_model(nx, nd):
    nodes = [helper.make_node("Cast", ["e"], ["e_f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["e"], ["e_h"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["x"], ["x_sat"], to=E5M2),
             helper.make_node("Cast", ["x"], ["x_nosat"], to=E5M2, saturate=0),
             helper.make_node("Cast", ["h"], ["h_sat"], to=E5M2),
             helper.make_node("Cast", ["h"], ["h_nosat"], to=E5M2, saturate=0),
             helper.make_node("Cast", ["d"], ["d_sat"], to=E5M2),
             helper.make_node("Cast", ["d"], ["d_nosat"], to=E5M2, saturate=0),
             helper.make_node("CastLike", ["x", "e"], ["x_like"], saturate=0)]
    ins = {"e": (E, [256]), "x": (F, [nx]), "h": (np.float16, [1 << 16]), "d": (np.float64, [nd])}
    outs = {"e_f": (F, [256]), "e_h": (np.float16, [256]), "x_sat": (E, [nx]), "x_nosat": (E, [nx]),
            "h_sat": (E, [1 << 16]), "h_nosat": (E, [1 << 16]), "d_sat": (E, [nd]), "d_nosat": (E, [nd]),
            "x_like": (E, [nx])}
    return make_model(nodes, ins, outs, opset=21)


def conversion_feeds():
    x, d = sweep()
    return {"e": np.arange(256, dtype=np.uint8).view(E), "x": x,
            "h": np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16), "d": d}


def conversion_expected(f):
    """ml_dtypes (round to nearest even, overflow to infinity); saturate=1 clips to the
    finite range first (onnx.numpy_helper.saturate_cast, what onnx's reference runs)."""
    sat = numpy_helper.saturate_cast
    with np.errstate(all="ignore"):
        return [f["e"].astype(F), f["e"].astype(np.float16), sat(f["x"], E), f["x"].astype(E),
                sat(f["h"], E), f["h"].astype(E), sat(f["d"], E), f["d"].astype(E), f["x"].astype(E)]


NAMES = ["e->f32", "e->f16", "f32->e sat", "f32->e nosat", "f16->e sat", "f16->e nosat", "f64->e sat",
         "f64->e nosat", "castlike nosat"]


@pytest.mark.parametrize("emit", ["object", "c"])
def test_conversions_are_bit_exact(emit, workdir):
    f = conversion_feeds()
    m = conversion_model(f["x"].size, f["d"].size)
    if emit == "c":
        got, _ = run_c_path(m, T, f, workdir, tag="-f8")
    else:
        got, _, _ = compile_and_run(m, T, f, workdir)
    for g, w, what in zip(got, conversion_expected(f), NAMES):
        same_bits(g, w, what)


def test_the_reference_saturates_as_the_spec_table_says():
    """The expected values above, spot-checked against the ONNX table for E5M2 (so the
    reference is the spec's, not just ml_dtypes'): saturate=1 sends infinities and values
    past the range to +-57344, saturate=0 to +-inf; NaN stays NaN; ties go to even."""
    x = np.array([np.inf, -np.inf, 1e6, 61440, 61439.99, np.nan, 2.0 ** -17, 3 * 2.0 ** -17, 1.125], F)
    sat = bits(numpy_helper.saturate_cast(x, E))
    nosat = bits(x.astype(E))
    assert list(sat[:5]) == [0x7B, 0xFB, 0x7B, 0x7B, 0x7B]
    assert list(nosat[:5]) == [0x7C, 0xFC, 0x7C, 0x7C, 0x7B]
    assert sat[5] & 0x7F > 0x7C and nosat[5] & 0x7F > 0x7C
    assert list(nosat[6:]) == [0x00, 0x02, 0x3C]  # 2^-17 -> 0, 1.5 * 2^-16 -> 2 * 2^-16, 1.125 -> 1


def test_conversions_on_an_emulated_target(workdir):
    """The same integer code on RISC-V with vectors (qemu-user), every conversion above, and
    float64 -> float16 there too: RISC-V's fcvt.s.d drops a NaN's sign, which the float64
    paths (through a float32 rounded to odd) put back."""
    f = conversion_feeds()
    m = conversion_model(f["x"].size, f["d"].size)
    m.graph.node.append(helper.make_node("Cast", ["d"], ["d_h"], to=TensorProto.FLOAT16))
    m.graph.output.append(helper.make_tensor_value_info("d_h", TensorProto.FLOAT16, [f["d"].size]))
    got, _, _ = compile_and_run(m, "rv64gcv", f, workdir)
    with np.errstate(all="ignore"):
        want = conversion_expected(f) + [f["d"].astype(np.float16)]
    nan = np.isnan(want[-1])
    assert (np.signbit(got[-1][nan]) == np.signbit(want[-1][nan])).all() and np.isnan(got[-1][nan]).all()
    got[-1][nan], want[-1][nan] = 0, 0  # float16 NaN payloads: numpy keeps float64's, qemu's fcvt not
    for g, w, what in zip(got, want, NAMES + ["f64->f16"]):
        same_bits(g, w, what)


def test_moving_ops_keep_every_float8_pattern(workdir):
    """Reshape, Transpose, Flatten, Identity move e5m2 bits as they are (NaNs too)."""
    e = np.arange(256, dtype=np.uint8).view(E)
    nodes = [helper.make_node("Reshape", ["e", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["t"], ["f"], axis=1),
             helper.make_node("Identity", ["f"], ["y"])]
    m = make_model(nodes, {"e": (E, [256])}, {"y": (E, [16, 16])},
                   {"shape": np.array([4, 16, 4], np.int64)}, opset=21)
    got, _, _ = compile_and_run(m, T, {"e": e}, workdir)
    same_bits(got[0], e.reshape(4, 16, 4).transpose(1, 0, 2).reshape(16, 16), "moved")


def test_a_computing_op_on_float8_runs_in_float32_and_keeps_infinities(workdir):
    """Pad (not a moving op) on e5m2: widened, padded in float32, rounded back without
    saturation, so +-inf stay infinite (every finite pattern and the pad value exact)."""
    e = np.arange(256, dtype=np.uint8).view(E).reshape(16, 16)
    e = np.where(np.isnan(e.astype(F)), E(1.5), e).astype(E)  # a NaN comes back as 0x7E
    node = helper.make_node("Pad", ["e", "p", "v"], ["y"])
    m = make_model([node], {"e": (E, [16, 16])}, {"y": (E, [17, 18])},
                   {"p": np.array([1, 0, 0, 2], np.int64), "v": np.array(3.0, E)}, opset=21)
    got, _, _ = compile_and_run(m, T, {"e": e}, workdir)
    same_bits(got[0], ReferenceEvaluator(m).run(None, {"e": e})[0], "padded")


# -- QuantizeLinear / DequantizeLinear ----------------------------------------------------------
def reference_check(m, feeds, workdir, target=T):
    want = ReferenceEvaluator(m).run(None, feeds)
    got, _, _ = compile_and_run(m, target, feeds, workdir)
    for j, (g, w) in enumerate(zip(got, want)):
        same_bits(g, w, f"output {j}")
    return got


@pytest.mark.parametrize("saturate", [1, 0])
def test_quantize_to_e5m2_per_axis(saturate, workdir):
    x = np.concatenate([(RNG.standard_normal((4, 60)) * 3e4).astype(F),
                        np.array([[np.inf, -np.inf, np.nan, -0.0] * 3] * 4, F)], axis=1)
    x[0, :4] = [1e9, -1e9, 61440 * 0.5, 61439.9 * 0.5]  # scale 0.5 on row 0: overflow edges
    s = np.array([0.5, 1.0, 3.0, 1e-3], F)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0, saturate=saturate)
    m = make_model([node], {"x": (F, [4, 72])}, {"y": (E, [4, 72])},
                   {"s": s, "z": np.zeros(4, E)}, opset=21)
    reference_check(m, {"x": x}, workdir)


def test_dequantize_every_e5m2_pattern(workdir):
    e = np.arange(256, dtype=np.uint8).view(E).reshape(2, 128)
    node = helper.make_node("DequantizeLinear", ["e", "s"], ["y"], axis=0)
    m = make_model([node], {"e": (E, [2, 128])}, {"y": (F, [2, 128])},
                   {"s": np.array([1.0, 0.25], F)}, opset=21)
    want = (e.astype(F) * np.array([[1.0], [0.25]], F)).astype(F)
    got, _, _ = compile_and_run(m, T, {"e": e}, workdir)
    nan = np.isnan(want)
    assert np.isnan(got[0][nan]).all()
    same_bits(got[0][~nan], want[~nan], "dequantized")
    reference_check(m, {"e": e}, workdir)  # and the ReferenceEvaluator agrees (NaN bits too)


def test_float8_constant_weights_through_both_backends(workdir):
    """A float8 constant (DequantizeLinear is not folded) lands in the weights as its bits."""
    w = np.arange(256, dtype=np.uint8).view(E).reshape(16, 16)
    w = np.where(np.isnan(w.astype(F)), E(0), w).astype(E)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
             helper.make_node("Add", ["wf", "x"], ["y"])]
    m = make_model(nodes, {"x": (F, [16, 16])}, {"y": (F, [16, 16])}, {"w": w, "s": np.array(2.0, F)},
                   opset=21)
    x = RNG.standard_normal((16, 16)).astype(F)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    got_o, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    got_c, _ = run_c_path(m, T, {"x": x}, workdir, tag="-f8w")
    same_bits(got_o[0], want, "object")
    same_bits(got_c[0], want, "C")


def qdq16(dtype, kind):
    """x -> QuantizeLinear -> q (int16/uint16) and -> DequantizeLinear -> back; per tensor,
    per axis or blocked. x is scale * (integers and half-integers: ties) around the edges."""
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    shape = (3, 8)
    if kind == "tensor":
        s, z, attrs = np.array(0.5, F), np.array(hi // 3 if lo == 0 else -7, dtype), {}
    elif kind == "axis":
        s, z, attrs = np.array([0.5, 2.0, 0.125], F), np.array([0, 300, hi], dtype), {"axis": 0}
    else:
        s = np.array([[0.5, 1.0], [2.0, 0.25], [4.0, 0.5]], F)
        z, attrs = np.array([[0, 1], [lo, hi], [1000, 7]], dtype), {"axis": 1, "block_size": 4}
    ss = np.repeat(s, 4, axis=1) if kind == "blocked" else s.reshape(-1, 1) if kind == "axis" else s
    k = np.array([0, 0.5, 1.5, 2.5, -0.5, -1.5, 1e9, -1e9], F)
    x = (np.broadcast_to(k, shape) * ss).astype(F)
    x[:, 6:] = [[hi * 2.0, lo * 2.0 - 10]] if kind == "tensor" else x[:, 6:]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    m = make_model(nodes, {"x": (F, list(shape))}, {"q": (dtype, list(shape)), "y": (F, list(shape))},
                   {"s": s, "z": z}, opset=21)
    return m, {"x": x}


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("kind", ["tensor", "axis", "blocked"])
def test_16_bit_quantize_dequantize(dtype, kind, workdir):
    m, f = qdq16(dtype, kind)
    got = reference_check(m, f, workdir)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    assert got[0].min() == lo or got[0].max() == hi  # the sweep reaches saturation
    if kind != "blocked":  # onnxruntime (opset 21) runs per-tensor and per-axis 16-bit QDQ
        for g, w in zip(got, onnxruntime_outputs(m, f)):
            same_bits(g, w, "vs onnxruntime")


def test_blocked_int16_output_dtype_without_zero_point(workdir):
    """The node case test_quantizelinear_blocked_symmetric's form: output_dtype=INT16."""
    x = (RNG.standard_normal((3, 4)) * 3e4).astype(F)
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], axis=1, block_size=2,
                            output_dtype=TensorProto.INT16)
    m = make_model([node], {"x": (F, [3, 4])}, {"y": (np.int16, [3, 4])},
                   {"s": np.array([[1.0, 0.5], [2.0, 0.25], [0.125, 8.0]], F)}, opset=21)
    reference_check(m, {"x": x}, workdir)


# -- DynamicQuantizeLinear ---------------------------------------------------------------------
DQL_INPUTS = {
    "mixed": (RNG.standard_normal((4, 33)) * 5).astype(F),
    "positive": (RNG.random((4, 33)) * 7 + 1).astype(F),       # min adjusted to 0
    "negative": -(RNG.random((4, 33)) * 7 + 1).astype(F),      # max adjusted to 0
    "zeros": np.zeros((4, 33), F),                              # hi == lo: scale 1/255
    "ties": np.tile(np.array([0, 1, 2, 3, 2.5, 0.5, -0.5, 255, -255, 1.5, 127.5], F), (4, 3)),
}


def dql_model(shape):
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "ys", "yz"])
    return make_model([node], {"x": (F, list(shape))},
                      {"y": (np.uint8, list(shape)), "ys": (F, []), "yz": (np.uint8, [])}, opset=11)


@pytest.mark.parametrize("case", sorted(DQL_INPUTS))
def test_dynamic_quantize_linear(case, workdir):
    x = DQL_INPUTS[case]
    m = dql_model(x.shape)
    got = reference_check(m, {"x": x}, workdir)
    assert got[1].shape == () and got[2].shape == ()
    ort = onnxruntime_outputs(m, {"x": x})
    if case == "zeros":  # the spec's scale is 0/255: onnx's reference (ours) takes 1/255, onnxruntime 1.0
        assert got[1] == F(1) / F(255) and ort[1] == 1.0
        got, ort = [got[0], got[2]], [ort[0], ort[2]]
    for g, w in zip(got, ort):
        same_bits(g, w, f"{case} vs onnxruntime")


def test_dynamic_quantize_linear_is_computed_at_run_time(workdir):
    """One build, two inputs of different ranges: the scale and zero point follow the data."""
    from toolchain.harness.runner import link_harness, run_model
    from toolchain.targets import get_profile

    m = dql_model((4, 33))
    _, res, _ = compile_and_run(m, T, {"x": DQL_INPUTS["mixed"]}, workdir)
    exe = link_harness(res.paths["object"].parent, "model", get_profile(T))
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    for case in ("positive", "negative", "ties"):
        got = run_model(exe, get_profile(T), [DQL_INPUTS[case]], specs).outputs
        want = ReferenceEvaluator(m).run(None, {"x": DQL_INPUTS[case]})
        for g, w in zip(got, want):
            same_bits(g, w, case)


# -- bad inputs ---------------------------------------------------------------------------------
def error(m, kind=CompileError):
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    return str(e.value)


def test_nonzero_float8_zero_point_is_refused_naming_the_node():
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q8")
    m = make_model([node], {"x": (F, [4])}, {"y": (E, [4])},
                   {"s": np.array(1.0, F), "z": np.array(2.0, E)}, opset=21)
    msg = error(m, UnsupportedError)
    assert "q8" in msg and "QuantizeLinear" in msg and "zero point other than 0" in msg


def test_other_float8_kinds_are_refused():
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q", output_dtype=TensorProto.FLOAT8E4M3FN)
    m = make_model([node], {"x": (F, [4])}, {"y": (ml_dtypes.float8_e4m3fn, [4])}, {"s": np.array(1.0, F)},
                   opset=21)
    assert "float8_e4m3fn" in error(m, UnsupportedError)
    cast = helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.FLOAT8E4M3FNUZ)
    m = make_model([cast], {"x": (F, [4])}, {"y": (ml_dtypes.float8_e4m3fnuz, [4])}, opset=21)
    assert "float8_e4m3fnuz" in error(m, UnsupportedError)


def test_dynamic_quantize_linear_refuses_non_float32_input():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "ys", "yz"], name="dq")
    m = make_model([node], {"x": (np.float64, [4])},
                   {"y": (np.uint8, [4]), "ys": (np.float64, []), "yz": (np.uint8, [])}, opset=11)
    msg = error(m)
    assert "dq" in msg


@pytest.mark.parametrize("to", [np.int16, E])
def test_the_quantization_pass_leaves_16_bit_and_float8_outputs_in_float(to, workdir):
    """DQ(x) -> Gemm(DQ(int8 w)) -> Q: the integer rewrite (passes/quantize.py) makes int8/uint8
    only; a 16-bit or float8 QuantizeLinear after it keeps the Gemm in float (listed, with
    the reason) and the result still matches the ReferenceEvaluator (within 1 step: the
    float Gemm's summation order)."""
    from toolchain.frontend.onnx_import import import_model
    from toolchain.passes import run_pipeline

    rng = np.random.default_rng(3)
    zy = np.array(0, to)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "wz"], ["w"], axis=0),
             helper.make_node("Gemm", ["xd", "w"], ["g"], name="fc", transB=1),
             helper.make_node("QuantizeLinear", ["g", "sy", "zy"], ["y"])]
    inits = {"sx": np.array(0.05, F), "zx": np.array(0, np.int8),
             "wq": rng.integers(-127, 128, (5, 8)).astype(np.int8), "sw": np.full(5, 0.01, F),
             "wz": np.zeros(5, np.int8), "sy": np.array(1e-4 if to == np.int16 else 1e-2, F), "zy": zy}
    m = make_model(nodes, {"x": (F, [2, 8])}, {"y": (to, [2, 5])}, inits, opset=21)
    g = import_model(m)
    run_pipeline(g)
    notes = {n["node"]: n["reason"] for n in g.notes["float_fallback"]}
    assert "not int8/uint8" in notes["fc"] and "edgec.QMatMul" not in g.op_counts()
    x = rng.standard_normal((2, 8)).astype(F)
    got, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert got[0].dtype == want.dtype
    if to == np.int16:
        assert np.abs(got[0].astype(np.int64) - want.astype(np.int64)).max() <= 1
    else:  # one e5m2 step: neighbours in the bit order of same-sign values
        assert np.abs(bits(got[0]).astype(np.int64) - bits(want).astype(np.int64)).max() <= 1
