"""The C path's library: a build's <name>.c compiled and archived as lib<name>.a, the
twin of the object path's library, for the test harness and the firmware."""
from __future__ import annotations

from pathlib import Path

from ..backends.c import compile_c
from ..emit import ar_archive
from ..inspect.elf import read_object


def build_c_library(build_dir, name: str, profile, cc: list[str] | None = None, flags=()) -> "Path":
    """<build_dir>/<name>.c -> lib<name>.a beside it (the C path's twin of the object
    path's library, e.g. for the test harness and the firmware)."""
    build_dir = Path(build_dir)
    obj = compile_c((build_dir / f"{name}.c").read_text(), profile, cc, flags)
    syms = [s.name for s in read_object(obj).symbols if s.binding == "STB_GLOBAL"]
    lib = build_dir / f"lib{name}.a"
    lib.write_bytes(ar_archive([(f"{name[:13]}.o", obj, syms)]))
    return lib
