"""The op registry. One op, one place: each op class holds its attribute
normalization, shape rule, numpy reference semantics and lowering side by side.

    @register("Relu")
    class Relu(Op): ...

Families live in the modules imported at the bottom; adding an op touches one file.
"""
from __future__ import annotations

import numpy as np

from ..errors import CompileError
from ..ir import Node, TensorType


class Op:
    name = "?"
    # Writes every output element exactly once with its final value, so a following
    # elementwise activation can be applied at the store (see passes.fuse_activations).
    fusable_epilogue = False
    # How many inputs the op itself reads, when that number is fixed: inputs after these are
    # operands of fused binary epilogues (a residual Add folded into a Conv's store; see
    # passes.fuse_residuals). None: the op cannot take such operands.
    own_inputs: int | None = None
    # As a fused epilogue step, its scalar lowering also works on short vectors (plain
    # arithmetic, compares and selects; no bit tricks), so a tile stores whole vectors.
    vector_safe = False
    # The output may take over input 0's buffer when input 0 dies here.
    inplace = False
    # The output is input 0's bytes under another shape: no code, the buffer is shared.
    view = False
    # Evaluated on constants at compile time when all its inputs are known.
    foldable = True
    # The result depends only on the input types (static shapes), never on their values,
    # so it folds to a constant even when its inputs are computed at run time.
    shape_only = False

    def canonicalize(self, node: Node, opset: int):
        """Fill in ONNX defaults and resolve convenience attributes (e.g. auto_pad) so
        the shape rule, reference and lowering see one explicit form. Runs once, at
        import, with the model's default-domain opset."""

    def infer(self, node: Node) -> list[TensorType]:
        raise NotImplementedError

    def reference(self, node: Node, *inputs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def lower(self, k, node: Node, ins, outs):
        raise CompileError("has no lowering", node=node.name, op=node.op)

    def macs(self, node: Node) -> int:
        """Multiply-accumulates per inference, for the manifest and benchmarks."""
        return 0


class Registry:
    def __init__(self):
        self._ops: dict[str, Op] = {}

    def add(self, op: Op):
        self._ops[op.name] = op

    def get(self, name: str, node: str | None = None) -> Op:
        op = self._ops.get(name)
        if op is None:
            raise CompileError(f"unsupported op '{name}' (`edgec ops` lists the {len(self._ops)} supported ops)",
                               node=node, op=name)
        return op

    def __contains__(self, name):
        return name in self._ops

    def names(self):
        return sorted(self._ops)


registry = Registry()


def register(*names: str):
    """Class decorator: one instance per name (several ONNX names may share a class)."""

    def deco(cls):
        for n in names:
            op = cls()
            op.name = n
            registry.add(op)
        return cls

    return deco


# -- helpers shared by op modules ------------------------------------------------
def const_input(node: Node, i: int, what: str) -> np.ndarray | None:
    """An input that must be known at compile time (a shape, axes, pads...)."""
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    v = node.inputs[i]
    if not v.is_const:
        raise CompileError(f"{what} (input {i}) must be a compile-time constant", node=node.name, op=node.op)
    return v.data


def norm_axis(axis: int, rank: int, node: Node) -> int:
    if not -rank <= axis < max(rank, 1):
        raise CompileError(f"axis {axis} out of range for rank {rank}", node=node.name, op=node.op)
    return axis % max(rank, 1)


def broadcast_shapes(node: Node, *shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise CompileError(f"shapes {' and '.join(map(str, shapes))} do not broadcast",
                           node=node.name, op=node.op) from None


def own_inputs(node: Node) -> list:
    """The inputs the op itself reads (without fused epilogue operands)."""
    n = registry.get(node.op).own_inputs
    return node.inputs if n is None else node.inputs[:n]


def in_type(node: Node, i: int = 0) -> TensorType:
    return node.inputs[i].type


from . import (conv_transpose, elementwise, movement, nn, normalization, pooling, reduce, resize,  # noqa
               shape)  # noqa: E402,F401  (registration side effects)
