"""ONNX front end: ModelProto -> Graph.

Nodes are imported in topological order; each is canonicalized by its op and typed by
its shape rule at once, and a node whose inputs are all constants is evaluated right
away (shape arithmetic such as Shape -> Gather -> Concat -> Reshape must be known
before the Reshape can be typed). If, Loop and Scan are inlined as they are met
(frontend/control_flow.py): their subgraphs' nodes go through the same Importer; so do
the preview ops FlexAttention, Adagrad, Adam and Momentum (frontend/preview.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CompileError, InvalidModelError, UnsupportedError
from ..ir import DTYPES, Graph, TensorType, Value
from ..ops import registry
from ..passes.fold import fold_node
from . import control_flow, preview
from .binding import bindable_inputs
from .float16 import Float16, refuse_computed_float16
from .qoperator import attribute, expand
from .validate import check_declared_types, validate_model

# 6: the opset of older exporters (legacy broadcast), up to the newest the installed onnx
# defines. An op keeps the semantics it has had since opset 21 or earlier; what changed in
# later opsets for the ops in the registry (checked with onnx.defs.get_schema(op, v) for
# v = 22..28, onnx 1.23):
#   - 22 (AveragePool, Conv, ConvTranspose, Dropout, Elu, GlobalAveragePool, GlobalMaxPool,
#     HardSigmoid, HardSwish, InstanceNormalization, MaxPool, Mish, Selu, Softplus,
#     Softsign, ThresholdedRelu) and 23/24/25 (Cast, ConstantOfShape, Flatten, Identity,
#     Pad, Reshape, Shape, Squeeze, Transpose, Unsqueeze): new element types only
#     (bfloat16, float8 other than e5m2, float4, int4, int2), which the importer rejects by type;
#   - Cast-24: attribute round_mode, which only affects casts to float8e8m0 (rejected);
#   - Range-27: attribute stash_type (float16/bfloat16 accumulate in float32 by default);
#   - ReduceLogSumExp-28: integer types dropped (no change for float);
#   - DepthToSpace-28: same signature and text;
#   - SpaceToDepth-28: attribute mode, "CRD" a new block order (ops/movement.py).
SUPPORTED_OPSETS = range(6, onnx.defs.onnx_opset_version() + 1)
ML_DOMAIN = "ai.onnx.ml"  # its ops in the registry (Op.domain) are taken; a model may import it alone


def onnx_dtype(elem_type: int) -> str:
    try:
        name = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        name = f"onnx type {elem_type}"
    if name not in DTYPES:
        raise UnsupportedError(f"unsupported element type {name}")
    return name


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.load_external_data_for_model(model, str(path.parent))
    except CompileError:
        raise
    except Exception as e:  # protobuf DecodeError, missing external data file...
        raise InvalidModelError(f"cannot read ONNX model {path}: {type(e).__name__}: {e}") from None
    return model


def import_model(model: onnx.ModelProto, name: str = "model", dims: dict[str, int] | None = None) -> Graph:
    utf8_names(model)
    opset = _default_opset(model)
    validate_model(model, dims)
    model, origin = expand(model, opset)  # QOperator ops -> QDQ (frontend/qoperator.py)
    try:
        return _convert(model, name, dims, opset, origin)
    except CompileError as e:
        raise attribute(e, origin) from None


def _convert(model: onnx.ModelProto, name: str, dims, opset: int, origin: dict) -> Graph:
    g = Graph(name)
    env: dict[str, Value] = {}
    onnx_names: dict[int, str] = {}  # id(graph input) -> its name in the model
    onnx_graph = model.graph
    half = Float16(g, opset)

    for init in onnx_graph.initializer:
        env[init.name] = g.const(init.name, _tensor(init))
    for vi in onnx_graph.input:
        if vi.name in env:  # an initializer listed as input keeps its default (old IR versions)
            continue
        v = Value(g.unique(vi.name), _value_type(vi, dims or {}))
        g.inputs.append(v)
        onnx_names[id(v)] = vi.name
        env[vi.name] = v

    Importer(g, opset, half, onnx_names, origin).nodes(onnx_graph, env)

    for vi in onnx_graph.output:
        if vi.name not in env:
            raise InvalidModelError(f"graph output '{vi.name}' is not produced by any node")
        g.outputs.append(env[vi.name])
    if not g.outputs:
        raise InvalidModelError("the model has no outputs")
    check_declared_types(list(onnx_graph.output), [v.type for v in g.outputs])
    # intermediate tensors' declared types (value_info) too, where the tensor still exists
    known = [vi for vi in onnx_graph.value_info if vi.name in env and env[vi.name].type is not None]
    check_declared_types(known, [env[vi.name].type for vi in known], what="tensor")
    g.output_names = [vi.name for vi in onnx_graph.output]
    return g


def reads(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` (or of a subgraph nested in it) reads, and its outputs."""
    names = {o.name for o in graph.output}
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= reads(sub)
    return names


class Importer:
    """Imports nodes into one graph: each canonicalized, typed, folded when it can be. A
    control-flow node (frontend/control_flow.py) imports its subgraphs' nodes through it."""

    def __init__(self, g: Graph, opset: int, half: Float16, onnx_names: dict, origin: dict):
        self.g, self.opset, self.half = g, opset, half
        self.onnx_names = onnx_names  # id(graph input) -> its name in the model (for --bind hints)
        self.origin = origin  # generated node name -> (the model's node it came from, ...) (qoperator)

    def nodes(self, graph: onnx.GraphProto, env: dict[str, Value], prefix: str = ""):
        """Imports the nodes of `graph` (the model's, or a subgraph's with its inputs and the
        outer scope in `env`); binds each output name in `env`."""
        read = reads(graph)  # an optional output nobody reads may be left unproduced
        for i, proto in enumerate(graph.node):
            self.node(proto, prefix + (proto.name or f"{proto.op_type}_{i}"), env, read)

    def emit(self, op_type: str, name: str, inputs: list, attrs: dict, source: str) -> list[Value]:
        """A node the compiler makes (a Where selecting an If's result, an unrolled loop's
        Concat), through the same path as a model's node; returns its outputs."""
        env = {f"in{k}": v for k, v in enumerate(inputs)}
        proto = helper.make_node(op_type, list(env), [f"{name}_out"], name=name, **attrs)
        self.node(proto, name, env, set(proto.output), source=source)
        return [env[f"{name}_out"]]

    def node(self, proto: onnx.NodeProto, node_name: str, env: dict[str, Value], read: set[str],
             source: str | None = None):
        g, opset, half = self.g, self.opset, self.half
        if preview.taken(proto):  # FlexAttention, the training optimizers: decomposed (frontend/preview.py)
            preview.inline(self, proto, node_name, env)
            return
        if proto.domain not in ("", "ai.onnx", ML_DOMAIN) or (
                proto.domain == ML_DOMAIN and proto.op_type not in registry.in_domain(ML_DOMAIN)):
            raise UnsupportedError(f"unsupported op domain '{proto.domain}'", node=node_name, op=proto.op_type)
        if proto.op_type in control_flow.OPS:
            try:
                control_flow.inline(self, proto, node_name, env)
            except CompileError as e:
                if e.node != node_name or getattr(e, "operand", None) is None or getattr(e, "bind_inputs", None):
                    raise
                raise _suggest_bind(e, e.operand, proto, env, g, self.onnx_names) from None
            return
        attrs = {a.name: _attr(a, g) for a in proto.attribute}
        _check_inference_only(proto, env, node_name, g, self.onnx_names)
        if proto.op_type == "Constant":
            env[proto.output[0]] = g.const(proto.output[0], _constant_value(attrs, node_name))
            return
        op = registry.onnx(proto.op_type, node=node_name, domain=proto.domain)
        for key in op.dtype_attrs:
            if isinstance(attrs.get(key), int):
                attrs[key] = onnx_dtype(attrs[key])
        inputs = []
        for x in proto.input:
            if x == "":
                inputs.append(None)
            elif x in env:
                inputs.append(env[x])
            else:
                raise InvalidModelError(f"input '{x}' is not produced by any earlier node", node=node_name,
                                        op=proto.op_type)
        before = half.widen(proto.op_type, node_name, inputs)
        outputs = [Value(g.unique(o or f"{node_name}_unused{j}"), None) for j, o in enumerate(proto.output)]
        node = g.add_node(proto.op_type, node_name, inputs, outputs, attrs)
        node.sources = (source or self.origin.get(node_name, (node_name,))[0],)
        try:
            op.canonicalize(node, opset)
            if node.op != proto.op_type:  # canonicalize chose another op (BatchNormalization's training mode)
                op = registry.get(node.op, node=node_name)
            types = op.infer(node)
            known = op.constant_outputs(node, opset) if len(types) < len(node.outputs) else {}
        except CompileError as e:
            raise _suggest_bind(e.at(node.name, node.op), getattr(e, "operand", None), proto, env, g,
                                self.onnx_names) from None
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise InvalidModelError(f"malformed node: {type(e).__name__}: {e}", node=node.name, op=node.op) from e
        if len(types) < len(node.outputs):
            used = [o for j, o in enumerate(proto.output) if j >= len(types) and o in read and j not in known]
            if used:
                raise UnsupportedError(f"optional outputs {used} are not supported", node=node.name, op=node.op)
        node.outputs = node.outputs[:len(types)]
        for out, t in zip(node.outputs, types):
            out.type = t
        folded = fold_node(g, node)
        if folded is None:
            refuse_computed_float16(node, proto.op_type)
        results = half.narrow(proto.op_type, node.name, before, folded or node.outputs)
        for onnx_name, out in zip(proto.output, results):
            if onnx_name:
                env[onnx_name] = out
        for j, data in known.items():  # outputs known whatever the inputs (op.constant_outputs)
            if proto.output[j]:
                env[proto.output[j]] = g.const(proto.output[j], data)


def _suggest_bind(e: CompileError, operand: int | None, proto, env: dict, g: Graph, names: dict) -> CompileError:
    """An operand that must be a compile-time constant but is computed from graph inputs:
    the error names them and how to bind them at build time (e.bind_inputs, their names)."""
    if operand is None or operand >= len(proto.input) or proto.input[operand] not in env:
        return e
    found = [names[id(v)] for v in bindable_inputs(env[proto.input[operand]], g)]
    if not found:
        return e
    what = (f"it is the graph input '{found[0]}'" if len(found) == 1 and proto.input[operand] == found[0]
            else f"it is computed from the graph input{'s' if len(found) > 1 else ''} "
                 + ", ".join(f"'{n}'" for n in found))
    out = type(e)(f"{e}; {what}: bind {'them' if len(found) > 1 else 'it'} at build time with "
                  + " ".join(f"--bind {n}=..." for n in found))
    out.node, out.op, out.bind_inputs = e.node, e.op, found
    return out


def _check_inference_only(proto, env: dict, node_name: str, g: Graph, names: dict):
    """Dropout is imported as Identity: in training mode (input 2 true, or not known at
    compile time) with a ratio that is not a constant 0 it is random (no output could match
    a reference's random generator), so it is refused instead of silently computed as
    Identity. A ratio of 0 in training mode is the identity with an all-true mask. A ratio
    or mode computed from graph inputs: the error names them (--bind)."""
    if proto.op_type == "Dropout" and len(proto.input) > 2 and proto.input[2]:
        mode = env.get(proto.input[2])
        ratio = env.get(proto.input[1]) if proto.input[1] else None  # default 0.5
        zero_ratio = ratio is not None and ratio.is_const and not np.asarray(ratio.data).any()
        if not zero_ratio and (mode is None or not mode.is_const or bool(np.asarray(mode.data).any())):
            err = UnsupportedError("training_mode is not supported with a ratio that is not 0 (random dropout: "
                                   "inference, or a ratio of 0, only)", node=node_name, op="Dropout")
            found = [names[id(v)] for x in (mode, ratio) if x is not None and not x.is_const
                     for v in bindable_inputs(x, g)]
            found = list(dict.fromkeys(found))
            if found:
                err = UnsupportedError(f"{err}; the ratio or the mode is computed from the graph input"
                                       f"{'s' if len(found) > 1 else ''} " + ", ".join(f"'{n}'" for n in found)
                                       + ": bind them at build time with " + " ".join(f"--bind {n}=..." for n in found))
                err.node, err.op, err.bind_inputs = node_name, "Dropout", found
            raise err


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if 1 <= imp.version < SUPPORTED_OPSETS.start:
                return _old_opset(model, imp.version)
            if imp.version not in SUPPORTED_OPSETS:
                raise UnsupportedError(f"opset {imp.version} is not supported (supported: "
                                   f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1})")
            return imp.version
    others = sorted(imp.domain for imp in model.opset_import)
    if others and set(others) <= preview.DOMAINS | {ML_DOMAIN}:  # only preview ops (frontend/preview.py) or
        return SUPPORTED_OPSETS.stop - 1  # ai.onnx.ml ones: the newest opset
    if others:  # e.g. ai.onnx.preview.training only
        raise UnsupportedError(f"unsupported op domain '{others[0]}' (the model imports no default-domain opset)")
    raise InvalidModelError("the model imports no default-domain opset")


def _old_opset(model, version: int) -> int:
    """An opset before 6 is read as opset 6 when every default-domain op of the model (its
    subgraphs' too) has there the version it has in opset 6 (Not-1, Conv-1, Reshape-5...: the
    same schema); an op that changed by opset 6 (Add-1's legacy broadcast and consumed_inputs,
    Relu-1...) is refused, naming it."""
    first = SUPPORTED_OPSETS.start

    def walk(graph):
        for n in graph.node:
            if n.domain in ("", "ai.onnx"):
                try:
                    then = onnx.defs.get_schema(n.op_type, version, "").since_version
                    now = onnx.defs.get_schema(n.op_type, first, "").since_version
                except onnx.defs.SchemaError:
                    continue  # not defined there: validate_model says so
                if then != now:
                    raise UnsupportedError(
                        f"opset {version} is not supported for this op: {n.op_type}-{then} (its version in opset "
                        f"{version}) differs from {n.op_type}-{now} (its version in opset {first}); a model of opset "
                        f"1..{first - 1} is read as opset {first} only when each of its ops has the same version "
                        f"there (supported opsets: {first}..{SUPPORTED_OPSETS.stop - 1})",
                        node=n.name or None, op=n.op_type)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    walk(sub)

    walk(model.graph)
    return first


def _tensor(t: onnx.TensorProto) -> np.ndarray:
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise InvalidModelError(f"cannot read tensor '{t.name}': {e}") from None
    if np.dtype(arr.dtype).name not in DTYPES:
        raise UnsupportedError(f"tensor '{t.name}' has unsupported element type {arr.dtype}")
    return arr


def _value_type(vi: onnx.ValueInfoProto, dims: dict[str, int]) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedError(f"input '{vi.name}' is not a tensor")
    shape = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # 0: an empty tensor
            shape.append(d.dim_value)
        elif d.dim_param in dims:
            shape.append(dims[d.dim_param])
        else:
            sym = d.dim_param or "?"
            raise UnsupportedError(f"input '{vi.name}' has a dynamic dimension '{sym}'; "
                               f"fix it at build time with --dim {sym}=1")
    return TensorType(onnx_dtype(tt.elem_type), tuple(shape))


def _attr(a: onnx.AttributeProto, g: Graph):
    T = onnx.AttributeProto
    if a.type == T.FLOAT:
        return float(a.f)
    if a.type == T.INT:
        return int(a.i)
    if a.type == T.STRING:
        return a.s.decode()
    if a.type == T.TENSOR:
        return _tensor(a.t)
    if a.type == T.FLOATS:
        return [float(x) for x in a.floats]
    if a.type == T.INTS:
        return [int(x) for x in a.ints]
    if a.type == T.STRINGS:
        return [s.decode() for s in a.strings]
    if a.type == T.GRAPH:
        raise UnsupportedError(f"attribute '{a.name}' holds a subgraph (only If, Loop and Scan take subgraphs: "
                               f"frontend/control_flow.py; this op's is not supported)")
    raise UnsupportedError(f"attribute '{a.name}' has unsupported type {a.type}")


def _constant_value(attrs, node_name) -> np.ndarray:
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise UnsupportedError("Constant without a supported value attribute", node=node_name, op="Constant")


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
            raise InvalidModelError(f"two names decode to the same text '{t}' (invalid UTF-8 in the model)")
        return t

    walk(msg)
    clash = seen & set(fixed)
    if clash:
        raise InvalidModelError(f"name '{min(clash)}' is also the text of an invalid UTF-8 name in the model")
