"""The reference every build is proven against: onnxruntime, single-threaded, all graph
optimizations, and the tolerances the project promises (rtol 1e-3, atol 1e-4; integer
and boolean outputs exactly). Tests, benchmarks and the firmware check use these."""
from __future__ import annotations

import onnx

RTOL, ATOL = 1e-3, 1e-4


def onnxruntime_session(model: onnx.ModelProto, optimized: bool = True, threads: int = 1):
    """onnxruntime on one thread (or `threads` intra-op threads); optimized=False runs the graph as written (a QDQ model's
    DequantizeLinear -> float op -> QuantizeLinear: its ONNX semantics; optimized, onnxruntime
    swaps in integer kernels that round differently, from the graph and between themselves)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict) -> list:
    return onnxruntime_session(model).run(None, feeds)
