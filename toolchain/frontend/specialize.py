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
4. if they compute a few different functions (a reduction of [3, 2, 2] to [3, 2] over axis
   1 or axis 2), each is computed and the input's value selects the result (ONNX Where over
   the versions, MAX_VERSIONS at most: the cost is their sum, which binding avoids);
5. if none fits, or there are too many, the importer's error stands, telling the reason:
   --bind is then the way.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from ..errors import UnsupportedError
from ..ir import InputGuard

MAX_ELEMENTS = 6  # elements of one specialized input (an axes or shape vector)
MAX_CANDIDATES = 2048  # imports tried per build (small graphs)
MAX_NODE_IMPORTS = 50_000  # imports tried x the graph's nodes: a large graph tries fewer values
MAX_VERSIONS = 4  # different functions computed side by side, the input selecting one
AXIS_OPERANDS = {"axes", "axis"}
GUARDED_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"}


def import_specialized(model: onnx.ModelProto, name: str, dims, import_model):
    """import_model(model, name, dims); when it fails only because graph inputs decide
    shapes, the graph specialized as above, its guards in g.guards."""
    try:
        return import_model(model, name, dims)
    except UnsupportedError as e:
        first = e
    pending = list(getattr(first, "bind_inputs", None) or [])
    if not pending or not _outputs_static(model):
        raise first
    for _ in range(3):  # each round may find that further inputs decide shapes too
        per_input = _candidates(model, pending)
        if per_input is None:
            raise first
        found = _consistent(model, pending, per_input, name, dims, import_model)
        if isinstance(found, tuple):
            pending += found
            continue
        if isinstance(found, str):
            raise _explain(first, pending, found)
        if len(found) == 1:
            g = found[0][2]
        else:  # several functions: each computed, the input's value selects (ONNX Where)
            try:
                g = import_model(_versions(model, per_input, found), name, dims)
            except Exception as e:  # noqa: BLE001 - a model the selection cannot be built for
                raise _explain(first, pending, f"{len(found)} different results, and selecting among them "
                                                f"failed ({e})") from None
        accepted = [a for group in found for a in group[0]]
        indices = {v.name: i for i, v in enumerate(g.inputs)}
        if any(n not in indices for n in pending):
            raise first
        g.guards = [InputGuard(tuple(indices[n] for n in pending), tuple(pending), tuple(accepted))]
        return g
    raise first


def _static_shape(vi) -> tuple | None:
    """A ValueInfo's declared shape when every dimension is a number, else None."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    if not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return tuple(d.dim_value for d in tt.shape.dim)


def _outputs_static(model) -> bool:
    return all(_static_shape(vi) is not None for vi in model.graph.output)


def _input_info(model, name):
    for vi in model.graph.input:
        if vi.name == name:
            shape = _static_shape(vi)
            return None if shape is None else (helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type), shape)
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


def _declared_shapes(model) -> list[tuple]:
    shapes = (_static_shape(vi) for vi in list(model.graph.input) + list(model.graph.output))
    return [s for s in shapes if s is not None]


def _element_domains(model, size: int, axis_like: bool, real: bool) -> list[list]:
    """Candidate values of each element: an axis within the largest declared rank; else a
    declared dimension, a quotient of two (any quotient for a float input: a scale), 0, 1 or
    -1 (where that makes too many combinations: the dimensions at the element's own position
    in the declared shapes of that many dimensions, as a shape, sizes, scales or repeats
    vector lines up with them)."""
    shapes = _declared_shapes(model)
    if axis_like:
        rank = max((len(s) for s in shapes), default=0)  # an Unsqueeze's output is declared too
        return [list(range(-rank, rank))] * size

    def quotients(pairs):
        return {a / b if real else a // b for a, b in pairs if b and (real or a % b == 0)}

    dims = {d for s in shapes for d in s}
    pool = sorted(dims | quotients((a, b) for a in dims for b in dims) | {0, 1, -1})
    if len(pool) ** size <= MAX_CANDIDATES:
        return [pool] * size
    lined = [s for s in shapes if len(s) == size]
    return [sorted({s[i] for s in lined} | quotients((a[i], b[i]) for a in lined for b in lined) | {0, 1, -1})
            for i in range(size)]


def _candidates(model, names) -> list | None:
    """Per input, (name, dtype, shape, each element's domain); None when an input cannot be
    specialized (not an integer tensor of static shape and few elements, or too many
    combinations)."""
    per_input = []
    total = 1
    for n in names:
        info = _input_info(model, n)
        if (info is None or np.dtype(info[0]).name not in GUARDED_DTYPES
                or int(np.prod(info[1], dtype=np.int64)) > MAX_ELEMENTS):
            return None
        dtype, shape = np.dtype(info[0]), info[1]
        domains = _element_domains(model, int(np.prod(shape, dtype=np.int64)), bool(_roles(model, n) & AXIS_OPERANDS),
                                   dtype.kind == "f")
        if dtype.kind == "u":
            domains = [[d for d in dom if d >= 0] for dom in domains]
        per_input.append((n, dtype, shape, domains))
        total *= int(np.prod([len(d) for d in domains]))
        if total > min(MAX_CANDIDATES, MAX_NODE_IMPORTS // max(len(model.graph.node), 1)):
            return None
    return per_input


def _consistent(model, names, per_input, name, dims, import_model):
    """[(accepted flat value tuples, one combination, graph)] per function the candidates
    consistent with the declared outputs compute (at most MAX_VERSIONS); else the reason
    (str), or the further graph inputs found deciding shapes (tuple)."""
    spaces = [itertools.product(*domains) for _, _, _, domains in per_input]
    groups: dict[bytes, list] = {}
    graphs, values = {}, {}
    further: list[str] = []
    for combo in itertools.product(*spaces):
        arrays = _arrays(per_input, combo)
        try:
            with np.errstate(all="ignore"):  # folding a candidate's arithmetic may divide by zero
                g = import_model(_with_values(model, arrays), name, dims)
        except UnsupportedError as e:
            further += [x for x in getattr(e, "bind_inputs", None) or [] if x not in names and x not in further]
            continue
        except Exception:  # noqa: BLE001 - any value the importer cannot take is not a candidate
            continue
        key = _fingerprint(g)
        if key is not None:
            groups.setdefault(key, []).append(tuple(v for arr in arrays.values() for v in arr.reshape(-1).tolist()))
            graphs.setdefault(key, g)
            values.setdefault(key, combo)
    if not groups:
        return tuple(further) or "no value fits the declared output shapes"
    if len(groups) > MAX_VERSIONS:
        shown = " or ".join(str(list(v[0])) for v in list(groups.values())[:3])
        return f"values that fit them compute {len(groups)} different results ({shown} or ...)"
    return [(accepted, values[key], graphs[key]) for key, accepted in groups.items()]


def _arrays(per_input, combo) -> dict:
    return {n: np.array(c, dtype).reshape(shape) for (n, dtype, shape, _), c in zip(per_input, combo)}


def _versions(model, per_input, groups) -> onnx.ModelProto:
    """The graph once per group (its nodes' outputs suffixed __v<k>, reading its own values),
    and each graph output selected by Where from the version whose accepted values the
    inputs hold (the last one otherwise: the run-time check admits nothing else)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    originals = list(g.node)
    del g.node[:]
    outputs = [o.name for o in g.output]
    inits = []
    produced = {x for node in originals for x in node.output if x}
    for k, (_, combo, _) in enumerate(groups):
        rename = {x: f"{x}__v{k}" for x in produced}
        rename.update({n: f"{n}__v{k}" for n, *_ in per_input})
        for n, arr in _arrays(per_input, combo).items():
            inits.append(numpy_helper.from_array(arr, f"{n}__v{k}"))
        for i, node in enumerate(originals):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{node.name or f'{node.op_type}_{i}'}__v{k}"
            copy.input[:] = [rename.get(x, x) for x in node.input]
            copy.output[:] = [rename.get(x, x) for x in node.output]
            g.node.append(copy)
    key = _key_nodes(g, inits, per_input)
    conds = [_holds(g, inits, key, accepted, k) for k, (accepted, _, _) in enumerate(groups[:-1])]
    last = len(groups) - 1
    for o in outputs:
        chosen = f"{o}__v{last}"
        for k in reversed(range(last)):
            target = o if k == 0 else f"{o}__sel{k}"
            g.node.append(helper.make_node("Where", [conds[k], f"{o}__v{k}", chosen], [target],
                                           name=f"{o}__select{k}"))
            chosen = target
    g.initializer.extend(inits)
    return out


def _key_nodes(g, inits, per_input) -> list[tuple]:
    """(scalar value, dtype), one per element of the specialized inputs, in order."""
    names = []
    for n, dtype, shape, _ in per_input:
        flat = f"{n}__flat"
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{n}__minus1"))
        g.node.append(helper.make_node("Reshape", [n, f"{n}__minus1"], [flat], name=f"{n}__flatten"))
        for i in range(int(np.prod(shape, dtype=np.int64))):
            inits.append(numpy_helper.from_array(np.array(i, np.int64), f"{n}__at{i}"))
            g.node.append(helper.make_node("Gather", [flat, f"{n}__at{i}"], [f"{n}__e{i}"], axis=0,
                                           name=f"{n}__element{i}"))
            names.append((f"{n}__e{i}", dtype))
    return names


def _holds(g, inits, key, accepted, k) -> str:
    """A bool scalar: the key equals one of `accepted`."""
    def equal(x, c, tag):
        x, dtype = x
        inits.append(numpy_helper.from_array(np.array(c, dtype), f"{tag}__c"))
        g.node.append(helper.make_node("Equal", [x, f"{tag}__c"], [tag], name=tag))
        return tag

    def fold(op, xs, tag):
        acc = xs[0]
        for j, x in enumerate(xs[1:]):
            g.node.append(helper.make_node(op, [acc, x], [f"{tag}_{j}"], name=f"{tag}_{j}"))
            acc = f"{tag}_{j}"
        return acc

    rows = [fold("And", [equal(x, c, f"v{k}__r{r}e{i}") for i, (x, c) in enumerate(zip(key, row))], f"v{k}__r{r}")
            for r, row in enumerate(accepted)]
    return fold("Or", rows, f"v{k}__any")


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
    """The graph's outputs on two fixed pseudo-random draws of its inputs (reference
    interpreter). Wide values, so two different functions agree on them only by a remote
    chance: integers in [-1000, 1000) (an integer input that indexes then mostly fails, and the
    candidate is not taken: refusing is the safe side), floats standard normal."""
    from ..interpreter import interpret

    rng = np.random.default_rng(0)
    prints = []
    for _ in range(2):
        feeds = []
        for v in g.inputs:
            shape, dtype = v.type.shape, np.dtype(v.type.dtype)
            if dtype.kind == "f":
                feeds.append(rng.standard_normal(shape).astype(dtype))
            elif dtype.kind == "b":
                feeds.append(rng.integers(0, 2, shape).astype(bool))
            else:
                info = np.iinfo(dtype)
                feeds.append(rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype))
        try:
            with np.errstate(all="ignore"):
                outs = interpret(g, feeds)
        except Exception:  # noqa: BLE001 - a candidate the reference cannot run is not taken
            return None
        prints.append(b"".join(np.ascontiguousarray(o).tobytes() + str(o.shape).encode() for o in outs))
    return b"".join(prints)


def _explain(first: UnsupportedError, names, reason) -> UnsupportedError:
    if not isinstance(reason, str):
        return first
    e = UnsupportedError(f"{first} (specializing {', '.join(repr(n) for n in names)} from the declared "
                         f"output shapes: {reason})")  # str(first) already names the node
    e.node, e.op, e.bind_inputs = first.node, first.op, getattr(first, "bind_inputs", None)
    return e
