"""float16 at import: a storage type, computed in float32.

Ops that only move elements (views, Transpose, Concat, Slice, Gather, Where...) copy
float16 bits as they are, and Cast/CastLike convert (kernel/half.py). Every other op
reading float16 is wrapped while it is imported: each float16 input is widened to float32
(a Cast node, once per value; a constant is converted at compile time), the op is
imported as its float32 form, and each output whose ONNX type is bound to a float16
input's (the schema's type variable, T) is rounded back to float16 by a Cast. So every
op rounds its result to float16 as onnxruntime does, and no op needs a float16 lowering.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedError
from ..ir import Graph, TensorType, Value

# ops whose outputs are elements of their inputs, moved and not computed (plus the shape
# and type readers): float16 stays float16 through them
NATIVE = frozenset({
    "Cast", "CastLike", "BitCast", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Concat", "Split", "Slice", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Gather",
    "GatherElements", "GatherND", "Where", "Shape", "Size",
})


class Float16:
    """One import's widened values (a float16 value read by several ops is widened once)."""

    def __init__(self, g: Graph, opset: int):
        self.g = g
        self.opset = opset
        self.wide: dict[int, Value] = {}

    def widen(self, op_type: str, node_name: str, inputs: list) -> list[str | None] | None:
        """Replaces float16 inputs by float32 ones (in place) for an op that computes;
        returns each input's dtype before (None: nothing widened)."""
        if op_type in NATIVE or not any(v is not None and v.type is not None and v.type.dtype == "float16"
                                        for v in inputs):
            return None
        before = [v.type.dtype if v is not None and v.type is not None else None for v in inputs]
        for i, v in enumerate(inputs):
            if v is not None and v.type is not None and v.type.dtype == "float16":
                inputs[i] = self._widened(v, node_name)
        return before

    def _widened(self, v: Value, node_name: str) -> Value:
        if id(v) not in self.wide:
            if v.is_const:
                w = self.g.const(v.name + "_f32", v.data.astype(np.float32))
            else:
                w = Value(self.g.unique(v.name + "_f32"), TensorType("float32", v.type.shape))
                cast = self.g.add_node("Cast", f"{node_name}_widen", [v], [w], {"to": "float32"})
                cast.sources = (node_name,)
            self.wide[id(v)] = w
        return self.wide[id(v)]

    def narrow(self, op_type: str, node_name: str, before: list | None, results: list[Value]) -> list[Value]:
        """The op's results, each one ONNX types as float16 rounded back to float16."""
        if before is None:
            return results
        schema = onnx.defs.get_schema(op_type, self.opset, "")
        params = [p.type_str for p in schema.inputs]
        halves = {params[min(i, len(params) - 1)] for i, d in enumerate(before) if d == "float16" and params}
        given = {params[min(i, len(params) - 1)] for i, d in enumerate(before) if d is not None and params}
        # a type variable that only absent optional inputs would bind (LinearAttention's S
        # without past_state) is input 0's type, as in onnx's function body and reference
        unbound = set(params) - given if before and before[0] == "float16" else set()
        out = []
        for j, v in enumerate(results):
            ts = schema.outputs[min(j, len(schema.outputs) - 1)].type_str if schema.outputs else None
            if (ts in halves or ts in unbound) and v.type.dtype == "float32":
                v = self._narrowed(v, node_name)
            out.append(v)
        return out

    def _narrowed(self, v: Value, node_name: str) -> Value:
        if v.is_const:
            return self.g.const(v.name + "_f16", v.data.astype(np.float16))
        h = Value(self.g.unique(v.name + "_f16"), TensorType("float16", v.type.shape))
        cast = self.g.add_node("Cast", f"{node_name}_narrow", [v], [h], {"to": "float16"})
        cast.sources = (node_name,)
        return h


def refuse_computed_float16(node, op_type: str):
    """An op outside NATIVE whose own output is float16 (EyeLike dtype=float16, a
    ConstantOfShape of a float16 value known only at run time) has no float16 lowering."""
    if op_type not in NATIVE and any(v.type.dtype == "float16" for v in node.outputs):
        raise UnsupportedError("float16 output computed at run time is not supported (no float16 lowering)",
                               node=node.name, op=op_type)
