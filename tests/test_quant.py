"""int8: QuantizeLinear / DequantizeLinear against the ONNX spec's formulas (numpy, written
here) and onnxruntime; bad quantization parameters refused with the node named; the integer
ops the quantization pass makes (DQ -> Conv/Gemm/MatMul -> [Relu/Clip] -> Q) against an
independent fixed-point reference (exact accumulators computed here, gemmlowp's
SaturatingRoundingDoublingHighMul + RoundingDivideByPOT in Python integers) and against
onnxruntime (>= 99% identical, <= 1 LSB); `edgec quantize` on the bundled DS-CNN, built and
run on the host and cortex-a76 against onnxruntime running the same QDQ model."""
from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ALL_TARGETS, ROOT, compile_and_run, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.cli import main as cli_main
from toolchain.compiler import build
from toolchain.harness.oracle import onnxruntime_session
from toolchain.harness.runner import link_harness, run_model
from toolchain.targets import get_profile
from toolchain.errors import InvalidModelError
from toolchain.frontend.onnx_import import import_model

# the real model on the host and cortex-a76; the small models on every target (`target`)
TARGETS = [t for t in ("x86-64-v3", "cortex-a76") if t in ALL_TARGETS]
RNG = np.random.default_rng(18)


# -- the spec's formulas ------------------------------------------------------------------
def spec_quantize(x, scale, zp, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.rint(x.astype(np.float32) / scale) + zp, info.min, info.max).astype(dtype)


def spec_dequantize(x, scale, zp):
    return ((x.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "q", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


SHAPE = (2, 3, 4, 5)
S_AXIS = np.array([0.25, 0.5, 1.0], np.float32)
Z_AXIS = np.array([-3, 0, 5], np.int8)


def qdq_model():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["q_u8"], name="q_u8"),
        helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["q_axis"], name="q_axis", axis=1),
        helper.make_node("QuantizeLinear", ["x", "s"], ["q_nozp"], name="q_nozp"),
        helper.make_node("DequantizeLinear", ["xi", "sa", "za"], ["dq_axis"], name="dq_axis", axis=1),
        helper.make_node("DequantizeLinear", ["xu", "s", "zu"], ["dq_u8"], name="dq_u8"),
        helper.make_node("DequantizeLinear", ["xw", "s"], ["dq_i32"], name="dq_i32")]
    inputs = [vi("x", TensorProto.FLOAT, SHAPE), vi("xi", TensorProto.INT8, SHAPE),
              vi("xu", TensorProto.UINT8, SHAPE), vi("xw", TensorProto.INT32, SHAPE)]
    outputs = [vi("q_u8", TensorProto.UINT8, SHAPE), vi("q_axis", TensorProto.INT8, SHAPE),
               vi("q_nozp", TensorProto.UINT8, SHAPE), vi("dq_axis", TensorProto.FLOAT, SHAPE),
               vi("dq_u8", TensorProto.FLOAT, SHAPE), vi("dq_i32", TensorProto.FLOAT, SHAPE)]
    inits = [init("s", np.float32(0.5)), init("zu", np.uint8(128)), init("sa", S_AXIS), init("za", Z_AXIS)]
    return model(nodes, inputs, outputs, inits)


def qdq_feeds():
    # ties (x / scale = k + 1/2 exactly, both signs), saturation (+-1000), and ordinary values
    ties = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 0.125, -0.375], np.float32)
    x = RNG.normal(0, 20, SHAPE).astype(np.float32)
    x.flat[:8] = ties
    x.flat[8:10] = [1000.0, -1000.0]
    return {"x": x, "xi": RNG.integers(-128, 128, SHAPE).astype(np.int8),
            "xu": RNG.integers(0, 256, SHAPE).astype(np.uint8),
            "xw": RNG.integers(-100000, 100000, SHAPE).astype(np.int32)}


def qdq_expected(f):
    sa, za = S_AXIS.reshape(1, 3, 1, 1), Z_AXIS.reshape(1, 3, 1, 1).astype(np.int64)
    return [spec_quantize(f["x"], np.float32(0.5), 128, np.uint8), spec_quantize(f["x"], sa, za, np.int8),
            spec_quantize(f["x"], np.float32(0.5), 0, np.uint8), spec_dequantize(f["xi"], sa, za),
            spec_dequantize(f["xu"], np.float32(0.5), 128), spec_dequantize(f["xw"], np.float32(0.5), 0)]


def test_quantize_dequantize_match_the_spec_and_onnxruntime(target, harness):
    m, f = qdq_model(), qdq_feeds()
    want = qdq_expected(f)
    assert want[0].flat[:6].tolist() == [128, 130, 130, 128, 126, 126]  # ties to even: 0.5->0, 1.5->2, 2.5->2
    for w, o in zip(want, onnxruntime_outputs(m, f)):
        np.testing.assert_array_equal(w, o)
    got, _, _ = harness(m, target, f)
    for j, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, j
        np.testing.assert_array_equal(g, w, err_msg=f"output {j}")


def test_quantize_dequantize_on_the_c_path(workdir):
    f = qdq_feeds()
    got, _ = run_c_path(qdq_model(), "x86-64-v3", f, workdir, tag="-qdq")
    for j, (g, w) in enumerate(zip(got, qdq_expected(f))):
        np.testing.assert_array_equal(g, w, err_msg=f"output {j}")


# -- bad parameters -----------------------------------------------------------------------
def one_node(op, scale, zp=None, x_type=TensorProto.FLOAT, axis=None, shape=(1, 3, 2, 2)):
    ins = ["x", "s"] + (["z"] if zp is not None else [])
    kw = {} if axis is None else {"axis": axis}
    node = helper.make_node(op, ins, ["y"], name="bad", **kw)
    out_t = TensorProto.FLOAT if op == "DequantizeLinear" else helper.np_dtype_to_tensor_dtype(
        np.asarray(zp).dtype if zp is not None else np.dtype(np.uint8))
    inits = [init("s", scale)] + ([init("z", zp)] if zp is not None else [])
    return model([node], [vi("x", x_type, shape)], [vi("y", out_t, shape)], inits)


@pytest.mark.parametrize("op,scale,zp,x_type,axis,message", [
    ("QuantizeLinear", np.float32(0.0), np.int8(0), TensorProto.FLOAT, None, "scale 0.0 is not a positive"),
    ("QuantizeLinear", np.float32(-0.5), None, TensorProto.FLOAT, None, "scale -0.5 is not a positive"),
    ("DequantizeLinear", np.array([0.1, -1, 0.2], np.float32), np.zeros(3, np.int8), TensorProto.INT8, 1,
     "scale -1.0 is not a positive"),
    ("DequantizeLinear", np.float32(np.inf), None, TensorProto.INT8, None, "scale inf is not a positive"),
    ("QuantizeLinear", np.ones(2, np.float32), np.zeros(2, np.int8), TensorProto.FLOAT, 1,
     "per-axis scale has 2 elements, axis 1 of the input has 3"),
    ("DequantizeLinear", np.ones(3, np.float32), np.zeros(4, np.uint8), TensorProto.UINT8, 1,
     r"zero point shape \(4,\) differs from scale shape \(3,\)"),
    ("DequantizeLinear", np.float32(1), np.int32(300), TensorProto.UINT8, None,
     r"zero point 300 out of range for uint8 \[0, 255\]"),
    ("DequantizeLinear", np.float32(1), np.int32(-129), TensorProto.INT8, None,
     r"zero point -129 out of range for int8"),
    ("DequantizeLinear", np.float32(1), np.int32(3), TensorProto.INT32, None,
     "the zero point of int32 input must be 0"),
])
def test_bad_quantization_parameters_are_refused_naming_the_node(op, scale, zp, x_type, axis, message):
    m = one_node(op, scale, zp, x_type, axis)
    # a zero point of another type than x is refused by the schema check before the op's own
    schema = r"input 'z' \(x_zero_point\) is tensor\(int32\) but 'x' is tensor\(u?int8\)"
    with pytest.raises(InvalidModelError, match=rf"node 'bad' \({op}\): ({message}|{schema})"):
        import_model(m)


# -- integer ops --------------------------------------------------------------------------
SX, ZX = np.float32(0.05), -7  # activations: int8, asymmetric
SY = np.float32(0.11)


def srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul, in Python integers."""
    if a == b == -2 ** 31:
        return 2 ** 31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return int((ab + nudge) / (1 << 31)) if abs(ab + nudge) < 2 ** 52 else (
        (abs(ab + nudge) >> 31) * (1 if ab + nudge >= 0 else -1))


def rdbpot(x: int, e: int) -> int:
    """gemmlowp RoundingDivideByPOT."""
    mask = (1 << e) - 1
    rem, thr = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def fixed_point(acc: int, m: float, bound: int) -> int:
    """TFLite's QuantizeMultiplier, then SRDHM(acc << left, multiplier) and RDBPOT(right) with
    left - right = the exponent and left the headroom |acc| <= bound leaves (ops/integer.py)."""
    q, e = math.frexp(m)
    qf = round(q * 2 ** 31)
    if qf == 2 ** 31:
        qf, e = qf // 2, e + 1
    left = max(0, e, min(31 - bound.bit_length(), 31 + e))
    return rdbpot(srdhm(acc << left, qf), left - e)


def single_rounding(acc: int, m: float) -> int:
    """acc * m rounded once to nearest, ties away from zero, exactly (Fractions)."""
    v = Fraction(acc) * Fraction(m)
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


def requant_expected(acc, m_per_channel, bounds, axis, zy, lo, hi):
    out = np.empty(acc.shape, np.int64)
    for idx in np.ndindex(acc.shape):
        c = idx[axis]
        out[idx] = fixed_point(int(acc[idx]), float(m_per_channel[c]), int(bounds[c])) + zy
        assert out[idx] - zy == single_rounding(int(acc[idx]), float(m_per_channel[c]))
    return np.clip(out, lo, hi)


def bounds(w, bias, dev, axis):
    """Per output channel: sum |w| * dev + |bias|."""
    wa = np.abs(w.astype(np.int64))
    s = wa.reshape(wa.shape[0], -1).sum(axis=1) if axis == 0 else wa.sum(axis=0)
    return s * dev + np.abs(np.asarray(bias, np.int64))


def conv_acc(xq, w, bias, stride, pad, group):
    """Exact int64 convolution of (x - zx) with w, plus bias (naive loops)."""
    x = np.pad(xq.astype(np.int64) - ZX, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    acc = np.zeros((n, oc, oh, ow), np.int64)
    for o in range(oc):
        c0 = (o // (oc // group)) * cg
        for i in range(oh):
            for j in range(ow):
                patch = x[:, c0:c0 + cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                acc[:, o, i, j] = (patch * w[o].astype(np.int64)).sum(axis=(1, 2, 3)) + bias[o]
    return acc


def layer(name, x, wq, sw, bq, op, act=None, zy=3, **attrs):
    """DQ(w) (and DQ(b)) initializers, the op, an optional activation, Q to an int8 output."""
    nodes = [helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_sw", f"{name}_wz"], [f"{name}_w"],
                              axis=1 if op == "MatMul" else 0)]
    inits = [init(f"{name}_wq", wq), init(f"{name}_sw", sw), init(f"{name}_wz", np.zeros(sw.shape, np.int8)),
             init(f"{name}_zy", np.int8(zy))]
    ins = [x, f"{name}_w"]
    if bq is not None:
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_bq", f"{name}_sb"], [f"{name}_b"], axis=0))
        inits += [init(f"{name}_bq", bq), init(f"{name}_sb", (SX * sw).astype(np.float32))]
        ins.append(f"{name}_b")
    nodes.append(helper.make_node(op, ins, [f"{name}_f"], name=name, **attrs))
    y = f"{name}_f"
    if act is not None:
        nodes.append(helper.make_node(act, [y] + list(act_inputs(name, act, inits)), [f"{name}_a"]))
        y = f"{name}_a"
    nodes.append(helper.make_node("QuantizeLinear", [y, "sy", f"{name}_zy"], [f"{name}_q"]))
    return nodes, inits


CLIP = (np.float32(-0.3), np.float32(0.6))


def act_inputs(name, act, inits):
    if act != "Clip":
        return []
    inits += [init(f"{name}_cmin", CLIP[0]), init(f"{name}_cmax", CLIP[1])]
    return [f"{name}_cmin", f"{name}_cmax"]


def integer_model():
    rng = np.random.default_rng(5)
    p = {"w1": rng.integers(-127, 128, (8, 4, 3, 3)), "sw1": rng.uniform(0.002, 0.02, 8),
         "w2": rng.integers(-127, 128, (4, 1, 3, 3)), "sw2": rng.uniform(0.01, 0.05, 4),
         "w3": rng.integers(-127, 128, (6, 20)), "sw3": rng.uniform(0.002, 0.02, 6),
         "w4": rng.integers(-127, 128, (20, 7)), "sw4": rng.uniform(0.002, 0.02, 7)}
    p = {k: v.astype(np.int8 if k[0] == "w" else np.float32) for k, v in p.items()}
    p["b"] = [rng.integers(-3000, 3000, n).astype(np.int32) for n in (8, 4, 6)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("QuantizeLinear", ["v", "sx", "zx"], ["vq"]),
             helper.make_node("DequantizeLinear", ["vq", "sx", "zx"], ["vd"])]
    inits = [init("sx", SX), init("zx", np.int8(ZX)), init("sy", SY)]
    for n, i in (layer("conv", "xd", p["w1"], p["sw1"], p["b"][0], "Conv", "Relu", zy=-128, pads=[1, 1, 1, 1],
                       strides=[2, 2]),
                 layer("dw", "xd", p["w2"], p["sw2"], p["b"][1], "Conv", "Clip", zy=2, pads=[1, 1, 1, 1], group=4),
                 layer("fc", "vd", p["w3"], p["sw3"], p["b"][2], "Gemm", zy=-5, transB=1),
                 layer("mm", "vd", p["w4"], p["sw4"], None, "MatMul", zy=9)):
        nodes += n
        inits += i
    m = model(nodes, [vi("x", TensorProto.FLOAT, (1, 4, 7, 7)), vi("v", TensorProto.FLOAT, (1, 20))],
              [vi(f"{n}_q", TensorProto.INT8, None) for n in ("conv", "dw", "fc", "mm")], inits)
    return m, p


def test_integer_ops_exact_against_fixed_point_and_within_1_lsb_of_onnxruntime(target, harness, workdir):
    m, p = integer_model()
    rng = np.random.default_rng(9)
    f = {"x": rng.normal(0, 2, (1, 4, 7, 7)).astype(np.float32), "v": rng.normal(0, 2, (1, 20)).astype(np.float32)}
    xq = spec_quantize(f["x"], SX, ZX, np.int8)
    vq = spec_quantize(f["v"], SX, ZX, np.int8)
    m_conv = np.float32(SX * p["sw1"]) / SY
    dev = 127 - ZX
    want_conv = requant_expected(conv_acc(xq, p["w1"], p["b"][0], 2, 1, 1), m_conv,
                                 bounds(p["w1"], p["b"][0], dev, 0), 1, -128, -128, 127)
    lo, hi = (int(np.rint(c / SY)) + 2 for c in CLIP)
    want_dw = requant_expected(conv_acc(xq, p["w2"], p["b"][1], 1, 1, 4), np.float32(SX * p["sw2"]) / SY,
                               bounds(p["w2"], p["b"][1], dev, 0), 1, 2, lo, hi)
    acc_fc = (vq.astype(np.int64) - ZX) @ p["w3"].T.astype(np.int64) + p["b"][2]
    # the zero point of a MatMul's input is folded into its bias (bias - x_zp * sum_k w)
    b_fc = p["b"][2] - ZX * p["w3"].astype(np.int64).sum(axis=1)
    want_fc = requant_expected(acc_fc, np.float32(SX * p["sw3"]) / SY, bounds(p["w3"].T, b_fc, 128, 1), 1, -5,
                               -128, 127)
    acc_mm = (vq.astype(np.int64) - ZX) @ p["w4"].astype(np.int64)
    b_mm = -ZX * p["w4"].astype(np.int64).sum(axis=0)
    want_mm = requant_expected(acc_mm, np.float32(SX * p["sw4"]) / SY, bounds(p["w4"], b_mm, 128, 1), 1, 9,
                               -128, 127)
    want = [want_conv, want_dw, want_fc, want_mm]
    ort = onnxruntime_outputs(m, f)
    got, res, _ = harness(m, target, f)
    assert res.manifest["ops"].get("edgec.QConv") == 2 and res.manifest["ops"].get("edgec.QMatMul") == 2
    assert res.manifest["float_fallback"] == []
    for j, (g, w, o) in enumerate(zip(got, want, ort)):
        np.testing.assert_array_equal(g, w.astype(np.int8), err_msg=f"{target} output {j}")
        d = np.abs(g.astype(int) - o.astype(int))
        assert d.max() <= 1 and np.mean(d == 0) >= 0.99, (target, j, d.max(), np.mean(d == 0))
    got, res = run_c_path(m, target, f, workdir, tag="-int")
    for j, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w.astype(np.int8), err_msg=f"C output {j}")


# -- edgec quantize on a real model -----------------------------------------------------------
@pytest.fixture(scope="module")
def kws_qdq(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantize")
    out = d / "kws.qdq.onnx"
    assert cli_main(["quantize", "--model", str(ROOT / "models" / "kws_dscnn.onnx"), "--out", str(out),
                     "--calibration-random", "4"]) == 0
    return out


def test_quantize_command_writes_a_qdq_model_and_reports_agreement(kws_qdq, capsys):
    m = onnx.load(str(kws_qdq))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "int8 convolution weights"
    assert cli_main(["quantize", "--model", str(ROOT / "models" / "kws_dscnn.onnx"), "--out", "x.onnx"]) == 2
    assert "one of the arguments --calibration --calibration-random is required" in capsys.readouterr().err


def ort_without_optimizations(m, feeds):
    """onnxruntime running the QDQ graph as written (its ONNX semantics); with all
    optimizations it swaps in its own integer kernels (QLinearSoftmax is a lookup table...),
    which round differently from the graph and from each other."""
    return onnxruntime_session(m, optimized=False).run(None, feeds)


@pytest.mark.parametrize("qtarget", TARGETS)
def test_quantized_kws_matches_onnxruntime(kws_qdq, qtarget, workdir):
    m = onnx.load(str(kws_qdq))
    rng = np.random.default_rng(3)
    scale = float(next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == next(
        n.input[1] for n in m.graph.node if n.output[0] == m.graph.output[0].name)))
    res = build(kws_qdq, qtarget, "model", workdir / f"kws-int8-{qtarget}")
    profile = get_profile(qtarget)
    exe = link_harness(workdir / f"kws-int8-{qtarget}", "model", profile)
    for i in range(3):
        f = {"input": rng.standard_normal((1, 1, 49, 10)).astype(np.float32)}
        got = run_model(exe, profile, [f["input"]], [("float32", (1, 12))]).outputs
        for want, exact in ((onnxruntime_outputs(m, f), False), (ort_without_optimizations(m, f), True)):
            d = np.abs(got[0].astype(np.float64) - want[0]) / scale
            assert d.max() <= 1.001, (i, exact, d.max())
            if exact:
                assert np.mean(d < 1e-3) >= 0.99, (i, np.mean(d < 1e-3))
    assert res.manifest["ops"]["edgec.QConv"] == 9 and res.manifest["ops"]["edgec.QMatMul"] == 1
    assert {e["op"] for e in res.manifest["float_fallback"]} == {"Softmax"}  # GlobalAveragePool: integer
    assert res.manifest["weight_bytes"] < 0.36 * 90416  # the float32 build's weights


def test_invoke_quantize_with_a_calibration_file(tmp_path):
    from test_invoke_surface import invoke

    src = ROOT / "tests" / "models" / "fc_autoencoder.onnx"
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", input=rng.standard_normal((3, 1, 640)).astype(np.float32))
    proc = invoke("quantize", "--model", str(src), "--out", str(tmp_path / "q.onnx"), "--calibration",
                  str(tmp_path / "cal.npz"))
    assert proc.returncode == 0, proc.stderr
    assert "3 calibration samples" in proc.stdout and "output 'output': float vs int8 max |diff|" in proc.stdout
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    np.savez(tmp_path / "bad.npz", other=np.zeros((2, 1, 640), np.float32))
    proc = invoke("quantize", "--model", str(src), "--out", str(tmp_path / "q2.onnx"), "--calibration",
                  str(tmp_path / "bad.npz"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "has no array 'input'" in proc.stderr and not (tmp_path / "q2.onnx").exists()


def test_nodes_left_in_float_are_listed_with_the_reason():
    """A Conv whose bias is a float initializer (no int32 DequantizeLinear) stays float; so does
    the Softmax (no integer form); the integer Gemm is not listed."""
    from toolchain.passes import run_pipeline

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv_float_bias"),
             helper.make_node("QuantizeLinear", ["c", "sx", "zx"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sx", "zx"], ["cd"]),
             helper.make_node("Flatten", ["cd"], ["f"]),
             helper.make_node("QuantizeLinear", ["f", "sx", "zx"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "sx", "zx"], ["fd"]),
             helper.make_node("DequantizeLinear", ["gq", "sg", "gz"], ["g"], axis=0),
             helper.make_node("Gemm", ["fd", "g"], ["y"], name="fc", transB=1),
             helper.make_node("QuantizeLinear", ["y", "sx", "zx"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sx", "zx"], ["yd"]),
             helper.make_node("Softmax", ["yd"], ["out"], name="softmax")]
    inits = [init("sx", SX), init("zx", np.int8(ZX)),
             init("wq", rng.integers(-127, 128, (2, 1, 3, 3)).astype(np.int8)),
             init("sw", np.full(2, 0.01, np.float32)), init("wz", np.zeros(2, np.int8)),
             init("b", np.zeros(2, np.float32)),
             init("gq", rng.integers(-127, 128, (3, 8)).astype(np.int8)),
             init("sg", np.full(3, 0.01, np.float32)), init("gz", np.zeros(3, np.int8))]
    g = import_model(model(nodes, [vi("x", TensorProto.FLOAT, (1, 1, 4, 4))], [vi("out", TensorProto.FLOAT, (1, 3))],
                           inits))
    run_pipeline(g)
    notes = {n["node"]: n for n in g.notes["float_fallback"]}
    assert notes["conv_float_bias"]["reason"] == "its bias is not a constant int32 DequantizeLinear"
    assert notes["softmax"]["reason"] == "no integer form"
    assert "fc" not in notes and g.op_counts().get("edgec.QMatMul") == 1


# -- integer convolutions of awkward shapes: every tail of the register tiles ------------------
# (name, input shape, input type, its zero point, weight shape, Conv attributes): a reduction
# that is not whole 16-byte steps (27, 12, 20), output channels and pixels that are not whole
# tiles, asymmetric padding, strides, dilation, groups, depthwise maps wider than a vector
# (37 columns) and narrower (5), uint8 activations (read as int8 by the kernels), a kernel of
# more taps than are unrolled (5x4), a depthwise kernel row of 5 taps (two words on DSP cores)
CONV_CASES = [
    ("general", (1, 3, 9, 11), np.int8, -7, (5, 3, 3, 3), dict(strides=[2, 1], pads=[1, 0, 0, 2])),
    ("grouped", (1, 4, 6, 5), np.int8, 4, (6, 2, 3, 2), dict(group=2, pads=[0, 1, 1, 0])),
    ("depthwise_strided", (1, 3, 21, 37), np.int8, 2, (3, 1, 3, 3),
     dict(group=3, strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("pointwise_uint8", (1, 20, 3, 4), np.uint8, 131, (7, 20, 1, 1), {}),
    ("depthwise_uint8", (2, 2, 5, 5), np.uint8, 17, (2, 1, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    ("large_kernel", (1, 2, 12, 9), np.int8, 3, (3, 2, 5, 4), dict(strides=[1, 2], pads=[2, 1, 2, 1])),
    ("depthwise_5_wide", (1, 4, 7, 13), np.int8, -3, (4, 1, 3, 5), dict(group=4, strides=[1, 2], pads=[1, 2, 1, 2])),
    # pixels in the lanes (kernel/lane_int8.py): channels that are not whole quads, rows of
    # 16-column runs with an overlapping last one, of 8-column runs, a 1x1 convolution's
    # block read as one run, a strided one read row by row
    ("wide_padded_uint8", (1, 6, 5, 37), np.uint8, 140, (9, 6, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("mid_dilated", (1, 8, 6, 12), np.int8, 5, (4, 8, 3, 3), dict(dilations=[1, 2], pads=[0, 2, 0, 2])),
    ("pointwise_long", (1, 5, 7, 9), np.int8, -2, (6, 5, 1, 1), {}),
    ("pointwise_strided", (1, 8, 9, 40), np.int8, 1, (16, 8, 1, 1), dict(strides=[2, 2])),
    # depthwise output rows stored as whole vectors (32 columns); a weight of -128, whose
    # products are not summed two by two in int16
    ("depthwise_rows_uint8", (1, 3, 3, 32), np.uint8, 200, (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ("depthwise_min_weight", (1, 2, 6, 7), np.int8, 0, (2, 1, 3, 3), dict(group=2, strides=[2, 1])),
]


def conv_int(xq, zx, w, bias, attrs):
    """Exact integer convolution of (x - zx) with w plus bias: naive loops over the output."""
    st, dl = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    g = attrs.get("group", 1)
    x = np.pad(xq.astype(np.int64) - zx, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    n, _, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    oh, ow = (h - (kh - 1) * dl[0] - 1) // st[0] + 1, (wd - (kw - 1) * dl[1] - 1) // st[1] + 1
    acc = np.zeros((n, oc, oh, ow), np.int64)
    for o in range(oc):
        c0 = (o // (oc // g)) * cg
        for i in range(oh):
            for j in range(ow):
                win = x[:, c0:c0 + cg, i * st[0]:i * st[0] + (kh - 1) * dl[0] + 1:dl[0],
                        j * st[1]:j * st[1] + (kw - 1) * dl[1] + 1:dl[1]]
                acc[:, o, i, j] = (win * w[o].astype(np.int64)).sum(axis=(1, 2, 3)) + bias[o]
    return acc


def awkward_conv_model():
    rng = np.random.default_rng(23)
    nodes, inits, inputs, outputs, cases = [], [init("sy", SY)], [], [], []
    for name, shape, dtype, zx, wshape, attrs in CONV_CASES:
        w = rng.integers(-127, 128, wshape).astype(np.int8)
        if name.endswith("min_weight"):
            w.flat[4] = -128
        sw = rng.uniform(0.002, 0.02, wshape[0]).astype(np.float32)
        b = rng.integers(-3000, 3000, wshape[0]).astype(np.int32)
        inits += [init(f"{name}_sx", SX), init(f"{name}_zx", dtype(zx))]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_sx", f"{name}_zx"], [f"{name}_xq"]),
                  helper.make_node("DequantizeLinear", [f"{name}_xq", f"{name}_sx", f"{name}_zx"], [f"{name}_xd"])]
        n, i = layer(name, f"{name}_xd", w, sw, b, "Conv", zy=-4, **attrs)
        nodes, inits = nodes + n, inits + i
        inputs.append(vi(name, TensorProto.FLOAT, shape))
        outputs.append(vi(f"{name}_q", TensorProto.INT8, None))
        cases.append((name, shape, dtype, zx, w, sw, b, attrs))
    return model(nodes, inputs, outputs, inits), cases


def test_integer_convolutions_of_awkward_shapes_are_exact(target, harness, workdir):
    check_awkward_convolutions(target, harness, workdir)


@pytest.mark.parametrize("board_target", ["cortex-m4", pytest.param("cortex-m55", marks=pytest.mark.slow)])
def test_integer_convolutions_of_awkward_shapes_on_the_boards(board_target, harness, workdir):
    """The DSP (M4) and MVE (M55) forms on QEMU's boards (the default suite runs the M4 here and
    the M55 on the quantized KWS below; --slow both on both)."""
    check_awkward_convolutions(board_target, harness, workdir)


def check_awkward_convolutions(target, harness, workdir):
    m, cases = awkward_conv_model()
    rng = np.random.default_rng(31)
    feeds = {name: rng.normal(0, 3, shape).astype(np.float32) for name, shape, *_ in cases}
    want = []
    for name, shape, dtype, zx, w, sw, b, attrs in cases:
        xq = spec_quantize(feeds[name], SX, zx, dtype)
        info = np.iinfo(dtype)
        dev = max(abs(int(info.min) - zx), abs(int(info.max) - zx))
        acc = conv_int(xq, zx, w, b, attrs)
        want.append(requant_expected(acc, np.float32(SX * sw) / SY, bounds(w, b, dev, 0), 1, -4, -128, 127))
    got, res, _ = harness(m, target, feeds)
    assert res.manifest["ops"].get("edgec.QConv") == len(cases) and res.manifest["float_fallback"] == []
    for (name, *_), g, w in zip(cases, got, want):
        np.testing.assert_array_equal(g, w.astype(np.int8), err_msg=f"{target} {name}")
    profile = get_profile(target)
    if profile.int8_dot_by_lane or profile.int8_mac_by_scalar:  # pixels in the lanes
        import llvmlite.binding as llvm
        from toolchain.backends.llvm_object import target_machine
        asm = target_machine(profile).emit_assembly(llvm.parse_assembly(res.compiled.llvm_ir))
        if profile.int8_dot_by_lane == "sdot":  # lane-indexed sdot, st4 gathers
            assert re.search(r"sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[3\]", asm) and "st4\t{" in asm
        elif profile.int8_dot_by_lane == "pmaddwd":  # 4 pixels' 16 bytes, sign-extended, against a channel's
            assert re.search(r"vpmaddwd\s+[^\n]*%ymm\d+, %ymm\d+", asm) and "vpmovsxbw" in asm
        else:  # a widening multiply-accumulate by a scalar weight
            assert re.search(r"vwmacc\.vx\s+v\d+, [a-z]\d+, v\d+", asm)
    if target == "x86-64-v3":  # the C path's integer loops, against the same reference
        got, _ = run_c_path(m, target, feeds, workdir, tag="-awkward")
        for (name, *_), g, w in zip(cases, got, want):
            np.testing.assert_array_equal(g, w.astype(np.int8), err_msg=f"C {name}")


# -- a residual Add between quantized tensors ----------------------------------------------------
def qadd_model():
    """Three adds of quantized tensors: int8 + int8 -> Relu -> int8 (same shapes), uint8 +
    int8 broadcast along channels -> uint8, int8 + int8 -> int8 with scales far apart."""
    inits = [init("sa", np.float32(0.031)), init("za", np.int8(-9)), init("sb", np.float32(0.047)),
             init("zb", np.int8(5)), init("su", np.float32(0.02)), init("zu", np.uint8(120)),
             init("sy", np.float32(0.05)), init("zy", np.int8(-3)), init("syu", np.float32(0.07)),
             init("zyu", np.uint8(100)), init("stiny", np.float32(0.0007)), init("z0", np.int8(0))]
    nodes = []
    for x, s, z in (("a", "sa", "za"), ("b", "sb", "zb"), ("u", "su", "zu"), ("c", "sb", "zb"), ("t", "stiny", "z0")):
        nodes += [helper.make_node("QuantizeLinear", [x, s, z], [f"{x}q"]),
                  helper.make_node("DequantizeLinear", [f"{x}q", s, z], [f"{x}d"])]
    nodes += [helper.make_node("Add", ["ad", "bd"], ["ab"]), helper.make_node("Relu", ["ab"], ["abr"]),
              helper.make_node("QuantizeLinear", ["abr", "sy", "zy"], ["y1"]),
              helper.make_node("Add", ["ud", "cd"], ["uc"]),
              helper.make_node("QuantizeLinear", ["uc", "syu", "zyu"], ["y2"]),
              helper.make_node("Add", ["ad", "td"], ["at"]),
              helper.make_node("QuantizeLinear", ["at", "sy", "zy"], ["y3"])]
    ins = [vi("a", TensorProto.FLOAT, (2, 3, 4, 5)), vi("b", TensorProto.FLOAT, (2, 3, 4, 5)),
           vi("u", TensorProto.FLOAT, (2, 3, 4, 5)), vi("c", TensorProto.FLOAT, (1, 3, 1, 1)),
           vi("t", TensorProto.FLOAT, (2, 3, 4, 5))]
    outs = [vi("y1", TensorProto.INT8, None), vi("y2", TensorProto.UINT8, None), vi("y3", TensorProto.INT8, None)]
    return model(nodes, ins, outs, inits)


def test_quantized_adds_are_the_qdq_graphs_arithmetic_exactly(target, harness):
    m = qadd_model()
    rng = np.random.default_rng(12)
    feeds = {n: rng.normal(0, 2, s).astype(np.float32) for n, s in (
        ("a", (2, 3, 4, 5)), ("b", (2, 3, 4, 5)), ("u", (2, 3, 4, 5)), ("c", (1, 3, 1, 1)), ("t", (2, 3, 4, 5)))}
    f32 = np.float32

    def dq(name, s, z, dtype):
        return spec_dequantize(spec_quantize(feeds[name], f32(s), z, dtype), f32(s), z)

    a, b = dq("a", 0.031, -9, np.int8), dq("b", 0.047, 5, np.int8)
    u, c, t = dq("u", 0.02, 120, np.uint8), dq("c", 0.047, 5, np.int8), dq("t", 0.0007, 0, np.int8)
    want = [spec_quantize(np.maximum(a + b, 0), f32(0.05), -3, np.int8), spec_quantize(u + c, f32(0.07), 100, np.uint8),
            spec_quantize(a + t, f32(0.05), -3, np.int8)]
    got, res, _ = harness(m, target, feeds)
    assert res.manifest["ops"].get("edgec.QAdd") == 3 and res.manifest["float_fallback"] == []
    for j, (g, w, o) in enumerate(zip(got, want, ort_without_optimizations(m, feeds))):
        np.testing.assert_array_equal(w, o, err_msg=f"the spec's formulas against onnxruntime, output {j}")
        np.testing.assert_array_equal(g, w, err_msg=f"{target} output {j}")


def qpool_model():
    inits = [init("sx", np.float32(0.043)), init("zx", np.int8(-6)), init("sy", np.float32(0.011)),
             init("zy", np.int8(2)), init("sxu", np.float32(0.02)), init("zxu", np.uint8(131))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("QuantizeLinear", ["u", "sxu", "zxu"], ["uq"]),
             helper.make_node("DequantizeLinear", ["uq", "sxu", "zxu"], ["ud"]),
             helper.make_node("GlobalAveragePool", ["xd"], ["g"]),
             helper.make_node("QuantizeLinear", ["g", "sy", "zy"], ["y1"]),
             helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["y2"]),
             helper.make_node("AveragePool", ["ud"], ["pu"], kernel_shape=[3, 2], strides=[1, 2]),
             helper.make_node("QuantizeLinear", ["pu", "sy", "zy"], ["y3"])]
    ins = [vi("x", TensorProto.FLOAT, (2, 16, 8, 9)), vi("u", TensorProto.FLOAT, (1, 5, 7, 6))]
    return model(nodes, ins, [vi(f"y{i}", TensorProto.INT8, None) for i in (1, 2, 3)], inits)


def test_quantized_average_pools_sum_in_int32_within_a_step_of_the_graph(target, harness):
    m = qpool_model()
    rng = np.random.default_rng(4)
    feeds = {"x": rng.normal(0, 2, (2, 16, 8, 9)).astype(np.float32),
             "u": rng.normal(0, 1, (1, 5, 7, 6)).astype(np.float32)}
    f32 = np.float32

    def pooled(xq, zx, sx, kernel, strides):
        """The window sums of (x - zx) in exact integers, then float32(sum) * sx / count."""
        (kh, kw), (sh, sw) = kernel, strides
        xs = xq.astype(np.int64) - zx
        oh, ow = (xs.shape[2] - kh) // sh + 1, (xs.shape[3] - kw) // sw + 1
        s = sum(xs[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] for i in range(kh) for j in range(kw))
        return (s.astype(f32) * f32(sx)) / f32(kh * kw)

    xq, uq = spec_quantize(feeds["x"], f32(0.043), -6, np.int8), spec_quantize(feeds["u"], f32(0.02), 131, np.uint8)
    want = [spec_quantize(pooled(xq, -6, 0.043, (8, 9), (1, 1)), f32(0.011), 2, np.int8),
            spec_quantize(pooled(xq, -6, 0.043, (2, 2), (2, 2)), f32(0.011), 2, np.int8),
            spec_quantize(pooled(uq, 131, 0.02, (3, 2), (1, 2)), f32(0.011), 2, np.int8)]
    got, res, _ = harness(m, target, feeds)
    assert res.manifest["ops"].get("edgec.QAveragePool") == 3 and res.manifest["float_fallback"] == []
    for j, (g, w, o) in enumerate(zip(got, want, ort_without_optimizations(m, feeds))):
        np.testing.assert_array_equal(g, w, err_msg=f"{target} output {j}")
        d = np.abs(g.astype(int) - o.astype(int))  # the graph sums dequantized floats
        assert d.max() <= 1 and np.mean(d == 0) >= 0.99, (j, d.max(), np.mean(d == 0))


@pytest.mark.parametrize("board_target", ["cortex-m55", pytest.param("cortex-m4", marks=pytest.mark.slow)])
def test_quantized_kws_on_the_microcontroller_boards_is_the_qdq_graphs_output(kws_qdq, board_target, workdir):
    """MVE (vmlava.s8, vqrdmulh) on the M55 and the DSP instructions (sxtb16, smlad) on the M4,
    booted on QEMU's boards: every output element identical to onnxruntime running the graph
    as written."""

    m = onnx.load(str(kws_qdq))
    f = {"input": np.random.default_rng(8).standard_normal((1, 1, 49, 10)).astype(np.float32)}
    got, res, _ = compile_and_run(kws_qdq, board_target, f, workdir)
    np.testing.assert_array_equal(got[0], ort_without_optimizations(m, f)[0])
    assert res.manifest["float_fallback"] and {e["op"] for e in res.manifest["float_fallback"]} == {"Softmax"}


def test_quantize_folds_batchnorm_after_gemm_so_the_autoencoder_is_integer(tmp_path, workdir):
    """onnxruntime's quantizer leaves a BatchNormalization after a Gemm in float (its
    pre-processing folds Conv+BN only); `edgec quantize` folds it first: the same float
    function, and a QDQ model with integer Gemms and no float tensor."""
    from toolchain.quantize import fold_gemm_batchnorm

    src = ROOT / "tests" / "models" / "fc_autoencoder.onnx"
    m = onnx.load(str(src))
    n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    assert fold_gemm_batchnorm(m) == n_bn == 9
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    x = {"input": np.random.default_rng(2).standard_normal((1, 640)).astype(np.float32)}
    np.testing.assert_allclose(onnxruntime_outputs(m, x)[0], onnxruntime_outputs(onnx.load(str(src)), x)[0],
                               rtol=1e-4, atol=1e-5)
    out = tmp_path / "fc.qdq.onnx"
    assert cli_main(["quantize", "--model", str(src), "--out", str(out), "--calibration-random", "2"]) == 0
    q = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in q.graph.node)
    got, res, _ = compile_and_run(q, "x86-64-v3", x, workdir)
    assert res.manifest["ops"].get("edgec.QMatMul") == 10 and res.manifest["float_fallback"] == []
    np.testing.assert_array_equal(got[0], ort_without_optimizations(q, x)[0])
