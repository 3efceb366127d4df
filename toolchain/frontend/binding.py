"""Graph inputs bound at build time (`--bind NAME=VALUES`, Python `bind={name: array}`).

An ahead-of-time answer to operands that decide shapes (a Reshape's shape, Slice's starts,
a reduction's axes) but come in as graph inputs: the named input becomes an initializer
holding the given value (TVM's freeze_params), so the importer folds what it determines and
the input is gone from the C contract (the others keep their order, renumbered). The value
must have the input's declared dtype and shape: a mismatch is refused naming the input.

Values: an array (Python), a number or list of numbers (converted to the declared dtype,
exactly: 1.5 is not an int64, 300 not a uint8), or the command line's text, a comma list
`1,2,-1` (the declaration's shape; a 1-D input of symbolic length takes the list's) or
`@file.npy` (dtype and shape as declared).

Also here: the hint an error gets when an operand that must be a compile-time constant comes
from graph inputs (`bindable_inputs`: which inputs it is computed from).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InvalidModelError

MANIFEST_VALUES = 1024  # the manifest lists a bound value's elements up to this many (its sha256 always)


def graph_inputs(model: onnx.ModelProto) -> list:
    """The ValueInfos of the inputs a caller feeds (initializers listed as inputs are not)."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def resolve(model: onnx.ModelProto, bind: dict | None, dims: dict | None = None) -> dict[str, np.ndarray]:
    """{input name: value as given} -> {input name: array of the declared dtype and shape};
    every problem is an InvalidModelError naming the input."""
    if not bind:
        return {}
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    out = {}
    for name, value in bind.items():
        if name not in inputs:
            listed = ", ".join(f"'{n}'" for n in inputs) or "none"
            raise InvalidModelError(f"--bind {name}: the graph has no input '{name}' (its inputs: {listed})")
        out[name] = _value(inputs[name], value, dims or {})
    return out


def _declared(vi) -> tuple[str, list | None]:
    """(numpy dtype name, shape with a dim_param as its name; None when no shape is declared)."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise InvalidModelError(f"--bind {vi.name}: the graph input '{vi.name}' is not a tensor")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except Exception:  # noqa: BLE001
        raise InvalidModelError(f"--bind {vi.name}: the graph input '{vi.name}' has an element type "
                                f"({tt.elem_type}) that cannot be bound") from None
    if not tt.HasField("shape"):
        return dtype, None
    return dtype, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _fits(shape: tuple, declared: list | None, dims: dict) -> bool:
    if declared is None:
        return True
    if len(shape) != len(declared):
        return False
    for n, d in zip(shape, declared):
        want = dims.get(d, d) if isinstance(d, str) else d
        if isinstance(want, int) and want != n:
            return False
    return True


def _describe(dtype, shape) -> str:
    return f"{dtype} of shape {list(shape) if shape is not None else '(not declared)'}"


def _value(vi, value, dims: dict) -> np.ndarray:
    name = vi.name
    dtype, declared = _declared(vi)
    where = f"--bind {name}"
    if isinstance(value, (str, Path)) and str(value).startswith("@") or isinstance(value, Path):
        value = _load_npy(where, Path(str(value).removeprefix("@")))
    if isinstance(value, str):
        arr = _parse_text(where, value, dtype)
        shape = _text_shape(declared, arr.size, dims)
        if shape is None or int(np.prod(shape, dtype=np.int64)) != arr.size:
            raise InvalidModelError(f"{where}: {arr.size} values, but the graph input '{name}' is "
                                    f"{_describe(dtype, declared)}")
        return arr.reshape(shape)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        arr = np.asarray(value)
        if arr.dtype.name != dtype and not (np.isscalar(value) and not isinstance(value, np.generic)):
            raise InvalidModelError(f"{where}: a value of {_describe(arr.dtype.name, arr.shape)}, but the "
                                    f"graph input '{name}' is {_describe(dtype, declared)}")
        if arr.dtype.name != dtype:
            arr = _exact(where, np.asarray([value]), dtype).reshape(())
    else:  # a list of numbers
        try:
            raw = np.asarray(value)
        except ValueError as e:
            raise InvalidModelError(f"{where}: not a rectangular array of numbers ({e})") from None
        if raw.dtype.kind not in "biuf":
            raise InvalidModelError(f"{where}: not an array of numbers (got {raw.dtype})")
        arr = _exact(where, raw.reshape(-1), dtype).reshape(raw.shape)
    if not _fits(arr.shape, declared, dims):
        raise InvalidModelError(f"{where}: a value of shape {list(arr.shape)}, but the graph input '{name}' "
                                f"is {_describe(dtype, declared)}")
    return np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes a 0-d array 1-d


def _load_npy(where: str, path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidModelError(f"{where}: file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"{where}: cannot read '{path}' as a .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise InvalidModelError(f"{where}: '{path}' is not a single .npy array")
    return arr


def _parse_text(where: str, text: str, dtype: str) -> np.ndarray:
    tokens = [t.strip() for t in text.split(",")] if text.strip() else []
    if any(t == "" for t in tokens):
        raise InvalidModelError(f"{where}: an empty value in the list '{text}'")
    kind = np.dtype(dtype).kind
    vals = []
    for t in tokens:
        try:
            if kind == "b":
                if t.lower() not in ("0", "1", "true", "false"):
                    raise ValueError(t)
                vals.append(t.lower() in ("1", "true"))
            elif kind in "iu":
                vals.append(int(t, 10))
            else:
                vals.append(float(t))
        except ValueError:
            what = {"b": "a bool (0, 1, true, false)", "i": "an integer", "u": "an integer"}.get(kind, "a number")
            raise InvalidModelError(f"{where}: '{t}' is not {what} (the input is {dtype})") from None
    return _exact(where, np.array(vals, dtype=object), dtype)


def _exact(where: str, raw: np.ndarray, dtype: str) -> np.ndarray:
    """Numbers converted to dtype only where the conversion keeps their value."""
    kind = np.dtype(dtype).kind
    out = np.empty(raw.shape, dtype)
    for i, v in enumerate(raw.reshape(-1).tolist()):
        if kind in "iu":
            if isinstance(v, float) and not float(v).is_integer() or isinstance(v, bool) and kind != "b":
                raise InvalidModelError(f"{where}: {v!r} is not an integer (the input is {dtype})")
            info = np.iinfo(dtype)
            if not info.min <= int(v) <= info.max:
                raise InvalidModelError(f"{where}: {v} is out of range for {dtype} ({info.min}..{info.max})")
            v = int(v)
        elif kind == "b" and v not in (0, 1, True, False):
            raise InvalidModelError(f"{where}: {v!r} is not a bool (the input is bool)")
        out.reshape(-1)[i] = v
    return out


def _text_shape(declared, count: int, dims: dict):
    if declared is None:
        return (count,)
    shape = [dims.get(d, d) if isinstance(d, str) else d for d in declared]
    free = [i for i, d in enumerate(shape) if isinstance(d, str)]
    if len(free) == 1 and len(shape) == 1:
        shape[0] = count
    elif free:
        return None
    return tuple(shape)


def bind_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with each bound input an initializer of its value (IR version < 4
    lists initializers as inputs too: the input then stays, holding the value)."""
    if not values:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [vi for vi in out.graph.input if vi.name not in values or out.ir_version < 4]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    for name, arr in values.items():
        out.graph.initializer.append(numpy_helper.from_array(arr, name))
    return out


def digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def key_of(values: dict[str, np.ndarray]) -> dict:
    """What the compile cache and the build id know of the bound values."""
    return {n: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": digest(a)} for n, a in sorted(values.items())}


def manifest_entries(values: dict[str, np.ndarray]) -> list[dict]:
    return [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape), "sha256": digest(a),
             **({"values": a.reshape(-1).tolist()} if a.size <= MANIFEST_VALUES else {})}
            for n, a in values.items()]


def bindable_inputs(v, graph) -> list[str]:
    """The graph inputs (IR values) a run-time value is computed from, in graph order: what
    binding would turn it into a constant (folding already took what depends on shapes only)."""
    seen, todo, found = set(), [v], set()
    ins = {id(x) for x in graph.inputs}
    while todo:
        x = todo.pop()
        if x is None or x.is_const or id(x) in seen:
            continue
        seen.add(id(x))
        if id(x) in ins:
            found.add(id(x))
        elif x.producer is not None:
            todo.extend(x.producer.inputs)
    return [x for x in graph.inputs if id(x) in found]
