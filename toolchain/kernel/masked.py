"""Predicated partial vectors (VectorUnit.masked_tails): a vector of n < lanes float32
lanes is computed as <n x float> (LLVM widens it to the register) and moved by
llvm.masked.load/store of the whole register with the first n lanes on: MVE makes that
vctp + vpst + vldrwt/vstrwt. (A mask of all n lanes of an <n x float> would fold back into a
plain load, which the legalizer splits.)"""
from __future__ import annotations

from llvmlite import ir

from .llvm_types import F32, I1, I32


def masks(k, n, elem) -> bool:
    """A vector of n elem lanes is a partial vector this unit loads and stores predicated."""
    return (k.explicit_vectors and k.vector.masked_tails and elem == F32
            and 1 < n < k.vector.lanes)


def _masked_intrinsic(k, op, ty):
    module = k.fn.module
    name = f"llvm.masked.{op}.v{ty.count}f32.p0"
    mask_ty = ir.VectorType(I1, ty.count)
    sig = (ir.FunctionType(ty, [ty.as_pointer(), I32, mask_ty, ty]) if op == "load" else
           ir.FunctionType(ir.VoidType(), [ty, ty.as_pointer(), I32, mask_ty]))
    return module.globals.get(name) or ir.Function(module, sig, name=name)


def _first_lanes(k, n):
    lanes = k.vector.lanes
    return ir.Constant(ir.VectorType(I1, lanes), [1 if i < n else 0 for i in range(lanes)])


def masked_load(k, ptr, n) -> ir.Value:
    """The n floats at ptr (n < lanes), nothing past them read: an <n x float>."""
    full = ir.VectorType(F32, k.vector.lanes)
    ptr = k.b.bitcast(ptr, full.as_pointer())
    zero = ir.Constant(full, [0.0] * k.vector.lanes)
    whole = k.b.call(_masked_intrinsic(k, "load", full), [ptr, ir.Constant(I32, 4), _first_lanes(k, n), zero])
    return k.b.shuffle_vector(whole, whole, ir.Constant(ir.VectorType(I32, n), list(range(n))))


def masked_store(k, ptr, v: ir.Value):
    """The n lanes of v, an <n x float> (n < lanes), at ptr, nothing past them written."""
    n, lanes = v.type.count, k.vector.lanes
    full = ir.VectorType(F32, lanes)
    widen = ir.Constant(ir.VectorType(I32, lanes), [i if i < n else n for i in range(lanes)])
    whole = k.b.shuffle_vector(v, ir.Constant(v.type, None), widen)
    k.b.call(_masked_intrinsic(k, "store", full),
             [whole, k.b.bitcast(ptr, full.as_pointer()), ir.Constant(I32, 4), _first_lanes(k, n)])
