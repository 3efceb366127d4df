"""DFT, STFT, MelWeightMatrix (ops/spectral.py) and TfIdfVectorizer (ops/text.py). Against
onnxruntime natively on x86-64-v3 (DFT at opsets 17 and 20: forward, inverse, onesided, irfft,
a dft_length that pads or truncates; STFT with and without a run-time window; the TF, IDF and
TFIDF modes with skips and n-gram sizes), numpy's FFT in float64 for float64 DFTs; one model of
all four ops on every target and through the C backend; the bad inputs."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import (assert_close, check_against_onnxruntime, compile_and_run, make_model, onnxruntime_outputs,
                     without_output_shapes)
from test_c_backend import run_c_path
from toolchain.compiler import compile_onnx
from toolchain.errors import CompileError, InvalidModelError, UnsupportedError

T = "x86-64-v3"
F = np.float32
rng = np.random.default_rng(5)


def I(v):  # noqa: E743
    return np.array(v, np.int64)


def model(nodes, feeds, outs, inits=None, opset=17):
    """outs: name -> (dtype, shape)."""
    return make_model(nodes, {k: (v.dtype, v.shape) for k, v in feeds.items()}, outs, inits, opset=opset)


def compile_error(m, kind=CompileError):
    with pytest.raises(kind) as e:
        compile_onnx(m, T)
    return str(e.value)


# -- DFT -------------------------------------------------------------------------------------
# (input shape, opset, axis, inverse, onesided, dft_length, output shape)
DFT_CASES = [
    ((2, 8, 3, 1), 17, 1, 0, 0, None, (2, 8, 3, 2)),        # real in, complex out
    ((2, 8, 3, 2), 17, 2, 0, 0, None, (2, 8, 3, 2)),        # complex, another axis
    ((2, 7, 3, 1), 17, 1, 0, 1, None, (2, 4, 3, 2)),        # rfft, odd length
    ((2, 7, 3, 1), 17, 1, 0, 1, 6, (2, 4, 3, 2)),           # rfft of a truncated signal
    ((2, 5, 3, 2), 20, -2, 1, 0, 12, (2, 5, 12, 2)),        # inverse of a zero-padded signal
    ((2, 5, 3, 2), 20, 1, 1, 1, None, (2, 8, 3, 1)),        # irfft: 2 * (5 - 1) real points
    ((2, 5, 3, 2), 20, 1, 1, 1, 9, (2, 9, 3, 1)),           # irfft, odd length
    ((3, 16, 2), 20, None, 0, 0, None, (3, 16, 2)),         # axis input left out: -2
    ((4, 6, 1), 20, 0, 0, 0, None, (4, 6, 2)),              # along the batch axis
]


@pytest.mark.parametrize("shape,opset,axis,inverse,onesided,n,out", DFT_CASES)
def test_dft(shape, opset, axis, inverse, onesided, n, out, workdir):
    x = rng.standard_normal(shape).astype(F)
    inits, ins, attrs = {}, ["x", "n" if n is not None else ""], {"inverse": inverse, "onesided": onesided}
    if n is not None:
        inits["n"] = I(n)
    if opset >= 20:
        if axis is not None:
            inits["a"] = I(axis)
            ins.append("a")
    else:
        attrs["axis"] = axis
    m = model([helper.make_node("DFT", ins, ["y"], **attrs)], {"x": x}, {"y": (F, out)}, inits, opset=opset)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_dft_float64_against_numpy(workdir):
    """Tables rounded once from float64: a float64 transform agrees with numpy's FFT closely."""
    x = rng.standard_normal((3, 24, 2))
    m = model([helper.make_node("DFT", ["x"], ["y"], axis=1, inverse=1)], {"x": x}, {"y": (np.float64, (3, 24, 2))})
    got, _, _ = compile_and_run(m, T, {"x": x}, workdir)
    want = np.fft.ifft(x[..., 0] + 1j * x[..., 1], axis=1)
    np.testing.assert_allclose(got[0], np.stack([want.real, want.imag], -1), rtol=1e-12, atol=1e-12)


def test_dft_of_a_computed_signal_with_a_bound_axis(workdir):
    """axis a graph input: refused naming it, taken once bound at build time (--bind)."""
    x = rng.standard_normal((2, 6, 1)).astype(F)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("DFT", ["r", "", "a"], ["y"], name="dft")]
    m = make_model(nodes, {"x": (F, x.shape), "a": (np.int64, ())}, {"y": (F, (2, 6, 2))}, opset=20)
    msg = compile_error(without_output_shapes(m), UnsupportedError)
    assert "dft" in msg and "axis (input 2) must be a compile-time constant" in msg
    got, _, _ = compile_and_run(m, T, {"x": x}, workdir, bind={"a": I(1)})
    want = onnxruntime_outputs(m, {"x": x, "a": I(1)})
    assert_close(got[0], want[0])


def test_dft_bad_inputs():
    x = np.zeros((2, 8, 1), F)
    m = model([helper.make_node("DFT", ["x", "n"], ["y"], axis=1, name="d1")], {"x": x, "n": I(8)},
              {"y": (F, (2, 8, 2))})
    msg = compile_error(without_output_shapes(m), UnsupportedError)
    assert "d1" in msg and "dft_length (input 1) must be a compile-time constant" in msg
    m = model([helper.make_node("DFT", ["x"], ["y"], axis=2, name="d2")], {"x": x}, {"y": (F, (2, 8, 2))})
    msg = compile_error(m, InvalidModelError)
    assert "d2" in msg and "axis 2 out of range" in msg
    xc = np.zeros((2, 8, 2), F)
    m = model([helper.make_node("DFT", ["x"], ["y"], axis=1, onesided=1, name="d3")], {"x": xc},
              {"y": (F, (2, 5, 2))})
    msg = compile_error(m, InvalidModelError)
    assert "d3" in msg and "onesided" in msg and "real input" in msg
    x3 = np.zeros((2, 8, 3), F)
    m = model([helper.make_node("DFT", ["x"], ["y"], axis=1, name="d4")], {"x": x3}, {"y": (F, (2, 8, 2))})
    msg = compile_error(m, InvalidModelError)
    assert "d4" in msg and "[..., 1 or 2]" in msg
    xi = np.zeros((2, 8, 1), np.int32)
    m = model([helper.make_node("DFT", ["x"], ["y"], axis=1, name="d5")], {"x": xi},
              {"y": (np.int32, (2, 8, 2))})
    msg = compile_error(m, InvalidModelError)
    assert "d5" in msg and "int32" in msg


# -- STFT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,step,length,window,onesided", [
    (1, 8, 16, False, 1), (1, 3, 9, False, 1), (1, 4, 10, True, 1), (2, 3, 10, True, 0), (1, 5, 12, True, 0)])
def test_stft(channels, step, length, window, onesided, workdir):
    s = rng.standard_normal((2, 40, channels)).astype(F)
    feeds, inits = {"s": s}, {"st": I(step), "fl": I(length)}
    if window:
        feeds["w"] = rng.standard_normal(length).astype(F)  # read at run time
    frames, bins = 1 + (40 - length) // step, length // 2 + 1 if onesided else length
    node = helper.make_node("STFT", ["s", "st", "w" if window else "", "fl"], ["y"], onesided=onesided)
    m = model([node], feeds, {"y": (F, (2, frames, bins, 2))}, inits)
    check_against_onnxruntime(m, feeds, T, workdir)


def test_stft_bad_inputs():
    s = np.zeros((1, 20, 1), F)
    node = helper.make_node("STFT", ["s", "st", "", "fl"], ["y"], name="st1")
    m = model([node], {"s": s, "st": I(4)}, {"y": (F, (1, 3, 5, 2))}, {"fl": I(8)})
    msg = compile_error(without_output_shapes(m), UnsupportedError)
    assert "st1" in msg and "frame_step (input 1) must be a compile-time constant" in msg
    node = helper.make_node("STFT", ["s", "st", "w", "fl"], ["y"], name="st2")
    m = model([node], {"s": s, "w": np.zeros(6, F)}, {"y": (F, (1, 3, 5, 2))}, {"st": I(4), "fl": I(8)})
    msg = compile_error(m, InvalidModelError)
    assert "st2" in msg and "window of 6 values for a frame_length of 8" in msg
    node = helper.make_node("STFT", ["s", "st", "", "fl"], ["y"], name="st3")
    m = model([node], {"s": s}, {"y": (F, (1, 1, 5, 2))}, {"st": I(4), "fl": I(32)})
    msg = compile_error(m, UnsupportedError)
    assert "st3" in msg and "longer than the signal" in msg
    node = helper.make_node("STFT", ["s", "st", "", "fl"], ["y"], name="st4")
    m = model([node], {"s": np.zeros((1, 20, 2), F)}, {"y": (F, (1, 3, 5, 2))}, {"st": I(4), "fl": I(8)})
    msg = compile_error(m, InvalidModelError)
    assert "st4" in msg and "real signal" in msg


# -- MelWeightMatrix -------------------------------------------------------------------------
@pytest.mark.parametrize("mels,n,rate,lo,hi,dtype", [
    (8, 16, 8192, 0.0, 4096.0, TensorProto.FLOAT), (20, 64, 16000, 20.0, 7600.0, TensorProto.FLOAT),
    (10, 32, 22050, 100.0, 8000.0, TensorProto.DOUBLE)])
def test_mel_weight_matrix(mels, n, rate, lo, hi, dtype, workdir):
    """Folded to a constant; read by a computed node (scaled by an input: a float64 MatMul with
    a constant operand does not build today, whatever the op making the constant)."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    bins = n // 2 + 1
    spec = rng.random((bins, mels)).astype(np_dtype)
    inits = {"m": np.array(mels, np.int32), "n": np.array(n, np.int32), "r": np.array(rate, np.int32),
             "lo": np.array(lo, F), "hi": np.array(hi, F)}
    nodes = [helper.make_node("MelWeightMatrix", ["m", "n", "r", "lo", "hi"], ["w"], output_datatype=dtype),
             helper.make_node("Mul", ["s", "w"], ["y"])]
    m = make_model(nodes, {"s": (np_dtype, spec.shape)}, {"y": (np_dtype, (bins, mels)), "w": (np_dtype, (bins, mels))},
                   inits, opset=17)
    check_against_onnxruntime(m, {"s": spec}, T, workdir)


def test_mel_weight_matrix_bad_inputs():
    inits = {"m": np.array(8, np.int32), "n": np.array(16, np.int32), "lo": np.array(0, F),
             "hi": np.array(6000, F)}
    node = helper.make_node("MelWeightMatrix", ["m", "n", "r", "lo", "hi"], ["w"], name="mel")
    m = make_model([node], {"r": (np.int32, ())}, {"w": (F, (9, 8))}, inits, opset=17)
    msg = compile_error(m, UnsupportedError)
    assert "mel" in msg and "sample_rate (input 2) must be a compile-time constant" in msg
    m = make_model([node], {}, {"w": (F, (9, 8))}, {**inits, "r": np.array(8192, np.int32)}, opset=17)
    msg = compile_error(m, InvalidModelError)
    assert "mel" in msg and "sample_rate / 2" in msg


# -- TfIdfVectorizer -------------------------------------------------------------------------
POOL = dict(ngram_counts=[0, 4], ngram_indexes=[0, 1, 2, 3, 4, 5, 6], pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7])
POOL3 = dict(ngram_counts=[0, 3, 7], ngram_indexes=[4, 3, 2, 1, 0, 5],
             pool_int64s=[1, 4, 6, 1, 4, 6, 2, 1, 3, 1])  # unigrams 1 4 6, bigrams (1,4) (6,2), trigram (1,3,1)


@pytest.mark.parametrize("mode,lo,hi,skip,pool,weights,shape,dtype", [
    ("TF", 2, 2, 0, POOL, None, (12,), np.int32),
    ("TF", 1, 2, 5, POOL, None, (2, 6), np.int32),
    ("TF", 1, 1, 3, POOL, None, (2, 6), np.int64),
    ("IDF", 1, 2, 1, POOL, None, (3, 8), np.int64),
    ("IDF", 1, 2, 2, POOL, [0.5, 1, 2, 3, 4, 5, 6], (3, 8), np.int32),
    ("TFIDF", 1, 3, 2, POOL3, [0.5, 1, 2, 3, 4, 5], (4, 10), np.int64),
    ("TFIDF", 2, 3, 1, POOL3, None, (20,), np.int32),
])
def test_tfidf(mode, lo, hi, skip, pool, weights, shape, dtype, workdir):
    x = rng.integers(1, 9, shape).astype(dtype)
    attrs = dict(pool, mode=mode, min_gram_length=lo, max_gram_length=hi, max_skip_count=skip)
    if weights is not None:
        attrs["weights"] = weights
    size = max(pool["ngram_indexes"]) + 1
    m = model([helper.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)], {"x": x},
              {"y": (F, (size,) if len(shape) == 1 else (shape[0], size))}, opset=9)
    check_against_onnxruntime(m, {"x": x}, T, workdir)


def test_tfidf_bad_inputs():
    x = np.zeros((6,), np.int64)
    base = dict(mode="TF", min_gram_length=1, max_gram_length=2, max_skip_count=0, ngram_counts=[0, 2])

    def err(kind, **attrs):
        node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], name="tf", **{**base, **attrs})
        msg = compile_error(model([node], {"x": x}, {"y": (F, (3,))}, opset=9), kind)
        assert "tf" in msg and "TfIdfVectorizer" in msg
        return msg

    assert "pool_strings" in err(UnsupportedError, pool_strings=["a", "b", "c", "d"], ngram_indexes=[0, 1, 2])
    assert "3 n-grams in the pool for 2 ngram_indexes" in err(
        InvalidModelError, pool_int64s=[1, 2, 3, 4], ngram_indexes=[0, 1])
    assert "mode must be one of" in err(InvalidModelError, mode="BM25", pool_int64s=[1, 2, 3, 4],
                                        ngram_indexes=[0, 1, 2])
    assert "2 weights for 3 n-grams" in err(InvalidModelError, pool_int64s=[1, 2, 3, 4], ngram_indexes=[0, 1, 2],
                                           weights=[1.0, 2.0])
    assert "not a whole number of 2-grams" in err(InvalidModelError, pool_int64s=[1, 2, 3], ngram_indexes=[0, 1, 2])
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], name="tf", pool_int64s=[1, 2, 3, 4],
                            ngram_indexes=[0, 1, 2], **base)
    msg = compile_error(model([node], {"x": x.astype(F)}, {"y": (F, (3,))}, opset=9), InvalidModelError)
    assert "tf" in msg and "tensor(float)" in msg


# -- every target, and the C backend ---------------------------------------------------------------
def spectral_model():
    """A log-mel-like pipeline (Hann window, STFT, power, mel filters), an irfft of a rfft (the
    signal back), and a bag of bigrams."""
    s = rng.standard_normal((2, 48, 1)).astype(F)
    tokens = rng.integers(1, 6, (2, 10)).astype(np.int64)
    nodes = [
        helper.make_node("HannWindow", ["fl"], ["win"]),
        helper.make_node("STFT", ["s", "st", "win"], ["spec"]),
        helper.make_node("Mul", ["spec", "spec"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "last"], ["power"], keepdims=0),
        helper.make_node("MelWeightMatrix", ["nm", "fl", "rate", "lo", "hi"], ["mel"]),
        helper.make_node("MatMul", ["power", "mel"], ["melspec"]),
        helper.make_node("DFT", ["s", "", "ax"], ["f"], onesided=1),
        helper.make_node("DFT", ["f", "", "ax"], ["back"], onesided=1, inverse=1),
        helper.make_node("TfIdfVectorizer", ["t"], ["bag"], mode="TFIDF", min_gram_length=1, max_gram_length=2,
                         max_skip_count=1, ngram_counts=[0, 2], ngram_indexes=[0, 1, 2, 3],
                         pool_int64s=[1, 3, 2, 4, 5, 1], weights=[1.0, 0.5, 2.0, 0.25]),
    ]
    inits = {"fl": I(16), "st": I(8), "last": I([-1]), "nm": I(6), "rate": I(16000), "lo": np.array(50, F),
             "hi": np.array(7000, F), "ax": I(1)}
    m = make_model(nodes, {"s": (F, s.shape), "t": (np.int64, tokens.shape)},
                   {"melspec": (F, (2, 5, 6)), "back": (F, (2, 48, 1)), "bag": (F, (2, 4))}, inits, opset=20)
    return m, {"s": s, "t": tokens}


def test_spectral_model_on_target(target, workdir):
    m, feeds = spectral_model()
    res, _ = check_against_onnxruntime(m, feeds, target, workdir)
    assert res is not None


def test_spectral_model_through_c(workdir):
    m, feeds = spectral_model()
    got, _ = run_c_path(m, T, feeds, workdir)
    want = onnxruntime_outputs(m, feeds)
    for g, w in zip(got, want):
        assert_close(g, w)
    assert_close(got[1], feeds["s"], what="irfft(rfft(s))")
