"""Static memory planning: every intermediate tensor gets a fixed offset in one arena.

Views (Reshape & co.) share their input's buffer; elementwise ops may write over an
input that dies at that node. An op may ask for scratch buffers
of its own (Op.workspace): each is a buffer alive only during its node, so the workspaces
of different nodes may share bytes. Buffers are then placed greedily, largest first, at the
lowest offset that does not overlap a buffer alive at the same time (the "greedy by
size" strategy of TFLite Micro's planner), retried with equal-size buffers in other orders
while the arena is above the lower bound. The lower bound reported beside the arena
size is the largest total of buffers alive at one step: no planner can do better.

A Concat whose inputs are contiguous blocks of its output (only 1s before the axis) and
die there is a join: each input's buffer becomes a slice of the output's, so the producers
write the concatenated tensor directly and the Concat itself emits no code (plan.elided).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .errors import BudgetError
from .ir import Graph, Value
from .ops import registry


@dataclass(frozen=True)
class Storage:
    kind: str  # "input" | "output" | "const" | "arena"
    index: int = 0  # input/output position, or arena offset


@dataclass
class Buffer:
    size: int
    start: int
    end: int
    offset: int = -1
    values: list = field(default_factory=list)


@dataclass
class MemoryPlan:
    storage: dict  # id(Value) -> Storage
    arena_size: int
    alignment: int
    lower_bound: int
    buffers: list
    workspaces: dict = field(default_factory=dict)  # id(Node) -> [Storage] (arena), Op.workspace order
    elided: set = field(default_factory=set)  # id(Node) of joins and shared views: output already in place

    def of(self, v: Value) -> Storage:
        return self.storage[id(v)]

    def workspace_of(self, node) -> list:
        """The node's scratch buffers in the arena, in the order its op's workspace() lists them."""
        return self.workspaces.get(id(node), [])


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def buffer_alignment(vector_bytes: int) -> int:
    """How far each buffer is aligned inside the arena: as much as its kernels use, one
    vector register (never less than 16 bytes), not the arena's own alignment (a cache
    line): rounding every buffer up to 64 bytes costs arena above the lower bound."""
    return max(16, vector_bytes)


def plan_memory(g: Graph, alignment: int, buffer_align: int | None = None) -> MemoryPlan:
    """alignment: of the arena itself; buffer_align: of each buffer in it (default: the same)."""
    buffer_align = buffer_align or alignment
    root: dict[int, object] = {}  # id(value) -> Storage (fixed places) or Buffer
    for i, v in enumerate(g.inputs):
        root[id(v)] = Storage("input", i)
    for j, v in enumerate(g.outputs):
        root[id(v)] = Storage("output", j)
    for v in g.constants():
        root[id(v)] = Storage("const")

    last_use = _last_uses(g)
    buffers: list[Buffer] = []
    scratch: dict[int, list[Buffer]] = {}
    # view nodes whose output shares the input's arena buffer: no code at all (where each
    # kernel is a function of its own, LLVM cannot see that the copy is onto itself)
    shared: set[int] = set()
    for t, node in enumerate(g.nodes):
        op = registry.get(node.op)
        scratch[id(node)] = [Buffer(w.nbytes, t, t) for w in op.workspace(node)]
        buffers += scratch[id(node)]
        for out in node.outputs:
            if id(out) in root:
                continue
            src = root.get(id(node.inputs[0])) if node.inputs and node.inputs[0] is not None else None
            if op.view:
                root[id(out)] = src
                if isinstance(src, Buffer):
                    src.values.append(out)
                    src.end = max(src.end, last_use.get(id(out), t))
                    shared.add(id(node))
                elif isinstance(src, Storage) and src.kind == "input":  # the caller's bytes: no copy onto them either
                    shared.add(id(node))
            elif op.inplace and _can_overwrite(node, src, root, out, t):
                src.values.append(out)
                src.end = max(src.end, last_use.get(id(out), t))
                root[id(out)] = src
            else:
                buf = Buffer(out.type.nbytes, t, last_use.get(id(out), t), values=[out])
                buffers.append(buf)
                root[id(out)] = buf

    slices, elided = _joins(g, root, buffers)
    _splits(g, root, buffers, slices, elided)
    elided |= shared
    steps = max((b.end for b in buffers), default=-1) + 1
    lower = max((sum(b.size for b in buffers if b.start <= t <= b.end) for t in range(steps)), default=0)
    _place(buffers, buffer_align, lower)
    storage = {}

    def offset(b):  # a slice of a join (of a join...) lies in the placed buffer holding it
        if id(b) in slices:
            whole, delta = slices[id(b)]
            return offset(whole) + delta
        return b.offset

    for key, r in root.items():
        storage[key] = Storage("arena", offset(r)) if isinstance(r, Buffer) else r
    arena = _align(max((b.offset + b.size for b in buffers), default=0), buffer_align)
    workspaces = {key: [Storage("arena", offset(b)) for b in bufs] for key, bufs in scratch.items() if bufs}
    return MemoryPlan(storage, arena, alignment, lower, buffers, workspaces, elided)


def _joins(g: Graph, root: dict, buffers: list) -> tuple[dict, set]:
    """Concats done by placement: {id(input buffer): (output buffer, byte offset)} and the
    ids of the nodes elided. An input qualifies when it has a buffer of its own exactly its
    size that dies at the Concat (nothing reads or overwrites it later), used once there."""
    slices, elided = {}, set()
    for t, node in enumerate(g.nodes):
        out = node.outputs[0]
        whole = root.get(id(out))
        if not registry.get(node.op).joins_inputs or not isinstance(whole, Buffer) or id(whole) in slices:
            continue
        axis = node.attrs["axis"]
        if any(d != 1 for d in out.type.shape[:axis]) or node.epilogue:
            continue
        parts = [root.get(id(v)) for v in node.inputs]
        if not all(isinstance(p, Buffer) and p is not whole and id(p) not in slices and p.end == t
                   and p.size == v.type.nbytes and p.size > 0 for p, v in zip(parts, node.inputs)):
            continue
        if len({id(p) for p in parts}) != len(parts) or any(p.values and p.values[0] in g.outputs for p in parts):
            continue
        _as_slices(parts, whole, slices, buffers)
        whole.start = min([whole.start] + [p.start for p in parts])
        elided.add(id(node))
    return slices, elided


def _splits(g: Graph, root: dict, buffers: list, slices: dict, elided: set):
    """Splits done by placement (the mirror of _joins): each output's buffer becomes a slice
    of the input's, which lives on until the last output dies. The input qualifies when
    its buffer is exactly its size and nothing reads it after the Split (so no op took it
    over in place); each output when it has a buffer of its own, exactly its size."""
    for t, node in enumerate(g.nodes):
        if not registry.get(node.op).splits_input or node.epilogue or not node.inputs or node.inputs[0] is None:
            continue
        src = node.inputs[0]
        whole = root.get(id(src))
        axis = node.attrs["axis"]
        if (not isinstance(whole, Buffer) or id(whole) in slices or whole.end != t or whole.size != src.type.nbytes
                or any(d != 1 for d in src.type.shape[:axis]) or whole not in buffers):
            continue
        parts = [root.get(id(v)) for v in node.outputs]
        if not all(isinstance(p, Buffer) and p is not whole and id(p) not in slices and p.start == t
                   and p.size == v.type.nbytes and p in buffers for p, v in zip(parts, node.outputs)):
            continue
        if len({id(p) for p in parts}) != len(parts) or any(v in g.outputs for v in node.outputs):
            continue
        _as_slices(parts, whole, slices, buffers)
        whole.end = max([whole.end] + [p.end for p in parts])
        elided.add(id(node))


def _as_slices(parts: list, whole, slices: dict, buffers: list):
    """Each part's buffer becomes the slice of `whole` after the previous part's."""
    delta = 0
    for p in parts:
        slices[id(p)] = (whole, delta)
        delta += p.size
        buffers.remove(p)


def _last_uses(g: Graph) -> dict[int, int]:
    """id(value) -> index of the last node that reads it, following views to their source."""
    last: dict[int, int] = {}
    for t, node in enumerate(g.nodes):
        for v in node.inputs:
            if v is not None:
                last[id(v)] = t
    return last


def _can_overwrite(node, src, root, out, t) -> bool:
    """In place is safe when input 0's buffer dies here, is as big as the output, and no
    other operand of this node reads the same buffer (it might read other positions)."""
    if not isinstance(src, Buffer) or src.end != t or src.size != out.type.nbytes:
        return False
    others = [root.get(id(v)) for v in node.inputs[1:] if v is not None]
    return all(o is not src for o in others)


def _place(buffers: list[Buffer], alignment: int, lower: int):
    """Greedy by size; when that leaves the arena above the lower bound, the same greedy
    with equal-size buffers in other orders (a seeded shuffle, so builds stay reproducible;
    fewer tries on larger graphs), keeping the smallest arena. Equal sizes are where the
    order matters: which of two same-size buffers takes the lower offset decides whether a
    small buffer fits beside them (the FC autoencoder's 32-byte bottleneck: 1,056 -> 1,024)."""
    order = sorted(buffers, key=lambda b: (-b.size, b.start))
    best = _place_in_order(order, alignment)
    offsets = [b.offset for b in buffers]
    rng = random.Random(0)
    for _ in range(min(64, 4000 // max(len(buffers), 1))):
        if best <= _align(lower, alignment):
            break
        ties = {id(b): rng.random() for b in buffers}
        size = _place_in_order(sorted(buffers, key=lambda b: (-b.size, ties[id(b)])), alignment)
        if size < best:
            best, offsets = size, [b.offset for b in buffers]
    for b, o in zip(buffers, offsets):
        b.offset = o


def _place_in_order(order: list[Buffer], alignment: int) -> int:
    """First fit in this order: each buffer at the lowest offset clear of those alive with
    it. Returns the arena's end."""
    placed: list[Buffer] = []
    for buf in order:
        conflicts = sorted((p for p in placed if p.start <= buf.end and buf.start <= p.end),
                           key=lambda p: p.offset)
        offset = 0
        for p in conflicts:
            if offset + buf.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size, alignment))
        buf.offset = offset
        placed.append(buf)
    return max((b.offset + b.size for b in order), default=0)


def address_limit(index_bits: int) -> int:
    """The largest object a target with this pointer width can hold: PTRDIFF_MAX (offsets
    and index arithmetic in the generated code are signed, pointer-wide)."""
    return (1 << (index_bits - 1)) - 1


def check_sizes(g: Graph, index_bits: int, plan: MemoryPlan | None = None):
    """Refuse (BudgetError) a tensor, or the arena, larger than the target can address,
    before any code is generated: sizes are exact Python integers, so nothing has wrapped."""
    limit = address_limit(index_bits)
    where = f"the {index_bits}-bit target's limit of {limit:,} bytes per object"
    seen, big = set(), []
    values = [*g.inputs, *g.outputs, *g.constants()] + [o for n in g.nodes for o in n.outputs]
    for v in values:
        if id(v) not in seen and v.type is not None and v.type.nbytes > limit:
            seen.add(id(v))
            big.append(f"tensor '{v.name}' {v.type} is {v.type.nbytes:,} bytes")
    if big:
        more = f" (and {len(big) - 3} more)" if len(big) > 3 else ""
        raise BudgetError(f"{'; '.join(big[:3])}{more}: over {where}")
    if plan is not None and plan.arena_size > limit:
        raise BudgetError(f"the arena needs {plan.arena_size:,} bytes: over {where}")
