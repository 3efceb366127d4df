"""The parallel build's decisions: which nodes run as pieces on several cores, and where
each is cut. A choice is a `Split` record per node (printable, in the manifest, pinned
by tests in milliseconds); `pieces` turns one into the nodes the backend lowers.

A piece computes a contiguous block of its node's output (the output's dimensions before
the cut axis are all 1), reading a block of an input where the op's Partition says so: a
view at a byte offset for a run-time tensor, a slice of the data for a constant. Pieces of
one node write disjoint bytes and read nothing another writes, so they run in any order
or at once; the memory plan is the unsplit graph's (the arena does not grow).

Cost model: a node is cut only where each piece keeps at least MIN_PIECE_MACS
multiply-accumulates (or elements read, for a pool; a dispatch costs the caller's
parallel_for a wake-up and a join, microseconds), into at most `tasks` pieces, at multiples of its schedule's register tile
along the cut where the axis is long enough (a piece's edge then costs no partial tile).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Node, TensorType, Value
from ..ops import registry
from ..targets import VectorUnit

MIN_PIECE_MACS = 16_384


@dataclass(frozen=True)
class Split:
    """Node `node` (an `op`) cut along output `axis` into pieces [start, stop)."""

    node: str
    op: str
    axis: int
    bounds: tuple[tuple[int, int], ...]

    def __str__(self):
        cuts = " ".join(f"{a}:{b}" for a, b in self.bounds)
        return f"{self.node} ({self.op}) axis {self.axis}: {cuts}"

    def as_json(self) -> dict:
        return {"node": self.node, "op": self.op, "axis": self.axis, "bounds": [list(b) for b in self.bounds]}


@dataclass
class Piece:
    """One piece: the node it lowers (inputs typed as the piece sees them), per input the
    byte offset of its view into the whole node's operand (None: a constant of its own),
    and the byte offset of its output in the whole output."""

    node: Node
    offsets: list
    out_offset: int


def choose_splits(nodes, tasks: int, vector: VectorUnit, elided=frozenset()) -> list[Split]:
    """The Split of every node worth cutting into up to `tasks` pieces."""
    if tasks < 2:
        return []
    splits = []
    for node in nodes:
        if id(node) in elided:
            continue
        split = _split(node, tasks)
        if split is not None:
            splits.append(split)
    return splits


def _split(node: Node, tasks: int) -> Split | None:
    op = registry.get(node.op)
    part = op.partition(node)
    if part is None or op.inplace or op.view or op.workspace(node) or len(node.outputs) != 1:
        return None
    shape = node.outputs[0].type.shape
    if any(d != 1 for d in shape[:part.axis]):
        return None
    size = shape[part.axis]
    parts = min(tasks, size // part.quantum, _work(node) // MIN_PIECE_MACS)
    if parts < 2:
        return None
    tile = _tile_along(node.schedule, part.axis, len(shape))
    q = part.quantum
    balanced = -(-size // (parts * q)) * q
    aligned = -(-size // (parts * math.lcm(q, tile))) * math.lcm(q, tile)
    chunk = min(range(balanced, max(aligned, balanced) + 1, q), key=lambda c: (_slowest(size, c, tile), -c))
    bounds = tuple((a, min(a + chunk, size)) for a in range(0, size, chunk))
    return Split(node.name, node.op, part.axis, bounds) if len(bounds) > 1 and _rules(node, part) else None


def _work(node: Node) -> int:
    """Multiply-accumulates, or for an op without (a pool) the elements it reads: about as
    costly one for one, both bound by loads."""
    return registry.get(node.op).macs(node) or sum(v.type.size for v in node.inputs if v is not None)


def _slowest(size: int, chunk: int, tile: int) -> float:
    """The largest piece's cost when cut every `chunk`: half by its length, half by the
    register tiles it runs (a partial tile costs a whole tile's loads and stores)."""
    return max(0.5 * n + 0.5 * tile * -(-n // tile) for n in (min(chunk, size - a) for a in range(0, size, chunk)))


def _tile_along(schedule, axis: int, rank: int) -> int:
    """How many output indices along `axis` the node's register tile covers (pieces cut at
    its multiples keep whole tiles): vectors of output channels or columns, or rows of
    output channels or matrix rows; 1 for a depthwise tile (one channel) or no tile."""
    if schedule is None or schedule.kind in ("loop", "conv-depthwise", "conv-taps-reduce"):
        return 1
    along_vectors = schedule.kind in ("pointwise-by-channels", "conv-channels") or (
        schedule.kind == "matmul" and axis == rank - 1)
    return schedule.vectors * schedule.lanes if along_vectors else schedule.rows


def pieces(node: Node, split: Split, vector: VectorUnit) -> list[Piece]:
    """The nodes computing each block of `split`, scheduled for `vector`."""
    op = registry.get(node.op)
    part = op.partition(node)
    rules = _rules(node, part)
    out = []
    for j, (start, stop) in enumerate(split.bounds):
        inputs, offsets = _cut(node, rules, start, stop)
        t = node.outputs[0].type
        shape = list(t.shape)
        shape[part.axis] = stop - start
        y = Value(f"{node.outputs[0].name}#{j}", TensorType(t.dtype, tuple(shape)))
        attrs = dict(node.attrs)
        if part.groups:
            attrs["group"] = (stop - start) // part.quantum
        sub = Node(node.op, f"{node.name}#{j}", inputs, [y], attrs, node.epilogue)
        y.producer = sub
        sub.schedule = op.schedule(sub, vector)
        out.append(Piece(sub, offsets, start * _inner(t.shape, part.axis) * t.itemsize))
    return out


def _rules(node: Node, part) -> list | None:
    """How each input follows the cut: None (read whole) or (axis, num, den), epilogue
    operands and a "broadcast" input cut where they span the axis; None for the node when
    a run-time input's block would not be contiguous (only 1s before its axis)."""
    own = registry.get(node.op).own_inputs or len(node.inputs)
    out_shape = node.outputs[0].type.shape
    rules = []
    for i, v in enumerate(node.inputs):
        rule = part.inputs[i] if i < min(own, len(part.inputs)) else "broadcast"  # epilogue operands too
        if v is not None and rule == "broadcast":
            rule = _broadcast_rule(v.type.shape, out_shape, part.axis)
        if v is None or rule is None:
            rules.append(None)
            continue
        if not v.is_const and any(d != 1 for d in v.type.shape[:rule[0]]):
            return None
        rules.append(rule)
    return rules


def _cut(node: Node, rules: list, start: int, stop: int):
    """(inputs, byte offsets) of the piece [start, stop): a view of a run-time input at its
    offset, a constant's slice as a constant of its own (offset None), the rest whole."""
    inputs, offsets = [], []
    for v, rule in zip(node.inputs, rules):
        if rule is None:
            inputs.append(v)
            offsets.append(0)
            continue
        axis, num, den = rule
        lo, hi = start * num // den, stop * num // den
        if v.is_const:
            data = v.data[(slice(None),) * axis + (slice(lo, hi),)]
            inputs.append(Value(f"{v.name}#{lo}:{hi}", TensorType.of(data), data=data.copy()))
            offsets.append(None)
            continue
        shape = list(v.type.shape)
        shape[axis] = hi - lo
        inputs.append(Value(f"{v.name}#{lo}:{hi}", TensorType(v.type.dtype, tuple(shape))))
        offsets.append(lo * _inner(v.type.shape, axis) * v.type.itemsize)
    return inputs, offsets


def _broadcast_rule(shape, out_shape, axis):
    """An operand broadcast against the output: cut with it where it spans the axis."""
    k = axis - (len(out_shape) - len(shape))
    if k < 0 or shape[k] == 1:
        return None
    return (k, 1, 1)


def _inner(shape, axis) -> int:
    return math.prod(shape[axis + 1:])
