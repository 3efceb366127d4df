"""The run-time check of inputs the build specialized (frontend/specialize.py, ir.InputGuard),
for both backends: <name>_run returns ERR_INPUT_VALUE before anything else unless the inputs'
elements equal one of the accepted tuples (element by element where those are a product of
per-element sets). Floats compare exactly."""
from __future__ import annotations

from llvmlite import ir

from ..contract import ERR_INPUT_VALUE
from ..kernel.c import c_type
from ..kernel.llvm import I32, LLVM_TYPES


def llvm_check_guards(b, g, inputs, index):
    """At an entry's start: return ERR_INPUT_VALUE, nothing written, unless every guard holds."""
    for guard in g.guards:
        with b.if_then(b.not_(llvm_guard_holds(b, g, guard, inputs, index)), likely=False):
            b.ret(ir.Constant(I32, ERR_INPUT_VALUE))


def c_check_guards(g) -> list[str]:
    """llvm_check_guards's C lines."""
    return [f"    if (!({c_guard_holds(g, guard)})) return {ERR_INPUT_VALUE};  /* specialized input */"
            for guard in g.guards]


def llvm_guard_holds(b, g, guard, inputs, index):
    """i1: the guarded inputs' elements, in order, equal one of guard.accepted (element by
    element where the accepted values are a product of per-element sets)."""
    elems = []
    for k in guard.inputs:
        v = g.inputs[k]
        ty = LLVM_TYPES[v.type.dtype]
        p = b.bitcast(b.load(b.gep(inputs, [ir.Constant(index, k)], inbounds=True)), ty.as_pointer())
        elems += [(b.load(b.gep(p, [ir.Constant(index, i)], inbounds=True)), ty) for i in range(v.type.size)]

    def equal(x, ty, c):
        if isinstance(ty, (ir.FloatType, ir.DoubleType)):
            return b.fcmp_ordered("==", x, ir.Constant(ty, float(c)))
        return b.icmp_signed("==", x, ir.Constant(ty, int(c)))

    def fold(combine, conds, empty):
        out = ir.Constant(ir.IntType(1), empty)
        for c in conds:
            out = combine(out, c)
        return out

    sets = guard.element_sets()
    if sets is not None:
        return fold(b.and_, [fold(b.or_, [equal(x, ty, c) for c in s], 0) for (x, ty), s in zip(elems, sets)], 1)
    return fold(b.or_, [fold(b.and_, [equal(x, ty, c) for (x, ty), c in zip(elems, row)], 1)
                        for row in guard.accepted], 0)


def c_guard_holds(g, guard) -> str:
    """The C condition of llvm_guard_holds."""
    elems = []
    for k in guard.inputs:
        v = g.inputs[k]
        ct = c_type(LLVM_TYPES[v.type.dtype])
        elems += [(f"((const {ct} *)inputs[{k}])[{i}]", v.type.dtype) for i in range(v.type.size)]

    def lit(c, dtype):
        if dtype.startswith("float"):  # exact: a hexadecimal floating literal
            return float(c).hex() + ("f" if dtype == "float32" else "")
        return f"INT64_C({int(c)})" if abs(int(c)) > 2**31 - 1 else str(int(c))

    if not elems:  # empty inputs: one value, always held
        return "1"
    sets = guard.element_sets()
    if sets is not None:
        return " && ".join("(" + " || ".join(f"{x} == {lit(c, dt)}" for c in cs) + ")"
                           for (x, dt), cs in zip(elems, sets))
    return " || ".join("(" + " && ".join(f"{x} == {lit(c, dt)}" for (x, dt), c in zip(elems, row)) + ")"
                       for row in guard.accepted)
