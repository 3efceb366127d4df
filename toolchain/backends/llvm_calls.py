"""Calling node kernels from an entry point of the object backend: each operand's address
as the memory plan places it, and the call with its workspaces (llvm.py's run functions,
llvm_parallel.py's tasks)."""
from __future__ import annotations

from llvmlite import ir

from ..kernel.llvm import LLVM_TYPES
from ..ops import registry


def ptr_type(v):
    return LLVM_TYPES[v.type.dtype].as_pointer()


def call_nodes(b, nodes, kernels, plan, weights, index, inputs, outputs, arena, blob):
    """Calls each node's kernel with its operands' pointers: graph inputs and outputs from
    the caller's tables, arena buffers at their planned offsets, weights as globals (or
    at their offsets in the external blob, passed last)."""
    raw = operand_addresses(b, plan, weights, index, inputs, outputs, arena, blob)

    def pointer(v):
        return b.bitcast(raw(v), ptr_type(v))

    for node, kernel in zip(nodes, kernels):
        if kernel is None:
            continue
        used = used_arguments(kernel) if blob is not None else None
        args = [pointer(v) if used is None or i in used or plan.of(v).kind != "const" else
                ir.Constant(ptr_type(v), None)  # a constant the kernel replaced by its packed copy
                for i, v in enumerate(v for v in node.inputs if v is not None)]
        args += [pointer(v) for v in node.outputs]
        for st, t in zip(plan.workspace_of(node), registry.get(node.op).workspace(node)):
            scratch = b.gep(arena, [ir.Constant(index, st.index)], inbounds=True)
            args.append(b.bitcast(scratch, LLVM_TYPES[t.dtype].as_pointer()))
        b.call(kernel, args + ([blob] if blob is not None else []))


def operand_addresses(b, plan, weights, index, inputs, outputs, arena, blob):
    """value -> its address (an i8* or a weight global), as the plan places it: graph inputs
    and outputs from the caller's tables, arena buffers at their offsets, weights as globals
    (or at their offsets in the external blob). Each address is computed once."""
    cache = {}

    def raw(v):
        st = plan.of(v)
        key = (st.kind, st.index) if st.kind != "const" else id(v)
        if key not in cache:
            if st.kind in ("input", "output"):
                table = inputs if st.kind == "input" else outputs
                cache[key] = b.load(b.gep(table, [ir.Constant(index, st.index)], inbounds=True))
            elif st.kind == "arena":
                cache[key] = b.gep(arena, [ir.Constant(index, st.index)], inbounds=True)
            elif blob is not None:
                cache[key] = b.gep(blob, [ir.Constant(index, weights.offset_of(v))], inbounds=True)
            else:
                cache[key] = weights[id(v)]
        return cache[key]

    return raw


def used_arguments(fn) -> set:
    """Indices of the arguments a function's instructions read (a kernel that packed a
    weight at compile time never reads the original, which then needs no blob bytes)."""
    args = {id(a): i for i, a in enumerate(fn.args)}
    return {args[id(op)] for block in fn.blocks for instr in block.instructions
            for op in instr.operands if id(op) in args}


