"""Quantized models from outside, in the operator-oriented form (QOperator): models nobody
here wrote, quantized by onnxruntime's own quantize_static (QuantFormat.QOperator, per
channel, random calibration), imported (frontend/qoperator.py rewrites QLinearConv,
QLinearMatMul and the com.microsoft ops into QDQ), built for x86-64-v3 and run against
onnxruntime running the same QOperator model; small hand-written models of each op
against onnxruntime; MatMulInteger/ConvInteger exact against integers computed here; bad
quantization parameters refused naming the model's node and op."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import ALL_TARGETS, ROOT, compile_and_run, onnxruntime_outputs
from test_c_backend import run_c_path
from toolchain.errors import InvalidModelError, UnsupportedError
from toolchain.frontend.onnx_import import import_model
from toolchain.quantize import calibration_samples, lsb_agreement, output_steps

MODELS = {"kws_dscnn": ROOT / "models" / "kws_dscnn.onnx",
          **{p.stem: p for p in sorted((ROOT / "tests" / "models").glob("*.onnx"))}}
SLOW = [m for m in MODELS if m != "kws_dscnn"]
TARGETS = [t for t in ("x86-64-v3", "cortex-a76") if t in ALL_TARGETS]


def quantize_qoperator(src, out, n_calibration=4, seed=0):
    """onnxruntime's quantize_static in QOperator format, per channel, on seeded random
    calibration inputs (its recommended pre-processing first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = calibration_samples(onnx.load(str(src)), None, n_calibration, seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(onnx.load(str(src)), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True)
    return out


def agreement(qmodel_path, target, workdir, runs=3, seed=7):
    """Per output: share of elements identical to onnxruntime (the same QOperator model) and
    the largest difference in LSBs of the output's quantization step, over `runs` random inputs."""
    m = onnx.load(str(qmodel_path))
    rng = np.random.default_rng(seed)
    specs = [(vi.name, tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)) for vi in m.graph.input
             if vi.name not in {t.name for t in m.graph.initializer}]
    steps = output_steps(m)
    got_all, want_all, res = [], [], None
    for r in range(runs):
        feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in specs}
        got, res, _ = compile_and_run(qmodel_path, target, feeds, workdir) if res is None else \
            _rerun(res, target, feeds, workdir, qmodel_path)
        got_all.append(got)
        want_all.append(onnxruntime_outputs(m, feeds))
    rows = []
    for j, step in enumerate(steps):
        g = np.concatenate([np.ravel(x[j]) for x in got_all])
        w = np.concatenate([np.ravel(x[j]) for x in want_all])
        rows.append(lsb_agreement(g, w, step))
    return rows, res


def _rerun(res, target, feeds, workdir, path):
    """Runs the build already made (compile_and_run builds again otherwise)."""
    from toolchain.harness.runner import link_harness, run_model
    from toolchain.targets import get_profile

    profile = get_profile(target)
    out = workdir / f"build-{target}-{path.stem}"
    exe = link_harness(out, "model", profile)
    specs = [(o["dtype"], tuple(o["shape"])) for o in res.manifest["outputs"]]
    run = run_model(exe, profile, [feeds[i["name"]] for i in res.manifest["inputs"]], specs)
    return run.outputs, res, run


@pytest.fixture(scope="module")
def qop_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qoperator")


def check_model(name, qop_dir, workdir, qtarget="x86-64-v3"):
    path = quantize_qoperator(MODELS[name], qop_dir / f"{name}.qop.onnx")
    rows, res = agreement(path, qtarget, workdir)
    for row in rows:
        if "max_lsb" in row:  # an output of a DequantizeLinear: in its quantization steps
            assert row["identical"] >= 0.99 and row["max_lsb"] <= 1.001, (name, row)
        else:  # a float output (LSTM, LayerNormalization...): float tolerance
            assert row["max_abs"] <= 1e-4, (name, row)
    return rows, res


def test_kws_quantized_by_onnxruntime_in_qoperator_format_matches_it(qop_dir, workdir):
    rows, res = check_model("kws_dscnn", qop_dir, workdir)
    ops = res.manifest["ops"]
    assert ops.get("edgec.QConv") == 9 and ops.get("edgec.QMatMul") == 1, ops  # every QLinearConv, the QGemm
    assert {e["op"] for e in res.manifest["float_fallback"]} == {"Softmax"}  # GlobalAveragePool: integer
    assert rows[0]["identical"] >= 0.99, rows


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_real_models_quantized_in_qoperator_format_match_onnxruntime(name, qop_dir, workdir):
    check_model(name, qop_dir, workdir)


# -- each op, hand-written, against onnxruntime ---------------------------------------------
def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def ms_model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "qop", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid("com.microsoft", 1)])


def Q(op, ins, out, name=None, **kw):
    domain = "" if op in ("QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "Flatten") \
        else "com.microsoft"
    return helper.make_node(op, ins, [out], name=name or out, domain=domain, **kw)


def every_op_model():
    """Each rewritten op reading int8 graph inputs directly (so each is compared in isolation):
    QLinearConv (per-channel weights, bias), QLinearLeakyRelu, QLinearSigmoid, QLinearAdd,
    QLinearMul, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool on a and b
    (1, 6, 6, 6); QGemm, QLinearSoftmax, QLinearMatMul on v (1, 12)."""
    rng = np.random.default_rng(11)
    f32 = np.float32
    inits = [init("w", rng.integers(-127, 128, (6, 6, 3, 3)).astype(np.int8)),
             init("sw", rng.uniform(0.002, 0.006, 6).astype(f32)), init("wz", np.zeros(6, np.int8)),
             init("bias", rng.integers(-2000, 2000, 6).astype(np.int32)),
             init("wg", rng.integers(-127, 128, (5, 12)).astype(np.int8)),
             init("sg", rng.uniform(0.002, 0.01, 5).astype(f32)), init("zg", np.zeros(5, np.int8)),
             init("bg", rng.integers(-500, 500, 5).astype(np.int32)),
             init("wm", rng.integers(-127, 128, (12, 5)).astype(np.int8)),
             init("sm", rng.uniform(0.002, 0.01, 5).astype(f32)), init("zm", np.zeros(5, np.int8))]
    for name, (sc, z) in SCALES.items():
        inits += [init(f"s_{name}", f32(sc)), init(f"z_{name}", np.int8(z))]
    a, b, v = ["a", "s_a", "z_a"], ["b", "s_b", "z_b"], ["v", "s_v", "z_v"]
    nodes = [Q("QLinearConv", a + ["w", "sw", "wz", "s_conv", "z_conv", "bias"], "conv", pads=[1, 1, 1, 1]),
             Q("QLinearLeakyRelu", a + ["s_lrelu", "z_lrelu"], "lrelu", alpha=0.1),
             Q("QLinearSigmoid", a + ["s_sig", "z_sig"], "sig"),
             Q("QLinearAdd", a + b + ["s_add", "z_add"], "add"),
             Q("QLinearMul", a + b + ["s_mul", "z_mul"], "mul"),
             Q("QLinearConcat", ["s_cat", "z_cat"] + a + b, "cat", axis=1),
             Q("QLinearAveragePool", a + ["s_pool", "z_pool"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
             Q("QLinearGlobalAveragePool", a + ["s_gap", "z_gap"], "gap"),
             Q("QGemm", v + ["wg", "sg", "zg", "bg", "s_gemm", "z_gemm"], "gemm", transB=1),
             Q("QLinearSoftmax", v + ["s_softmax", "z_softmax"], "softmax", axis=-1, opset=13),
             Q("QLinearMatMul", v + ["wm", "sm", "zm", "s_mm", "z_mm"], "mm")]
    outs = {"conv": (1, 6, 6, 6), "lrelu": (1, 6, 6, 6), "sig": (1, 6, 6, 6), "add": (1, 6, 6, 6),
            "mul": (1, 6, 6, 6), "cat": (1, 12, 6, 6), "pool": (1, 6, 3, 3), "gap": (1, 6, 1, 1),
            "gemm": (1, 5), "softmax": (1, 12), "mm": (1, 5)}
    ins = [vi("a", TensorProto.INT8, (1, 6, 6, 6)), vi("b", TensorProto.INT8, (1, 6, 6, 6)),
           vi("v", TensorProto.INT8, (1, 12))]
    return ms_model(nodes, ins, [vi(k, TensorProto.INT8, s) for k, s in outs.items()], inits), list(outs)


SCALES = {"a": (0.02, 3), "b": (0.03, -5), "v": (0.02, -2), "conv": (0.3, -4), "lrelu": (0.02, -60),
          "sig": (0.004, -128), "add": (0.04, 2), "mul": (0.003, -10), "cat": (0.03, 1), "pool": (0.015, 0),
          "gap": (0.004, -3), "gemm": (0.1, 5), "softmax": (1 / 256, -128), "mm": (0.1, -7)}


def spec_float_fallback(name, a, b):
    """The QDQ semantics of the elementwise ops in float32, written here from the formulas:
    y = saturate(round_half_even(f(dequantize(a), dequantize(b)) / y_scale) + y_zp)."""
    f32 = np.float32

    def dq(x, key):
        sc, z = SCALES[key]
        return ((x.astype(np.int64) - z).astype(f32) * f32(sc)).astype(f32)

    da, db = dq(a, "a"), dq(b, "b")
    y = {"add": lambda: da + db, "mul": lambda: da * db, "lrelu": lambda: np.where(da >= 0, da, da * f32(0.1)),
         "cat": lambda: np.concatenate([da, db], axis=1)}[name]().astype(f32)
    sc, z = SCALES[name]
    return np.clip(np.rint((y / f32(sc)).astype(f32)) + z, -128, 127).astype(np.int8)


@pytest.mark.parametrize("qtarget", TARGETS)
def test_every_rewritten_op_within_1_lsb_of_onnxruntime(qtarget, workdir):
    m, names = every_op_model()
    rng = np.random.default_rng(4)
    feeds = {k: rng.integers(-128, 128, s).astype(np.int8) for k, s in (("a", (1, 6, 6, 6)), ("b", (1, 6, 6, 6)),
                                                                       ("v", (1, 12)))}
    got, res, _ = compile_and_run(m, qtarget, feeds, workdir)
    want = onnxruntime_outputs(m, feeds)
    ops = res.manifest["ops"]
    assert ops.get("edgec.QConv") == 1 and ops.get("edgec.QMatMul") == 2, ops
    assert ops.get("edgec.QAdd") == 1 and ops.get("edgec.QAveragePool") == 2, ops  # QLinearAdd, the two pools
    fallback = {e["node"]: e["op"] for e in res.manifest["float_fallback"]}
    assert fallback == {"lrelu": "LeakyRelu", "sig": "Sigmoid", "mul": "Mul", "cat": "Concat",
                        "softmax": "Softmax"}, fallback
    for j, name in enumerate(names):
        g, w = got[j].astype(np.int64), want[j].astype(np.int64)
        assert g.shape == w.shape and len(np.unique(w)) > 3, (name, "the output should not be saturated")
        d = np.abs(g - w)
        assert d.max() <= 1, (qtarget, name, d.max())
        # the integer ops agree with onnxruntime's QLinearConv/QGemm/QLinearMatMul but for
        # exact ties; the float fallback (DQ -> float op -> Q: the op's ONNX semantics, exact
        # against the formula below) agrees with onnxruntime's own integer kernels but for
        # QLinearAdd's (which rounds differently: 98.15% identical here, on both targets)
        assert np.mean(d == 0) >= (0.95 if name == "add" else 0.99), \
            (qtarget, name, np.mean(d == 0))
        if name in ("add", "mul", "lrelu", "cat"):
            np.testing.assert_array_equal(got[j], spec_float_fallback(name, feeds["a"], feeds["b"]), err_msg=name)
    if qtarget == "x86-64-v3":  # the C path computes the same bits
        got_c, _ = run_c_path(m, qtarget, feeds, workdir, tag="-qop")
        for j, name in enumerate(names):
            np.testing.assert_array_equal(got_c[j], got[j], err_msg=f"C {name}")


# -- MatMulInteger, ConvInteger: exact int32 ------------------------------------------------
def naive_conv(x, w, pads, stride):
    """Exact int64 2-D convolution (group 1), zero padding, naive loops."""
    x = np.pad(x, ((0, 0), (0, 0), (pads, pads), (pads, pads)))
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, oc, oh, ow), np.int64)
    for o in range(oc):
        for i in range(oh):
            for j in range(ow):
                y[:, o, i, j] = (x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] * w[o]).sum((1, 2, 3))
    return y


def test_matmulinteger_and_convinteger_exact(workdir):
    """On the object path and the C path."""
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (2, 3, 40)).astype(np.uint8)
    bm = rng.integers(-128, 128, (40, 7)).astype(np.int8)
    bz = rng.integers(-20, 20, 7).astype(np.int8)  # per column
    bu = rng.integers(0, 256, (40, 7)).astype(np.uint8)
    x = rng.integers(0, 256, (1, 5, 7, 7)).astype(np.uint8)
    w = rng.integers(0, 256, (4, 5, 3, 3)).astype(np.uint8)
    wz = np.uint8(131)
    nodes = [helper.make_node("MatMulInteger", ["a", "bm", "az", "bz"], ["mm"], name="mm"),
             helper.make_node("MatMulInteger", ["a", "bu", "az", "bz1"], ["mm1"], name="mm1"),
             helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["conv"], name="conv", pads=[1, 1, 1, 1],
                              strides=[2, 2])]
    m = helper.make_model(helper.make_graph(
        nodes, "int", [vi("a", TensorProto.UINT8, a.shape), vi("x", TensorProto.UINT8, x.shape)],
        [vi("mm", TensorProto.INT32, (2, 3, 7)), vi("mm1", TensorProto.INT32, (2, 3, 7)),
         vi("conv", TensorProto.INT32, (1, 4, 4, 4))],
        [init("bm", bm), init("az", np.uint8(200)), init("bz", bz), init("bz1", np.uint8(100)), init("bu", bu), init("w", w), init("xz", np.uint8(77)),
         init("wz", wz)]), opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"a": a, "x": x}
    want_mm = (a.astype(np.int64) - 200) @ (bm.astype(np.int64) - bz.astype(np.int64))
    want_mm1 = (a.astype(np.int64) - 200) @ (bu.astype(np.int64) - 100)
    want_conv = naive_conv(x.astype(np.int64) - 77, w.astype(np.int64) - 131, 1, 2)
    got, res, _ = compile_and_run(m, "x86-64-v3", feeds, workdir)
    got_c, _ = run_c_path(m, "x86-64-v3", feeds, workdir, tag="-int")
    for g, gc, want in zip(got, got_c, (want_mm, want_mm1, want_conv)):
        np.testing.assert_array_equal(g, want.astype(np.int32))
        np.testing.assert_array_equal(gc, want.astype(np.int32))
    # onnxruntime 1.32 agrees on uint8 x uint8; with uint8 A and int8 B it disagrees with the
    # spec and with onnx's reference evaluator (which agree with the result above) on 60-70% of
    # the elements, per-tensor zero points or not (its x86 u8 x s8 kernel, presumably the
    # int16 saturation of pairwise products), so mm is checked against the formula only
    ort = onnxruntime_outputs(m, feeds)
    np.testing.assert_array_equal(got[1], ort[1])
    np.testing.assert_array_equal(got[2], ort[2])


# -- bad parameters: refused naming the model's node and op ---------------------------------
def qlinearconv(x_scale=0.02, w_scale=(0.01, 0.02, 0.03), y_zp=np.int8(0), w_zp=None, op_domain=""):
    w_scale = np.asarray(w_scale, np.float32)
    inits = [init("xs", np.float32(x_scale)), init("xz", np.int8(0)),
             init("w", np.ones((3, 2, 1, 1), np.int8)), init("ws", w_scale),
             init("wz", np.zeros(w_scale.shape, np.int8) if w_zp is None else w_zp),
             init("ys", np.float32(0.1)), init("yz", y_zp)]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="qc")
    y_type = helper.np_dtype_to_tensor_dtype(np.asarray(y_zp).dtype)
    return ms_model([node], [vi("x", TensorProto.INT8, (1, 2, 3, 3))], [vi("y", y_type, (1, 3, 3, 3))], inits)


@pytest.mark.parametrize("m,kind,message", [
    (qlinearconv(x_scale=0.0), InvalidModelError, r"node 'qc' \(QLinearConv\): dq x \(DequantizeLinear\): scale 0.0 "
                                                  r"is not a positive finite number"),
    (qlinearconv(w_scale=(0.01, -0.02, 0.03)), InvalidModelError, r"node 'qc' \(QLinearConv\): dq w .*scale -0.0199"),
    (qlinearconv(w_scale=(0.01, 0.02)), InvalidModelError,
     r"node 'qc' \(QLinearConv\): dq w .*per-axis scale has 2 elements, axis 0 of the input has 3"),
    (qlinearconv(y_zp=np.int32(300)), InvalidModelError, r"node 'qc' \(QLinearConv\): input 'yz' \(y_zero_point\) "
                                                         r"is tensor\(int32\)"),
    (qlinearconv(w_zp=np.zeros(3, np.uint8)), InvalidModelError, r"node 'qc' \(QLinearConv\): input 'wz'"),
])
def test_bad_qlinearconv_parameters_name_the_node(m, kind, message):
    with pytest.raises(kind, match=message):
        import_model(m)


def test_bad_microsoft_op_parameters_and_other_ops_of_the_domain():
    def add(za=np.int8(0), sa=0.1):
        nodes = [Q("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], "c", name="add")]
        inits = [init("sa", np.float32(sa)), init("za", za), init("sb", np.float32(0.1)), init("zb", np.int8(0)),
                 init("sc", np.float32(0.2)), init("zc", np.int8(0))]
        return ms_model(nodes, [vi("a", TensorProto.INT8, (4,)), vi("b", TensorProto.INT8, (4,))],
                        [vi("c", TensorProto.INT8, (4,))], inits)

    import_model(add())
    with pytest.raises(InvalidModelError, match=r"node 'add' \(QLinearAdd\): dq a \(DequantizeLinear\): scale -0.1"):
        import_model(add(sa=-0.1))
    with pytest.raises(InvalidModelError, match=r"node 'add' \(QLinearAdd\): dq a .*zero point type uint8 differs "
                                                r"from the quantized type int8"):
        import_model(add(za=np.uint8(3)))
    with pytest.raises(InvalidModelError, match=r"node 'add' \(QLinearAdd\): dq a .*zero point 300 out of range"):
        import_model(add(za=np.int32(300)))
    short = add()
    del short.graph.node[0].input[3:]
    with pytest.raises(InvalidModelError, match=r"node 'add' \(QLinearAdd\): takes 8 inputs .*\[3, 4, 6\] missing"):
        import_model(short)
    other = add()
    other.graph.node[0].op_type = "QLinearWhere"
    with pytest.raises(UnsupportedError, match=r"node 'add' \(QLinearWhere\): unsupported op domain 'com.microsoft'"):
        import_model(other)
    conv = qlinearconv()
    conv.graph.node[0].domain = "com.microsoft"  # QLinearConv is taken from the default domain only
    with pytest.raises(UnsupportedError, match="unsupported op domain 'com.microsoft'"):
        import_model(conv)


def test_convinteger_zero_point_of_the_wrong_length():
    m = helper.make_model(helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="ci")], "ci",
        [vi("x", TensorProto.UINT8, (1, 2, 3, 3))], [vi("y", TensorProto.INT32, (1, 3, 3, 3))],
        [init("w", np.ones((3, 2, 1, 1), np.uint8)), init("xz", np.uint8(1)), init("wz", np.zeros(2, np.uint8))]),
        opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InvalidModelError, match=r"node 'ci' \(ConvInteger\): w_zero_point has shape \[2\]; 1 or 3"):
        import_model(m)
