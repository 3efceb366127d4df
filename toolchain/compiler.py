"""The build driver: ONNX file -> checked object, library, header and manifest."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import onnx

from . import __version__
from .codegen.compile import compile_ir
from .codegen.module import build_module, module_text
from .emit import ar_archive, c_header, manifest_json, write_atomically
from .errors import CompileError
from .frontend.onnx_import import import_model, load_model
from .inspect.elf import ObjectInfo, check_self_contained, read_object
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
    module = build_module(g, plan, name, profile.triple)
    obj, optimized = compile_ir(module_text(module), profile)
    info = read_object(obj)
    check_self_contained(info, profile, name)
    return Compiled(g, plan, obj, info, optimized)


def compile_onnx(model: onnx.ModelProto, target: str, name: str = "model", dims=None,
                 dump: TextIO | None = None) -> Compiled:
    check_name(name)
    profile = get_profile(target)
    return compile_graph(import_model(model, name, dims), profile, name, dump)


def build(model_path: str | Path | None, target: str, name: str = "model", out: str | Path | None = None,
          dims: dict[str, int] | None = None, dump: TextIO | None = None) -> BuildResult:
    check_name(name)
    profile = get_profile(target)
    model_path = Path(model_path) if model_path else DEFAULT_MODEL
    out = Path(out) if out else PROJECT_ROOT / "build" / target
    model = load_model(model_path)
    compiled = compile_graph(import_model(model, name, dims), profile, name, dump)
    options = {"target": target, "name": name, "dims": dims or {}, "compiler": __version__}
    manifest = make_manifest(compiled, profile, name, model_path, options)
    files = {
        out / f"{name}.o": compiled.object,
        out / f"lib{name}.a": ar_archive([(f"{name[:13]}.o", compiled.object,
                                            [s.name for s in compiled.info.symbols
                                             if s.binding == "STB_GLOBAL"])]),
        out / f"{name}.h": c_header(name, manifest).encode(),
        out / f"{name}.json": manifest_json(manifest),
    }
    write_atomically(files)
    kinds = ["object", "library", "header", "manifest"]
    return BuildResult(dict(zip(kinds, files)), manifest, compiled)


def _tensor_info(v):
    return {"name": v.name, "dtype": v.type.dtype, "shape": list(v.type.shape),
            "elems": v.type.size, "bytes": v.type.nbytes}


def _file_hash(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    return h.hexdigest()


def make_manifest(c: Compiled, profile: Profile, name: str, model_path: Path, options: dict) -> dict:
    g = c.graph
    weight_bytes = sum(v.type.nbytes for v in g.constants())
    code_bytes = c.info.section_total(".text")
    return {
        "name": name,
        "model": model_path.name,
        "target": {"name": profile.name, "triple": profile.triple, "cpu": profile.cpu,
                   "features": profile.features},
        "inputs": [_tensor_info(v) for v in g.inputs],
        "outputs": [_tensor_info(v) for v in g.outputs],
        "arena": {"size": c.plan.arena_size, "align": c.plan.alignment, "lower_bound": c.plan.lower_bound},
        "code_bytes": code_bytes,
        "weight_bytes": weight_bytes,
        "rodata_bytes": c.info.section_total(".rodata"),
        "ops": g.op_counts(),
        "macs": sum(registry.get(n.op).macs(n) for n in g.nodes),
        "hashes": {
            "model_sha256": _file_hash(model_path),
            "graph_sha256": g.fingerprint(),
            "options_sha256": hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest(),
        },
        "compiler": {"name": "edgec", "version": __version__},
    }
