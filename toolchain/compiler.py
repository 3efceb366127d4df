"""The build driver: ONNX file -> checked object, library, header and manifest."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import onnx

from . import __version__
from .codegen.compile import compile_ir
from .codegen.module import build_module, module_text
from .emit import ar_archive, build_id, c_header, manifest_json, replace_outputs
from .errors import CompileError
from .frontend.onnx_import import import_model, load_model
from .inspect.elf import ObjectInfo, check_self_contained, read_object
from .inspect.size import check_budgets, totals
from .inspect.stack import call_graph, stack_usage
from .integration import cmake_file, make_fragment
from .ir import Graph
from .memory import MemoryPlan, plan_memory
from .ops import registry
from .passes import run_pipeline
from .targets import Profile, get_profile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PROJECT_ROOT / "models" / "kws_dscnn.onnx"


@dataclass
class Compiled:
    graph: Graph
    plan: MemoryPlan
    object: bytes
    info: ObjectInfo
    llvm_ir: str
    stack: dict = None  # entry symbol -> worst-case stack bytes (None: not known)
    c_source: str = ""  # the C path's <name>.c (emit="c"); its object is the check build


@dataclass
class BuildResult:
    paths: dict  # kind -> Path
    manifest: dict
    compiled: Compiled


def check_name(name: str):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise CompileError(f"--name '{name}' must be a C identifier (letters, digits, _; at most 63)")


def compile_graph(g: Graph, profile: Profile, name: str, dump: TextIO | None = None) -> Compiled:
    """Passes, memory plan, LLVM, object, self-containment check. Nothing touches disk."""
    run_pipeline(g, dump=dump)
    plan = plan_memory(g, profile.arena_align)
    module = build_module(g, plan, name, profile.triple, profile.vector_unit)
    obj, optimized, frames = compile_ir(module_text(module), profile)
    info = read_object(obj)
    check_self_contained(info, profile, name)
    stack = stack_usage(frames, call_graph(optimized), [f"{name}_run"], profile.return_address_bytes)
    return Compiled(g, plan, obj, info, optimized, stack)


def compile_graph_c(g: Graph, profile: Profile, name: str, dump: TextIO | None = None) -> Compiled:
    """Passes, memory plan, portable C; the C is compiled once for the profile with the strict
    flags, and that object gets the same self-containment check as the LLVM path's."""
    from .codegen.c_module import c_source, compile_c

    run_pipeline(g, dump=dump)
    plan = plan_memory(g, profile.arena_align)
    source = c_source(g, plan, name, profile.name)
    frames: dict = {}
    obj = compile_c(source, profile, frames=frames)
    info = read_object(obj)
    check_self_contained(info, profile, name)
    # <name>_run calls each node's function, which call nothing (helpers are inline)
    entry = f"{name}_run"
    graph = {s.name: set() for s in info.symbols if s.kind == "STT_FUNC"}
    graph[entry] = set(graph) - {entry}
    stack = stack_usage(frames, graph, [entry], profile.return_address_bytes)
    return Compiled(g, plan, obj, info, llvm_ir="", stack=stack, c_source=source)


def compile_onnx(model: onnx.ModelProto, target: str, name: str = "model", dims=None,
                 dump: TextIO | None = None) -> Compiled:
    check_name(name)
    profile = get_profile(target)
    return compile_graph(import_model(model, name, dims), profile, name, dump)


def build(model_path: str | Path | None, target: str, name: str = "model", out: str | Path | None = None,
          dims: dict[str, int] | None = None, dump: TextIO | None = None, emit: str = "object",
          budgets: dict | None = None) -> BuildResult:
    """emit="object": <name>.o and lib<name>.a (LLVM); emit="c": <name>.c (portable C99).
    Both also write <name>.h, <name>.json and the CMake/Make fragments.
    budgets: {"flash_bytes": n, "ram_bytes": n} over the target profile's own; a build over
    budget fails and writes nothing. The output directory is checked before compiling, and
    the files of the build replace the previous ones of the same name as one set."""
    check_name(name)
    if emit not in ("object", "c"):
        raise CompileError(f"--emit must be 'object' or 'c', got '{emit}'")
    profile = get_profile(target)
    model_path = Path(model_path) if model_path else DEFAULT_MODEL
    out = Path(out) if out else PROJECT_ROOT / "build" / target
    check_out_dir(out, owned_files(name))
    model = load_model(model_path)
    utf8_names(model)
    compile_fn = compile_graph_c if emit == "c" else compile_graph
    compiled = compile_fn(import_model(model, name, dims), profile, name, dump)
    options = {"target": target, "name": name, "dims": dims or {}, "compiler": __version__}
    if emit == "c":
        options["emit"] = "c"
    manifest = make_manifest(compiled, profile, name, model_path, options)
    manifest["build_id"] = build_id(manifest)
    check_budgets({**manifest, "arena_bytes": manifest["arena"]["size"],
                   "symbols": compiled.info.by_size()},
                  {**profile.budgets, **{k: v for k, v in (budgets or {}).items() if v is not None}})
    if emit == "c":
        kinds = {"source": (f"{name}.c", compiled.c_source.encode())}
    else:
        library = ar_archive([(f"{name[:13]}.o", compiled.object,
                               [s.name for s in compiled.info.symbols if s.binding == "STB_GLOBAL"])])
        kinds = {"object": (f"{name}.o", compiled.object), "library": (f"lib{name}.a", library)}
    kinds.update({
        "header": (f"{name}.h", c_header(name, manifest).encode()),
        "manifest": (f"{name}.json", manifest_json(manifest)),
        "cmake": (f"{name}.cmake", cmake_file(name, emit).encode()),
        "make": (f"{name}.mk", make_fragment(name, emit).encode()),
    })
    try:
        replace_outputs(out, name, dict(kinds.values()), owned_files(name))
    except OSError as e:
        raise CompileError(f"cannot write the build to '{out}': {e.strerror or e}") from None
    return BuildResult({kind: out / f for kind, (f, _) in kinds.items()}, manifest, compiled)


def owned_files(name: str) -> set[str]:
    """Every file a build of this name writes with either --emit (the other kind's are
    removed when the kind changes)."""
    return {f"{name}.o", f"lib{name}.a", f"{name}.c", f"{name}.h", f"{name}.json", f"{name}.cmake",
            f"{name}.mk"}


def check_out_dir(out: Path, owned=()):
    """Fail before compiling when the output directory cannot take the build: a file where
    it or one of its parents should be, a directory where an artifact should be, or no
    permission (probed by creating and removing a temporary directory, which also catches
    read-only file systems and /proc for root)."""
    probe = out
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is not a directory" if probe == out else f"cannot be created: '{probe}' is not a directory"
        raise CompileError(f"--out '{out}' {what}")
    if probe == out:
        for f in sorted(owned):
            if (out / f).is_dir() and not (out / f).is_symlink():
                raise CompileError(f"--out '{out}': '{f}' is a directory, where the build writes a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgec-probe-", dir=probe))
    except OSError as e:
        raise CompileError(f"--out '{out}' is not writable: {e.strerror or e}") from None


def utf8_names(msg) -> None:
    """ONNX string fields must be UTF-8; protobuf hands back bytes where they are not. Decode
    them, invalid bytes as \\xNN (so messages and the manifest stay text), in place, in every
    (sub)message of the model; fail if that makes one name equal to another."""
    from google.protobuf.descriptor import FieldDescriptor

    fixed: dict[str, bytes] = {}
    seen: set[str] = set()

    def repeated(field) -> bool:  # protobuf >= 6 dropped .label for .is_repeated
        if hasattr(field, "is_repeated"):
            return field.is_repeated
        return field.label == FieldDescriptor.LABEL_REPEATED

    def walk(m):
        for field, value in m.ListFields():
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if repeated(field):
                    if field.message_type.GetOptions().map_entry:
                        continue
                    for sub in value:
                        walk(sub)
                else:
                    walk(value)
            elif field.type == FieldDescriptor.TYPE_STRING:
                if repeated(field):
                    for i, v in enumerate(value):
                        if isinstance(v, bytes):
                            value[i] = text(v)
                        else:
                            seen.add(v)
                elif isinstance(value, bytes):
                    setattr(m, field.name, text(value))
                else:
                    seen.add(value)

    def text(raw: bytes) -> str:
        t = raw.decode("utf-8", "backslashreplace")
        if fixed.setdefault(t, raw) != raw:
            raise CompileError(f"two names decode to the same text '{t}' (invalid UTF-8 in the model)")
        return t

    walk(msg)
    clash = seen & set(fixed)
    if clash:
        raise CompileError(f"name '{min(clash)}' is also the text of an invalid UTF-8 name in the model")


def _tensor_info(v):
    return {"name": v.name, "dtype": v.type.dtype, "shape": list(v.type.shape),
            "elems": v.type.size, "bytes": v.type.nbytes}


def _file_hash(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    return h.hexdigest()


def make_manifest(c: Compiled, profile: Profile, name: str, model_path: Path, options: dict) -> dict:
    g = c.graph
    weight_bytes = sum(v.type.nbytes for v in g.constants())
    t = totals(c.info.sections)
    stack = c.stack or {}
    return {
        "name": name,
        "model": model_path.name,
        "target": {"name": profile.name, "triple": profile.triple, "cpu": profile.cpu,
                   "features": profile.features},
        "inputs": [_tensor_info(v) for v in g.inputs],
        "outputs": [_tensor_info(v) for v in g.outputs],
        "arena": {"size": c.plan.arena_size, "align": c.plan.alignment, "lower_bound": c.plan.lower_bound},
        "code_bytes": t["text"],
        "weight_bytes": weight_bytes,
        "rodata_bytes": t["rodata"],
        "stack_bytes": stack,
        "flash_bytes": t["text"] + t["rodata"] + t["data"],
        "ram_bytes": t["data"] + t["bss"] + c.plan.arena_size + max(stack.values(), default=0),
        "ops": g.op_counts(),
        "macs": sum(registry.get(n.op).macs(n) for n in g.nodes),
        "hashes": {
            "model_sha256": _file_hash(model_path),
            "graph_sha256": g.fingerprint(),
            "options_sha256": hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest(),
        },
        "compiler": {"name": "edgec", "version": __version__},
    }
