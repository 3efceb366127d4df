"""The kernel language's values: Expr (a scalar or short vector being built, Python
operators on it emit LLVM instructions) and Var (a mutable one). Kernel (llvm.py) makes them."""
from __future__ import annotations

from llvmlite import ir

class Expr:
    """A scalar value in the kernel being built: float, integer or boolean."""

    __slots__ = ("k", "v")

    def __init__(self, k, v: ir.Value):  # k: the Kernel building it
        self.k = k
        self.v = v

    @property
    def is_float(self):
        ty = self.v.type
        ty = ty.element if isinstance(ty, ir.VectorType) else ty
        return isinstance(ty, (ir.FloatType, ir.DoubleType))

    def _other(self, x):
        return self.k.lift(x, like=self)

    def _bin(self, x, fop, iop, reverse=False):
        a, b = self, self._other(x)
        if reverse:
            a, b = b, a
        bld = self.k.b
        if self.is_float:
            return Expr(self.k, getattr(bld, fop)(a.v, b.v, flags=self.k.flags))
        return Expr(self.k, getattr(bld, iop)(a.v, b.v))

    def __add__(self, x): return self._bin(x, "fadd", "add")
    def __radd__(self, x): return self._bin(x, "fadd", "add", True)
    def __sub__(self, x): return self._bin(x, "fsub", "sub")
    def __rsub__(self, x): return self._bin(x, "fsub", "sub", True)
    def __mul__(self, x): return self._bin(x, "fmul", "mul")
    def __rmul__(self, x): return self._bin(x, "fmul", "mul", True)
    def __truediv__(self, x): return self._bin(x, "fdiv", "sdiv")
    def __rtruediv__(self, x): return self._bin(x, "fdiv", "sdiv", True)
    def __floordiv__(self, x): return self._bin(x, "fdiv", "sdiv")
    def __mod__(self, x): return self._bin(x, "frem", "srem")

    def __neg__(self):
        if self.is_float:
            return Expr(self.k, self.k.b.fneg(self.v, flags=self.k.flags))
        return Expr(self.k, self.k.b.neg(self.v))

    def _cmp(self, x, op):
        b = self._other(x)
        bld = self.k.b
        if self.is_float:
            return Expr(self.k, bld.fcmp_ordered(op, self.v, b.v))
        return Expr(self.k, bld.icmp_signed(op, self.v, b.v))

    def __lt__(self, x): return self._cmp(x, "<")
    def __le__(self, x): return self._cmp(x, "<=")
    def __gt__(self, x): return self._cmp(x, ">")
    def __ge__(self, x): return self._cmp(x, ">=")
    def eq(self, x): return self._cmp(x, "==")
    def ne(self, x): return self._cmp(x, "!=")

    def __and__(self, x): return Expr(self.k, self.k.b.and_(self.v, self._other(x).v))
    def __or__(self, x): return Expr(self.k, self.k.b.or_(self.v, self._other(x).v))
    def __xor__(self, x): return Expr(self.k, self.k.b.xor(self.v, self._other(x).v))
    def __lshift__(self, x): return Expr(self.k, self.k.b.shl(self.v, self._other(x).v))
    def __rshift__(self, x): return Expr(self.k, self.k.b.ashr(self.v, self._other(x).v))

    def __invert__(self):
        return Expr(self.k, self.k.b.not_(self.v))

    def __bool__(self):
        raise TypeError("an Expr has no Python truth value; use Kernel.select or Kernel.if_")


class Var:
    """A mutable scalar (an alloca that LLVM promotes to a register)."""

    def __init__(self, k, init):
        self.k = k
        init = k.lift(init)
        self.slot = k.alloca(init.v.type)
        k.b.store(init.v, self.slot)

    @property
    def value(self) -> Expr:
        return Expr(self.k, self.k.b.load(self.slot))

    @value.setter
    def value(self, x):
        self.k.b.store(self.k.lift(x, like=self.value).v, self.slot)

    def __iadd__(self, x):
        self.value = self.value + x
        return self
