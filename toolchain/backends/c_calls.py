"""Calling node kernels from an entry point of the C backend: each operand's address as the
memory plan places it, and the call with its workspaces (c.py's run functions,
c_parallel.py's tasks; the C twin of llvm_calls.py). The code they write reads the locals
`inputs`, `outputs` (the caller's tables) and `a` (the arena as unsigned char *)."""
from __future__ import annotations

from ..kernel.c import c_type
from ..kernel.llvm import LLVM_TYPES
from ..ops import registry


def element_type(v) -> str:
    return c_type(LLVM_TYPES[v.type.dtype])


def operand_pointer(plan, weights, v, writable: bool) -> str:
    """v's address as its kernel parameter: a pointer to its element type (graph inputs and
    outputs from the caller's tables, arena buffers at their offsets, weight arrays)."""
    return view_pointer(plan, weights, v, 0, v, writable)


def view_pointer(plan, weights, v, offset: int, part, writable: bool) -> str:
    """The address `offset` bytes into value v, as a pointer to the element type of `part`
    (the value a piece of a split node sees there; v itself for a whole operand)."""
    st = plan.of(v)
    ct = element_type(part)
    cast = f"({ct} *)" if writable else f"(const {ct} *)"
    if st.kind == "arena":
        return f"{cast}(void *)(a + {st.index + offset})"
    base = f"inputs[{st.index}]" if st.kind == "input" else f"outputs[{st.index}]" if st.kind == "output" \
        else weights[id(v)][0]
    if offset == 0:
        return base if st.kind == "const" and part is v else f"{cast}{base}"
    void, byte = ("void *", "unsigned char *") if writable else ("const void *", "const unsigned char *")
    return f"{cast}({void})(({byte}){base} + {offset})"


def call_line(node, fn, plan, weights) -> str:
    """`fn(operands...);` for a node run whole: its inputs, outputs, then its workspaces."""
    args = [operand_pointer(plan, weights, v, False) for v in node.inputs if v is not None]
    args += [operand_pointer(plan, weights, v, True) for v in node.outputs]
    for st, t in zip(plan.workspace_of(node), registry.get(node.op).workspace(node)):
        args.append(f"({c_type(LLVM_TYPES[t.dtype])} *)(void *)(a + {st.index})")
    return f"    {fn}({', '.join(args)});"
