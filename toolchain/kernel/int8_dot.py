"""Sums of 16 int8 x int8 products into int32 in the form the target's instructions take
(VectorUnit.int8_dot): "partial-reduce" (LLVM's partial reduction: AArch64 `sdot` with the
dot-product feature, `smull`/`saddw` without), "pairs16" (x86 `vpmaddwd` on sign-extended
16-bit pairs), "widen16" (16-bit products widened into 16 int32 lanes: RVV `vwmul`/`vwadd`),
"reduce" (a multiply-accumulate across the vector into a scalar: MVE `vmlava`), "dsp" (a
core without vectors but with Armv7E-M's DSP instructions: `sxtb16` makes two int16 of a word's
even and odd bytes, `smlad` two multiply-accumulates at once: Cortex-M4/M7/M33). The
accumulator is a value of the strategy's own type, opaque to the lowering, which only adds
into it (dot) and reads its total (dot_totals). Integer addition is associative, so every
form sums to the same exact total. LLVM kernels only (the C backend's integer ops keep their
scalar loops)."""
from __future__ import annotations

from llvmlite import ir

from .llvm import I8, I16, I32, Expr

# int8 elements per dot-product step (one 128-bit register)
DOT_BYTES = 16


def dot_zero(k) -> Expr:
    lanes = {"partial-reduce": 4, "pairs16": 8, "widen16": 16, "reduce": 1, "dsp": 1}[k.vector.int8_dot]
    return k.lift(0, like=ir.VectorType(I32, lanes) if lanes > 1 else I32)


def load_bytes(k, t, idx, n=DOT_BYTES) -> Expr:
    """n consecutive int8/uint8 elements from t[idx] in one load (no alignment assumed); for
    "dsp", as n / 4 words (a core's word loads)."""
    if k.vector.int8_dot == "dsp":
        return load_as(k, t, idx, ir.VectorType(I32, n // 4))
    return load_as(k, t, idx, ir.VectorType(I8, n))


def load_as(k, t, idx, ty) -> Expr:
    """The bytes at t[idx] read as one value of type ty (no alignment assumed)."""
    load = k.b.load(k.b.bitcast(t.address(idx), ty.as_pointer()))
    load.align = 1
    return Expr(k, load)


def store_bytes(k, t, idx, v: Expr):
    """v's bytes at t[idx], one store (no alignment assumed; scratch: no fused epilogue)."""
    k.b.store(v.v, k.b.bitcast(t.address(idx), v.v.type.as_pointer())).align = 1


def width_of(v: Expr) -> int:
    """Lanes of v (a scalar: 1)."""
    return v.v.type.count if isinstance(v.v.type, ir.VectorType) else 1


def first_lanes(k, v: Expr, n: int) -> Expr:
    """v's first n lanes (n = 1: a scalar; all of them: v)."""
    if n == 1:
        return Expr(k, k.b.extract_element(v.v, ir.Constant(I32, 0)))
    if v.v.type.count == n:
        return v
    return Expr(k, k.b.shuffle_vector(v.v, v.v, ir.Constant(ir.VectorType(I32, n), list(range(n)))))


def dot(k, acc: Expr, x: Expr, w: Expr) -> Expr:
    """acc plus the 16 products x[i] * w[i] (two <16 x i8> values, signed)."""
    how, b = k.vector.int8_dot, k.b
    if how == "dsp":  # per word: the even bytes and the odd ones as int16 pairs, two dual MACs
        total = acc
        for i in range(x.v.type.count):
            xw, ww = (Expr(k, b.extract_element(v.v, ir.Constant(I32, i))) for v in (x, w))
            for xs, ws in zip(byte_pairs(k, xw), byte_pairs(k, ww)):
                total = dual_mac(k, total, xs, ws)
        return total
    if how == "pairs16":
        v16 = ir.VectorType(I16, DOT_BYTES)
        pairs = _intrinsic(k, "llvm.x86.avx2.pmadd.wd", ir.VectorType(I32, 8), [v16, v16])
        return Expr(k, b.add(acc.v, b.call(pairs, [b.sext(x.v, v16), b.sext(w.v, v16)])))
    if how == "widen16":  # int8 x int8 fits int16 exactly (|product| <= 2^14)
        v16 = ir.VectorType(I16, DOT_BYTES)
        prod = b.mul(b.sext(x.v, v16), b.sext(w.v, v16))
        return Expr(k, b.add(acc.v, b.sext(prod, ir.VectorType(I32, DOT_BYTES))))
    v32 = ir.VectorType(I32, DOT_BYTES)
    prod = b.mul(b.sext(x.v, v32), b.sext(w.v, v32))
    if how == "reduce":
        return Expr(k, b.add(acc.v, _reduce_add(k, prod)))
    partial = _intrinsic(k, f"llvm.vector.partial.reduce.add.v{acc.v.type.count}i32.v{DOT_BYTES}i32",
                              acc.v.type, [acc.v.type, v32])
    return Expr(k, b.call(partial, [acc.v, prod]))


def byte_pairs(k, word: Expr) -> tuple[Expr, Expr]:
    """A word's bytes 0 and 2, and 1 and 3, each pair as two int16 halves (`sxtb16`, and
    `sxtb16` of the word rotated by 8, which the instruction does itself): "dsp" only."""
    sxtb16 = _intrinsic(k, "llvm.arm.sxtb16", I32, [I32])
    rot = _intrinsic(k, "llvm.fshr.i32", I32, [I32] * 3)
    odd = k.b.call(rot, [word.v, word.v, ir.Constant(I32, 8)])
    return Expr(k, k.b.call(sxtb16, [word.v])), Expr(k, k.b.call(sxtb16, [odd]))


def dual_mac(k, acc: Expr, a: Expr, b: Expr) -> Expr:
    """acc + a.lo * b.lo + a.hi * b.hi on int16 halves (`smlad`): "dsp" only."""
    return Expr(k, k.b.call(_intrinsic(k, "llvm.arm.smlad", I32, [I32] * 3), [a.v, b.v, acc.v]))


def _intrinsic(k, name, ret, args) -> ir.Function:
    """An intrinsic declared under its full (mangled) name."""
    return k.fn.module.globals.get(name) or ir.Function(k.fn.module, ir.FunctionType(ret, args), name=name)


def _reduce_add(k, v: ir.Value) -> ir.Value:
    return k.b.call(_intrinsic(k, f"llvm.vector.reduce.add.v{v.type.count}i32", I32, [v.type]), [v])


def dot_totals(k, accs: list) -> Expr:
    """The totals of these accumulators, one lane each (one accumulator: a scalar). Vector
    accumulators in a tree of pairwise sums (AArch64 `addp`): each halved to the next power
    of two at least len(accs) lanes, then pairs of vectors summed lane pair by lane pair
    until one vector holds every total: 3 instructions for 4 accumulators of 4 lanes, not 8."""
    vals = [a.v for a in accs]
    lanes = vals[0].type.count if isinstance(vals[0].type, ir.VectorType) else 1
    want = 1 << (len(vals) - 1).bit_length()
    if lanes == 1 or len(vals) == 1 or want > lanes:
        return k.pack([Expr(k, _reduce_add(k, v)) if lanes > 1 else Expr(k, v) for v in vals])
    b = k.b

    def pick(v, w, idx):
        return b.shuffle_vector(v, w, ir.Constant(ir.VectorType(I32, len(idx)), idx))

    while lanes > want:  # halves added
        lanes //= 2
        vals = [b.add(pick(v, v, list(range(lanes))), pick(v, v, list(range(lanes, 2 * lanes)))) for v in vals]
    vals += [ir.Constant(vals[0].type, [0] * lanes)] * (want - len(vals))
    while len(vals) > 1:  # lane pairs of two vectors summed: [a0+a1, a2+a3, .., b0+b1, ..]
        evens, odds = list(range(0, 2 * lanes, 2)), list(range(1, 2 * lanes, 2))
        vals = [b.add(pick(v, w, evens), pick(v, w, odds)) for v, w in zip(vals[::2], vals[1::2])]
    whole = vals[0]
    return Expr(k, whole if len(accs) == lanes else pick(whole, whole, list(range(len(accs)))))


def rounding_high_mul(k, a: Expr, b: Expr) -> Expr | None:
    """SaturatingRoundingDoublingHighMul(a, b) lane by lane (a, b: int32 vectors of the same
    width) in the profile's one instruction (VectorUnit.int8_high_mul); None where it has none."""
    name = k.vector.int8_high_mul
    if not name or not isinstance(a.v.type, ir.VectorType):
        return None
    return _by_quarters(k, name, a, b)


def rounding_shift_right(k, x: Expr, right: Expr) -> Expr | None:
    """gemmlowp's RoundingDivideByPOT(x, right) lane by lane (int32 vectors; right in 0..31) with
    the profile's rounding shift (VectorUnit.int8_rounding_shift, AArch64 `srshl` by -right,
    which rounds ties up) after TFLite's fixup (a negative x less one where right > 0: ties
    then go away from zero); None where the profile has none."""
    name = k.vector.int8_rounding_shift
    if not name or not isinstance(x.v.type, ir.VectorType):
        return None
    neg = k.lift(0, like=right) - right
    fixed = x + ((x & neg) >> k.lift(31, like=x))
    return _by_quarters(k, name, fixed, neg)


def _by_quarters(k, name, a: Expr, b: Expr) -> Expr:
    """The <4 x i32> intrinsic `name` over vectors of any width: in quarters (the last one
    padded with repeated lanes), the results joined back."""
    v4 = ir.VectorType(I32, 4)
    fn = _intrinsic(k, f"{name}.v4i32", v4, [v4, v4])
    n, b_ = a.v.type.count, k.b
    parts = []
    for start in range(0, n, 4):
        pick = ir.Constant(v4, [min(start + i, n - 1) for i in range(4)])
        parts.append(b_.call(fn, [b_.shuffle_vector(v.v, ir.Constant(v.v.type, None), pick) for v in (a, b)]))
    while len(parts) & (len(parts) - 1):
        parts.append(parts[-1])
    while len(parts) > 1:  # joined pairwise: 4 -> 8 -> 16 lanes
        width = 2 * parts[0].type.count
        parts = [b_.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, width), list(range(width))))
                 for x, y in zip(parts[::2], parts[1::2])]
    whole = parts[0]
    if whole.type.count != n:
        whole = b_.shuffle_vector(whole, ir.Constant(whole.type, None), ir.Constant(ir.VectorType(I32, n), list(range(n))))
    return Expr(k, whole)
