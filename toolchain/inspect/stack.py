"""Worst-case stack of each exported entry point.

Frame sizes come from the code generator itself: every function carries LLVM's
"warn-stack-size"="0", so the backend reports each function's final frame size
(MachineFrameInfo, after register allocation and spilling) while it emits the very
object that ships; the backend collects those reports, and its call graph. (Reading
.eh_frame instead would need unwind tables in the object, which change the code and
cost flash.) The worst case of an entry is its frame plus the worst case among its callees,
plus the return address where the ISA's call instruction pushes one (a profile
figure). Generated code has no recursion; a cycle is an error, not a guess.
"""
from __future__ import annotations

from ..errors import InternalError


def stack_usage(frames: dict[str, int], graph: dict[str, set], entries: list[str],
                return_address_bytes: int = 0) -> dict[str, int]:
    """{entry: worst-case bytes}. A function absent from `frames` has an empty frame
    (LLVM reports only frames above zero)."""
    memo: dict[str, int] = {}

    def worst(name, path=()):
        if name in path:
            raise InternalError(f"recursion through {' -> '.join(path + (name,))}: stack is unbounded")
        if name not in memo:
            if name not in graph:
                raise InternalError(f"stack analysis: '{name}' is not defined in the generated code")
            own = frames.get(name, 0) + return_address_bytes
            memo[name] = own + max((worst(c, path + (name,)) for c in graph[name]), default=0)
        return memo[name]

    return {e: worst(e) for e in entries}
