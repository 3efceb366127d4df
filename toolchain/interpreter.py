"""Reference interpreter: runs the IR with each op's numpy semantics. It is the oracle
the tests use besides onnxruntime, and it checks the passes (same answer before and
after every rewrite). With float64=True every float32 tensor (inputs, constants, results)
is held in float64 instead: the same ops' references in double precision, which the
derivative tests difference numerically."""
from __future__ import annotations

import numpy as np

from .errors import InvalidModelError
from .ir import Graph
from .ops import apply_epilogue_reference, own_inputs, registry


def interpret(g: Graph, inputs: list[np.ndarray], float64: bool = False) -> list[np.ndarray]:
    if len(inputs) != len(g.inputs):
        raise InvalidModelError(f"expected {len(g.inputs)} inputs, got {len(inputs)}")

    def dtype(t):
        return "float64" if float64 and t.dtype == "float32" else t.dtype

    env = {}
    for v, x in zip(g.inputs, inputs):
        x = np.asarray(x)
        if x.shape != v.type.shape:
            raise InvalidModelError(f"input {v.name}: shape {x.shape}, expected {v.type.shape}")
        env[id(v)] = x.astype(dtype(v.type))

    def get(v):
        if v is None:
            return None
        if v.is_const:
            return v.data.astype(dtype(v.type)) if float64 else v.data
        return env[id(v)]

    for node in g.nodes:
        args = [get(v) for v in own_inputs(node)]
        while args and args[-1] is None:
            args.pop()
        results = list(registry.get(node.op).reference(node, *args))
        results = apply_epilogue_reference(node, results, [get(v) for v in node.inputs])
        for out, r in zip(node.outputs, results):
            env[id(out)] = np.asarray(r).astype(dtype(out.type)).reshape(out.type.shape)
    return [get(v) for v in g.outputs]
