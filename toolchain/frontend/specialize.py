"""Shape-deciding graph inputs specialized from the graph's declared output shapes.

A reduction's axes, a Reshape's shape, TopK's k... decide the shapes of what follows, and an
ahead-of-time build with a static arena needs them at compile time. When they come in as
graph inputs, `--bind` fixes them; without it, this module tries what an AOT compiler can
prove instead (as TVM specializes a function to the shapes it is called with, but with the
value checked at run time rather than assumed):

1. the inputs the importer named (UnsupportedError.bind_inputs) get candidate values: each
   element an axis within the rank where the consuming operand is an axis list (its ONNX
   schema name: axes, axis), else a dimension the graph declares, a quotient of two, 0, 1 or -1;
2. the graph is imported with each candidate: those whose output shapes are the declared
   ones are consistent with the model;
3. the consistent candidates are run through the reference interpreter on fixed pseudo-random
   inputs: if they all compute the same outputs, the graph is built for one of them, the
   input stays in the C contract, and `<name>_run` checks at run time that it holds one of
   the consistent values (ERR_INPUT_VALUE otherwise, nothing written);
4. if they compute different functions (a reduction of [3, 2, 2] to [3, 2] over axis 1 or
   axis 2), or none fits, or there are too many, the importer's error stands, telling the
   reason: --bind is then the way.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from ..errors import UnsupportedError
from ..ir import InputGuard

MAX_ELEMENTS = 6  # elements of one specialized input (an axes or shape vector)
MAX_CANDIDATES = 2048  # imports tried per build
AXIS_OPERANDS = {"axes", "axis"}


def import_specialized(model: onnx.ModelProto, name: str, dims, import_model):
    """import_model(model, name, dims); when it fails only because graph inputs decide
    shapes, the graph specialized as above, its guards in g.guards."""
    try:
        return import_model(model, name, dims)
    except UnsupportedError as e:
        first = e
    pending = list(getattr(first, "bind_inputs", None) or [])
    if not pending or _declared_outputs(model) is None:
        raise first
    for _ in range(3):  # each round may find that further inputs decide shapes too
        per_input = _candidates(model, pending)
        if per_input is None:
            raise first
        found = _consistent(model, pending, per_input, name, dims, import_model)
        if isinstance(found, list):
            pending += found
            continue
        if isinstance(found, str):
            raise _explain(first, pending, found)
        g, accepted = found
        indices = {v.name: i for i, v in enumerate(g.inputs)}
        if any(n not in indices for n in pending):
            raise first
        g.guards = [InputGuard(tuple(indices[n] for n in pending), tuple(pending), tuple(accepted))]
        return g
    raise first


def _declared_outputs(model) -> list | None:
    """Each graph output's declared shape, or None if any is not fully static."""
    shapes = []
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            return None
        if not all(d.HasField("dim_value") for d in tt.shape.dim):
            return None
        shapes.append(tuple(d.dim_value for d in tt.shape.dim))
    return shapes


def _input_info(model, name):
    for vi in model.graph.input:
        if vi.name == name:
            tt = vi.type.tensor_type
            if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
                return None
            return helper.tensor_dtype_to_np_dtype(tt.elem_type), tuple(d.dim_value for d in tt.shape.dim)
    return None


def _roles(model, name) -> set[str]:
    """The ONNX schema names of the operands this input feeds directly (axes, shape, k...)."""
    opset = {i.domain or "": i.version for i in model.opset_import}
    roles = set()
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x != name:
                continue
            try:
                schema = defs.get_schema(node.op_type, opset.get(node.domain or "", 1), node.domain or "")
                formal = schema.inputs[min(i, len(schema.inputs) - 1)].name
            except Exception:  # noqa: BLE001 - an op onnx does not define: no role known
                formal = ""
            roles.add(formal.lower())
    return roles


def _declared_dims(model) -> set[int]:
    dims = set()
    for vi in list(model.graph.input) + list(model.graph.output):
        dims |= {d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")}
    return dims


def _candidates(model, names) -> list | None:
    """Per input, its element domain; None when an input cannot be specialized (not an
    integer tensor of static shape and few elements, or too many combinations)."""
    ranks = [len(vi.type.tensor_type.shape.dim) for vi in list(model.graph.input) + list(model.graph.output)]
    declared = _declared_dims(model)
    per_input = []
    total = 1
    for n in names:
        info = _input_info(model, n)
        if info is None or np.dtype(info[0]).kind not in "iu" or int(np.prod(info[1], dtype=np.int64)) > MAX_ELEMENTS:
            return None
        dtype, shape = info
        size = int(np.prod(shape, dtype=np.int64))
        if _roles(model, n) & AXIS_OPERANDS:
            rank = max(ranks, default=0)  # an Unsqueeze's output is declared too
            domain = list(range(-rank, rank))
        else:
            ratios = {a // b for a in declared for b in declared if b and a % b == 0}
            domain = sorted(declared | ratios | {0, 1, -1})
        if np.dtype(dtype).kind == "u":
            domain = [d for d in domain if d >= 0]
        per_input.append((n, np.dtype(dtype), shape, domain))
        total *= len(domain) ** size
        if total > MAX_CANDIDATES:
            return None
    return per_input


def _consistent(model, names, per_input, name, dims, import_model):
    """(graph, accepted flat value tuples) when the candidates consistent with the declared
    outputs all compute the same function; else the reason (str), or the further graph
    inputs found deciding shapes (list)."""
    spaces = [itertools.product(domain, repeat=int(np.prod(shape, dtype=np.int64)))
              for _, _, shape, domain in per_input]
    groups: dict[bytes, list] = {}
    graphs = {}
    further: list[str] = []
    for combo in itertools.product(*spaces):
        values = {n: np.array(c, dtype).reshape(shape) for (n, dtype, shape, _), c in zip(per_input, combo)}
        try:
            g = import_model(_with_values(model, values), name, dims)
        except UnsupportedError as e:
            further += [x for x in getattr(e, "bind_inputs", None) or [] if x not in names and x not in further]
            continue
        except Exception:  # noqa: BLE001 - any value the importer cannot take is not a candidate
            continue
        key = _fingerprint(g)
        if key is not None:
            groups.setdefault(key, []).append(tuple(int(v) for c in combo for v in c))
            graphs.setdefault(key, g)
    if not groups:
        return further or "no value fits the declared output shapes"
    if len(groups) > 1:
        shown = " or ".join(str(list(v[0])) for v in list(groups.values())[:3])
        return f"values that fit them compute different results ({shown}{' or ...' if len(groups) > 3 else ''})"
    (key, accepted), = groups.items()
    return graphs[key], accepted


def _with_values(model, values: dict) -> onnx.ModelProto:
    """The model reading each named input through an initializer of the candidate value (the
    input itself stays, unused, in the graph's inputs: the C contract keeps it)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = {n: f"{n}__specialized" for n in values}
    for node in out.graph.node:
        for i, x in enumerate(node.input):
            if x in renamed:
                node.input[i] = renamed[x]
    for n, arr in values.items():
        out.graph.initializer.append(numpy_helper.from_array(arr, renamed[n]))
    return out


def _fingerprint(g) -> bytes | None:
    """The graph's outputs on fixed pseudo-random inputs (reference interpreter)."""
    from ..interpreter import interpret

    rng = np.random.default_rng(0)
    feeds = []
    for v in g.inputs:
        shape, dtype = v.type.shape, np.dtype(v.type.dtype)
        if dtype.kind == "f":
            feeds.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            feeds.append(rng.integers(0, 2, shape).astype(bool))
        else:
            feeds.append(rng.integers(0, 2, shape).astype(dtype))
    try:
        with np.errstate(all="ignore"):
            outs = interpret(g, feeds)
    except Exception:  # noqa: BLE001 - a candidate the reference cannot run is not taken
        return None
    return b"".join(np.ascontiguousarray(o).tobytes() + str(o.shape).encode() for o in outs)


def _explain(first: UnsupportedError, names, reason) -> UnsupportedError:
    if not isinstance(reason, str):
        return first
    e = UnsupportedError(f"{first} (specializing {', '.join(repr(n) for n in names)} from the declared "
                         f"output shapes: {reason})", node=first.node, op=first.op)
    e.bind_inputs = getattr(first, "bind_inputs", None)
    return e
