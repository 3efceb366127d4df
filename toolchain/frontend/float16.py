"""float16 at import: a storage type, computed in float32.

Ops that only move elements (views, Transpose, Concat, Slice, Gather, Where...) copy
float16 bits as they are, and Cast/CastLike convert (kernel/half.py). Every other op
reading float16 is wrapped while it is imported: each float16 input is widened to float32
(a Cast node, once per value; a constant is converted at compile time), the op is
imported as its float32 form, and each output whose ONNX type is bound to a float16
input's (the schema's type variable, T) is rounded back to float16 by a Cast. So every
op rounds its result to float16 as onnxruntime does, and no op needs a float16 lowering.

float8 e5m2 is handled the same way (its results rounded back by a Cast with saturate=0:
overflow and infinities give infinity, as float16's; NaN becomes the quiet NaN 0x7E), except
that QuantizeLinear and DequantizeLinear read and write float8 themselves (ops/quant.py).
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedError
from ..ir import DTYPES, SHORT, Graph, TensorType, Value

# ops whose outputs are elements of their inputs, moved and not computed (plus the shape
# and type readers): float16 stays float16 through them
NATIVE = frozenset({
    "Cast", "CastLike", "BitCast", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Concat", "Split", "Slice", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Gather",
    "GatherElements", "GatherND", "Where", "Shape", "Size",
})


STORAGE = ("float16", "float8_e5m2")  # computed as float32
FLOAT8_NATIVE = NATIVE | {"QuantizeLinear", "DequantizeLinear"}  # ops that also take float8 as it is


def _wrapped(op_type: str, dtype: str | None) -> bool:
    """Whether an input of this dtype is widened to float32 for this op."""
    return dtype in STORAGE and op_type not in (NATIVE if dtype == "float16" else FLOAT8_NATIVE)


class Float16:
    """One import's widened values (a float16 value read by several ops is widened once)."""

    def __init__(self, g: Graph, opset: int):
        self.g = g
        self.opset = opset
        self.wide: dict[int, Value] = {}

    def widen(self, op_type: str, node_name: str, inputs: list) -> list[str | None] | None:
        """Replaces float16 inputs by float32 ones (in place) for an op that computes;
        returns each input's dtype before (None: nothing widened)."""
        before = [v.type.dtype if v is not None and v.type is not None else None for v in inputs]
        if not any(_wrapped(op_type, d) for d in before):
            return None
        for i, v in enumerate(inputs):
            if _wrapped(op_type, before[i]):
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
        """The op's results, each one ONNX types as a widened input's (float16 or float8)
        rounded back to that type."""
        if before is None:
            return results
        schema = onnx.defs.get_schema(op_type, self.opset, "")
        params = [p.type_str for p in schema.inputs]
        halves = {params[min(i, len(params) - 1)]: d for i, d in enumerate(before)
                  if _wrapped(op_type, d) and params}
        given = {params[min(i, len(params) - 1)] for i, d in enumerate(before) if d is not None and params}
        # a type variable that only absent optional inputs would bind (LinearAttention's S
        # without past_state) is input 0's type, as in onnx's function body and reference
        if before and _wrapped(op_type, before[0]):
            halves.update({p: before[0] for p in set(params) - given})
        out = []
        for j, v in enumerate(results):
            ts = schema.outputs[min(j, len(schema.outputs) - 1)].type_str if schema.outputs else None
            if ts in halves and v.type.dtype == "float32":
                v = self._narrowed(v, node_name, halves[ts])
            out.append(v)
        return out

    def _narrowed(self, v: Value, node_name: str, dtype: str) -> Value:
        tag = "_" + SHORT[dtype]
        if v.is_const:
            return self.g.const(v.name + tag, v.data.astype(DTYPES[dtype]))
        h = Value(self.g.unique(v.name + tag), TensorType(dtype, v.type.shape))
        # float8 as IEEE arithmetic in the narrow type would round: infinities stay infinite
        attrs = {"to": dtype} if dtype == "float16" else {"to": dtype, "saturate": 0}
        cast = self.g.add_node("Cast", f"{node_name}_narrow", [v], [h], attrs)
        cast.sources = (node_name,)
        return h


def refuse_computed_float16(node, op_type: str):
    """An op outside NATIVE whose own output is float16 (EyeLike dtype=float16, a
    ConstantOfShape of a float16 value known only at run time) has no float16 lowering."""
    for v in node.outputs:
        if _wrapped(op_type, v.type.dtype):
            raise UnsupportedError(f"{v.type.dtype} output computed at run time is not supported (no "
                                   f"{v.type.dtype} lowering)", node=node.name, op=op_type)
