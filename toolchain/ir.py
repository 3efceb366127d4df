"""Graph IR: typed values with static shapes, nodes in topological order, a verifier
and a readable text form.

A Value is produced by exactly one node, or is a graph input, or is a constant
(it then carries its numpy data). Nodes reference Values directly, so rewriting a
use is `node.inputs[i] = other`; `Graph.replace_all_uses` does it graph-wide.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from .errors import InternalError, UnsupportedError

DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float8_e5m2": ml_dtypes.float8_e5m2,  # a storage type, like float16 (kernel/float8.py)
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "bool": np.bool_,
}
# integer types whose values are read as unsigned (division, comparison, widening, shifts)
UNSIGNED_DTYPES = ("uint8", "uint16", "uint32", "uint64")
SHORT = {"float32": "f32", "float16": "f16", "float8_e5m2": "f8e5m2", "float64": "f64", "int8": "i8", "uint8": "u8",
         "int32": "i32", "int64": "i64", "bool": "i1",
         "int16": "i16", "uint16": "u16", "uint32": "u32", "uint64": "u64"}


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UnsupportedError(f"unsupported element type {self.dtype}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # exact: [2**31] * 3 is 2**93, not 0

    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def __str__(self):
        return f"{SHORT[self.dtype]}[{','.join(map(str, self.shape))}]"

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(np.dtype(array.dtype).name, array.shape)


class Value:
    __slots__ = ("name", "type", "producer", "data")

    def __init__(self, name: str, type: TensorType | None, producer: "Node | None" = None,
                 data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.data = data

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def __repr__(self):
        return f"%{self.name}"


@dataclass(frozen=True)
class EpilogueStep:
    """One elementwise op applied at a producer's store (fused by passes.fuse): its op and
    attributes, and for a binary op the producer input holding its other operand, and
    whether that operand comes first (x - y is not y - x)."""

    op: str
    attrs: tuple = ()  # sorted (name, value) pairs
    operand: int | None = None
    operand_first: bool = False

    def __str__(self):
        args = [f"{k}={_fmt_attr(v)}" for k, v in self.attrs]
        if self.operand is not None:
            args.append(f"operand={self.operand}{' first' if self.operand_first else ''}")
        return f"{self.op}({', '.join(args)})" if args else self.op


@dataclass(eq=False)
class Node:
    op: str
    name: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict = field(default_factory=dict)
    epilogue: tuple[EpilogueStep, ...] = ()  # fused elementwise steps, applied in order at the store
    schedule: object = None  # a toolchain.schedules.Schedule, once chosen for a vector unit
    # the ONNX nodes this node computes, by their names in the model: set at import, extended
    # by every pass that merges a node into another (BatchNorm folding, activation and
    # residual fusion, CSE); empty for a node the compiler inserted (an output copy). Not
    # part of the text form or the fingerprint: it describes where code came from, not what
    # it does.
    sources: tuple[str, ...] = ()

    def __repr__(self):
        return f"Node({self.op} {self.name})"


@dataclass(frozen=True)
class BatchBound:
    """A bounded batch dimension (--dim N<=8): the graph is the code for one item (axis 0
    of 1), which the entry point runs once per item for any size in lo..hi. `inputs` and
    `outputs` say which graph inputs and outputs carry the batch on axis 0; the others are
    shared by every item."""

    dim: str
    lo: int
    hi: int
    inputs: tuple[bool, ...]
    outputs: tuple[bool, ...]

    def scaled(self, shape: tuple, carries: bool, n: int | None = None) -> tuple:
        """The shape of a per-item tensor for a batch of n (default: the bound)."""
        return (n or self.hi, *shape[1:]) if carries else tuple(shape)


@dataclass(frozen=True)
class InputGuard:
    """Graph inputs the build specialized to the values the declared shapes allow
    (frontend/specialize.py): <name>_run returns ERR_INPUT_VALUE unless the inputs, read
    element by element and concatenated, equal one of `accepted`."""
    inputs: tuple  # indices into Graph.inputs
    names: tuple
    accepted: tuple  # tuples of ints, one element per input element

    def element_sets(self) -> list | None:
        """Per element, its accepted values, when `accepted` is exactly their product (the
        check is then element by element); else None (the check lists whole tuples)."""
        sets = [sorted({a[i] for a in self.accepted}) for i in range(len(self.accepted[0]))]
        return sets if int(np.prod([len(s) for s in sets])) == len(set(self.accepted)) else None


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.batch: BatchBound | None = None  # set by the front end for a bounded batch
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        # the model's own names for its outputs (set by the importer): the last pass,
        # materialize_outputs, gives the output values exactly these names
        self.output_names: list[str] | None = None
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        # what the passes decided that the manifest reports: "float_fallback" -> [{node, op,
        # reason}] for the nodes of a quantized model left computing in float
        self.notes: dict[str, list] = {}
        # inputs specialized to the values the declared shapes allow, checked at run time
        self.guards: list[InputGuard] = []

    # -- construction -------------------------------------------------------
    def unique(self, base: str) -> str:
        base = base or "v"
        name, n = base, 1
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        return name

    def value(self, name: str, type: TensorType | None = None) -> Value:
        return Value(self.unique(name), type)

    def const(self, name: str, data: np.ndarray) -> Value:
        # np.ascontiguousarray would promote a 0-d array to shape (1,): a scalar stays 0-d
        data = np.asarray(data)
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        data.setflags(write=False)
        return Value(self.unique(name), TensorType.of(data), data=data)

    def add_node(self, op: str, name: str, inputs, outputs, attrs=None, index=None) -> Node:
        node = Node(op, self.unique(name), list(inputs), list(outputs), dict(attrs or {}))
        for out in node.outputs:
            out.producer = node
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    # -- queries --------------------------------------------------------------
    def users(self) -> dict[int, list[Node]]:
        """id(value) -> nodes that read it (with repetition)."""
        table: dict[int, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                if v is not None:
                    table.setdefault(id(v), []).append(node)
        return table

    def constants(self) -> list[Value]:
        seen, out = set(), []
        for node in self.nodes:
            for v in node.inputs:
                if v is not None and v.is_const and id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        for v in self.outputs:
            if v.is_const and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def replace_all_uses(self, old: Value, new: Value):
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    # -- verification ---------------------------------------------------------
    def verify(self):
        """Structural checks: unique node names, every input defined before it is read,
        outputs attached to their producer. (passes.verify adds each op's shape rule.)"""
        defined = {id(v) for v in self.inputs}
        names = set()
        for node in self.nodes:
            if node.name in names:
                raise InternalError("duplicate node name", node=node.name, op=node.op)
            names.add(node.name)
            for v in node.inputs:
                if v is None or v.is_const:
                    continue
                if id(v) not in defined:
                    raise InternalError(f"input {v!r} used before it is defined", node=node.name, op=node.op)
            for out in node.outputs:
                if out.producer is not node:
                    raise InternalError(f"output {out!r} has a stale producer", node=node.name, op=node.op)
                defined.add(id(out))
        for v in self.outputs:
            if not v.is_const and id(v) not in defined:
                raise InternalError(f"graph output {v!r} is never computed")

    # -- text form ------------------------------------------------------------
    def __str__(self):
        def operand(v):
            if v is None:
                return "_"
            if v.is_const:
                if v.type.size <= 8:
                    return f"{v.type}{np.asarray(v.data).ravel().tolist()}"
                return f"@{v.name}:{v.type}"
            return f"%{v.name}"

        def attr(a):
            return ", ".join(f"{k}={_fmt_attr(x)}" for k, x in a.items())

        ins = ", ".join(f"%{v.name}: {v.type}" for v in self.inputs)
        outs = ", ".join(operand(v) for v in self.outputs)
        lines = [f"graph {self.name}({ins}) {{"]
        if self.batch is not None:
            b = self.batch
            lines.append(f"  // one item of batch '{b.dim}' in {b.lo}..{b.hi}; carried by inputs "
                         f"{[i for i, c in enumerate(b.inputs) if c]}, outputs {[i for i, c in enumerate(b.outputs) if c]}")
        for node in self.nodes:
            res = ", ".join(f"%{v.name}" for v in node.outputs)
            types = ", ".join(str(v.type) for v in node.outputs)
            a = f" {{{attr(node.attrs)}}}" if node.attrs else ""
            fused = f" then {' then '.join(map(str, node.epilogue))}" if node.epilogue else ""
            sched = f"  [{node.schedule}]" if node.schedule is not None else ""
            lines.append(f"  {res} = {node.op}({', '.join(operand(v) for v in node.inputs)}){a}{fused} : {types}"
                         f"  # {node.name}{sched}")
        lines.append(f"  return {outs}")
        lines.append("}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """Content hash of the graph text and all constant bytes."""
        h = hashlib.sha256(str(self).encode())
        for v in self.constants():
            h.update(v.name.encode())
            h.update(np.ascontiguousarray(v.data).tobytes())
        return h.hexdigest()


def _fmt_attr(x):
    if isinstance(x, np.ndarray):
        return f"array{list(x.shape)}" if x.size > 8 else str(x.ravel().tolist())
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], tuple):
        return "[" + ", ".join(f"{o}" if not a else f"{o}{a}" for o, a in x) + "]"
    return str(list(x) if isinstance(x, tuple) else x)
