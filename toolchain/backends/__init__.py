"""Backends: graph + memory plan -> a relocatable object for a target, behind one
interface. `llvm` (the object path: LLVM IR through llvmlite) and `c` (portable C99,
compiled for the check with zig cc). Both hand each node to its op's lowering with the
same operand views (lower_node), so an op lowers the same way into both; each declares
the vector unit its schedules are chosen for.

Adding a backend: a module here with a class like LLVMBackend, and a line in BACKENDS.
"""
from __future__ import annotations

from ..errors import InvalidModelError
from .c import CBackend
from .common import Generated, lower_node
from .llvm import LLVMBackend

BACKENDS = {"object": LLVMBackend(), "c": CBackend()}


def get_backend(emit: str):
    """The backend for an --emit kind."""
    if emit not in BACKENDS:
        raise InvalidModelError(f"--emit must be one of {', '.join(BACKENDS)}, got '{emit}'")
    return BACKENDS[emit]


__all__ = ["BACKENDS", "Generated", "get_backend", "lower_node"]
