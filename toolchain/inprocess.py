"""Run a compiled model in-process: `toolchain.compile_model(...)(x)` and `toolchain.jit(model)(x)`.

Why in-process: to check a model against onnxruntime, or serve it from Python, without a
harness executable, a C compiler or QEMU, while still running exactly the machine code that
ships. compile_model goes through `compiler.build` (into a temporary directory, or straight
from the cache), keeps every artifact's bytes, and loads the very object `<name>.o` into
LLVM's MCJIT (the object is position independent with no undefined symbols, so RuntimeDyld
only has to apply its own relocations). `export(dir)` writes those same bytes, so what was
tested in Python is byte for byte what is flashed.

Per call: the argument checks, one np.empty per output and one foreign call; pointer arrays
and the aligned arena are made once per CompiledModel.
"""
from __future__ import annotations

import ctypes
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import cache
from .errors import CompileError, InvalidModelError

_RUN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
                        ctypes.c_void_p)
_RUN_DIMS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
                             ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32))
_engines: dict = {}  # cache key -> (engine, entry function): one loaded copy of each object
_engine_lock = threading.Lock()


_profiles_memo: dict = {}


def _profiles() -> dict:
    """all_profiles(), parsed again only when a profile file changes: parsing five TOML
    files is most of a warm compile_model (7 of 8 ms)."""
    from .targets import TARGETS_DIR, all_profiles

    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(TARGETS_DIR.glob("*.toml")))
    if _profiles_memo.get("stamp") != stamp:
        _profiles_memo.update(stamp=stamp, profiles=all_profiles())
    return _profiles_memo["profiles"]


def _get_profile(name: str):
    from .targets import get_profile

    profiles = _profiles()
    return profiles[name] if name in profiles else get_profile(name)  # get_profile words the error


def host_profile():
    """The most capable profile this host executes natively (x86-64-v3 on an AVX2 machine)."""
    profiles = _profiles()
    native = [p for p in profiles.values() if p.runs_natively()]
    if not native:
        raise CompileError(f"no target profile runs natively on this host CPU "
                           f"(platform.machine() = '{platform.machine()}'; known profiles: "
                           f"{', '.join(profiles)}); pass target= to compile for one and export() it")
    return max(native, key=lambda p: len(p.native_cpu_flags))


def _load_object(obj: bytes, symbol: str, proto=_RUN):
    """MCJIT over an empty module plus the object: the engine relocates and maps the object's
    own sections; nothing is recompiled."""
    engine, (fn,) = _load_symbols(obj, [(symbol, proto)])
    return engine, fn


def _load_symbols(obj: bytes, wanted):
    """The engine and one callable per (symbol, prototype)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    fns = []
    for symbol, proto in wanted:
        addr = engine.get_function_address(symbol)
        if not addr:
            raise CompileError(f"the object defines no '{symbol}'")
        fns.append(proto(addr))
    return engine, fns


class CompiledModel:
    """One compiled variant: the artifacts' bytes, the manifest, and (on a native target) the
    loaded entry point with its own arena. Calls on one instance are serialized (one arena);
    make another instance for parallel calls."""

    def __init__(self, entry: cache.Entry, fields: dict, profile, name: str, model_name: str, event: dict):
        self.key = entry.key
        self.name = name
        self.target = profile.name
        self.fields = fields
        self.files = dict(entry.files)  # artifact name -> bytes, as build writes them
        self.kinds = dict(entry.meta["kinds"])
        self.model_name = model_name
        self.event = event
        self.manifest = json.loads(self.files[f"{name}.json"])
        self.object = self.files[f"{name}.o"]
        self.inputs = [(i["name"], np.dtype(i["dtype"]), tuple(i["shape"])) for i in self.manifest["inputs"]]
        self.outputs = [(o["name"], np.dtype(o["dtype"]), tuple(o["shape"])) for o in self.manifest["outputs"]]
        size, align = self.manifest["arena"]["size"], self.manifest["arena"]["align"]
        self._arena_buf = np.zeros(size + align, np.uint8)
        base = self._arena_buf.ctypes.data
        self._arena = ctypes.c_void_p(base + (-base) % align)
        self.arena = self._arena_buf[(-base) % align:][:size]  # the aligned view (for inspection)
        # inputs are copied into, and outputs copied out of, buffers made here once: their
        # addresses are fixed, so a call costs no pointer lookups (ndarray.ctypes.data is
        # about 2 us each), and the fresh outputs are the copies
        self._in_bufs = [np.empty(shape, dtype) for _, dtype, shape in self.inputs]
        self._out_bufs = [np.empty(shape, dtype) for _, dtype, shape in self.outputs]
        self._ins = (ctypes.c_void_p * max(1, len(self.inputs)))(*[b.ctypes.data for b in self._in_bufs])
        self._outs = (ctypes.c_void_p * max(1, len(self.outputs)))(*[b.ctypes.data for b in self._out_bufs])
        self._checks = [(b, dtype, shape) for b, (_, dtype, shape) in zip(self._in_bufs, self.inputs)]
        # a bounded batch (dims={"N": (1, 8)}): buffers at the bound, calls with any size in it
        self.bounded = self.manifest.get("bounded_dims", {})
        self._carries = ["batch_dim" in t for t in self.manifest["inputs"]]
        self._out_carries = ["batch_dim" in t for t in self.manifest["outputs"]]
        self._dims = (ctypes.c_int32 * max(1, len(self.bounded)))()
        self._lock = threading.Lock()
        self._fn = None
        self._native = profile.runs_natively()
        if self._native:
            t0 = time.perf_counter()
            with _engine_lock:
                if self.key not in _engines:
                    _engines[self.key] = (_load_object(self.object, f"{name}_run_dims", _RUN_DIMS) if self.bounded
                                          else _load_object(self.object, f"{name}_run"))
                self._fn = _engines[self.key][1]
            self.event["times"]["jit load"] = time.perf_counter() - t0

    def __repr__(self):
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in self.inputs)
        return f"<CompiledModel {self.name} for {self.target} ({ins}) key {self.key[:12]}>"

    def __call__(self, *arrays):
        """Outputs as fresh arrays. Inputs must match the model exactly (count, dtype,
        shape): nothing is cast, since a silent float64 -> float32 would hide a caller's bug."""
        if self._fn is None:
            raise CompileError(f"target '{self.target}' does not run on this host "
                               f"({platform.machine()}); export() the artifacts and run them there")
        checks = self._checks
        if self.bounded and len(arrays) == len(checks):
            return self._call_batch(arrays)
        if len(arrays) != len(checks):
            raise CompileError(f"model '{self.name}' takes {len(checks)} input(s) "
                               f"({', '.join(repr(n) for n, _, _ in self.inputs)}), got {len(arrays)}")
        with self._lock:
            for (buf, dtype, shape), a in zip(checks, arrays):
                if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                    raise CompileError(self._first_mismatch(arrays))
                buf[...] = a  # same dtype and shape: a plain copy, any memory layout
            rc = self._fn(self._ins, self._outs, self._arena)
            outs = [b.copy() for b in self._out_bufs]
        if rc != 0:
            raise CompileError(f"{self.name}_run returned {rc}")
        return outs

    def _call_batch(self, arrays):
        """One call of <name>_run_dims: the batch size is read off the inputs that carry it."""
        (dim, bound), = self.bounded.items()
        n = None
        for (name, dtype, shape), carries, a in zip(self.inputs, self._carries, arrays):
            want = (dim, *shape[1:]) if carries else shape
            if (not isinstance(a, np.ndarray) or a.dtype != dtype or len(a.shape) != len(shape)
                    or (a.shape[1:] != shape[1:] if carries else a.shape != shape)):
                raise CompileError(_mismatch(name, dtype, want, a))
            if carries and n is None:
                n, first = a.shape[0], name
            elif carries and a.shape[0] != n:
                raise CompileError(f"input '{name}': '{dim}' = {a.shape[0]}, but input '{first}' has {n}")
        if not bound["min"] <= n <= bound["max"]:
            raise CompileError(f"'{dim}' = {n} is outside {bound['min']}..{bound['max']}, the bound this "
                               f"model was built for")
        with self._lock:
            for buf, carries, a in zip(self._in_bufs, self._carries, arrays):
                (buf[:n] if carries else buf)[...] = a
            self._dims[0] = n
            rc = self._fn(self._ins, self._outs, self._arena, self._dims)
            outs = [(b[:n] if c else b).copy() for b, c in zip(self._out_bufs, self._out_carries)]
        if rc != 0:
            raise CompileError(f"{self.name}_run_dims returned {rc}")
        return outs

    def _first_mismatch(self, arrays) -> str:
        for (name, dtype, shape), a in zip(self.inputs, arrays):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                return _mismatch(name, dtype, shape, a)
        return "inputs do not match"

    def export(self, out_dir) -> dict:
        """Writes exactly the files `build` writes (the same bytes, all or none); returns
        {kind: path} like BuildResult.paths."""
        paths = cache.write_files(Path(out_dir), self.files, self.name)
        return {self.kinds[n]: p for n, p in paths.items()}

    def explain(self) -> str:
        """Where this variant came from: its key, the key fields, what differs from the
        closest earlier variant of the same model, and time per stage."""
        lines = cache.describe_event(self.event)
        f = self.fields
        lines.append(f"  key fields: target {f['target']} (profile {f['profile_sha256'][:12]}), options "
                     f"{json.dumps(f['options'], sort_keys=True)}, compiler {f['compiler']} "
                     f"(sources {f['compiler_source_sha256'][:12]}), llvmlite {f['llvmlite']}, LLVM {f['llvm']}")
        lines.append(f"  full key: {self.key}")
        return "\n".join(lines)


def _mismatch(name, dtype, shape, a) -> str:
    want = f"{dtype} array of shape {shape}"
    if not isinstance(a, np.ndarray):
        return f"input '{name}': expected a numpy {want}, got {type(a).__name__}"
    if a.dtype != dtype:
        return f"input '{name}': expected dtype {dtype}, got {a.dtype} (nothing is cast; convert it first)"
    return f"input '{name}': expected shape {shape}, got {a.shape}"


def _resolve_model(model):
    """(path or None, model bytes, parsed proto, file base name)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return None, data, model, None
    path = Path(model)
    if not path.is_file():
        raise InvalidModelError(f"model file not found: {path}")
    data = path.read_bytes()
    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as e:  # noqa: BLE001
        raise InvalidModelError(f"cannot read ONNX model {path}: {type(e).__name__}: {e}") from None
    return path, data, proto, path.name


def compile_model(model, target: str | None = None, *, dims: dict | None = None, name: str = "model",
                  bind: dict | None = None) -> CompiledModel:
    """model: an ONNX file or an onnx.ModelProto (its artifacts then name it '<name>.onnx').
    target: a profile name; None is the host's own. dims binds symbolic input dimensions;
    bind ({input name: value}) makes those inputs constants (the model is called without them).
    A cache hit (in-process or on disk) compiles nothing. (Reverse mode: toolchain.compile_grad.)"""
    t0 = time.perf_counter()
    profile = host_profile() if target is None else _get_profile(target)
    path, data, proto, model_name = _resolve_model(model)
    model_name = model_name or f"{name}.onnx"
    digest = cache.model_digest(data, proto, path.parent if path else None)
    from .frontend.binding import key_of, resolve

    bound = resolve(proto, bind, {k: v for k, v in (dims or {}).items() if not isinstance(v, (tuple, list))})
    fields = cache.key_fields(digest, cache.bound_inputs(proto, dims or {}, bound), profile, name, "object", dims,
                              None, model_name, bind=key_of(bound))
    key = cache.make_key(fields)
    t_key = time.perf_counter() - t0

    hook = cache.BuildHook(key, fields, model_name, name)
    hook.times["load+key"] = t_key
    entry = hook.lookup()
    if entry is not None:
        hook.record(entry.source)
        event = cache.events[-1]
    else:
        entry, event = _compile(path, data, profile, name, dims, model_name, key, bound)
    return CompiledModel(entry, fields, profile, name, model_name, event)


def _compile(path, data, profile, name, dims, model_name, key, bound=None):
    """A miss: the real build() into a scratch directory; its files are the entry."""
    from .compiler import build

    with tempfile.TemporaryDirectory(prefix="edgec-jit-") as tmp:
        if path is None:
            path = Path(tmp) / "src" / model_name
            path.parent.mkdir()
            path.write_bytes(data)
        res = build(path, profile.name, name, Path(tmp) / "out", dims=dims, bind=bound or None)
        files = {p.name: p.read_bytes() for p in res.paths.values()}
        kinds = {p.name: k for k, p in res.paths.items()}
    ev = next((e for e in reversed(cache.events) if e["key"] == key), None)
    if ev is None:  # build did not go through the cache hook (it always should)
        raise CompileError(f"internal error: build of key {key[:16]} left no record")
    return cache.Entry(key, {"fields": ev["fields"], "model_name": model_name, "kinds": kinds}, files,
                       ev["source"]), ev


class JitFunction:
    """`jit(model)`: compiles on first call; symbolic input dims (dim_param) take the sizes
    of the arrays it is called with, and each distinct binding is compiled once."""

    def __init__(self, model, target: str | None = None, name: str = "model"):
        self.model, self.target, self.name = model, target, name
        self.variants: dict = {}  # ((dim_param, size), ...) -> CompiledModel
        self._symbolic = None  # per input: (name, rank, [(axis, dim_param)])
        self._lock = threading.Lock()

    def _inputs(self):
        if self._symbolic is None:
            _, _, proto, _ = _resolve_model(self.model)
            inits = {t.name for t in proto.graph.initializer}
            self._symbolic = [
                (vi.name, len(vi.type.tensor_type.shape.dim),
                 [(ax, d.dim_param) for ax, d in enumerate(vi.type.tensor_type.shape.dim)
                  if not d.HasField("dim_value") and d.dim_param])
                for vi in proto.graph.input if vi.name not in inits]
        return self._symbolic

    def bind(self, arrays) -> dict:
        specs = self._inputs()
        if len(arrays) != len(specs):
            raise CompileError(f"model takes {len(specs)} input(s) ({', '.join(repr(s[0]) for s in specs)}), "
                               f"got {len(arrays)}")
        dims, where = {}, {}
        for (name, rank, syms), a in zip(specs, arrays):
            shape = getattr(a, "shape", None)
            if shape is None or len(shape) != rank:
                raise CompileError(f"input '{name}': expected an array of rank {rank}, got "
                                   f"{'shape ' + str(tuple(shape)) if shape is not None else type(a).__name__}")
            for ax, sym in syms:
                if sym in dims and dims[sym] != shape[ax]:
                    raise CompileError(f"input '{name}' axis {ax} is '{sym}' = {shape[ax]}, but {where[sym]} "
                                       f"bound '{sym}' = {dims[sym]}")
                dims.setdefault(sym, int(shape[ax]))
                where.setdefault(sym, f"input '{name}' axis {ax}")
        return dims

    def __call__(self, *arrays):
        dims = self.bind(arrays)
        k = tuple(sorted(dims.items()))
        cm = self.variants.get(k)
        if cm is None:
            with self._lock:
                cm = self.variants.get(k)
                if cm is None:
                    cm = compile_model(self.model, self.target, dims=dims or None, name=self.name)
                    self.variants[k] = cm
        return cm(*arrays)


def jit(model, target: str | None = None, *, name: str = "model") -> JitFunction:
    return JitFunction(model, target, name)
