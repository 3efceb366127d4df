"""The LLVM types of the kernel vocabulary (kernel/llvm.py) and what their accesses may assume."""
from __future__ import annotations

from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)

# float16 is a storage type: its bits live in an I16 (data movement copies them as they are);
# arithmetic is float32, through kernel/half.py's conversions (Cast); float8 e5m2 likewise in an
# I8 (kernel/float8.py)
LLVM_TYPES = {"float32": F32, "float64": F64, "int8": I8, "uint8": I8, "int16": I16, "uint16": I16,
              "int32": I32, "uint32": I32, "int64": I64, "uint64": I64, "bool": I8, "float16": I16,
              "float8_e5m2": I8}
# Reassociation lets LLVM vectorize reductions; contraction gives FMAs. No nnan/ninf:
# clamps and max/min must keep their meaning for NaN and infinity.
FAST = ("reassoc", "contract", "nsz", "arcp")
# Kernel.map_vectors: vector registers per step of its main loop
MAP_UNROLL = 4


def element_align(ty) -> int:  # what vector accesses may assume: one element's (int8 at any byte)
    return max(1, ty.width // 8) if isinstance(ty, ir.IntType) else 4
