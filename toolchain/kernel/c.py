"""The loop vocabulary of kernel.py, emitting portable C99 statements instead of LLVM IR.

Op lowerings are written once, against Kernel/Expr/Tensor; this module offers the same
surface (CKernel/CExpr/CTensor subclass them) so the very same lowering code produces C.
Types are the llvmlite type objects of kernel.py (F32, I64, LLVM_TYPES[...]) used as
tokens, so ops that name a type (`k.cast(x, I64)`) need no change.

Every operation binds its result to a fresh `const` temporary (SSA in C), so a value
used many times is computed once and evaluation order is exactly the builder's; dead
temporaries are dropped when the function is rendered. Semantics follow the LLVM path:
ordered float comparisons, C conversions, wrap-free signed integer arithmetic. Nothing
undefined is left to the C compiler: float->int conversions saturate through helpers,
shifts go through unsigned types, and no libc or libm function is ever called.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager

import numpy as np
from llvmlite import ir

from ..errors import UnsupportedError
from .llvm import F32, F64, I1, I8, I16, I32, I64, LLVM_TYPES, Expr, Kernel, Tensor

C_TYPES = {F32: "float", F64: "double", I1: "int", I8: "int8_t", I16: "int16_t", I32: "int32_t", I64: "int64_t"}
UNSIGNED = {I8: "uint8_t", I16: "uint16_t", I32: "uint32_t", I64: "uint64_t"}
C_BINOPS = {"fadd": "+", "add": "+", "fsub": "-", "sub": "-", "fmul": "*", "mul": "*",
            "fdiv": "/", "sdiv": "/", "srem": "%"}


def c_type(ty) -> str:
    try:
        return C_TYPES[ty]
    except KeyError:
        raise UnsupportedError(f"the C backend has no type for {ty}") from None


def is_float_type(ty) -> bool:
    return isinstance(ty, (ir.FloatType, ir.DoubleType))


def float_literal(x: float, ty=F32) -> str:
    """Exact C99 literal: hex floats, rounded to float32 first for F32 (as LLVM does);
    infinities and NaN via the bit helpers (C99 has no constant for them without math.h)."""
    x = float(np.float32(x)) if ty == F32 else float(x)
    if math.isnan(x) or math.isinf(x):
        bits = {F32: ("edgec_f32_bits", 0x7F800000, 0x7FC00000),
                F64: ("edgec_f64_bits", 0x7FF0000000000000, 0x7FF8000000000000)}[ty]
        if math.isnan(x):
            return f"{bits[0]}({int_literal(bits[2], I32 if ty == F32 else I64)})"
        sign = "-" if x < 0 else ""
        return f"({sign}{bits[0]}({int_literal(bits[1], I32 if ty == F32 else I64)}))"
    text = re.sub(r"\.?0+(?=p)", "", x.hex()) + ("f" if ty == F32 else "")  # 0x1.8p+1f
    return f"({text})" if text.startswith("-") else text


def int_literal(n: int, ty=I64) -> str:
    """The value wrapped to the type's signed range (LLVM constants wrap too)."""
    if ty == I1:
        return "1" if n & 1 else "0"
    width = ty.width
    n &= (1 << width) - 1
    if n >= 1 << (width - 1):
        n -= 1 << width
    if width == 8:
        return f"((int8_t){n})" if n < 0 else str(n)
    if -(2 ** 31) < n < 2 ** 31:
        return f"({n})" if n < 0 else str(n)
    if width == 32:
        return "(-2147483647 - 1)"
    if n == -(2 ** 63):
        return "(-INT64_C(9223372036854775807) - 1)"
    return f"INT64_C({n})" if n > 0 else f"(-INT64_C({-n}))"


class CValue:
    """What an llvmlite value is to kernel.py: code text plus `.type` (a type token).
    `deps` names the temporaries the code reads, for dead-code removal."""

    __slots__ = ("code", "type", "deps")

    def __init__(self, code: str, ty, deps=frozenset()):
        self.code = code
        self.type = ty
        self.deps = deps


class CExpr(Expr):
    """An Expr whose operators emit C; the operator methods of Expr route through
    `_bin`/`_cmp`, which are all this class needs to redefine besides the bit ops."""

    __slots__ = ()

    def _make(self, code, ty, *others):
        deps = self.v.deps.union(*[o.v.deps for o in others])
        return self.k.let(code, ty, deps)

    def _bin(self, x, fop, iop, reverse=False):
        a, b = self, self._other(x)
        if reverse:
            a, b = b, a
        ty = self.v.type
        if not self.is_float and (fop, b.v.code) in (("fadd", "0"), ("fsub", "0"), ("fmul", "1")):
            return a  # index arithmetic with a folded operand: i + 0, i * 1
        if not self.is_float and (fop, a.v.code) in (("fadd", "0"), ("fmul", "1")):
            return b
        op = C_BINOPS.get(fop if self.is_float else iop)
        if op is None:
            raise UnsupportedError("the C backend cannot compute a float remainder without libm")
        code = f"{a.v.code} {op} {b.v.code}"
        return self._make(code if is_float_type(ty) or ty in (I64, I1) else f"({c_type(ty)})({code})",
                          ty, b)

    def __neg__(self):
        ty = self.v.type
        code = f"-{self.v.code}" if is_float_type(ty) or ty == I64 else f"({c_type(ty)})(-{self.v.code})"
        return self._make(code, ty)

    def _cmp(self, x, op):
        a, b = self.v.code, self._other(x).v.code
        if op == "!=" and self.is_float:  # LLVM's ordered "one": false when either is NaN
            code = f"{a} < {b} || {a} > {b}"
        else:
            code = f"{a} {op} {b}"
        return self._make(code, I1, self._other(x))

    def _bit(self, x, op):
        b = self._other(x)
        ty = self.v.type
        code = f"{self.v.code} {op} {b.v.code}"
        return self._make(code if ty in (I64, I1) else f"({c_type(ty)})({code})", ty, b)

    def __and__(self, x): return self._bit(x, "&")
    def __or__(self, x): return self._bit(x, "|")
    def __xor__(self, x): return self._bit(x, "^")

    def __lshift__(self, x):
        """Shifted as unsigned: shifting into the sign bit is undefined for signed C types."""
        b = self._other(x)
        ty = self.v.type
        return self._make(f"({c_type(ty)})(({UNSIGNED[ty]}){self.v.code} << {b.v.code})", ty, b)

    def __rshift__(self, x):
        """Arithmetic shift written portably (>> of a negative value is implementation-defined)."""
        b = self._other(x)
        ty, a, n = self.v.type, self.v.code, b.v.code
        code = f"{a} < 0 ? ({c_type(ty)})~(~{a} >> {n}) : ({c_type(ty)})({a} >> {n})"
        return self._make(code, ty, b)

    def __invert__(self):
        ty = self.v.type
        return self._make(f"!{self.v.code}" if ty == I1 else f"({c_type(ty)})~{self.v.code}", ty)


class CVar:
    """A mutable scalar: a C local declared at the top of the function."""

    def __init__(self, k: "CKernel", init):
        self.k = k
        init = k.lift(init)
        self.ty = init.v.type
        self.name = k.declare(self.ty)
        k.emit(f"{self.name} = {init.v.code};", init.v.deps)

    @property
    def value(self) -> CExpr:
        """A snapshot: later assignments must not change an Expr already taken."""
        return self.k.let(self.name, self.ty, frozenset())

    @value.setter
    def value(self, x):
        v = self.k.lift(x, like=self.ty)
        self.k.emit(f"{self.name} = {v.v.code};", v.v.deps)

    def __iadd__(self, x):
        self.value = self.value + x
        return self


class CLanes:
    """A short vector in C99, which has no vector type: its lanes as scalar temporaries,
    with Expr's arithmetic lane by lane (the C compiler's vectorizer finds them again)."""

    def __init__(self, items):
        self.items = list(items)

    def _map(self, x, fn):
        xs = x.items if isinstance(x, CLanes) else [x] * len(self.items)
        return CLanes(fn(a, b) for a, b in zip(self.items, xs))

    def __add__(self, x): return self._map(x, lambda a, b: a + b)
    def __radd__(self, x): return self._map(x, lambda a, b: b + a)
    def __sub__(self, x): return self._map(x, lambda a, b: a - b)
    def __mul__(self, x): return self._map(x, lambda a, b: a * b)
    def __rmul__(self, x): return self._map(x, lambda a, b: b * a)


class CLanesVar:
    """A mutable short vector: one C local per lane."""

    def __init__(self, k: "CKernel", init: CLanes):
        self.vars = [CVar(k, x) for x in init.items]

    @property
    def value(self) -> CLanes:
        return CLanes(v.value for v in self.vars)

    @value.setter
    def value(self, x):
        xs = x.items if isinstance(x, CLanes) else [x] * len(self.vars)
        for v, item in zip(self.vars, xs):
            v.value = item

    def __iadd__(self, x):
        self.value = self.value + x
        return self


class CTensor(Tensor):
    """A strided view of a C pointer parameter; views stay CTensors."""

    def view(self, shape, strides, offset=None) -> "CTensor":
        t = CTensor(self.k, self.ptr, self.dtype, shape, strides, self.offset if offset is None else offset)
        t.epilogue = self.epilogue
        return t

    def reshape(self, shape) -> "CTensor":
        t = CTensor(self.k, self.ptr, self.dtype, shape, None, self.offset)
        t.epilogue = self.epilogue
        return t

    def address(self, idx):
        lin = self.k.lift(self.index(idx), like=I64)
        return f"{self.ptr}[{lin.v.code}]", lin.v.deps

    def __getitem__(self, idx) -> CExpr:
        ref, deps = self.address(idx)
        return self.k.let(ref, LLVM_TYPES[self.dtype], deps)

    def store_vector(self, idx, v, whole: bool = False):
        """Lane by lane: C has no vectors (the C compiler finds them)."""
        self.store_lanes(idx, v)

    def __setitem__(self, idx, value):
        v = self.k.lift(value, like=LLVM_TYPES[self.dtype])
        at = self.index(idx) if self.epilogue else None  # element offset, for binary steps
        for fn in self.epilogue:
            v = fn(v, at)
        ref, deps = self.address(idx)
        self.k.emit(f"{ref} = {v.v.code};", deps | v.v.deps)


class _Block:
    """A `{ ... }` under a header (for/if); `deps` are temporaries the header reads."""

    def __init__(self, header: str, deps=frozenset()):
        self.header = header
        self.deps = deps
        self.body: list = []


class _Let:
    __slots__ = ("name", "ty", "code", "deps")

    def __init__(self, name, ty, code, deps):
        self.name, self.ty, self.code, self.deps = name, ty, code, deps


class CKernel(Kernel):
    """Builds one C function body. Inherits the helpers that are pure vocabulary
    (max/min/abs/f32/sqrt/loops/precise) from Kernel; redefines what builds code."""

    explicit_vectors = False  # C99 has no vector type: Kernel.map_vectors leaves the scalar loop

    def __init__(self, name: str):
        self.name = name
        self.flags = ()
        self.root = _Block("")
        self.stack = [self.root]
        self.decls: list[tuple[str, str]] = []  # (c type, name) of Vars
        self.counter = 0
        self.packed: list[tuple[str, object]] = []  # (symbol, array) made by constant()

    # -- emission -----------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, line: str, deps=frozenset()):
        self.stack[-1].body.append((line, deps))

    def let(self, code: str, ty, deps) -> CExpr:
        name = self.fresh("t")
        self.stack[-1].body.append(_Let(name, ty, code, deps))
        return CExpr(self, CValue(name, ty, frozenset((name,))))

    def declare(self, ty) -> str:
        name = self.fresh("v")
        self.decls.append((c_type(ty), name))
        return name

    @contextmanager
    def block(self, header: str, deps=frozenset(), attach=True):
        blk = _Block(header, deps)
        if attach:
            self.stack[-1].body.append(blk)
        self.stack.append(blk)
        try:
            yield blk
        finally:
            self.stack.pop()

    # -- constants and conversions ---------------------------------------------------------
    def lift(self, x, like=None) -> CExpr:
        if isinstance(x, Expr):
            return x
        ty = like.v.type if isinstance(like, Expr) else like
        if ty is None:
            ty = F32 if isinstance(x, float) else I64
        if is_float_type(ty):
            return CExpr(self, CValue(float_literal(float(x), ty), ty))
        return CExpr(self, CValue(int_literal(int(x), ty), ty))

    def cast(self, x, ty, unsigned=False) -> CExpr:
        """C conversions with LLVM's meaning; float->int saturates instead of being undefined."""
        x = self.lift(x)
        src = x.v.type
        if src == ty:
            return x
        a = x.v.code
        sf, df = is_float_type(src), is_float_type(ty)
        if sf and df:
            code = f"({c_type(ty)}){a}"
        elif sf:
            wide = I64 if ty == I64 else I32
            helper = f"edgec_{'d' if src == F64 else 'f'}2{'u' if unsigned else 'i'}{wide.width}"
            code = f"{helper}({a})"
            if ty == I1:
                code = f"(int)({code} & 1)"
            elif ty != wide:
                code = f"({c_type(ty)}){code}"
        elif df:
            code = f"({c_type(ty)})({UNSIGNED[src]}){a}" if unsigned and src != I1 else f"({c_type(ty)}){a}"
        elif ty == I1:
            code = f"(int)({a} & 1)"
        elif src != I1 and ty.width > src.width and unsigned:
            code = f"({c_type(ty)})({UNSIGNED[src]}){a}"
        else:
            code = f"({c_type(ty)}){a}"
        return self.let(code, ty, x.v.deps)

    def bitcast(self, x, ty) -> CExpr:
        src = x.v.type
        names = {(F32, I32): "edgec_bits_f32", (I32, F32): "edgec_f32_bits",
                 (F64, I64): "edgec_bits_f64", (I64, F64): "edgec_f64_bits"}
        if (src, ty) not in names:
            raise UnsupportedError(f"the C backend cannot reinterpret {src} as {ty}")
        return self.let(f"{names[src, ty]}({x.v.code})", ty, x.v.deps)

    # -- control flow ------------------------------------------------------------------------
    @contextmanager
    def loop(self, stop, start=0, step=1):
        if stop - start <= 0:  # an empty range: the body is built and never attached
            with self.block("", attach=False):
                yield CExpr(self, CValue(int_literal(start), I64))
            return
        if stop - start <= step:
            yield start
            return
        i = self.fresh("i")
        header = (f"for (int64_t {i} = {int_literal(start)}; {i} < {int_literal(stop)}; "
                  f"{i} += {int_literal(step)})")
        with self.block(header):
            yield CExpr(self, CValue(i, I64))

    @contextmanager
    def if_(self, cond):
        if not isinstance(cond, Expr):
            if cond:
                yield
            else:  # statically dead: built into a block that is never attached
                with self.block("", attach=False):
                    yield
            return
        with self.block(f"if ({cond.v.code})", cond.v.deps):
            yield

    def var(self, init):
        return CLanesVar(self, init) if isinstance(init, CLanes) else CVar(self, init)

    # -- short vectors (kernel.py's vocabulary, as lanes) ---------------------------------------
    def splat(self, x, n):
        x = self.lift(x, like=F32)
        return x if n == 1 else CLanes([x] * n)

    def lane_splat(self, v, i, n):
        return self.splat(self.lanes(v)[i], n)

    def constant(self, data) -> CTensor:
        """Read-only data made at compile time (weights packed for a tile): a static const
        array that the module writes before this kernel's function."""
        sym = f"{self.name}_packed{len(self.packed)}"
        self.packed.append((sym, data))
        return CTensor(self, sym, str(data.dtype), data.shape)

    def vload(self, t, idx, n, valid=None, readable=None):
        idx = tuple(idx)
        valid = range(n) if valid is None else valid
        if n > 1 and len(valid) == n and t.strides[-1] == 0:
            return self.splat(t[idx], n)
        items = [t[idx[:-1] + (idx[-1] + i,)] if i in valid else self.lift(0.0, like=LLVM_TYPES[t.dtype])
                 for i in range(n)]
        return items[0] if n == 1 else CLanes(items)

    def vload_pairs(self, t, idx, n):
        """The 2n consecutive elements from t[idx] as their even and their odd lanes."""
        idx = tuple(idx)
        items = [t[idx[:-1] + (idx[-1] + i,)] for i in range(2 * n)]
        return self.pack(items[0::2]), self.pack(items[1::2])

    def join_lanes(self, a, b, start):
        """n lanes of a then b from lane `start` of a."""
        both = self.lanes(a) + self.lanes(b)
        return self.pack(both[start:start + len(self.lanes(a))])

    def lanes(self, v):
        return v.items if isinstance(v, CLanes) else [v]

    def pack(self, scalars):
        return scalars[0] if len(scalars) == 1 else CLanes(list(scalars))

    # -- arithmetic helpers -------------------------------------------------------------------
    def max(self, a, b):
        """Lane by lane on short vectors (softmax's whole-vector row max), else Kernel.max."""
        if isinstance(a, CLanes) or isinstance(b, CLanes):
            return self._lanewise(super().max, a, b)
        return super().max(a, b)

    def min(self, a, b):
        if isinstance(a, CLanes) or isinstance(b, CLanes):
            return self._lanewise(super().min, a, b)
        return super().min(a, b)

    @staticmethod
    def _lanewise(fn, a, b) -> CLanes:
        """fn lane by lane, a scalar operand broadcast (CLanes._map)."""
        return a._map(b, fn) if isinstance(a, CLanes) else b._map(a, lambda y, x: fn(x, y))

    def select(self, cond, a, b) -> CExpr:
        if not isinstance(cond, Expr):
            return self.lift(a if cond else b)
        like = a if isinstance(a, Expr) else b if isinstance(b, Expr) else None
        a, b = self.lift(a, like=like), self.lift(b, like=like)
        return self.let(f"{cond.v.code} ? {a.v.code} : {b.v.code}", a.v.type,
                        cond.v.deps | a.v.deps | b.v.deps)

    def unsigned(self, op: str, a, b) -> CExpr:
        a = self.lift(a, like=b if isinstance(b, Expr) else None)
        b = self.lift(b, like=a)
        ty = a.v.type
        code = f"({UNSIGNED[ty]}){a.v.code} {op} ({UNSIGNED[ty]}){b.v.code}"
        if op in ("<", "<=", ">", ">="):
            return self.let(code, I1, a.v.deps | b.v.deps)
        return self.let(f"({c_type(ty)})({code})", ty, a.v.deps | b.v.deps)

    def call_intrinsic(self, name: str, x) -> CExpr:
        x = self.lift(x)
        ty = x.v.type
        if name == "llvm.sqrt" and ty in (F32, F64):
            return self.let(f"edgec_sqrt{'f' if ty == F32 else ''}({x.v.code})", ty, x.v.deps)
        if name == "llvm.fabs":
            return self.abs(x)
        raise UnsupportedError(f"the C backend has no portable form of intrinsic {name}")

    def finish(self):
        pass

    # -- rendering -----------------------------------------------------------------------------
    def render_body(self, indent="    ") -> list[str]:
        """Statements of the function, dead temporaries removed."""
        live = _live_temps(self.root)
        lines = [f"{indent}{t} {n} = 0;" for t, n in self.decls]
        lines += [f"{indent}(void){n};" for _, n in self.decls]
        _render(self.root.body, live, indent, lines)
        return lines


def _live_temps(root: _Block) -> set:
    lets, roots = {}, set()

    def walk(items):
        for it in items:
            if isinstance(it, _Let):
                lets[it.name] = it.deps
            elif isinstance(it, _Block):
                roots.update(it.deps)
                walk(it.body)
            else:
                roots.update(it[1])

    walk(root.body)
    live, work = set(), list(roots)
    while work:
        n = work.pop()
        if n in live:
            continue
        live.add(n)
        work.extend(lets.get(n, ()))
    return live


def _render(items, live, indent, lines):
    for it in items:
        if isinstance(it, _Let):
            if it.name in live:
                lines.append(f"{indent}const {c_type(it.ty)} {it.name} = {it.code};")
        elif isinstance(it, _Block):
            sub: list[str] = []
            _render(it.body, live, indent + "    ", sub)
            if not sub:
                continue  # no effects inside: the loop or branch does nothing
            lines.append(f"{indent}{it.header} {{")
            lines.extend(sub)
            lines.append(f"{indent}}}")
        else:
            lines.append(f"{indent}{it[0]}")
