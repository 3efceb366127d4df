"""Static memory planning: every intermediate tensor gets a fixed offset in one arena.

Views (Reshape & co.) share their input's buffer; elementwise ops may write over an
input that dies at that node. An op may ask for scratch buffers
of its own (Op.workspace): each is a buffer alive only during its node, so the workspaces
of different nodes may share bytes. Buffers are then placed greedily, largest first, at the
lowest offset that does not overlap a buffer alive at the same time (the "greedy by
size" strategy of TFLite Micro's planner). The lower bound reported beside the arena
size is the largest total of buffers alive at one step: no planner can do better.
"""
from __future__ import annotations

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

    def of(self, v: Value) -> Storage:
        return self.storage[id(v)]

    def workspace_of(self, node) -> list:
        """The node's scratch buffers in the arena, in the order its op's workspace() lists them."""
        return self.workspaces.get(id(node), [])


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def plan_memory(g: Graph, alignment: int) -> MemoryPlan:
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
            elif op.inplace and _can_overwrite(node, src, root, out, t):
                src.values.append(out)
                src.end = max(src.end, last_use.get(id(out), t))
                root[id(out)] = src
            else:
                buf = Buffer(out.type.nbytes, t, last_use.get(id(out), t), values=[out])
                buffers.append(buf)
                root[id(out)] = buf

    _place(buffers, alignment)
    storage = {}
    for key, r in root.items():
        storage[key] = Storage("arena", r.offset) if isinstance(r, Buffer) else r
    arena = _align(max((b.offset + b.size for b in buffers), default=0), alignment)
    steps = max((b.end for b in buffers), default=-1) + 1
    lower = max((sum(b.size for b in buffers if b.start <= t <= b.end) for t in range(steps)), default=0)
    workspaces = {key: [Storage("arena", b.offset) for b in bufs] for key, bufs in scratch.items() if bufs}
    return MemoryPlan(storage, arena, alignment, lower, buffers, workspaces)


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


def _place(buffers: list[Buffer], alignment: int):
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.size, b.start)):
        conflicts = sorted((p for p in placed if p.start <= buf.end and buf.start <= p.end),
                           key=lambda p: p.offset)
        offset = 0
        for p in conflicts:
            if offset + buf.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size, alignment))
        buf.offset = offset
        placed.append(buf)


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
