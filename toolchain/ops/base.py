"""The op base class, the registry and the helpers op modules share. One op, one place: each op class holds its attribute
normalization, shape rule, numpy reference semantics, schedule choice and lowering side
by side.

    @register("Relu")
    class Relu(Op): ...

Families live in the modules imported at the bottom; adding an op touches one file.
Ops the compiler makes for itself (an output copy) are registered as internal: they live
outside the ONNX namespace, so no model can name them and `edgec ops` does not list them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidModelError, UnsupportedError
from ..ir import Node, TensorType

COPY = "edgec.Copy"  # the internal op that writes a value into a graph output buffer


@dataclass(frozen=True)
class Partition:
    """How a node's output splits into pieces computed independently (the parallel build,
    passes/parallel.py): the output is cut along `axis` at multiples of `quantum`, and
    each own input follows the piece as `inputs` says: None, read whole; "broadcast", cut
    where it spans the axis (a bias); or (axis, num, den): output index i is that input's
    index i * num // den along its axis. `groups`: the piece's Conv has as many groups as
    quanta it holds."""

    axis: int
    inputs: tuple
    quantum: int = 1
    groups: bool = False


class Op:
    name = "?"
    # The ONNX domain a model names the op in: "" (ai.onnx) or "ai.onnx.ml" (ops/onnx_ml.py).
    domain = ""
    # Writes every output element exactly once with its final value, so a following
    # elementwise op can be applied at the store (see passes.fuse_activations).
    fusable_epilogue = False
    # How many inputs the op itself reads, when that number is fixed: inputs after these are
    # operands of fused binary epilogues (a residual Add folded into a Conv's store; see
    # passes.fuse_residuals). None: the op cannot take such operands.
    own_inputs: int | None = None
    # Can be a fused epilogue step: a one-input op with `scalar` (an activation), or a
    # two-input op with `combine` (a residual Add).
    unary_epilogue = False
    binary_epilogue = False
    # As a fused epilogue step, its scalar lowering also works on short vectors (plain
    # arithmetic, compares and selects; no bit tricks), so a tile stores whole vectors.
    vector_safe = False

    def epilogue_vector_safe(self, attrs: dict) -> bool:
        """vector_safe for a fused step with these attributes (Gelu's erf form is, its tanh form not)."""
        return self.vector_safe

    def epilogue_on_vectors(self, attrs: dict) -> bool:
        """As a fused step, long enough that the store runs it on whole vectors (one copy of
        the code per vector), not lane by lane (one per lane, for the SLP vectorizer to merge)."""
        return False
    # The output may take over input 0's buffer when input 0 dies here.
    inplace = False
    # The output is input 0's bytes under another shape: no code, the buffer is shared.
    view = False
    # Evaluated on constants at compile time when all its inputs are known.
    foldable = True
    # The result depends only on the input types (static shapes), never on their values,
    # so it folds to a constant even when its inputs are computed at run time.
    shape_only = False
    # Attributes that hold an ONNX element type code (Cast's `to`): the front end decodes
    # them into dtype names before canonicalize.
    dtype_attrs: tuple[str, ...] = ()
    # Inputs read as sizes, shapes or indices (Reshape's shape), not as data: a bounded
    # batch build (frontend/batching.py) lets a constant there depend on the batch size.
    shape_operands: tuple[int, ...] = ()
    # The output is the inputs laid end to end (Concat on an axis with only 1s before it):
    # the memory planner may place the inputs there, so the producers write the output and
    # this node does nothing (memory.py, "joins").
    joins_inputs = False
    # The outputs are the input cut end to end (Split on an axis with only 1s before it):
    # the planner may place the outputs in the input's buffer, so this node does nothing
    # (memory.py, "splits").
    splits_input = False

    def canonicalize(self, node: Node, opset: int):
        """Fill in ONNX defaults and resolve convenience attributes (e.g. auto_pad) so
        the shape rule, reference and lowering see one explicit form. Runs once, at
        import, with the model's default-domain opset."""

    def infer(self, node: Node) -> list[TensorType]:
        raise NotImplementedError

    def constant_outputs(self, node: Node, opset: int) -> dict[int, np.ndarray]:
        """Outputs after those `infer` types whose values are known at compile time whatever
        the inputs (Dropout's mask in inference: all true), by output position: the importer
        binds them to constants. Called after canonicalize and infer."""
        return {}

    def reference(self, node: Node, *inputs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def schedule(self, node: Node, vec):
        """The tiling of this node on a vector unit (toolchain.schedules), or None for an
        op lowered as a plain loop nest. Pure: shapes and the unit's facts only."""
        return None

    def workspace(self, node: Node) -> list[TensorType]:
        """Scratch buffers the lowering needs besides its inputs and outputs (intermediate
        results, state carried across a loop). The memory planner places them in the arena,
        alive only while this node runs; lower() receives them as tensors after the outputs."""
        return []

    def item_wise(self, node: Node) -> bool:
        """Each index of axis 0 of the outputs depends only on the same index of axis 0 of
        the inputs carrying the batch. With a bounded batch (--dim N<=8) the code for one
        item then runs once per item (frontend/batching.py); shape checks there already
        refuse ops that move or reduce along axis 0, so this answers only what shapes cannot
        show (a Softmax over axis 0 keeps its shape). Unknown: no."""
        return False

    def lower(self, k, node: Node, ins, outs):
        raise UnsupportedError("has no lowering", node=node.name, op=node.op)

    def scalar(self, k, x, attrs):
        """unary_epilogue ops: the lowering of one element (also applied at a producer's store)."""
        raise NotImplementedError

    def combine(self, k, a, b):
        """binary_epilogue ops: the lowering of one pair of elements."""
        raise NotImplementedError

    def macs(self, node: Node) -> int:
        """Multiply-accumulates per inference, for the manifest and benchmarks."""
        return 0

    def partition(self, node: Node) -> Partition | None:
        """How the output splits into independent pieces (a Partition), or None: the node
        runs whole. Whether it pays to split is the cost model's (passes/parallel.py)."""
        return None

    def vjp(self, b, node: Node, cotangents: list) -> list:
        """Reverse-mode derivative rule: given the cotangents of the node's outputs (values
        of the pullback graph; None for an output that has none), the cotangents of its
        inputs (None for an input that gets none), as nodes of existing ops added through
        `b` (passes.autodiff.Builder: b.op, b.primal for a forward value, b.unbroadcast,
        b.reshape, b.scalar). Rules may build cotangents nobody needs: dead-code
        elimination removes them, and the forward values only they read stay unsaved."""
        raise unsupported(node, "no derivative rule (reverse mode)")

    def jvp(self, b, node: Node, tangents: list) -> list:
        """Forward-mode derivative rule: given the tangents of the node's inputs (values of
        the same graph; None for an input whose tangent is zero), the tangents of its
        outputs (None where zero), as nodes of existing ops added through `b`
        (passes.forward.TangentBuilder: b.op, b.primal for a forward value, b.expand,
        b.reshape, b.scalar, b.zeros). Forward values are read where they are: a rule that
        reads an op's output rather than its input leaves the input free for fusion."""
        raise unsupported(node, "no derivative rule (forward mode)")


class Registry:
    def __init__(self):
        self._ops: dict[str, Op] = {}
        self._internal: set[str] = set()

    def add(self, op: Op, internal=False):
        self._ops[op.name] = op
        if internal:
            self._internal.add(op.name)

    def get(self, name: str, node: str | None = None) -> Op:
        """Any op of the IR, internal ones included."""
        op = self._ops.get(name)
        if op is None:
            raise UnsupportedError(f"unsupported op '{name}' (`edgec ops` lists the {len(self.names())} "
                                   f"supported ops)", node=node, op=name)
        return op

    def onnx(self, name: str, node: str | None = None, domain: str = "") -> Op:
        """An op a model may name, in its domain: internal ops are not ONNX ops."""
        if name in self._internal:
            raise UnsupportedError(f"unsupported op '{name}'", node=node, op=name)
        op = self.get(name, node)
        if op.domain != ("" if domain == "ai.onnx" else domain):
            raise UnsupportedError(f"unsupported op '{name}' in domain '{domain or 'ai.onnx'}' (supported in domain "
                                   f"'{op.domain or 'ai.onnx'}')", node=node, op=name)
        return op

    def in_domain(self, domain: str) -> list[str]:
        """The ONNX ops supported in a domain other than the default one."""
        return sorted(n for n in self.names() if self._ops[n].domain == domain)

    def __contains__(self, name):
        return name in self._ops and name not in self._internal

    def names(self):
        """The ONNX ops supported."""
        return sorted(n for n in self._ops if n not in self._internal)


registry = Registry()


def register(*names: str, internal=False):
    """Class decorator: one instance per name (several ONNX names may share a class)."""

    def deco(cls):
        for n in names:
            op = cls()
            op.name = n
            registry.add(op, internal)
        return cls

    return deco


# -- helpers shared by op modules ------------------------------------------------
def invalid(node: Node, msg: str) -> InvalidModelError:
    """The model is wrong at this node (onnxruntime refuses it too)."""
    return InvalidModelError(msg, node=node.name, op=node.op)


def unsupported(node: Node, msg: str) -> UnsupportedError:
    """A valid use of this op that the compiler does not support."""
    return UnsupportedError(msg, node=node.name, op=node.op)


def not_differentiable(node: Node, why: str) -> UnsupportedError:
    """Differentiation reached an op whose derivative is zero or undefined everywhere."""
    return UnsupportedError(f"is not differentiable ({why})", node=node.name, op=node.op)


def linear_jvp(b, node: Node, tangents: list) -> list:
    """The forward-mode rule of an op linear in its input 0, the other inputs read as they
    are (indices, constants): the op itself applied to the tangent."""
    if any(t is not None for t in tangents[1:]):
        raise not_differentiable(node, "only its first input may carry a derivative")
    outs = b.op(node.op, [tangents[0], *node.inputs[1:]], outputs=len(node.outputs), **node.attrs)
    return list(outs) if len(node.outputs) > 1 else [outs]


def const_input(node: Node, i: int, what: str) -> np.ndarray | None:
    """An input that must be known at compile time (a shape, axes, pads...)."""
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    v = node.inputs[i]
    if not v.is_const:
        err = unsupported(node, f"{what} (input {i}) must be a compile-time constant")
        err.operand = i  # the importer names the graph inputs it comes from (--bind)
        raise err
    return v.data


def norm_axis(axis: int, rank: int, node: Node) -> int:
    if not -rank <= axis < max(rank, 1):
        raise invalid(node, f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def broadcast_shapes(node: Node, *shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise invalid(node, f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def own_inputs(node: Node) -> list:
    """The inputs the op itself reads (without fused epilogue operands)."""
    n = registry.get(node.op).own_inputs
    return node.inputs if n is None else node.inputs[:n]


def in_type(node: Node, i: int = 0) -> TensorType:
    return node.inputs[i].type


def apply_epilogue_reference(node: Node, results, operands):
    """numpy side of a fused epilogue, for the reference interpreter and constant folding.
    `operands`: the node's input arrays (a binary step reads its operand there)."""
    for step in node.epilogue:
        op = registry.get(step.op)
        shadow = Node(step.op, step.op, [], [], dict(step.attrs))
        if step.operand is not None:
            pair = (operands[step.operand], results[0])[::1 if step.operand_first else -1]
            results[0] = op.reference(shadow, *pair)[0]
        else:
            results[0] = op.reference(shadow, results[0])[0]
    return results
