"""Reference interpreter: runs the IR with each op's numpy semantics. It is the oracle
the tests use besides onnxruntime, and it checks the passes (same answer before and
after every rewrite)."""
from __future__ import annotations

import numpy as np

from .errors import InvalidModelError
from .ir import Graph
from .ops import apply_epilogue_reference, own_inputs, registry


def interpret(g: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    if len(inputs) != len(g.inputs):
        raise InvalidModelError(f"expected {len(g.inputs)} inputs, got {len(inputs)}")
    env = {}
    for v, x in zip(g.inputs, inputs):
        x = np.asarray(x)
        if x.shape != v.type.shape:
            raise InvalidModelError(f"input {v.name}: shape {x.shape}, expected {v.type.shape}")
        env[id(v)] = x.astype(v.type.dtype)

    def get(v):
        if v is None:
            return None
        return v.data if v.is_const else env[id(v)]

    for node in g.nodes:
        args = [get(v) for v in own_inputs(node)]
        while args and args[-1] is None:
            args.pop()
        results = list(registry.get(node.op).reference(node, *args))
        results = apply_epilogue_reference(node, results, [get(v) for v in node.inputs])
        for out, r in zip(node.outputs, results):
            env[id(out)] = np.asarray(r).astype(out.type.dtype).reshape(out.type.shape)
    return [get(v) for v in g.outputs]
