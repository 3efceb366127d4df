"""Worst-case stack of each exported entry point.

Frame sizes come from the code generator itself: every function carries LLVM's
"warn-stack-size"="0", so the backend reports each function's final frame size
(MachineFrameInfo, after register allocation and spilling) while it emits the very
object that ships; codegen.compile collects those reports. (Reading .eh_frame instead
would need unwind tables in the object, which change the code and cost flash.)
Calls come from the optimized LLVM IR, which code generation does not add to or take
from. The worst case of an entry is its frame plus the worst case among its callees,
plus the return address where the ISA's call instruction pushes one (a profile
figure). Generated code has no recursion; a cycle is an error, not a guess.
"""
from __future__ import annotations

import re

from ..errors import CompileError

FRAME_REPORT = re.compile(r"stack frame size \((\d+)\) exceeds limit \(\d+\) in function '([^']+)'")


def parse_frame_reports(text: str) -> dict[str, int]:
    """LLVM's (or clang's -Wframe-larger-than=0) diagnostics -> {function: frame bytes}."""
    return {fn: int(n) for n, fn in FRAME_REPORT.findall(text)}


def call_graph(llvm_ir: str) -> dict[str, set]:
    """{function: callees} from LLVM IR text (direct calls; intrinsics excluded)."""
    graph, current = {}, None
    for line in llvm_ir.splitlines():
        m = re.match(r"define [^@]*@\"?([\w.$]+)\"?\(", line)
        if m:
            current = graph.setdefault(m.group(1), set())
        elif line.startswith("}"):
            current = None
        elif current is not None:
            for callee in re.findall(r"\bcall [^@]*@\"?([\w.$]+)\"?\(", line):
                if not callee.startswith("llvm."):
                    current.add(callee)
    return graph


def stack_usage(frames: dict[str, int], graph: dict[str, set], entries: list[str],
                return_address_bytes: int = 0) -> dict[str, int]:
    """{entry: worst-case bytes}. A function absent from `frames` has an empty frame
    (LLVM reports only frames above zero)."""
    memo: dict[str, int] = {}

    def worst(name, path=()):
        if name in path:
            raise CompileError(f"recursion through {' -> '.join(path + (name,))}: stack is unbounded")
        if name not in memo:
            if name not in graph:
                raise CompileError(f"stack analysis: '{name}' is not defined in the generated code")
            own = frames.get(name, 0) + return_address_bytes
            memo[name] = own + max((worst(c, path + (name,)) for c in graph[name]), default=0)
        return memo[name]

    return {e: worst(e) for e in entries}
