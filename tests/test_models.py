"""Real models on every target: the MLPerf Tiny reference architectures and a transformer
encoder layer (exported from PyTorch by scripts/export_models.py, seeded weights), built
with the real path, linked into the C harness and run on the target's instruction set,
against onnxruntime. The manifest's figures are checked against independent readings."""
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, shape_inference

from helpers import (ROOT, assert_close, check_against_onnxruntime, host_and_one_emulated,
                     onnxruntime_outputs)
from toolchain.frontend.onnx_import import import_model
from toolchain.interpreter import interpret

MODELS = [ROOT / "models" / "kws_dscnn.onnx"] + sorted((ROOT / "tests" / "models").glob("*.onnx"))
NAMES = [p.stem for p in MODELS]


def dims(vi):
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def feeds_for(model: onnx.ModelProto, seed=0):
    """Seeded inputs of plausible scale (MFCCs, normalized pixels, features: unit normal)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: rng.standard_normal(dims(i)).astype(np.float32) for i in model.graph.input
            if i.name not in inits}


def expected_macs(model: onnx.ModelProto) -> int:
    """MACs from the ONNX file alone, via onnx's own shape inference."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: dims(v) for v in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            total += int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            a = shapes[n.input[0]]
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            total += int(np.prod(shapes[n.output[0]])) * (a[0] if trans_a else a[1])
        elif n.op_type == "MatMul":
            total += int(np.prod(shapes[n.output[0]])) * shapes[n.input[0]][-1]
        elif n.op_type in ("RNN", "GRU", "LSTM"):  # W [D, gates*H, I], R [D, gates*H, H]
            d, gh, i = shapes[n.input[1]]
            x = shapes[n.input[0]]
            steps_times_batch = x[0] * x[1]  # [T, B, I] or [B, T, I]
            total += d * steps_times_batch * gh * (i + shapes[n.input[2]][2])
    return total


@pytest.fixture(scope="module", params=MODELS, ids=NAMES)
def model_path(request):
    return request.param


@pytest.mark.parametrize("path, where", list(host_and_one_emulated(MODELS, NAMES)))
def test_model_matches_onnxruntime(path, where, workdir):
    model_path, target = path, where
    model = onnx.load(str(model_path))
    feeds = feeds_for(model)
    start = time.perf_counter()
    res, run = check_against_onnxruntime(model_path, feeds, target, workdir)
    man = res.manifest
    print(f"{model_path.stem} on {target}: build+link+run {time.perf_counter() - start:.1f} s, "
          f"arena {man['arena']['size']} B, code {man['code_bytes']} B, weights {man['weight_bytes']} B")
    assert [i["shape"] for i in man["inputs"]] == [dims(i) for i in model.graph.input]
    assert [o["shape"] for o in man["outputs"]] == [dims(o) for o in model.graph.output]
    assert man["arena"]["size"] >= man["arena"]["lower_bound"] > 0
    assert man["macs"] == expected_macs(model)
    # weights come from initializers and Constant nodes; folding may only shrink them
    consts = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                              for a in n.attribute if a.name == "value"]
    assert 0 < man["weight_bytes"] <= sum(numpy_helper.to_array(t).nbytes for t in consts)


def test_reference_interpreter_matches_onnxruntime(model_path):
    """The numpy reference semantics, after the whole pass pipeline, are an oracle too."""
    from toolchain.passes import run_pipeline

    model = onnx.load(str(model_path))
    feeds = feeds_for(model, seed=1)
    want = onnxruntime_outputs(model, feeds)
    g = import_model(model)
    inputs = [feeds[v.name] for v in g.inputs]
    before = interpret(g, inputs)
    run_pipeline(g)
    after = interpret(g, inputs)
    for b, a, w in zip(before, after, want):
        assert_close(b, w, what=f"{model_path.stem} imported")
        assert_close(a, w, what=f"{model_path.stem} after passes")


def test_bundled_model_is_the_default(tmp_path):
    from toolchain.compiler import DEFAULT_MODEL, build

    assert DEFAULT_MODEL == MODELS[0] and DEFAULT_MODEL.is_file()
    res = build(None, "cortex-a76", "kws", tmp_path)
    assert res.manifest["model"] == "kws_dscnn.onnx"
    assert Path(res.paths["library"]).is_file()
