"""Validation before conversion: an invalid model is refused, never compiled into a
different network.

`validate_model` runs before the importer converts anything and reports every problem it
finds in ONE error (InvalidModelError when any problem is the model's fault, else
UnsupportedError):

- each node (a subgraph's too: If branches, Loop and Scan bodies) against its op's schema for the model's opset imports (onnx.checker.check_node:
  unknown or misspelled attributes, wrong attribute types, input/output counts); an op that
  is no ONNX operator at all (the compiler's internal `edgec.Copy`, or `Copy`) says so;
- ops, op domains and element types this compiler does not support, all listed at once (of
  the com.microsoft domain only the QOperator ops frontend/qoperator.py rewrites are taken,
  of the preview domains only the ops frontend/preview.py decomposes);
- single assignment: a tensor written by two nodes, a node writing a graph input or an
  initializer, two nodes (or two graph inputs, or initializers) with one name (an output
  listed twice is fine: onnxruntime and the checker accept it, and both copies are written);
- graph inputs: no shape at all (not a scalar: a scalar has a shape with no dimensions),
  negative dimensions (a zero-sized one is an empty tensor: fine), dynamic dimensions not bound
  with --dim (and how to bind them);
- every node input's element type against its schema's type constraints (an int32 LSTM
  bias, a float16 initial state beside float32 X), with the types of intermediate tensors
  from onnx's type inference; shapes are the importer's business;
- then onnx.checker.check_model (not full_check) for the rest of the format.

`check_declared_types` runs after import: a graph output whose declared dtype or shape
disagrees with what the compiler inferred is refused (a symbolic or unknown declared
dimension agrees with anything).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidModelError, UnsupportedError
from ..ir import DTYPES, TensorType
from ..ops import registry
from .preview import taken as preview_op
from .qoperator import MICROSOFT_OPS, rewritten

DEFAULT_DOMAINS = ("", "ai.onnx")
# ops the importer takes itself (no op class): control flow is inlined (frontend/control_flow.py)
IMPORTER_OPS = {"Constant", "If", "Loop", "Scan"}
ATTR = onnx.AttributeProto
SUBGRAPH_ATTRS = (ATTR.GRAPH, ATTR.GRAPHS)
# int attributes that are flags: any value but 0 or 1 is read differently by different
# runtimes (onnxruntime's Reduce* keep dims only for keepdims == 1, numpy-minded code for != 0)
FLAG_ATTRS = {"keepdims", "noop_with_empty_axes", "transA", "transB", "count_include_pad", "ceil_mode",
              "allowzero", "select_last_index", "exclusive", "reverse", "input_forget", "linear_before_reset",
              "layout", "storage_order", "training_mode", "is_causal"}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def dtype_name(elem_type: int) -> str:
    """numpy's name of an ONNX element type (as the IR spells dtypes), else ONNX's own name."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001  (an unknown enum value, or a type numpy lacks)
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"onnx type {elem_type}"


class Problems:
    """Everything wrong with a model, raised as one error once collected."""

    def __init__(self):
        self.items: list[tuple[type, str, str | None, str | None]] = []  # (kind, message, node, op)
        self.note = ""  # said once, after the list

    def invalid(self, msg: str, node: str | None = None, op: str | None = None):
        self.items.append((InvalidModelError, msg, node, op))

    def unsupported(self, msg: str, node: str | None = None, op: str | None = None):
        self.items.append((UnsupportedError, msg, node, op))

    def raise_all(self):
        if not self.items:
            return
        kind = InvalidModelError if any(k is InvalidModelError for k, *_ in self.items) else UnsupportedError
        if len(self.items) == 1:
            _, msg, node, op = self.items[0]
            raise kind(msg + self.note, node=node, op=op)
        parts = [(f"node '{node}' ({op}): " if node is not None else "") + msg for _, msg, node, op in self.items]
        raise kind(f"{len(parts)} problems: " + "; ".join(parts) + self.note)


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in model.opset_import}


def _first_opset(op_type: str) -> int | None:
    versions = [s.since_version for s in onnx.defs.get_all_schemas_with_history()
                if s.name == op_type and s.domain == ""]
    return min(versions, default=None)


# the checker refuses an op version that a later opset deprecated (GroupNormalization-18
# once opset 21 redefined it), though the model is valid for its own opset
DEPRECATED = "is deprecated in domain_version"


def _check_nodes(model: onnx.ModelProto, p: Problems):
    opsets = _opsets(model)
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = model.ir_version or onnx.IR_VERSION
    ctx.opset_imports = opsets
    unsupported_ops = False
    for prefix, i, proto in _all_nodes(model.graph):
        name, op = prefix + (proto.name or f"{proto.op_type}_{i}"), proto.op_type
        preview = preview_op(proto)  # FlexAttention and the optimizers (frontend/preview.py)
        if proto.domain not in DEFAULT_DOMAINS and not preview:
            if not rewritten(proto):  # the QOperator ops of frontend/qoperator.py are taken
                p.unsupported(f"unsupported op domain '{proto.domain}'" + (
                    f" (of it only {', '.join(sorted(MICROSOFT_OPS))} are supported)"
                    if proto.domain == "com.microsoft" else ""), name, op)
            continue
        if not preview and not onnx.defs.has(op):
            p.unsupported(f"unsupported op '{op}': not an ONNX operator", name, op)
            continue
        if preview or not any(a.type in SUBGRAPH_ATTRS for a in proto.attribute):
            checked = proto
            if proto.domain == "ai.onnx" or preview:
                checked = onnx.NodeProto()
                checked.CopyFrom(proto)
                checked.domain = "" if proto.domain == "ai.onnx" else proto.domain
                if preview:  # FlexAttention's score_mod / prob_mod are checked node by node below
                    del checked.attribute[:]
                    checked.attribute.extend(a for a in proto.attribute if a.type not in SUBGRAPH_ATTRS)
            try:
                onnx.checker.check_node(checked, ctx)
            except onnx.checker.ValidationError as e:
                msg = one_line(e)
                if DEPRECATED in msg:  # an op version a later opset replaced: still defined, onnxruntime runs it
                    continue
                first = _first_opset(op)
                if msg.startswith("No Op registered") and first is not None and first > opsets.get("", 0):
                    msg = f"{op} is not defined in opset {opsets.get('', 0)} (it first appears in opset {first})"
                p.invalid(msg, name, op)
        if op not in registry and op not in IMPORTER_OPS and not rewritten(proto) and not preview:
            p.unsupported(f"unsupported op '{op}'", name, op)
            unsupported_ops = True
        for a in proto.attribute:
            if a.name in FLAG_ATTRS and a.type == ATTR.INT and a.i not in (0, 1):
                p.invalid(f"attribute '{a.name}' is {a.i}; it is a flag, 0 or 1", name, op)
            elem = a.t.data_type if a.type == ATTR.TENSOR else a.i if a.type == ATTR.INT and a.name in ("to", "dtype") \
                else None
            if elem is not None and dtype_name(elem) not in DTYPES:
                p.unsupported(f"attribute '{a.name}': unsupported element type {dtype_name(elem)}", name, op)
    if unsupported_ops:
        p.note = f" (`edgec ops` lists the {len(registry.names())} supported ops)"


def _all_nodes(graph: onnx.GraphProto, prefix: str = ""):
    """(name prefix, index, node) of every node, those of subgraphs (If branches, Loop and
    Scan bodies) after the node holding them, prefixed with its name as the importer
    names them (frontend/control_flow.py: `<node>/<branch or iteration>/<name>`; `...`
    stands for the iteration)."""
    for i, proto in enumerate(graph.node):
        yield prefix, i, proto
        name = prefix + (proto.name or f"{proto.op_type}_{i}")
        for a in proto.attribute:
            for sub in ([a.g] if a.type == ATTR.GRAPH else list(a.graphs)):
                part = (a.name.removesuffix("_branch") if proto.op_type == "If" else
                        a.name if preview_op(proto) else "...")  # FlexAttention's score_mod / prob_mod
                yield from _all_nodes(sub, f"{name}/{part}/")


def _check_names(graph: onnx.GraphProto, p: Problems):
    inits: dict[str, int] = {}
    for t in graph.initializer:
        if t.name in inits:
            p.invalid(f"two initializers are named '{t.name}'")
        inits[t.name] = t.data_type
        if dtype_name(t.data_type) not in DTYPES:
            p.unsupported(f"initializer '{t.name}' has unsupported element type {dtype_name(t.data_type)}")
    inputs: set[str] = set()
    for vi in graph.input:
        if vi.name in inputs:
            p.invalid(f"graph input '{vi.name}' is listed twice")
        inputs.add(vi.name)
    writers: dict[str, tuple[str, str]] = {}
    named: dict[str, tuple[int, str]] = {}
    for i, proto in enumerate(graph.node):
        name, op = proto.name or f"{proto.op_type}_{i}", proto.op_type
        if proto.name:
            if proto.name in named:
                j, other = named[proto.name]
                p.invalid(f"two nodes are named '{proto.name}': node #{j} ({other}) and node #{i} ({op})")
            else:
                named[proto.name] = (i, op)
        for out in proto.output:
            if not out:
                continue
            if out in writers:
                first, first_op = writers[out]
                p.invalid(f"tensor '{out}' is written by two nodes: '{first}' ({first_op}) and '{name}' ({op})")
            elif out in inputs:
                p.invalid(f"node '{name}' ({op}) writes '{out}', which is a graph input")
            elif out in inits:
                p.invalid(f"node '{name}' ({op}) writes '{out}', which is an initializer")
            writers.setdefault(out, (name, op))


def _check_inputs(graph: onnx.GraphProto, dims: dict, p: Problems):
    inits = {t.name for t in graph.initializer}
    for key, value in dims.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            p.invalid(f"--dim {key}={value}: a dimension must be a positive integer")
    for vi in graph.input:
        if vi.name in inits:  # an initializer listed as input (old IR versions): its own type
            continue
        if not vi.type.HasField("tensor_type"):
            p.unsupported(f"input '{vi.name}' is not a tensor")
            continue
        tt = vi.type.tensor_type
        if tt.elem_type == 0:
            p.invalid(f"input '{vi.name}' has no element type")
        elif dtype_name(tt.elem_type) not in DTYPES:
            p.unsupported(f"input '{vi.name}' has unsupported element type {dtype_name(tt.elem_type)}")
        if not tt.HasField("shape"):
            p.invalid(f"input '{vi.name}' has no shape (rank unknown); declare its shape in the model "
                      f"(a scalar is a shape with no dimensions)")
            continue
        unbound = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    p.invalid(f"input '{vi.name}' has a negative dimension {d.dim_value} (axis {axis})")
            elif d.dim_param:
                if d.dim_param not in dims:
                    unbound.append(d.dim_param)
            else:
                p.unsupported(f"input '{vi.name}' has a dynamic dimension with no name (axis {axis}): "
                              f"--dim binds named dimensions only; give it a name (dim_param) or a fixed "
                              f"size in the model (onnx.tools.update_model_dims)")
        if unbound:
            names = list(dict.fromkeys(unbound))
            p.unsupported(f"input '{vi.name}' has a dynamic dimension {', '.join(repr(n) for n in names)}; "
                          f"fix it at build time with {' '.join(f'--dim {n}=1' for n in names)}")


def _value_types(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> schema type string ("tensor(float)") of every tensor whose element type
    is known: inputs, initializers, and what onnx's (lenient) type inference says of the rest.
    Declared value_info and output types are left out: the inferred ones are wanted."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.output:
        vi.ClearField("type")
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001  (inference gave up: known types only)
        m = model
    types = {}
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return {k: f"tensor({onnx.TensorProto.DataType.Name(v).lower()})" for k, v in types.items()
            if v in onnx.TensorProto.DataType.values()}


def _check_types(model: onnx.ModelProto, p: Problems):
    """Each node input's type against its op schema's constraints, and inputs sharing one
    type variable (T) against each other."""
    types = _value_types(model)
    opset = _opsets(model).get("", 0)
    for i, proto in enumerate(model.graph.node):
        name, op = proto.name or f"{proto.op_type}_{i}", proto.op_type
        try:
            schema = onnx.defs.get_schema(op, opset, "")
        except Exception:  # noqa: BLE001  (not a default-domain op: reported elsewhere)
            continue
        if proto.domain not in DEFAULT_DOMAINS or not schema.inputs:
            continue
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        bound: dict[str, tuple[str, str]] = {}
        for k, x in enumerate(proto.input):
            if not x or x not in types:
                continue
            param = schema.inputs[min(k, len(schema.inputs) - 1)]
            if k >= len(schema.inputs) and param.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
                continue
            t, ts = types[x], param.type_str
            if ts in allowed:
                if t not in allowed[ts]:
                    p.invalid(f"input '{x}' ({param.name}) is {t}; {op} takes {ts} in "
                              f"{{{', '.join(sorted(a[7:-1] for a in allowed[ts]))}}}", name, op)
                elif ts in bound and bound[ts][1] != t and (param.is_homogeneous or bound[ts][0] != param.name):
                    p.invalid(f"input '{x}' ({param.name}) is {t} but '{bound[ts][2]}' is {bound[ts][1]}: "
                              f"both are {ts}", name, op)
                bound.setdefault(ts, (param.name, t, x))
            elif ts.startswith("tensor(") and t != ts:
                p.invalid(f"input '{x}' ({param.name}) is {t}; {op} takes {ts}", name, op)


def validate_model(model: onnx.ModelProto, dims: dict | None = None):
    """Raise one CompileError listing every problem found, or return."""
    p = Problems()
    _check_nodes(model, p)
    _check_names(model.graph, p)
    _check_inputs(model.graph, dims or {}, p)
    if not p.items:
        _check_types(model, p)
    p.raise_all()
    # a graph output declared without a shape is valid ONNX to onnxruntime (and common from
    # exporters) but the checker wants the field: it is present, empty, only while it checks
    bare = [vi for vi in model.graph.output
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    for vi in bare:
        vi.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        if DEPRECATED in str(e):  # its nodes were checked one by one above
            return
        raise InvalidModelError(f"the ONNX checker refuses the model: {one_line(e)}") from None
    except ValueError:  # a model over protobuf's 2 GB cannot be checked in memory
        return
    finally:
        for vi in bare:
            vi.type.tensor_type.ClearField("shape")


def check_declared_types(declared: list[onnx.ValueInfoProto], inferred: list[TensorType], what: str = "output"):
    """Declared graph outputs (or value_info tensors: what="tensor") against the inferred
    types: every disagreement, in one error."""
    p = Problems()
    for vi, t in zip(declared, inferred):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if not tt.elem_type and what == "output":  # onnxruntime refuses such a model at load
            p.invalid(f"output '{vi.name}' declares no element type (UNDEFINED, 0)")
        if tt.elem_type and dtype_name(tt.elem_type) != t.dtype:
            p.invalid(f"{what} '{vi.name}' is declared {dtype_name(tt.elem_type)}, inferred {t.dtype}")
        if not tt.HasField("shape"):
            continue
        want = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(want) != len(t.shape) or any(w is not None and w != s for w, s in zip(want, t.shape)):
            shown = [w if w is not None else (d.dim_param or "?") for w, d in zip(want, tt.shape.dim)]
            p.invalid(f"{what} '{vi.name}' is declared with shape [{', '.join(map(str, shown))}], "
                      f"inferred {list(t.shape)}")
    p.raise_all()
