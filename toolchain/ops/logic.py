"""Logic and integer ops: And/Or/Xor on bool, BitwiseAnd/Or/Xor/Not and BitShift on integers,
Mod (both fmod modes, integer and float semantics), IsInf/IsNaN, Not and Where.

Integers follow numpy, which the ONNX spec's reference follows: a remainder by zero is 0
(it is undefined in C and in LLVM, so the divisor is replaced before the division), a shift
by the type's width or more gives 0. Unsigned types are worked with unsigned division,
remainder, shifts and comparisons (the kernel vocabulary's `unsigned`).
"""
from __future__ import annotations

import numpy as np

from ..ir import UNSIGNED_DTYPES, TensorType
from ..kernel import mathfns as m
from ..kernel.llvm import LLVM_TYPES
from .base import Op, broadcast_shapes, in_type, invalid, register, unsupported
from .elementwise import Binary, _broadcast_loop

INTS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
FLOATS = ("float32", "float64")
UNSIGNED = UNSIGNED_DTYPES
BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}


def _same_dtype(node, allowed, what):
    types = [v.type for v in node.inputs]
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise invalid(node, f"mixed element types {[t.dtype for t in types]}")
    dtype = types[0].dtype
    if dtype == "float16":  # valid for these ops, and no kernel type
        raise unsupported(node, "float16 is not supported")
    if dtype not in allowed:
        raise invalid(node, f"needs {what} input ({', '.join(allowed)}), got {dtype}")
    return types


def _as_bool(k, cond):
    return k.cast(cond, LLVM_TYPES["bool"], unsigned=True)


# name: (numpy, scalar lowering on 0/1 bytes or integers)
LOGICAL = {"And": (np.logical_and, lambda a, b: a & b), "Or": (np.logical_or, lambda a, b: a | b),
           "Xor": (np.logical_xor, lambda a, b: a ^ b)}
BITWISE = {"BitwiseAnd": (np.bitwise_and, lambda a, b: a & b), "BitwiseOr": (np.bitwise_or, lambda a, b: a | b),
           "BitwiseXor": (np.bitwise_xor, lambda a, b: a ^ b)}


class _Pairwise(Op):
    """Two same-typed operands with numpy broadcasting (before opset 7: the legacy
    broadcast/axis attributes, as for Add)."""

    table: dict = {}
    allowed: tuple = ()
    what = ""

    def canonicalize(self, node, opset):
        Binary.canonicalize(self, node, opset)

    def infer(self, node):
        if len(node.inputs) != 2:
            raise invalid(node, f"takes 2 inputs, got {len(node.inputs)}")
        a, b = _same_dtype(node, self.allowed, self.what)
        return [TensorType(a.dtype, broadcast_shapes(node, a.shape, b.shape))]

    def reference(self, node, a, b):
        return [self.table[node.op][0](a, b).astype(a.dtype)]

    def lower(self, k, node, ins, outs):
        fn = self.table[node.op][1]
        _broadcast_loop(k, ins, outs[0], fn)


@register(*LOGICAL)
class Logical(_Pairwise):
    table, allowed, what = LOGICAL, ("bool",), "bool"


@register(*BITWISE)
class Bitwise(_Pairwise):
    table, allowed, what = BITWISE, INTS, "integer"


@register("BitwiseNot")
class BitwiseNot(Op):
    def infer(self, node):
        return [_same_dtype(node, INTS, "integer")[0]]

    def reference(self, node, x):
        return [np.invert(x)]

    def lower(self, k, node, ins, outs):
        _broadcast_loop(k, ins, outs[0], lambda a: ~a)


@register("BitShift")
class BitShift(_Pairwise):
    """Unsigned integers; from opset 28 signed ones too, shifted
    right arithmetically. A shift amount outside [0, bits) gives what the sign fill alone
    makes: -1 for a right shift of a negative value, else 0."""

    allowed, what = INTS, "integer"

    def canonicalize(self, node, opset):
        direction = node.attrs.get("direction")
        if direction not in ("LEFT", "RIGHT"):
            raise invalid(node, f"direction must be 'LEFT' or 'RIGHT', got {direction!r}")
        dtype = in_type(node).dtype
        if opset < 28 and dtype in INTS and dtype not in UNSIGNED:
            raise invalid(node, f"{dtype} needs opset 28 (before, BitShift takes unsigned integers only)")

    def reference(self, node, a, b):
        bits = BITS[a.dtype.name]
        left = node.attrs["direction"] == "LEFT"
        n = np.clip(b.astype(np.int64), 0, bits - 1).astype(a.dtype)
        r = np.left_shift(a, n) if left else np.right_shift(a, n)
        wide = (b.astype(np.int64) < 0) | (b.astype(np.int64) >= bits)
        fill = np.zeros_like(r) if left or a.dtype.kind == "u" else np.where(a < 0, -1, 0).astype(a.dtype)
        return [np.where(wide, fill, r).astype(a.dtype)]

    def lower(self, k, node, ins, outs):
        dtype = ins[0].dtype
        bits = BITS[dtype]
        left = node.attrs["direction"] == "LEFT"

        def body(a, b):
            zero = k.lift(0, like=a)
            wide = k.unsigned(">=", b, bits)  # a negative amount, read as unsigned, is wide too
            n = k.select(wide, k.lift(0, like=b), b)  # an over-wide shift is undefined: never made
            if left:
                return k.select(wide, zero, a << n)
            if dtype in UNSIGNED:
                return k.select(wide, zero, k.unsigned(">>", a, n))
            return k.select(wide, k.select(a < 0, k.lift(-1, like=a), zero), a >> n)

        _broadcast_loop(k, ins, outs[0], body)


@register("Mod")
class Mod(_Pairwise):
    """fmod=0: A - floor(A/B)*B, the sign of the divisor (numpy.mod; for floats from opset
    28 only); fmod=1: A - trunc(A/B)*B, the sign of the dividend (C fmod). An integer
    remainder by zero is 0, as in numpy."""

    allowed, what = INTS + FLOATS, "numeric"

    def canonicalize(self, node, opset):
        fmod = node.attrs.setdefault("fmod", 0)
        if fmod not in (0, 1):
            raise invalid(node, f"fmod must be 0 or 1, got {fmod}")
        dtype = in_type(node).dtype
        if opset < 28 and dtype in FLOATS + ("float16",) and fmod != 1:
            raise invalid(node, f"fmod must be 1 for {dtype} inputs before opset 28")

    def reference(self, node, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (np.fmod if node.attrs["fmod"] else np.mod)(a, b)
        if a.dtype.kind in "iu":
            r = np.where(b == 0, 0, r)
        return [np.asarray(r).astype(a.dtype)]

    def lower(self, k, node, ins, outs):
        dtype, fmod = ins[0].dtype, node.attrs["fmod"]

        def body(a, b):
            zero, one = k.lift(0, like=a), k.lift(1, like=a)
            if dtype in FLOATS:
                r = m.fmod(k, a, b)
                if fmod:
                    return r
                r = k.select(r.ne(0.0) & ((r < 0.0) ^ (b < 0.0)), r + b, r)
                return k.select(r.eq(0.0), k.select(b < 0.0, k.lift(-0.0, like=a), zero), r)
            if dtype in UNSIGNED:
                r = k.unsigned("%", a, k.select(b.eq(0), one, b))
            else:  # x % -1 is 0, and INT_MIN % -1 would trap: divide by 1 instead
                r = a % k.select(b.eq(0) | b.eq(-1), one, b)
                if not fmod:
                    r = k.select(r.ne(0) & ((r < 0) ^ (b < 0)), r + b, r)
            return k.select(b.eq(0), zero, r)

        _broadcast_loop(k, ins, outs[0], body)


@register("IsNaN", "IsInf")
class FloatClass(Op):
    def canonicalize(self, node, opset):
        if node.op == "IsInf":
            for key in ("detect_positive", "detect_negative"):
                v = node.attrs.setdefault(key, 1)
                if v not in (0, 1):
                    raise invalid(node, f"{key} must be 0 or 1, got {v}")

    def infer(self, node):
        t = _same_dtype(node, FLOATS, "float")[0]
        return [TensorType("bool", t.shape)]

    def reference(self, node, x):
        if node.op == "IsNaN":
            return [np.isnan(x)]
        a = node.attrs
        return [(np.isposinf(x) & bool(a["detect_positive"])) | (np.isneginf(x) & bool(a["detect_negative"]))]

    def lower(self, k, node, ins, outs):
        a = node.attrs

        def body(x):
            if node.op == "IsNaN":
                return _as_bool(k, ~x.eq(x))
            pos, neg = x.eq(float("inf")), x.eq(float("-inf"))
            cond = (pos | neg) if a["detect_positive"] and a["detect_negative"] else (
                pos if a["detect_positive"] else neg if a["detect_negative"] else k.lift(False, like=pos))
            return _as_bool(k, cond)

        _broadcast_loop(k, ins, outs[0], body)


@register("BitCast")
class BitCast(Op):
    """The same bits read as another type of the same width (every profile is little-endian,
    as the spec assumes)."""

    dtype_attrs = ("to",)

    def infer(self, node):
        t, to = in_type(node), node.attrs.get("to")
        if not isinstance(to, str) or TensorType(to, ()).itemsize != t.itemsize:
            raise invalid(node, f"'to' must be a type as wide as {t.dtype}, got {to}")
        return [TensorType(to, t.shape)]

    def reference(self, node, x):
        return [np.ascontiguousarray(x).view(node.attrs["to"])]

    def lower(self, k, node, ins, outs):
        to = LLVM_TYPES[node.attrs["to"]]
        same = LLVM_TYPES[ins[0].dtype] == to
        _broadcast_loop(k, ins, outs[0], lambda a: a if same else k.bitcast(a, to))


@register("Not")
class Not(Op):
    def infer(self, node):
        return [node.inputs[0].type]

    def item_wise(self, node):
        return True

    def reference(self, node, x):
        return [np.logical_not(x)]

    def lower(self, k, node, ins, outs):
        _broadcast_loop(k, ins, outs[0], lambda a: a ^ 1)


@register("Where")
class Where(Op):
    def infer(self, node):
        c, a, b = (v.type for v in node.inputs)
        return [TensorType(a.dtype, broadcast_shapes(node, c.shape, a.shape, b.shape))]

    def item_wise(self, node):
        return True

    def reference(self, node, c, a, b):
        return [np.where(c, a, b)]

    def jvp(self, bld, node, tangents):
        """The tangent of the branch taken (the condition is boolean: it has none)."""
        _, ta, tb = tangents
        zero = bld.scalar(0.0, node.outputs[0].type.dtype)
        r = bld.op("Where", [node.inputs[0], zero if ta is None else ta, zero if tb is None else tb])
        return [bld.expand(r, node.outputs[0].type.shape)]

    def vjp(self, bld, node, cotangents):
        """The cotangent to the branch taken, zero to the other, each summed back to its shape."""
        c, g = bld.primal(node.inputs[0]), cotangents[0]
        zero = bld.scalar(0.0, g.type.dtype)
        return [None] + [bld.unbroadcast(bld.op("Where", [c, g, zero] if i == 1 else [c, zero, g]),
                                         node.inputs[i].type.shape) for i in (1, 2)]

    def lower(self, k, node, ins, outs):
        _broadcast_loop(k, ins, outs[0], lambda c, a, b: k.select(c.ne(0), a, b))
