"""The C contract of a build, in one place: the entry symbols, their prototypes and the
header macro names. Both backends, the header writer, the stack report and the harness
spell them from here.

    int <name>_run(const void *const *inputs, void *const *outputs, void *arena);
"""
from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # a C identifier short enough for every linker
RUN_PARAMS = "const void *const *inputs, void *const *outputs, void *arena"
RUN_RETURNS = "int"


def run_symbol(name: str) -> str:
    """The exported inference entry point."""
    return f"{name}_run"


def run_prototype(name: str) -> str:
    return f"{RUN_RETURNS} {run_symbol(name)}({RUN_PARAMS})"


def entry_symbols(name: str) -> list[str]:
    """Every exported function of the contract (the stack report covers each)."""
    return [run_symbol(name)]


def macro_prefix(name: str) -> str:
    return name.upper()


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def symbol(text: str) -> str:
    """Any text (an op or node name) as the tail of a C/ELF identifier."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)
