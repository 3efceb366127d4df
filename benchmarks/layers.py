"""Single-layer benchmark models: the kernels the MLPerf Tiny models spend their time in,
in isolation. `invoke bench --layers` writes them to a temporary directory and adds them
to the table (seeded weights; the graphs are built with onnx.helper)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

F = np.float32


def _model(name, node, x_shape, y_shape, inits):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(F), n) for n, s in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cases() -> dict[str, onnx.ModelProto]:
    return {
        "gemm_256": _model("gemm_256", helper.make_node("MatMul", ["x", "w"], ["y"]), (256, 256), (256, 256),
                           {"w": (256, 256)}),
        "gemm_512": _model("gemm_512", helper.make_node("MatMul", ["x", "w"], ["y"]), (512, 512), (512, 512),
                           {"w": (512, 512)}),
        "conv3x3_32_64": _model("conv3x3_32_64", helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
                                (1, 32, 32, 32), (1, 64, 32, 32), {"w": (64, 32, 3, 3), "b": (64,)}),
        "depthwise3x3_64": _model("depthwise3x3_64", helper.make_node("Conv", ["x", "w", "b"], ["y"], group=64,
                                                                      pads=[1, 1, 1, 1]),
                                  (1, 64, 48, 48), (1, 64, 48, 48), {"w": (64, 1, 3, 3), "b": (64,)}),
        "pointwise_64_128": _model("pointwise_64_128", helper.make_node("Conv", ["x", "w", "b"], ["y"]),
                                   (1, 64, 24, 24), (1, 128, 24, 24), {"w": (128, 64, 1, 1), "b": (128,)}),
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in cases().items():
        path = directory / f"{name}.onnx"
        onnx.save(model, str(path))
        paths.append(path)
    return paths
