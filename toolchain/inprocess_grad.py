"""Derivative builds run in-process: `toolchain.compile_grad(m)` (reverse mode),
`toolchain.compile_grad(m, grad="forward")` (forward mode), `toolchain.compile_train(m)`.

The build's own `<name>.o` (through `compiler.build(..., grad=...)`) loaded into MCJIT like
inprocess.CompiledModel. Reverse mode has both entries: `primal(*inputs)` returns the
outputs and the residual buffer (bytes, laid out as the manifest says), and
`pullback(residuals, *output_cotangents)` returns the input cotangents and the parameter
cotangents; the arena is one buffer of the build's arena size, shared by both calls.
Forward mode: `jvp(inputs, tangents)` returns the outputs and the output tangents.
"""
from __future__ import annotations

import ctypes
import json
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import cache
from .errors import CompileError
from .inprocess import _get_profile, _load_symbols, _resolve_model, host_profile

_PP = ctypes.POINTER(ctypes.c_void_p)
_PRIMAL = ctypes.CFUNCTYPE(ctypes.c_int, _PP, _PP, ctypes.c_void_p, ctypes.c_void_p)
_PULLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _PP, _PP, _PP, ctypes.c_void_p)
_JVP = ctypes.CFUNCTYPE(ctypes.c_int, _PP, _PP, _PP, _PP, ctypes.c_void_p)


def _aligned(size: int, align: int) -> np.ndarray:
    raw = np.zeros(size + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + size]


def _specs(entries):
    return [(t["name"], np.dtype(t["dtype"]), tuple(t["shape"])) for t in entries]


def _table(arrays):
    return (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])


class CompiledGrad:
    def __init__(self, files: dict, kinds: dict, name: str, profile):
        self.files, self.kinds, self.name, self.target = files, kinds, name, profile.name
        self.manifest = json.loads(files[f"{name}.json"])
        self.object = files[f"{name}.o"]
        g = self.manifest["grad"]
        self.inputs, self.outputs = _specs(self.manifest["inputs"]), _specs(self.manifest["outputs"])
        self.params = [(p["name"], np.dtype(p["dtype"]), tuple(p["shape"])) for p in g["params"]]
        self.input_cotangents, self.output_cotangents = _specs(g["input_cotangents"]), _specs(g["output_cotangents"])
        self.residuals_size, self.residuals_align = g["residuals"]["size"], g["residuals"]["align"]
        self.arena = _aligned(self.manifest["arena"]["size"] or 1, self.manifest["arena"]["align"])
        self._lock = threading.Lock()
        self._fns = None
        if profile.runs_natively():
            self._engine, self._fns = _load_symbols(self.object, [(f"{name}_primal", _PRIMAL),
                                                                  (f"{name}_pullback", _PULLBACK)])

    def _check(self, specs, arrays, what):
        if len(arrays) != len(specs):
            raise CompileError(f"{what}: expected {len(specs)} array(s), got {len(arrays)}")
        for (n, dtype, shape), a in zip(specs, arrays):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise CompileError(f"{what} '{n}': expected {dtype} array of shape {shape}, got {got}")
        return [np.ascontiguousarray(a) for a in arrays]

    def _require_native(self):
        if self._fns is None:
            raise CompileError(f"target '{self.target}' does not run on this host; export() the artifacts")

    def primal(self, *inputs):
        """(outputs, residuals): residuals is a uint8 array of RESIDUALS_SIZE bytes."""
        self._require_native()
        ins = self._check(self.inputs, inputs, "input")
        outs = [np.empty(s, d) for _, d, s in self.outputs]
        res = _aligned(self.residuals_size, self.residuals_align)
        with self._lock:
            rc = self._fns[0](_table(ins), _table(outs), ctypes.c_void_p(res.ctypes.data),
                              ctypes.c_void_p(self.arena.ctypes.data))
        if rc != 0:
            raise CompileError(f"{self.name}_primal returned {rc}")
        return outs, res.copy()

    def pullback(self, residuals, *output_cotangents):
        """(input cotangents, parameter cotangents), each a list of fresh arrays (empty, and
        the table passed as NULL, when the build computes none: --wrt params / inputs)."""
        self._require_native()
        cots = self._check(self.output_cotangents, output_cotangents, "output cotangent")
        res = _aligned(self.residuals_size, self.residuals_align)
        res[...] = np.asarray(residuals, np.uint8).reshape(-1)
        gin = [np.empty(s, d) for _, d, s in self.input_cotangents]
        gpar = [np.empty(s, d) for _, d, s in self.params]
        with self._lock:
            rc = self._fns[1](ctypes.c_void_p(res.ctypes.data), _table(cots), _table(gin) if gin else None,
                              _table(gpar) if gpar else None,
                              ctypes.c_void_p(self.arena.ctypes.data))
        if rc != 0:
            raise CompileError(f"{self.name}_pullback returned {rc}")
        return gin, gpar

    def export(self, out_dir) -> dict:
        paths = cache.write_files(Path(out_dir), self.files, self.name)
        return {self.kinds[n]: p for n, p in paths.items()}


class CompiledJvp:
    """A forward-mode build loaded in-process: `jvp(inputs, tangents)` -> (outputs, output
    tangents), a tangent per float input in, one per float output out."""

    def __init__(self, files: dict, kinds: dict, name: str, profile):
        self.files, self.kinds, self.name, self.target = files, kinds, name, profile.name
        self.manifest = json.loads(files[f"{name}.json"])
        g = self.manifest["grad"]
        self.inputs, self.outputs = _specs(self.manifest["inputs"]), _specs(self.manifest["outputs"])
        self.input_tangents, self.output_tangents = _specs(g["input_tangents"]), _specs(g["output_tangents"])
        self.arena = _aligned(self.manifest["arena"]["size"] or 1, self.manifest["arena"]["align"])
        self._lock = threading.Lock()
        self._fns = None
        if profile.runs_natively():
            self._engine, self._fns = _load_symbols(files[f"{name}.o"], [(f"{name}_jvp", _JVP)])

    def jvp(self, inputs, tangents):
        """(outputs, output tangents), each a list of fresh arrays."""
        CompiledGrad._require_native(self)
        ins = CompiledGrad._check(self, self.inputs, list(inputs), "input")
        tans = CompiledGrad._check(self, self.input_tangents, list(tangents), "input tangent")
        outs = [np.empty(s, d) for _, d, s in self.outputs]
        dys = [np.empty(s, d) for _, d, s in self.output_tangents]
        with self._lock:
            rc = self._fns[0](_table(ins), _table(tans), _table(outs), _table(dys),
                              ctypes.c_void_p(self.arena.ctypes.data))
        if rc != 0:
            raise CompileError(f"{self.name}_jvp returned {rc}")
        return outs, dys

    export = CompiledGrad.export


def compile_grad(model, target: str | None = None, *, dims: dict | None = None, name: str = "model",
                 grad: str = "reverse", wrt: str | None = None,
                 residuals: str | None = None) -> "CompiledGrad | CompiledJvp":
    """grad="reverse": primal and pullback (CompiledGrad); grad="forward": the JVP (CompiledJvp).
    Reverse mode: wrt "all" (default), "inputs" or "params"; residuals "save" (default) or
    "recompute" (compiler.build)."""
    from .compiler import build

    profile = host_profile() if target is None else _get_profile(target)
    path, data, _, model_name = _resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="edgec-grad-") as tmp:
        if path is None:
            path = Path(tmp) / "src" / (model_name or f"{name}.onnx")
            path.parent.mkdir()
            path.write_bytes(data)
        res = build(path, profile.name, name, Path(tmp) / "out", dims=dims, grad=grad, wrt=wrt, residuals=residuals)
        files = {p.name: p.read_bytes() for p in res.paths.values()}
        kinds = {p.name: k for k, p in res.paths.items()}
    return (CompiledJvp if grad == "forward" else CompiledGrad)(files, kinds, name, profile)


_TRAIN_STEP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, _PP, _PP, ctypes.c_float,
                               ctypes.POINTER(ctypes.c_float), ctypes.c_void_p)
_PARAMS_INIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_RUN_PARAMS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _PP, _PP, ctypes.c_void_p)


class CompiledTrain:
    """A training build loaded in-process: `params_init()` returns a fresh parameter buffer
    (uint8, PARAMS_SIZE bytes, aligned), `opt_state_init()` a zeroed optimizer state (None
    for SGD), `train_step(params, inputs, targets, lr, opt_state)` updates them in place and
    returns the loss, `run_params(params, inputs)` the outputs of the inference with those
    parameters; `param(params, i)` views parameter i in it (and velocity i in opt_state)."""

    def __init__(self, files: dict, kinds: dict, name: str, profile):
        self.files, self.kinds, self.name, self.target = files, kinds, name, profile.name
        self.manifest = json.loads(files[f"{name}.json"])
        t = self.manifest["train"]
        self.inputs, self.targets = _specs(self.manifest["inputs"]), _specs(t["targets"])
        self.params = t["params"]
        self.params_size, self.params_align = t["params_size"], t["params_align"]
        self.opt_state_size, self.optimizer = t["opt_state_size"], t["optimizer"]
        self.outputs = _specs(self.manifest["outputs"])
        self.arena = _aligned(self.manifest["arena"]["size"] or 1, self.manifest["arena"]["align"])
        self._lock = threading.Lock()
        self._fns = None
        if profile.runs_natively():
            self._engine, self._fns = _load_symbols(files[f"{name}.o"], [(f"{name}_train_step", _TRAIN_STEP),
                                                                         (f"{name}_params_init", _PARAMS_INIT),
                                                                         (f"{name}_run_params", _RUN_PARAMS)])

    def params_init(self) -> np.ndarray:
        if self._fns is None:
            raise CompileError(f"target '{self.target}' does not run on this host; export() the artifacts")
        buf = _aligned(self.params_size, self.params_align)
        self._fns[1](ctypes.c_void_p(buf.ctypes.data))
        return buf

    def opt_state_init(self) -> np.ndarray | None:
        """The optimizer state the first step needs: zeros (the caller's duty in C), or None."""
        return _aligned(self.opt_state_size, self.params_align) if self.opt_state_size else None

    def _check_buffer(self, buf, size: int, what: str):
        if (not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.size != size
                or buf.ctypes.data % self.params_align or not buf.flags.c_contiguous):
            raise CompileError(f"{what}: expected the aligned uint8 buffer {what}_init() returns")

    def run_params(self, params: np.ndarray, inputs) -> list:
        if self._fns is None:
            raise CompileError(f"target '{self.target}' does not run on this host; export() the artifacts")
        self._check_buffer(params, self.params_size, "params")
        ins = CompiledGrad._check(self, self.inputs, list(inputs), "input")
        outs = [np.empty(shape, dtype) for _, dtype, shape in self.outputs]
        with self._lock:
            rc = self._fns[2](ctypes.c_void_p(params.ctypes.data), _table(ins), _table(outs),
                              ctypes.c_void_p(self.arena.ctypes.data))
        if rc != 0:
            raise CompileError(f"{self.name}_run_params returned {rc}")
        return outs

    def param(self, params: np.ndarray, i: int) -> np.ndarray:
        p = self.params[i]
        return params[p["offset"]:p["offset"] + p["bytes"]].view(np.dtype(p["dtype"])).reshape(p["shape"])

    def train_step(self, params: np.ndarray, inputs, targets, learning_rate: float, opt_state=None) -> float:
        """opt_state: the buffer opt_state_init() returned (a momentum build); None passes NULL."""
        self._check_buffer(params, self.params_size, "params")
        if opt_state is not None:
            self._check_buffer(opt_state, self.opt_state_size, "opt_state")
        ins = CompiledGrad._check(self, self.inputs, list(inputs), "input")
        tgs = CompiledGrad._check(self, self.targets, list(targets), "target")
        loss = ctypes.c_float()
        with self._lock:
            rc = self._fns[0](ctypes.c_void_p(params.ctypes.data),
                              None if opt_state is None else ctypes.c_void_p(opt_state.ctypes.data), _table(ins), _table(tgs),
                              ctypes.c_float(learning_rate), ctypes.byref(loss), ctypes.c_void_p(self.arena.ctypes.data))
        if rc != 0:
            raise CompileError(f"{self.name}_train_step returned {rc}")
        return loss.value


def compile_train(model, target: str | None = None, *, dims: dict | None = None, name: str = "model",
                  loss: str = "mse", trainable: str | None = None, optimizer: str = "sgd",
                  momentum: float | None = None) -> CompiledTrain:
    from .compiler import build

    profile = host_profile() if target is None else _get_profile(target)
    path, data, _, model_name = _resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="edgec-train-") as tmp:
        if path is None:
            path = Path(tmp) / "src" / (model_name or f"{name}.onnx")
            path.parent.mkdir()
            path.write_bytes(data)
        res = build(path, profile.name, name, Path(tmp) / "out", dims=dims, train=loss, trainable=trainable,
                    optimizer=optimizer, momentum=momentum)
        files = {p.name: p.read_bytes() for p in res.paths.values()}
        kinds = {p.name: k for k, p in res.paths.items()}
    return CompiledTrain(files, kinds, name, profile)
