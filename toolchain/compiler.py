"""The build driver: ONNX file -> checked object, library, header and manifest."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import onnx

from .backends import get_backend
from .cache import BuildHook
from .contract import (entry_symbols, fnv1a64, is_valid_name, node_symbols, task_symbol, weights_section,
                       weights_section_problem)
from .emit import ar_archive, build_id, c_header, check_out_dir, manifest_json, owned_files, replace_outputs
from .errors import InternalError, InvalidModelError, UnsupportedError
from .frontend.batching import import_batched
from .frontend.binding import bind_inputs, key_of, manifest_entries, resolve
from .frontend.onnx_import import load_model
from .inspect.elf import ObjectInfo, check_self_contained, read_object
from .inspect.size import check_budgets, totals
from .inspect.stack import stack_usage
from .integration import cmake_file, make_fragment
from .ir import Graph
from .frontend.onnx_import import import_model
from .memory import MemoryPlan, buffer_alignment, check_sizes, plan_memory
from .ops import registry
from .passes import run_pipeline
from .passes.parallel import choose_splits, pieces
from .passes.autodiff import bind_params, check_grad_options, recompute_residuals, residual_layout, reverse
from .passes.forward import forward
from .passes.train import check_optimizer, init_graph, param_layout, run_graph, select_trainable, train_graph
from .memory import Storage
from .targets import Profile, get_profile
from .version import __version__

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
    emit: str = "object"
    files: dict = None  # extra artifacts by kind (the external weights' blob)
    grad: dict = None  # a reverse-mode build: program, plan per graph, residual offsets and size
    jvp: dict = None  # a forward-mode build: {"program": passes.forward.JvpProgram}
    train: dict = None  # a training build: program, plans, parameter offsets and buffer size
    parallel: dict = None  # a parallel build: {"tasks", "splits" (passes.parallel.Split), "task_stack_bytes"}


@dataclass
class BuildResult:
    paths: dict  # kind -> Path
    manifest: dict
    compiled: Compiled | None  # None when the artifacts came from the compile cache


def check_name(name: str):
    if not is_valid_name(name):
        raise InvalidModelError(f"--name '{name}' must be a C identifier (letters, digits, _; at most 63)")


def check_weights_section(section: str | None, name: str, weights: str = "internal") -> str | None:
    """The --weights-section of a build, checked: None for the default section
    (.rodata.<name>.weights, also when given by that name: the same build)."""
    if section is None:
        return None
    problem = weights_section_problem(section)
    if problem is not None:
        raise InvalidModelError(f"--weights-section {section!r} {problem}")
    if weights != "internal":
        raise InvalidModelError("--weights-section names the object's section for the weights; --weights external "
                                "keeps them out of the object (choose one)")
    return None if section == weights_section(name) else section


def compile_graph(g: Graph, profile: Profile, name: str, dump: TextIO | None = None,
                  emit: str = "object", weights: str = "internal", separate_nodes: bool = False,
                  node_lines: bool = False, identity=None, weights_section: str | None = None,
                  parallel: int = 0) -> Compiled:
    """Passes (schedules chosen for the backend's vector unit), memory plan, the backend's
    object, self-containment check, worst-case stack. Nothing touches disk.
    separate_nodes, node_lines (object path only): the profiling builds of toolchain.profile
    (every node in a function of its own, never inlined; or the shipped code with a line
    table naming each instruction's node); never used for a shipped build.
    identity(graph) -> build id, once the passes have run: exported as <name>_build_id.
    weights_section: the ELF section of the weights (check_weights_section; None: default).
    parallel: N >= 2 for a parallel build (<name>_run_parallel; nodes worth it cut into up to
    N pieces, passes/parallel.py); 0 for none."""
    backend = get_backend(emit)
    if (separate_nodes or node_lines) and backend.name != "object":
        raise InvalidModelError(f"profiling builds need the object backend, not '{emit}'")
    if weights not in WEIGHT_PLACEMENTS:
        raise InvalidModelError(f"--weights must be one of {', '.join(WEIGHT_PLACEMENTS)}, got '{weights}'")
    weights_section = check_weights_section(weights_section, name, weights)
    check_sizes(g, profile.index_bits)  # before any pass folds or tiles a tensor it cannot hold
    vector = backend.vector_unit(profile)
    run_pipeline(g, dump=dump, vector=vector)
    plan = plan_memory(g, profile.arena_align, buffer_alignment(4 * vector.lanes))
    check_sizes(g, profile.index_bits, plan)
    options = {k: True for k, v in (("separate_nodes", separate_nodes), ("node_lines", node_lines)) if v}
    if identity is not None:
        options["build_id"] = identity(g)
    if weights_section is not None:
        options["weights_section"] = weights_section
    splits = []
    if parallel:
        check_parallel(parallel, weights, g.batch is not None, separate_nodes or node_lines)
        splits = choose_splits(g.nodes, parallel, vector, plan.elided)
        by_name = {n.name: n for n in g.nodes}
        options["parallel"] = {id(by_name[s.node]): pieces(by_name[s.node], s, vector) for s in splits}
    out = backend.generate(g, plan, name, profile, weights=weights, **options)
    info = read_object(out.object)
    check_float64(g, profile, info)
    check_self_contained(info, profile, name)
    entries = entry_symbols(name, g.batch is not None, external=weights == "external", parallel=bool(parallel))
    stack = stack_usage(out.frames, out.calls, entries, profile.return_address_bytes)
    c = Compiled(g, plan, out.object, info, out.llvm_ir, stack, out.c_source, emit, dict(out.files))
    if parallel:
        tasks = [task_symbol(sym) for sym, n in zip(node_symbols(name, g.nodes), g.nodes) if n.name in
                 {s.node for s in splits}]
        task_stack = stack_usage(out.frames, out.calls, tasks, profile.return_address_bytes)
        c.parallel = {"tasks": parallel, "splits": splits, "task_stack_bytes": max(task_stack.values(), default=0)}
    return c


def check_parallel(tasks, weights: str, bounded: bool, profiling: bool):
    """--parallel N: N >= 2 (the object path or the C path), with internal weights and static shapes."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 2:
        raise InvalidModelError(f"--parallel takes the most pieces a node is cut into, 2 or more; got {tasks!r}")
    if tasks > MAX_PARALLEL_TASKS:
        raise InvalidModelError(f"--parallel {tasks} is above {MAX_PARALLEL_TASKS} pieces per node")
    for problem, bad in (("--weights external", weights != "internal"),
                         ("a bounded dimension (--dim N<=M)", bounded), ("a profiling build", profiling)):
        if bad:
            raise InvalidModelError(f"--parallel is not supported with {problem} yet")


MAX_PARALLEL_TASKS = 64


WEIGHT_PLACEMENTS = ("internal", "external")


def _section(weights_section: str | None) -> dict:
    """The backend's keyword for a --weights-section (none for the default: the same call)."""
    return {"weights_section": weights_section} if weights_section is not None else {}


GRAD_MODES = ("reverse", "forward")


def compile_jvp_graph(g: Graph, profile: Profile, name: str, dump: TextIO | None = None,
                      emit: str = "object", weights_section: str | None = None) -> Compiled:
    """Forward mode: the JVP graph (passes.forward: outputs and their tangents from inputs and
    theirs, the weights read-only), the pipeline and the planner on it as on an inference
    graph, and <name>_jvp around it."""
    backend = get_backend(emit)
    check_sizes(g, profile.index_bits)
    prog = forward(g)
    vector = backend.vector_unit(profile)
    run_pipeline(prog.graph, dump=dump, vector=vector)
    plan = plan_memory(prog.graph, profile.arena_align, buffer_alignment(4 * vector.lanes))
    check_sizes(prog.graph, profile.index_bits, plan)
    out = backend.generate_jvp(prog, plan, name, profile, **_section(weights_section))
    info = read_object(out.object)
    check_self_contained(info, profile, name)
    stack = stack_usage(out.frames, out.calls, entry_symbols(name, grad="forward"), profile.return_address_bytes)
    return Compiled(prog.graph, plan, out.object, info, out.llvm_ir, stack, out.c_source, emit, jvp={"program": prog})


def compile_grad_graph(g: Graph, params, profile: Profile, name: str, dump: TextIO | None = None,
                       emit: str = "object", wrt: str = "all", residuals: str = "save",
                       weights_section: str | None = None) -> Compiled:
    """Reverse mode: primal and pullback (passes.autodiff, parameters bound as read-only
    weights), the pipeline and the planner on each, both in one object. The arena serves
    either entry (the larger of the two plans); residuals live in a buffer of their own.
    wrt: "all", "inputs" or "params" (what gets a cotangent); residuals: "save" (the forward
    values the pullback reads) or "recompute" (the primal's inputs; the pullback re-runs the
    forward graph on them)."""
    check_grad_options(wrt, residuals)
    backend = get_backend(emit)
    vector = backend.vector_unit(profile)
    prog = bind_params(reverse(g, params, wrt=wrt, vector=vector))
    sizes = {mode: residual_layout(values, profile.arena_align)[1] for mode, values in prog.candidates.items()}
    if residuals == "recompute":
        recompute_residuals(prog)
    plans = {}
    for part in ("primal", "pullback"):
        graph = getattr(prog, part)
        run_pipeline(graph, dump=dump, vector=vector)
        plans[part] = plan_memory(graph, profile.arena_align)
    offsets, size = residual_layout(prog.primal.outputs[prog.n_outputs:], profile.arena_align)
    out = backend.generate_grad(prog, plans, offsets, name, profile, **_section(weights_section))
    info = read_object(out.object)
    check_self_contained(info, profile, name)
    stack = stack_usage(out.frames, out.calls, entry_symbols(name, grad=True), profile.return_address_bytes)
    both = MemoryPlan({}, max(p.arena_size for p in plans.values()), profile.arena_align,
                      max(p.lower_bound for p in plans.values()), [])
    if size != sizes[prog.mode]:
        raise InternalError(f"residual buffer of {size} bytes, {sizes[prog.mode]} expected")
    grad = {"program": prog, "plans": plans, "offsets": offsets, "residuals_size": size, "sizes": sizes}
    return Compiled(prog.primal, both, out.object, info, out.llvm_ir, stack, out.c_source, emit, grad=grad)


def compile_train_graph(g: Graph, params, profile: Profile, name: str, loss: str = "mse",
                        dump: TextIO | None = None, emit: str = "object", optimizer: str = "sgd",
                        momentum: float | None = None, run: Graph | None = None,
                        pattern: str | None = None, weights_section: str | None = None,
                        node_lines: bool = False) -> Compiled:
    """A training build (passes.train): the step graph, whose parameter (and velocity)
    updates are written over their own bytes in the caller's buffers (the plan places each
    updated value at its input), the params-init graph, and with `run` (another import of
    the model) the inference graph reading the parameters from the caller's buffer
    (<name>_run_params). One arena serves every entry (the largest plan). node_lines: the
    profiling build of toolchain.profile --train (the shipped code with the step's nodes in
    a line table)."""
    backend = get_backend(emit)
    if node_lines and backend.name != "object":
        raise InvalidModelError(f"profiling builds need the object backend, not '{emit}'")
    vector = backend.vector_unit(profile)
    tp = train_graph(g, params, loss, optimizer, momentum, pattern, vector=vector)
    init = init_graph(tp.params, name)
    graphs = {"train": tp.graph, "init": init}
    if run is not None:
        graphs["run"] = run_graph(run, [p.name for p in tp.params])
    plans = {}
    for part, graph in graphs.items():
        run_pipeline(graph, dump=dump, vector=vector)
        plans[part] = plan_memory(graph, profile.arena_align)
    first = tp.n_inputs + tp.n_targets
    for k, v in enumerate(tp.graph.outputs[1:]):  # the parameters, then (momentum) the velocities
        plans["train"].storage[id(v)] = Storage("input", first + k)  # the update overwrites its input
    offsets, size = param_layout(tp.params, profile.arena_align)
    out = backend.generate_train(tp, init, plans, offsets, name, profile, graphs.get("run"),
                                 **_section(weights_section), **({"node_lines": True} if node_lines else {}))
    info = read_object(out.object)
    check_self_contained(info, profile, name)
    stack = stack_usage(out.frames, out.calls, entry_symbols(name, train=True, run_params=run is not None),
                        profile.return_address_bytes)
    steps = [plans[part] for part in ("train", "run") if part in plans]
    plan = MemoryPlan({}, max(p.arena_size for p in steps), profile.arena_align,
                      max(p.lower_bound for p in steps), [])
    train = {"program": tp, "plans": plans, "offsets": offsets, "params_size": size, "loss": loss,
             "opt_state_size": size if tp.optimizer == "momentum" else 0, "run": graphs.get("run"),
             "pattern": pattern, "untrained": [n for n in params if n not in {q.name for q in tp.params}]}
    return Compiled(tp.graph, plan, out.object, info, out.llvm_ir, stack, out.c_source, emit, train=train)


def compile_onnx(model: onnx.ModelProto, target: str, name: str = "model", dims=None,
                 dump: TextIO | None = None, emit: str = "object", weights: str = "internal",
                 bind: dict | None = None, weights_section: str | None = None) -> Compiled:
    """bind: {graph input name: value} (frontend/binding.py): those inputs become constants.
    weights_section: the ELF section of the weights (default .rodata.<name>.weights)."""
    check_name(name)
    weights_section = check_weights_section(weights_section, name, weights)
    profile = get_profile(target)
    model = bind_inputs(model, resolve(model, bind, _fixed(dims)))
    return compile_graph(import_batched(model, name, dims), profile, name, dump, emit, weights,
                         weights_section=weights_section)


SOFT_DOUBLE = re.compile(r"__aeabi_(d|[a-z0-9]*2d$)")  # the ARM EABI's soft-float double routines


def check_float64(g: Graph, profile: Profile, info: ObjectInfo):
    """On a core without double-precision floating point (profile.fp64 false: Cortex-M4, M33)
    code that computes in float64 needs the soft-float routines of a C library, which the
    library never links: such a build is refused naming every node that reads or writes a
    float64 value (a model that only moves float64 bytes builds)."""
    if profile.fp64 or not (info.f64_instructions or any(SOFT_DOUBLE.match(s) for s in info.undefined)):
        return
    nodes = [n for n in g.nodes if not registry.get(n.op).view
             and any(v is not None and v.type.dtype == "float64" for v in [*n.inputs, *n.outputs])]
    shown = ", ".join(f"'{n.name}' ({n.op})" for n in nodes[:5])
    shown += f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
    raise UnsupportedError(f"target {profile.name} has no double-precision floating point, and the library links no "
                           f"soft-float routines: {len(nodes)} node(s) compute in float64: {shown}; cast to float32 "
                           f"in the model, or build for a target with a double-precision FPU")


def _fixed(dims) -> dict:
    return {k: v for k, v in (dims or {}).items() if not isinstance(v, (tuple, list))}


def build(model_path: str | Path | None, target: str, name: str = "model", out: str | Path | None = None,
          dims: dict[str, int] | None = None, dump: TextIO | None = None, emit: str = "object",
          budgets: dict | None = None, weights: str = "internal", grad: str | None = None,
          train: str | None = None, bind: dict | None = None, trainable: str | None = None,
          optimizer: str = "sgd", momentum: float | None = None, wrt: str | None = None,
          residuals: str | None = None, weights_section: str | None = None, parallel: int | None = None) -> BuildResult:
    """emit="object": <name>.o and lib<name>.a (LLVM); emit="c": <name>.c (portable C99).
    Both also write <name>.h, <name>.json and the CMake/Make fragments.
    budgets: {"flash_bytes": n, "ram_bytes": n} over the target profile's own; a build over
    budget fails and writes nothing. The output directory is checked before compiling, and
    the files of the build replace the previous ones of the same name as one set.
    weights="external": no weight bytes in the object; <name>_weights.bin holds them and
    <name>_run_ext takes their address (for weights in external flash or a file system).
    grad="reverse": <name>_primal and <name>_pullback (every float input and initializer
    differentiated) instead of <name>_run; grad="forward": <name>_jvp (outputs and their
    tangents from inputs and theirs, every float input differentiated); train="mse":
    <name>_train_step (on that loss, parameters in a caller-owned buffer), <name>_params_init
    and <name>_run_params (inference reading that buffer); trainable: a glob over the
    initializer names (default: every float initializer; the others stay read-only
    constants); optimizer "sgd" or "momentum" (heavy ball, coefficient `momentum`,
    default 0.9, a velocity per parameter in the caller's opt_state). With grad="reverse",
    wrt "all" (default), "inputs" (no parameter cotangent) or "params" (no input cotangent),
    and residuals "save" (default: the forward values the pullback reads) or "recompute" (the
    residual buffer holds the primal's inputs; the pullback recomputes the forward values). None of these uses the compile cache yet. bind: {graph input name:
    value} (an array, numbers, or the command line's text "1,2" / "@file.npy"): those inputs
    become constants of that value, gone from the C contract; the manifest lists them
    ("bound_inputs"). weights_section: the ELF section of every weight (and packed-weight)
    array on either path, instead of .rodata.<name>.weights, for a firmware linker script to
    place (`*(NAME)`); recorded in the manifest ("weights_section") and the header, keyed in
    the cache and the build id; counted as flash. parallel: N >= 2 also exports
    <name>_run_parallel, the nodes worth it cut into up to N pieces the caller's threads run
    (inference builds; keyed in the compile cache)."""
    check_name(name)
    weights_section = check_weights_section(weights_section, name, weights)
    if grad is not None and grad not in GRAD_MODES:
        raise InvalidModelError(f"--grad must be one of {', '.join(GRAD_MODES)}, got '{grad}'")
    get_backend(emit)
    profile = get_profile(target)
    model_path = Path(model_path) if model_path else DEFAULT_MODEL
    out = Path(out) if out else PROJECT_ROOT / "build" / target
    check_out_dir(out, owned_files(name))
    if grad and train:
        raise InvalidModelError(f"--grad {grad} and --train are separate builds: choose one")
    if grad != "reverse" and (wrt is not None or residuals is not None):
        raise InvalidModelError("--wrt and --residuals are options of --grad reverse builds")
    if grad == "reverse":
        check_grad_options(wrt or "all", residuals or "save")
    if (grad or train) and weights != "internal":
        raise InvalidModelError("--weights external is for inference builds, not --grad or --train")
    if not train and (trainable is not None or optimizer != "sgd" or momentum is not None):
        raise InvalidModelError("--trainable, --optimizer and --momentum are options of --train builds")
    if train:
        check_optimizer(optimizer, momentum)
    if parallel is not None:
        if grad or train:
            raise InvalidModelError("--parallel is for inference builds, not --grad or --train")
        check_parallel(parallel, weights, False, False)  # bounds: below
    model = load_model(model_path) if bind else None
    bound = resolve(model, bind, _fixed(dims)) if bind else {}
    hook = (BuildHook.open(model_path, profile, name, dims, emit, budgets, weights, key_of(bound), weights_section,
                           parallel)
            if dump is None and not (grad or train) else None)
    if hook is not None and (hit := hook.restore(out)) is not None:
        return BuildResult(*hit, compiled=None)  # a cache hit: the artifacts, nothing compiled
    model = bind_inputs(model or load_model(model_path), bound)
    params = [t.name for t in model.graph.initializer]
    if train:
        compiled = compile_train_graph(import_model(model, name, dims), select_trainable(params, trainable), profile,
                                       name, train, dump, emit, optimizer, momentum, import_model(model, name, dims),
                                       trainable, weights_section)
    elif grad == "forward":
        compiled = compile_jvp_graph(import_model(model, name, dims), profile, name, dump, emit, weights_section)
    elif grad:
        compiled = compile_grad_graph(import_model(model, name, dims), params, profile, name, dump, emit,
                                      wrt or "all", residuals or "save", weights_section)
    options = {"target": target, "name": name, "dims": dims or {}, "compiler": __version__,
               **({"emit": emit} if emit != "object" else {}), **({"weights": weights} if weights != "internal" else {}),
               **({"grad": grad} if grad else {}), **({"train": train} if train else {}),
               **({"wrt": wrt} if wrt not in (None, "all") else {}),
               **({"residuals": residuals} if residuals not in (None, "save") else {}),
               **({"trainable": trainable} if trainable is not None else {}),
               **({"optimizer": optimizer, "momentum": check_optimizer(optimizer, momentum)}
                  if train and optimizer != "sgd" else {}),
               **({"bind": key_of(bound)} if bound else {}),
               **({"weights_section": weights_section} if weights_section is not None else {}),
               **({"parallel": parallel} if parallel else {})}
    if not (train or grad):
        def identity(g):  # the manifest's build id, known once the passes have run
            return build_id({"hashes": _hashes(g, model_path, options), "compiler": {"version": __version__}})
        compiled = compile_graph(import_batched(model, name, dims), profile, name, dump, emit, weights,
                                 identity=identity, weights_section=weights_section, parallel=parallel or 0)
    manifest = make_manifest(compiled, profile, name, model_path, options)
    if bound:
        manifest["bound_inputs"] = manifest_entries(bound)
    manifest["build_id"] = build_id(manifest)
    if not (train or grad) and identity(compiled.graph) != manifest["build_id"]:
        raise InternalError("the build id in the object differs from the manifest's")
    if not (train or grad):
        manifest["exports_build_id"] = True  # <name>_build_id in the object (the header declares it)
    given = {k: v for k, v in (budgets or {}).items() if v is not None}
    defaults = {k: f"target {profile.name}'s default; --{k.replace('_bytes', '')}-budget overrides"
                for k in profile.budgets if k not in given}
    check_budgets({**manifest, "arena_bytes": manifest["arena"]["size"],
                   "symbols": compiled.info.by_size()}, {**profile.budgets, **given}, origin=defaults)
    kinds = [*get_backend(emit).ships, *(compiled.files or {}), "header", "manifest", "cmake", "make"]
    files = {ARTIFACTS[kind][0](name): ARTIFACTS[kind][1](compiled, name, manifest) for kind in kinds}
    try:
        replace_outputs(out, name, files, owned_files(name))
    except OSError as e:
        raise InvalidModelError(f"cannot write the build to '{out}': {e.strerror or e}") from None
    res = BuildResult({kind: out / f for kind, f in zip(kinds, files)}, manifest, compiled)
    return hook.store(res) if hook is not None else res


def _library(c: Compiled, name: str) -> bytes:
    globals_ = [s.name for s in c.info.symbols if s.binding == "STB_GLOBAL"]
    return ar_archive([(f"{name[:13]}.o", c.object, globals_)])


# artifact kind -> (file name, contents of a build)
ARTIFACTS = {
    "object": (lambda n: f"{n}.o", lambda c, n, m: c.object),
    "library": (lambda n: f"lib{n}.a", lambda c, n, m: _library(c, n)),
    "source": (lambda n: f"{n}.c", lambda c, n, m: c.c_source.encode()),
    "weights": (lambda n: f"{n}_weights.bin", lambda c, n, m: c.files["weights"]),
    "header": (lambda n: f"{n}.h", lambda c, n, m: c_header(n, m).encode()),
    "manifest": (lambda n: f"{n}.json", lambda c, n, m: manifest_json(m)),
    "cmake": (lambda n: f"{n}.cmake", lambda c, n, m: cmake_file(n, c.emit).encode()),
    "make": (lambda n: f"{n}.mk", lambda c, n, m: make_fragment(n, c.emit).encode()),
}


def _tensor_info(v, batch=None, carries=False):
    """A graph input or output; with a bounded batch, its shape and sizes at the bound and
    the name of the batch dimension it carries on axis 0."""
    info = {"name": v.name, "dtype": v.type.dtype, "shape": list(v.type.shape),
            "elems": v.type.size, "bytes": v.type.nbytes}
    if batch is not None and carries:
        info.update(shape=[batch.hi, *v.type.shape[1:]], elems=v.type.size * batch.hi,
                    bytes=v.type.nbytes * batch.hi, item_bytes=v.type.nbytes, batch_dim=batch.dim)
    return info


def _external_weights(blob: bytes, name: str) -> dict:
    return {"placement": "external", "file": f"{name}_weights.bin", "size": len(blob), "align": 64,
            "fnv1a64": f"{fnv1a64(blob):016x}"}


def _io_info(g, kind: str) -> list:
    values = getattr(g, kind)
    carries = getattr(g.batch, kind) if g.batch else (False,) * len(values)
    return [_tensor_info(v, g.batch, c) for v, c in zip(values, carries)]


def _hashes(g, model_path: Path, options: dict) -> dict:
    return {"model_sha256": _file_hash(model_path), "graph_sha256": g.fingerprint(),
            "options_sha256": hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()}


def _file_hash(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    return h.hexdigest()


def _grad_info(c: Compiled) -> dict:
    """The reverse-mode part of the manifest: the residual buffer's layout (the ABI between
    the two entries), the parameters, which tensors take and give cotangents, each arena."""
    prog, plans = c.grad["program"], c.grad["plans"]
    res = prog.primal.outputs[prog.n_outputs:]
    return {
        "mode": "reverse",
        "wrt": prog.wrt,
        "residuals": {"mode": prog.mode, "size": c.grad["residuals_size"], "align": c.plan.alignment,
                      # the buffer's size in each mode, to compare (recompute: the primal's inputs)
                      "sizes": c.grad["sizes"],
                      "values": [{"name": v.name, "dtype": v.type.dtype, "shape": list(v.type.shape),
                                  "offset": off, "bytes": v.type.nbytes, **_copied_input(prog, k)}
                                 for k, (v, off) in enumerate(zip(res, c.grad["offsets"]))]},
        "params": [{"name": p.name, "dtype": str(p.data.dtype), "shape": list(p.data.shape),
                    "elems": int(p.data.size), "bytes": int(p.data.nbytes)} for p in prog.params],
        "input_cotangents": [_tensor_info(prog.primal.inputs[i]) for i in prog.wrt_inputs],
        "output_cotangents": [_tensor_info(prog.primal.outputs[j]) for j in prog.cot_outputs],
        "arenas": {part: {"size": p.arena_size, "lower_bound": p.lower_bound} for part, p in plans.items()},
        "ops": {part: getattr(prog, part).op_counts() for part in plans},
        "macs": {part: sum(registry.get(n.op).macs(n) for n in getattr(prog, part).nodes) for part in plans},
    }


def _copied_input(prog, k: int) -> dict:
    """--residuals recompute: which graph input residual k is a copy of."""
    if prog.mode != "recompute":
        return {}
    i = next(i for i, v in enumerate(prog.primal.inputs) if v is prog.residuals[k])
    return {"input": i, "input_name": prog.primal.inputs[i].name}


def _jvp_info(c: Compiled) -> dict:
    """The forward-mode part of the manifest: which tensors take and give tangents (a tangent
    has its tensor's type), the arena of <name>_jvp."""
    prog = c.jvp["program"]
    return {
        "mode": "forward",
        "input_tangents": [{**_tensor_info(v), "input": i} for i, v in zip(prog.wrt_inputs, prog.input_tangents)],
        "output_tangents": [{**_tensor_info(v), "output": j} for j, v in zip(prog.tan_outputs, prog.output_tangents)],
        "arenas": {"jvp": {"size": c.plan.arena_size, "lower_bound": c.plan.lower_bound}},
    }


def make_manifest(c: Compiled, profile: Profile, name: str, model_path: Path, options: dict) -> dict:
    g = c.graph
    graphs = [g] if c.grad is None else [g, c.grad["program"].pullback]
    if c.train is not None and c.train["run"] is not None:
        graphs.append(c.train["run"])
    weight_bytes = sum({(v.type, v.data.tobytes()): v.type.nbytes for x in graphs for v in x.constants()}.values())
    section = options.get("weights_section")  # None: the default .rodata.<name>.weights
    t = totals(c.info.sections, flash=(section,) if section else ())
    stack = c.stack or {}
    manifest = {
        "name": name,
        "model": model_path.name,
        "target": {"name": profile.name, "triple": profile.triple, "cpu": profile.cpu,
                   "features": profile.features},
        "inputs": _io_info(g, "inputs"),
        "outputs": _io_info(g, "outputs"),
        **({"specialized_inputs": [{"inputs": list(gd.names), "accepted": [list(a) for a in gd.accepted]}
                                   for gd in g.guards]} if g.guards else {}),
        **({"bounded_dims": {g.batch.dim: {"min": g.batch.lo, "max": g.batch.hi, "axis": 0}}} if g.batch else {}),
        "arena": {"size": c.plan.arena_size, "align": c.plan.alignment, "lower_bound": c.plan.lower_bound},
        "code_bytes": t["text"],
        "weight_bytes": weight_bytes,
        **({"weights_section": section} if section else {}),
        **({"weights": _external_weights(c.files["weights"], name)} if (c.files or {}).get("weights") else {}),
        "rodata_bytes": t["rodata"],
        "stack_bytes": stack,
        "flash_bytes": t["text"] + t["rodata"] + t["data"],
        "ram_bytes": t["data"] + t["bss"] + c.plan.arena_size + max(stack.values(), default=0),
        "ops": g.op_counts(),
        "schedules": {n.name: str(n.schedule) for n in g.nodes if n.schedule is not None},
        "macs": sum(registry.get(n.op).macs(n) for n in g.nodes),
        **({"float_fallback": g.notes["float_fallback"]} if "float_fallback" in g.notes else {}),
        "hashes": _hashes(g, model_path, options),
        "compiler": {"name": "edgec", "version": __version__},
    }
    if c.parallel is not None:
        manifest["parallel"] = {"tasks": c.parallel["tasks"], "task_stack_bytes": c.parallel["task_stack_bytes"],
                                "splits": [s.as_json() for s in c.parallel["splits"]]}
    if c.train is not None:
        tp = c.train["program"]
        manifest["inputs"] = manifest["inputs"][:tp.n_inputs]
        run = c.train["run"]
        manifest["outputs"] = [_tensor_info(v) for v in (run.outputs if run is not None else tp.outputs)]
        plans = c.train["plans"]
        manifest["train"] = {
            "loss": c.train["loss"], "optimizer": tp.optimizer,
            **({"momentum": tp.momentum, "update": "v = momentum * v + dloss/dp; p -= learning_rate * v "
                "(v: the parameter's velocity in opt_state, same offset as in params, zero-initialized "
                "by the caller)"} if tp.optimizer == "momentum" else {"update": "p -= learning_rate * dloss/dp"}),
            "opt_state_size": c.train["opt_state_size"],
            "trainable": c.train["pattern"] if c.train["pattern"] is not None else "*",
            # selected initializers that stay constants: not float32, read by no node, or folded at import
            "untrained": c.train["untrained"],
            "params_size": c.train["params_size"], "params_align": c.plan.alignment,
            "arenas": {part: {"size": plans[part].arena_size, "lower_bound": plans[part].lower_bound}
                       for part in ("train", "run") if part in plans},
            "params": [{"name": p.name, "dtype": str(p.data.dtype), "shape": list(p.data.shape), "offset": off,
                        "elems": int(p.data.size), "bytes": int(p.data.nbytes)}
                       for p, off in zip(tp.params, c.train["offsets"])],
            "targets": [_tensor_info(v) for v in tp.graph.inputs[tp.n_inputs:tp.n_inputs + tp.n_targets]],
        }
    if c.jvp is not None:
        prog = c.jvp["program"]
        manifest["inputs"] = manifest["inputs"][:prog.n_inputs]
        manifest["outputs"] = manifest["outputs"][:prog.n_outputs]
        manifest["grad"] = _jvp_info(c)
    if c.grad is not None:
        n = c.grad["program"].n_outputs
        manifest["outputs"] = manifest["outputs"][:n]
        manifest["grad"] = _grad_info(c)
        ops: dict = {}
        for part in manifest["grad"]["ops"].values():
            for op, count in part.items():
                ops[op] = ops.get(op, 0) + count
        manifest["ops"] = dict(sorted(ops.items()))
    return manifest
