"""The kernel vocabulary over llvmlite: a small loop-nest language, in which every op writes its lowering.

Ops describe *what* to compute with loops, loads, stores and arithmetic on `Expr`
values (Python operators work on them); this module turns that into LLVM IR. Shapes
are static, so indices that are Python ints fold at compile time and LLVM sees
constant trip counts it can unroll and vectorize.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ..errors import InternalError
from ..targets import VectorUnit

from .llvm_types import F32, F64, FAST, I1, I8, I16, I32, I64, LLVM_TYPES, MAP_UNROLL, element_align  # noqa: F401
from .llvm_expr import Expr, Var  # noqa: F401  (the kernel language's values, re-exported)
from .masked import masked_load, masked_store, masks


class Tensor:
    """A strided view of a buffer: shape and strides in elements, all static."""

    def __init__(self, k: "Kernel", ptr: ir.Value, dtype: str, shape, strides=None, offset=0):
        self.k = k
        self.ptr = ptr
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        if strides is None:
            strides, acc = [], 1
            for d in reversed(self.shape):
                strides.append(acc)
                acc *= d
            strides = tuple(reversed(strides))
        self.strides = tuple(int(s) for s in strides)
        self.offset = int(offset)
        self.epilogue = []  # scalar functions applied to each value stored (fused activations)

    @property
    def rank(self):
        return len(self.shape)

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    # -- views -----------------------------------------------------------------
    def view(self, shape, strides, offset=None) -> "Tensor":
        t = Tensor(self.k, self.ptr, self.dtype, shape, strides, self.offset if offset is None else offset)
        t.epilogue = self.epilogue
        return t

    def reshape(self, shape) -> "Tensor":
        """Only for contiguous tensors, which all buffers are."""
        t = Tensor(self.k, self.ptr, self.dtype, shape, None, self.offset)
        t.epilogue = self.epilogue
        return t

    def broadcast_to(self, shape) -> "Tensor":
        """Numpy broadcasting as strides: missing and size-1 dims read stride 0."""
        shape = tuple(shape)
        pad = len(shape) - self.rank
        strides = [0] * pad + [0 if d == 1 and s != 1 else st
                               for d, s, st in zip(self.shape, shape[pad:], self.strides)]
        return self.view(shape, strides)

    def transpose(self, perm) -> "Tensor":
        return self.view([self.shape[p] for p in perm], [self.strides[p] for p in perm])

    def flat(self) -> "Tensor":
        return self.reshape((self.size,))

    # -- access ------------------------------------------------------------------
    def index(self, idx) -> Expr | int:
        if not isinstance(idx, (tuple, list)):
            idx = (idx,)
        if len(idx) != self.rank:
            raise InternalError(f"indexing rank-{self.rank} tensor with {len(idx)} indices")
        const = self.offset
        terms = []
        for i, s in zip(idx, self.strides):
            if s == 0:
                continue
            if isinstance(i, int):
                const += i * s
            else:
                terms.append(i if s == 1 else i * s)
        if not terms:
            return const
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total + const if const else total

    def address(self, idx) -> ir.Value:
        lin = self.k.lift(self.index(idx), like=self.k.index)
        return self.k.b.gep(self.ptr, [lin.v], inbounds=True)

    def __getitem__(self, idx) -> Expr:
        return Expr(self.k, self.k.b.load(self.address(idx)))

    def store_vector(self, idx, v: Expr, whole: bool = False):
        """The lanes of v at idx, idx + 1, ... along the last axis: one vector store where a fused
        step reads an operand (a residual Add) or is long (Gelu) and every step works on vectors,
        or where asked (`whole`: a Gemm accumulating onto its C in place, where the SLP
        vectorizer would pair lanes across vectors); else lane by lane, which LLVM's SLP
        vectorizer merges back (bench: better than a vector store). A partial vector is one
        predicated store where the vector unit masks (Kernel.masks)."""
        n = v.v.type.count if isinstance(v.v.type, ir.VectorType) else 1
        vector_safe = all(getattr(fn, "vector_safe", False) for fn in self.epilogue)
        partial = self.strides[-1] == 1 and vector_safe and masks(self.k, n, LLVM_TYPES[self.dtype])
        if not partial and (n == 1 or self.strides[-1] != 1 or not vector_safe
                            or not (whole or any(getattr(fn, "reads_operand", False) or getattr(fn, "on_vectors", False)
                                                 for fn in self.epilogue))):
            return self.store_lanes(idx, v)
        at = self.index(idx)
        for fn in self.epilogue:
            v = fn(v, at)
        if partial:
            return masked_store(self.k, self.address(idx), v.v)
        ptr = self.k.b.bitcast(self.address(idx), v.v.type.as_pointer())
        self.k.b.store(v.v, ptr).align = element_align(v.v.type.element)

    def store_lanes(self, idx, v: Expr):
        """The lanes of v at idx, idx + 1, ... along the last axis, one scalar store each."""
        for ln, x in enumerate(self.k.lanes(v)):
            self[tuple(idx[:-1]) + (idx[-1] + ln,)] = x

    def __setitem__(self, idx, value):
        v = self.k.lift(value, like=LLVM_TYPES[self.dtype])
        at = self.index(idx) if self.epilogue else None  # element offset, for binary steps
        for fn in self.epilogue:
            v = fn(v, at)
        self.k.b.store(v.v, self.address(idx))


def _shift_into(lanes, n, readable):
    """An offset s such that n lanes loaded from s hold every lane of `lanes` (contiguous)
    and read only offsets in `readable`; None if there is none."""
    if readable is None or not lanes or list(lanes) != list(range(lanes[0], lanes[-1] + 1)):
        return None
    s = min(lanes[0], readable.stop - n)
    return s if s >= readable.start and s + n > lanes[-1] else None


class Kernel:
    """Builds one LLVM function. `b` is the llvmlite IRBuilder positioned where code goes."""

    vector = VectorUnit()
    index = I64  # type of loop counters and element offsets: the target's pointer width
    explicit_vectors = True  # short vectors are LLVM vector values (the C kernel's are lanes)

    @property
    def vector_lanes(self):
        return self.vector.lanes

    def __init__(self, fn: ir.Function):
        self.fn = fn
        entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(entry)
        self.flags = FAST

    # -- constants and conversions ---------------------------------------------------
    def lift(self, x, like=None) -> Expr:
        """Python number or Expr -> Expr; `like` (Expr or LLVM type) picks the type of numbers."""
        if isinstance(x, Expr):
            return x
        ty = like.v.type if isinstance(like, Expr) else like
        if ty is None:
            ty = F32 if isinstance(x, float) else self.index
        if isinstance(ty, ir.VectorType):
            return Expr(self, ir.Constant(ty, [self.lift(x, like=ty.element).v] * ty.count))
        if isinstance(ty, (ir.FloatType, ir.DoubleType)):
            return Expr(self, ir.Constant(ty, float(x)))
        if ty == I1:
            return Expr(self, ir.Constant(I1, int(bool(x))))
        return Expr(self, ir.Constant(ty, int(x)))

    def cast(self, x: Expr, ty, unsigned=False) -> Expr:
        """Numeric conversion with C semantics (float->int truncates)."""
        x = self.lift(x)
        src, b = x.v.type, self.b
        lanes = src.count if isinstance(src, ir.VectorType) else None  # a vector converts lane by lane
        elem = ty.element if isinstance(ty, ir.VectorType) else ty
        ty = ir.VectorType(elem, lanes) if lanes else elem
        if src == ty:
            return x
        src = src.element if lanes else src
        sf = isinstance(src, (ir.FloatType, ir.DoubleType))
        df = isinstance(elem, (ir.FloatType, ir.DoubleType))
        if sf and df:
            return Expr(self, b.fpext(x.v, ty) if elem == F64 else b.fptrunc(x.v, ty))
        if sf:
            return Expr(self, b.fptoui(x.v, ty) if unsigned else b.fptosi(x.v, ty))
        if df:
            if src == I1 or unsigned:
                return Expr(self, b.uitofp(x.v, ty))
            return Expr(self, b.sitofp(x.v, ty))
        if src.width < elem.width:
            return Expr(self, b.zext(x.v, ty) if (unsigned or src == I1) else b.sext(x.v, ty))
        return Expr(self, b.trunc(x.v, ty))

    # -- control flow -------------------------------------------------------------------
    @contextmanager
    def loop(self, stop, start=0, step=1):
        """for (i = start; i < stop; i += step) — all bounds static ints. An empty range (a
        zero-sized dimension) builds its body into a block nothing branches to: no code."""
        if stop - start <= 0:
            with self.dead():
                yield Expr(self, ir.Constant(self.index, start))
            return
        if stop - start <= step:
            yield start
            return
        b = self.b
        pre = b.block
        header = self.fn.append_basic_block("loop")
        body = self.fn.append_basic_block("body")
        done = self.fn.append_basic_block("done")
        b.branch(header)
        b.position_at_end(header)
        i = b.phi(self.index)
        i.add_incoming(ir.Constant(self.index, start), pre)
        b.cbranch(b.icmp_signed("<", i, ir.Constant(self.index, stop)), body, done)
        b.position_at_end(body)
        yield Expr(self, i)
        nxt = b.add(i, ir.Constant(self.index, step), flags=["nsw"])
        i.add_incoming(nxt, b.block)
        b.branch(header)
        b.position_at_end(done)

    @contextmanager
    def loops(self, shape):
        """A loop nest over `shape`, yielding the tuple of indices (outermost first)."""
        with _nest(self, tuple(shape), ()) as idx:
            yield idx

    @contextmanager
    def dead(self):
        """Code built inside is unreachable (LLVM deletes it); the builder then goes on where it was."""
        here = self.b.block
        self.b.position_at_end(self.fn.append_basic_block("dead"))
        try:
            yield
        finally:
            if not self.b.block.is_terminated:
                self.b.unreachable()
            self.b.position_at_end(here)

    @contextmanager
    def if_(self, cond: Expr):
        if not isinstance(cond, Expr):
            if cond:
                yield
                return
            cond = self.lift(False, like=I1)  # statically dead: LLVM deletes the block
        with self.b.if_then(cond.v):
            yield

    def bitcast(self, x: Expr, ty) -> Expr:
        """The same bits read as another type of the same width (float <-> int), lane by
        lane for a vector."""
        if isinstance(x.v.type, ir.VectorType) and not isinstance(ty, ir.VectorType):
            ty = ir.VectorType(ty, x.v.type.count)
        return Expr(self, self.b.bitcast(x.v, ty))

    def alloca(self, ty) -> ir.Value:
        """Allocas go first in the entry block, where SROA promotes them to registers."""
        here = self.b.block
        self.b.position_at_start(self.fn.entry_basic_block)
        slot = self.b.alloca(ty)
        self.b.position_at_end(here)
        return slot

    def var(self, init) -> Var:
        return Var(self, init)

    # -- short vectors ------------------------------------------------------------------------
    # Register tiles written with explicit vectors, so the code the lowering means is the
    # code LLVM gets (the SLP vectorizer, left to find it, shuffles overlapping loads).
    # A vector of n lanes is an Expr; with n == 1 it is the scalar itself, so the same
    # lowering gives scalar code for a target without SIMD. Arithmetic is Expr's.
    def splat(self, x, n) -> Expr:
        """x in every lane."""
        x = self.lift(x, like=F32)
        if n == 1:
            return x
        vec = self.b.insert_element(ir.Constant(ir.VectorType(x.v.type, n), None), x.v, ir.Constant(I32, 0))
        return Expr(self, self.b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n)))

    def zeros(self, n, dtype="float32") -> Expr:
        """n zeros in the computation type of a tensor of `dtype` (float64 computes in
        float64; float32 and the float16 storage type in float32)."""
        return self.splat(self.lift(0.0, like=F64 if dtype == "float64" else F32), n)

    def lane_splat(self, v: Expr, i, n) -> Expr:
        """Lane i of v in n lanes (NEON folds it into `fmla ... v.s[i]`)."""
        if not isinstance(v.v.type, ir.VectorType):
            return self.splat(v, n)
        if n == 1:
            return self.lanes(v)[i]
        return Expr(self, self.b.shuffle_vector(v.v, v.v, ir.Constant(ir.VectorType(I32, n), [i] * n)))

    def vload(self, t: "Tensor", idx, n, valid=None, readable=None) -> Expr:
        """t[idx], t[idx + 1 along the last axis], ... (n lanes). `valid`: the lanes that
        may be read, a range known at compile time; the others are 0.0 and not touched
        (a tile at a padded border). `readable`: the lane offsets (may lie outside 0..n)
        that are in bounds, if wider than `valid`: then a border vector is one full load
        from a shifted address and a shuffle that moves it into place and zeroes the
        invalid lanes, not a load per lane. A strided last axis is read lane by lane."""
        idx = tuple(idx)
        lanes = range(n) if valid is None else valid
        if n == 1:
            return t[idx] if 0 in lanes else self.lift(0.0, like=LLVM_TYPES[t.dtype])
        elem = LLVM_TYPES[t.dtype]
        if len(lanes) == n and t.strides[-1] == 0:
            return self.splat(t[idx], n)
        if len(lanes) == n and t.strides[-1] == 1:
            return self._load_vector(t, idx, n)
        shift = _shift_into(lanes, n, readable) if t.strides[-1] == 1 else None
        zero = self.lift(0.0, like=ir.VectorType(elem, n)).v
        if shift is not None:
            whole = self._load_vector(t, idx[:-1] + (idx[-1] + shift,), n).v
            pick = [i - shift if i in lanes else n for i in range(n)]
            return Expr(self, self.b.shuffle_vector(whole, zero, ir.Constant(ir.VectorType(I32, n), pick)))
        step = t.strides[-1]
        if len(lanes) == n and 1 < step <= 4:
            # every step-th element of one contiguous span (no byte past the last lane is
            # read): NEON makes it ld2/ld3/ld4 or uzp, x86 a few shuffles, not n inserts
            span = self._load_vector(t, idx, (n - 1) * step + 1).v
            pick = ir.Constant(ir.VectorType(I32, n), [i * step for i in range(n)])
            return Expr(self, self.b.shuffle_vector(span, ir.Constant(span.type, None), pick))
        vec = zero
        for i in lanes:
            at = idx[:-1] + (idx[-1] + i,)
            vec = self.b.insert_element(vec, t[at].v, ir.Constant(I32, i))
        return Expr(self, vec)

    def vload_pairs(self, t: "Tensor", idx, n) -> tuple[Expr, Expr]:
        """The 2n consecutive elements from t[idx] (last axis contiguous) as their even and
        their odd lanes: one load of both, two shuffles (NEON: uzp1/uzp2, or ld2), not a
        strided load of each."""
        whole = self._load_vector(t, tuple(idx), 2 * n).v
        undef = ir.Constant(whole.type, None)
        return tuple(Expr(self, self.b.shuffle_vector(whole, undef, ir.Constant(ir.VectorType(I32, n),
                                                                                 list(range(r, 2 * n, 2)))))
                     for r in (0, 1))

    def join_lanes(self, a: Expr, b: Expr, start: int) -> Expr:
        """n lanes of a then b from lane `start` of a (NEON: ext)."""
        n = a.v.type.count
        return Expr(self, self.b.shuffle_vector(a.v, b.v, ir.Constant(ir.VectorType(I32, n),
                                                                      list(range(start, start + n)))))

    def map_vectors(self, ins, out: "Tensor", body) -> bool:
        """out[i] = body(*(x[i] for x in ins)) over the flat index, in explicit vectors of
        the target's float32 lanes and a scalar tail, where everything is float32 and every
        input has out's shape or holds one element (loaded once before the loop, splat).
        Explicit because an in-place elementwise node (its output over input 0's bytes, as
        the optimizer updates of a training step) defeats LLVM's loop vectorizer when the
        node is a function of its own: the run-time overlap check sees the equal pointers
        and the scalar loop runs. `body` must work on vectors (Op.vector_safe). A fused
        epilogue is applied to the whole vector where each step is vector-safe, lane by
        lane otherwise. False, and nothing built, where this does not apply."""
        n = self.vector_lanes
        if (n <= 1 or not self.explicit_vectors or out.dtype != "float32" or out.size < n or any(t.dtype != "float32" for t in ins)
                or not all(t.shape == out.shape or t.size == 1 for t in ins)):
            return False
        y = out.flat()
        scalars = [t.flat()[0] if t.shape != out.shape else None for t in ins]
        vector_epilogue = all(getattr(fn, "vector_safe", False) for fn in y.epilogue)
        done = 0
        # MAP_UNROLL registers a step (paired loads and stores, a quarter of the loop's
        # overhead per element), then one register a step, then the scalar tail
        for w in (n * MAP_UNROLL, n):
            end = done + (out.size - done) // w * w
            splats = [self.splat(s, w) if s is not None else None for s in scalars]
            with self.loop(end, start=done, step=w) as i:
                v = body(*[s if s is not None else self._load_vector(t.flat(), (i,), w) for s, t in zip(splats, ins)])
                if not vector_epilogue:
                    y.store_lanes((i,), v)
                else:
                    at = y.index((i,))
                    for fn in y.epilogue:
                        v = fn(v, at)
                    self.b.store(v.v, self.b.bitcast(y.address((i,)), v.v.type.as_pointer())).align = 4
            done = end
        rest = out.size - done
        if vector_epilogue and masks(self, rest, F32):  # one predicated step
            v = body(*[self.splat(s, rest) if s is not None else self._load_vector(t.flat(), (done,), rest)
                       for s, t in zip(scalars, ins)])
            at = y.index((done,))
            for fn in y.epilogue:
                v = fn(v, at)
            masked_store(self, y.address((done,)), v.v)
            return True
        with self.loop(out.size, start=done) as i:
            y[i] = body(*[s if s is not None else t.flat()[i] for s, t in zip(scalars, ins)])
        return True

    def _load_vector(self, t, idx, n) -> Expr:
        """n consecutive elements from t[idx] in one load (alignment: one element); a
        partial vector in one predicated load where the vector unit masks."""
        elem = LLVM_TYPES[t.dtype]
        if masks(self, n, elem):
            return Expr(self, masked_load(self, t.address(idx), n))
        ptr = self.b.bitcast(t.address(idx), ir.VectorType(elem, n).as_pointer())
        load = self.b.load(ptr)
        load.align = element_align(elem)
        return Expr(self, load)

    def constant(self, data) -> "Tensor":
        """Read-only data made at compile time beside the weights (weights packed the way a tile
        reads them; the node's own weight operand, left unread, LLVM then drops)."""
        ptr = self.rodata(data, LLVM_TYPES[str(data.dtype)].as_pointer())
        return Tensor(self, ptr, str(data.dtype), data.shape)

    def pack(self, scalars) -> Expr:
        """A vector of these scalars, lane 0 first (one scalar: itself)."""
        if len(scalars) == 1:
            return scalars[0]
        vec = ir.Constant(ir.VectorType(scalars[0].v.type, len(scalars)), None)
        for i, x in enumerate(scalars):
            vec = self.b.insert_element(vec, x.v, ir.Constant(I32, i))
        return Expr(self, vec)

    def lanes(self, v: Expr) -> list[Expr]:
        """The scalars of v, lane 0 first."""
        if not isinstance(v.v.type, ir.VectorType):
            return [v]
        return [Expr(self, self.b.extract_element(v.v, ir.Constant(I32, i))) for i in range(v.v.type.count)]

    # -- arithmetic helpers ---------------------------------------------------------------
    def select(self, cond, a, b) -> Expr:
        if not isinstance(cond, Expr):
            return self.lift(a if cond else b)
        like = a if isinstance(a, Expr) else b if isinstance(b, Expr) else None
        a, b = self.lift(a, like=like), self.lift(b, like=like)
        return Expr(self, self.b.select(cond.v, a.v, b.v))

    def max(self, a, b) -> Expr:
        """A NaN in `a` propagates (numpy's maximum; Relu/Clip of NaN is NaN)."""
        a = self.lift(a, like=b if isinstance(b, Expr) else None)
        b = self.lift(b, like=a)
        return self.select(a < b, b, a)

    def min(self, a, b) -> Expr:
        """A NaN in `a` propagates."""
        a = self.lift(a, like=b if isinstance(b, Expr) else None)
        b = self.lift(b, like=a)
        return self.select(b < a, b, a)

    def clamp(self, x: Expr, lo: float, hi: float) -> Expr:
        """min(max(x, lo), hi) with NaN propagating, as max and min. Where the vector unit has
        NaN-propagating min/max instructions (VectorUnit.nan_min_max: AArch64's fmax and fmin)
        as llvm.maximum/minimum; elsewhere (and in the C backend's kernel) compare and select."""
        module = getattr(getattr(self, "fn", None), "module", None)
        if not getattr(self.vector, "nan_min_max", False) or module is None or not x.is_float:
            return self.min(self.max(x, lo), hi)
        ty = x.v.type
        elem = ty.element if isinstance(ty, ir.VectorType) else ty
        suffix = ("f64" if elem == F64 else "f32")
        suffix = f"v{ty.count}{suffix}" if isinstance(ty, ir.VectorType) else suffix
        out = x.v
        for name, bound in ((f"llvm.maximum.{suffix}", lo), (f"llvm.minimum.{suffix}", hi)):
            fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(ty, [ty, ty]), name=name)
            out = self.b.call(fn, [out, self.lift(bound, like=x).v])
        return Expr(self, out)

    def abs(self, x: Expr) -> Expr:
        return self.select(x < 0, -x, x)

    def unsigned(self, op: str, a, b) -> Expr:
        """Integers read as unsigned (uint8..uint64 data): op is one of / % >> < <= > >=.
        Like LLVM's udiv/urem/lshr, a zero divisor or an over-wide shift is the caller's to avoid."""
        a = self.lift(a, like=b if isinstance(b, Expr) else None)
        b = self.lift(b, like=a)
        if op in ("<", "<=", ">", ">="):
            return Expr(self, self.b.icmp_unsigned(op, a.v, b.v))
        return Expr(self, {"/": self.b.udiv, "%": self.b.urem, ">>": self.b.lshr}[op](a.v, b.v))

    def call_intrinsic(self, name: str, x: Expr) -> Expr:
        """Intrinsics that every profile lowers to one instruction (sqrt, fabs, fma)."""
        fn = self.fn.module.declare_intrinsic(name, [x.v.type])
        return Expr(self, self.b.call(fn, [x.v]))

    def sqrt(self, x: Expr) -> Expr:
        return self.call_intrinsic("llvm.sqrt", self.lift(x, like=F32))

    @contextmanager
    def in_order(self):
        """Keep contraction (FMA) but not reassociation inside: a loop whose accumulators
        are already laid out across vector lanes by the lowering (register tiles) must not
        be vectorized a second time across its iterations."""
        saved, self.flags = self.flags, tuple(f for f in self.flags if f != "reassoc")
        try:
            yield
        finally:
            self.flags = saved

    @contextmanager
    def precise(self):
        """Strict IEEE evaluation inside: range reductions that rely on rounding order."""
        saved, self.flags = self.flags, ()
        try:
            yield
        finally:
            self.flags = saved

    def finish(self):
        self.b.ret_void()


@contextmanager
def _nest(k: Kernel, shape, prefix):
    if not shape:
        yield prefix
        return
    with k.loop(shape[0]) as i:
        with _nest(k, shape[1:], prefix + (i,)) as idx:
            yield idx
