"""Cast and CastLike: conversions between element types.

The storage types float16 (bits in an I16) and float8 e5m2 (bits in an I8) are converted
through float32 by kernel/half.py and kernel/float8.py (integer code, no libcall).
`saturate` (opset 19) only matters for a float8 destination and is kept there (default 1:
out-of-range values and infinities become the largest finite float8; 0: infinity).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..ir import DTYPES, UNSIGNED_DTYPES, TensorType
from ..kernel import float8, half
from ..kernel.float8 import FLOAT8, WIDEN
from ..kernel.llvm import LLVM_TYPES
from .base import Op, in_type, invalid, not_differentiable, register, unsupported
from .elementwise import _broadcast_loop


def saturated(x: np.ndarray, to: str, saturate) -> np.ndarray:
    """numpy: x as `to`, a float8 destination saturating to its finite range when asked
    (onnx's reference: a clip, then ml_dtypes' round to nearest even)."""
    if to in FLOAT8 and saturate:
        hi = float(ml_dtypes.finfo(DTYPES[to]).max)
        with np.errstate(invalid="ignore"):
            x = np.clip(x.astype(np.float64 if x.dtype == np.float64 else np.float32), -hi, hi)
    return x.astype(DTYPES[to])


@register("Cast")
class Cast(Op):
    dtype_attrs = ("to",)

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        # saturate (opset 19) only matters for a float8 destination: kept there, default 1
        saturate = node.attrs.pop("saturate", 1)
        if node.attrs["to"] in FLOAT8:
            node.attrs["saturate"] = int(saturate)
        if node.attrs.pop("round_mode", "up") not in ("up", b"up"):  # Cast-24: float8e8m0 only
            raise unsupported(node, "round_mode other than 'up' (only float8e8m0 casts use it)")

    def infer(self, node):
        return [TensorType(node.attrs["to"], node.inputs[0].type.shape)]

    def reference(self, node, x):
        return [saturated(x, node.attrs["to"], node.attrs.get("saturate", 1))]

    def vjp(self, b, node, cotangents):
        if not node.attrs["to"].startswith("float") or not node.inputs[0].type.dtype.startswith("float"):
            raise not_differentiable(node, f"a cast between {node.inputs[0].type.dtype} and {node.attrs['to']}")
        return [b.op("Cast", [cotangents[0]], to=node.inputs[0].type.dtype)]

    def jvp(self, b, node, tangents):
        if not node.attrs["to"].startswith("float") or not node.inputs[0].type.dtype.startswith("float"):
            raise not_differentiable(node, f"a cast between {node.inputs[0].type.dtype} and {node.attrs['to']}")
        return [b.op("Cast", [tangents[0]], to=node.attrs["to"])]

    def lower(self, k, node, ins, outs):
        """float16 (bits in an I16) and float8 e5m2 (bits in an I8) go through float32:
        widened exactly on the way in, rounded to nearest even on the way out (a float64
        source directly: narrow_f64; float8 saturating per the `saturate` attribute)."""
        dst, src = node.attrs["to"], ins[0].dtype
        to = LLVM_TYPES["float32" if dst in WIDEN else dst]
        if src == dst:
            _broadcast_loop(k, ins, outs[0], lambda a: a)
            return
        if dst in FLOAT8:
            sat = bool(node.attrs.get("saturate", 1))
            narrow, narrow_f64 = (lambda a: float8.narrow(k, a, sat)), (lambda a: float8.narrow_f64(k, a, sat))
        elif dst == "float16":
            narrow, narrow_f64 = (lambda a: half.narrow(k, a)), (lambda a: half.narrow_f64(k, a))

        def convert(a):
            from_ = src
            if src in WIDEN:
                a, from_ = WIDEN[src](k, a), "float32"
            if dst in WIDEN and from_ == "float64":
                return narrow_f64(a)
            if dst == "bool":
                r = k.cast(a.ne(0.0 if from_.startswith("float") else 0), to, unsigned=True)
            else:
                # from an integer: zero-extend unsigned sources; from a float: to an unsigned target
                unsigned = dst in UNSIGNED_DTYPES if from_.startswith("float") else (
                    from_ in UNSIGNED_DTYPES + ("bool",))
                r = k.cast(a, to, unsigned=unsigned)
            return narrow(r) if dst in WIDEN else r
        _broadcast_loop(k, ins, outs[0], convert)


@register("CastLike")
class CastLike(Cast):
    """Cast to the element type of the second input (only its type is read)."""

    dtype_attrs = ()

    def canonicalize(self, node, opset):
        if len(node.inputs) != 2:
            raise invalid(node, f"takes 2 inputs, got {len(node.inputs)}")
        node.attrs["to"] = in_type(node, 1).dtype
        node.inputs = node.inputs[:1]
        super().canonicalize(node, opset)
