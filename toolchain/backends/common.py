"""What every backend shares: the result record and the hand-over of a node to its op's
lowering."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from llvmlite import ir

from ..errors import CompileError
from ..ops import own_inputs, registry


@dataclass
class Generated:
    """What a backend hands back: the object, and what the stack report needs."""

    object: bytes
    frames: dict  # function -> stack frame bytes, as the code generator reported them
    calls: dict  # function -> functions it calls
    llvm_ir: str = ""  # the optimized IR (object path)
    c_source: str = ""  # the shipped <name>.c (C path)
    files: dict = field(default_factory=dict)  # file kind -> bytes this backend adds to the build


def lower_node(k, node, tensors):
    """Hand the op its operand views (None where an optional input is omitted) and its
    outputs with the fused epilogue attached, and let it write the code; an error names
    the node. `tensors`: the present inputs, then the outputs. A binary epilogue step
    reads its operand (same shape as the output) at the stored element's offset, or its
    one element, loaded once before the kernel."""
    n_in = sum(v is not None for v in node.inputs)
    present = iter(tensors[:n_in])
    in_views = [next(present) if v is not None else None for v in node.inputs]
    outs = tensors[n_in:]
    for step in node.epilogue:
        op = registry.get(step.op)
        if step.operand is not None and in_views[step.operand].size == 1:
            # one element for all (passes.fuse_residuals: a scale or a run-time scalar), loaded once here
            fn = partial(_combine_scalar, k, op.combine, in_views[step.operand].flat()[0], step.operand_first)
        elif step.operand is not None:
            fn = partial(_combine, k, op.combine, in_views[step.operand].flat(), step.operand_first)
        else:
            fn = partial(_apply, k, op.scalar, dict(step.attrs))
        fn.vector_safe, fn.reads_operand = op.epilogue_vector_safe(dict(step.attrs)), step.operand is not None
        fn.on_vectors = op.epilogue_on_vectors(dict(step.attrs))
        outs[0].epilogue.append(fn)
    try:
        registry.get(node.op).lower(k, node, in_views[:len(own_inputs(node))], outs)
    except CompileError as e:
        raise e.at(node.name, node.op) from None


def _apply(k, scalar, attrs, v, at):
    return scalar(k, v, attrs)


def _combine(k, combine, operand, operand_first, v, at):
    other = k.vload(operand, (at,), v.v.type.count) if isinstance(v.v.type, ir.VectorType) else operand[at]
    return combine(k, other, v) if operand_first else combine(k, v, other)


def _combine_scalar(k, combine, scalar, operand_first, v, at):
    other = k.splat(scalar, v.v.type.count) if isinstance(v.v.type, ir.VectorType) else scalar
    return combine(k, other, v) if operand_first else combine(k, v, other)
