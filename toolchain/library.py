"""Several models in one library: `edgec build --model kws.onnx:kws --model ad.onnx:ad
--name models`.

Each model goes through the front end, the passes and the memory planner as in a single
build, under its own symbol prefix; their LLVM modules are linked into one module and
compiled once, so the library is one object (and one archive) exporting `kws_run` and
`ad_run`. Every model keeps its own header (`kws.h`, `ad.h`: the macros of a single
build); `<name>.h` includes them and adds `<NAME>_SHARED_ARENA_SIZE`/`_ALIGN`, an arena
large enough for any one of them, for firmware that runs them one after the other from
one buffer. `<name>.json` holds each model's manifest and the library's totals.
"""
from __future__ import annotations

from pathlib import Path

from llvmlite import binding as llvm

from .backends.llvm import build_module
from .backends.llvm_object import call_graph, compile_ir, dynamic_allocas, module_text
from .compiler import _library, check_name, make_manifest, Compiled
from .contract import c_comment_text, macro_prefix, run_symbol
from .emit import build_id, c_header, check_out_dir, manifest_json, replace_outputs
from .errors import InternalError, InvalidModelError
from .frontend.batching import import_batched
from .frontend.onnx_import import load_model
from .inspect.elf import check_self_contained, read_object
from .inspect.size import check_budgets, totals
from .inspect.stack import stack_usage
from .integration import cmake_file, make_fragment
from .memory import buffer_alignment, plan_memory
from .passes import run_pipeline
from .targets import get_profile
from .version import __version__


def parse_model_specs(specs: list[str]) -> list[tuple[Path, str]]:
    """["kws.onnx:kws", ...] -> [(path, name)]; the name after the last ':'."""
    out = []
    for spec in specs:
        path, sep, name = spec.rpartition(":")
        if not sep or not path or not name:
            raise InvalidModelError(f"--model '{spec}': with several models each is FILE:NAME")
        check_name(name)
        out.append((Path(path), name))
    names = [n for _, n in out]
    if len(set(names)) != len(names):
        raise InvalidModelError(f"model names must differ, got {names}")
    return out


def owned_files(name: str, names: list[str]) -> set[str]:
    return {f"{name}.o", f"lib{name}.a", f"{name}.h", f"{name}.json", f"{name}.cmake", f"{name}.mk",
            *(f"{n}.h" for n in names)}


def build_library(models: list[tuple[Path, str]], target: str, name: str, out=None, budgets=None) -> dict:
    """Builds the library; returns {"paths": {file: Path}, "manifest": dict}."""
    check_name(name)
    names = [n for _, n in models]
    if name in names:
        raise InvalidModelError(f"--name '{name}' must differ from the model names {names} (its header "
                                "includes theirs)")
    profile = get_profile(target)
    out = Path(out) if out else Path(__file__).resolve().parent.parent / "build" / target
    check_out_dir(out, owned_files(name, names))
    parts = []
    for path, mname in models:
        g = import_batched(load_model(path), mname, None)
        run_pipeline(g, vector=profile.vector_unit)
        parts.append((path, mname, g, plan_memory(g, profile.arena_align,
                                                   buffer_alignment(4 * profile.vector_unit.lanes))))
    obj, optimized, frames = compile_ir(_linked_text(parts, profile), profile)
    for fn in dynamic_allocas(optimized):
        raise InternalError(f"function '{fn}' allocates stack of a run-time size")
    info = read_object(obj)
    check_self_contained(info, profile, tuple(names))
    stack = stack_usage(frames, call_graph(optimized), [run_symbol(n) for n in names], profile.return_address_bytes)
    manifests = {}
    for path, mname, g, plan in parts:
        c = Compiled(g, plan, obj, info, "", {run_symbol(mname): stack[run_symbol(mname)]})
        m = make_manifest(c, profile, mname, path, {"target": target, "name": mname, "library": name,
                                                    "compiler": __version__})
        for key in ("code_bytes", "rodata_bytes", "flash_bytes", "ram_bytes"):
            m.pop(key)  # the library's, below
        m["build_id"] = build_id(m)
        manifests[mname] = m
    t = totals(info.sections)
    arena_align = max(m["arena"]["align"] for m in manifests.values())
    shared = max(max(m["arena"]["size"] for m in manifests.values()), arena_align)
    manifest = {
        "name": name, "target": next(iter(manifests.values()))["target"], "models": manifests,
        "shared_arena": {"size": shared, "align": arena_align},
        "code_bytes": t["text"], "rodata_bytes": t["rodata"], "stack_bytes": stack,
        "flash_bytes": t["text"] + t["rodata"] + t["data"],
        "ram_bytes": t["data"] + t["bss"] + shared + max(stack.values()),
        "compiler": {"name": "edgec", "version": __version__},
        "hashes": {n: m["hashes"] for n, m in manifests.items()},
    }
    check_budgets({**manifest, "arena_bytes": shared, "symbols": info.by_size()},
                  {**profile.budgets, **{k: v for k, v in (budgets or {}).items() if v is not None}})
    files = {f"{name}.o": obj, f"lib{name}.a": _library(Compiled(None, None, obj, info, ""), name),
             f"{name}.h": _library_header(name, manifest).encode(), f"{name}.json": manifest_json(manifest),
             f"{name}.cmake": cmake_file(name, "object").encode(), f"{name}.mk": make_fragment(name, "object").encode(),
             **{f"{n}.h": c_header(n, m).encode() for n, m in manifests.items()}}
    try:
        replace_outputs(out, name, files, owned_files(name, names))
    except OSError as e:
        raise InvalidModelError(f"cannot write the build to '{out}': {e.strerror or e}") from None
    return {"paths": {f: out / f for f in files}, "manifest": manifest}


def _linked_text(parts, profile) -> str:
    """The models' modules linked into one (symbols are prefixed by model name, so nothing
    clashes)."""
    modules = [llvm.parse_assembly(module_text(build_module(g, plan, mname, profile)))
               for _, mname, g, plan in parts]
    first = modules[0]
    for m in modules[1:]:
        first.link_in(m)
    return str(first)


def _library_header(name: str, manifest: dict) -> str:
    up = macro_prefix(name)
    guard = f"{up}_H_"
    models = manifest["models"]
    lines = [f"/* {name}.h: generated by edgec {c_comment_text(__version__)}: the library of models "
             f"{', '.join(models)} for target {c_comment_text(manifest['target']['name'])}. Do not edit. */",
             f"#ifndef {guard}", f"#define {guard}", ""]
    lines += [f'#include "{n}.h"' for n in models]
    lines += ["", "/* An arena for any one of the models: run them one after the other from one buffer. */",
              f"#define {up}_SHARED_ARENA_SIZE  {manifest['shared_arena']['size']}u",
              f"#define {up}_SHARED_ARENA_ALIGN {manifest['shared_arena']['align']}u",
              f"#define {up}_NUM_MODELS         {len(models)}", "", f"#endif /* {guard} */", ""]
    return "\n".join(lines)
