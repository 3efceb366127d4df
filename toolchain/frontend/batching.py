"""A bounded batch dimension (`--dim N<=8`): one library serving every batch size up to
the bound.

The graph is compiled for one item (N bound to 1) and the entry point runs it once per
item, with the inputs and outputs that carry the batch advanced by one item each time.
The code inside stays fully static and as fast as a batch-1 build; the arena holds one
item's intermediates, whatever the batch.

That is only correct when no item's outputs depend on another item's inputs. The model is
imported twice, at N = 1 and N = 2, and compared value by value: every tensor must either
keep its shape (it does not carry the batch) or differ exactly on axis 0 (1 against 2); a
node that reads the batch must write it; a constant that differs between the two imports
(computed from N's size) may only be read as a shape (Op.shape_operands); and every node
that touches the batch must be item-wise by its op's own rule (Op.item_wise: a Softmax
over axis 0 keeps its shape but mixes items). Anything else is refused, naming the node
or tensor.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import CompileError, UnsupportedError
from ..ir import BatchBound, Graph
from ..ops import registry
from .onnx_import import import_model
from .specialize import import_specialized


def split_dims(dims: dict | None) -> tuple[dict, dict]:
    """{name: int | (lo, hi)} -> (fixed {name: int}, bounded {name: (lo, hi)})."""
    fixed, bounded = {}, {}
    for key, val in (dims or {}).items():
        if isinstance(val, (tuple, list)):
            lo, hi = (int(x) for x in val)
            if not 1 <= lo <= hi:
                raise UnsupportedError(f"dim '{key}': bounds {lo}..{hi} must satisfy 1 <= lo <= hi")
            bounded[key] = (lo, hi)
        else:
            fixed[key] = int(val)
    return fixed, bounded


def import_batched(model: onnx.ModelProto, name: str, dims: dict | None) -> Graph:
    """The graph for `dims` (shape-deciding inputs specialized: frontend/specialize.py);
    with a bounded dim, the checked per-item graph (g.batch set)."""
    fixed, bounded = split_dims(dims)
    if not bounded:
        return import_specialized(model, name, fixed, import_model)
    if len(bounded) > 1:
        raise UnsupportedError(f"one bounded dimension per build, got {sorted(bounded)}")
    (dim, (lo, hi)), = bounded.items()
    where = f"--dim {dim}<={hi}"
    one = import_model(model, name, {**fixed, dim: 1})
    try:
        two = import_model(model, name, {**fixed, dim: 2})
    except CompileError as e:
        raise UnsupportedError(f"{where}: the graph holds only a batch of 1 ({e})") from None
    carries = _carriers(one, two, where)
    _check_nodes(one, two, carries, where)
    ins = tuple(carries[id(v)] for v in one.inputs)
    outs = tuple(carries[id(v)] for v in one.outputs)
    if not any(ins):
        raise UnsupportedError(f"{where}: no input has '{dim}' as its first axis")
    for v, c in zip(one.outputs, outs):
        if not c:
            raise UnsupportedError(f"{where}: output '{v.name}' does not carry '{dim}' on axis 0")
    one.batch = BatchBound(dim, lo, hi, ins, outs)
    return one


def _carriers(one: Graph, two: Graph, where: str) -> dict:
    """id(value at N=1) -> carries the batch on axis 0; refuses any other change of shape."""
    pairs = list(zip(one.inputs, two.inputs))
    if len(one.nodes) != len(two.nodes) or any(a.op != b.op for a, b in zip(one.nodes, two.nodes)):
        raise UnsupportedError(f"{where}: the graph has a different structure for different batch sizes")
    for a, b in zip(one.nodes, two.nodes):
        pairs += list(zip(a.outputs, b.outputs))
    carries = {}
    for a, b in pairs:
        s1, s2 = a.type.shape, b.type.shape
        if s1 == s2:
            carries[id(a)] = False
        elif len(s1) == len(s2) and s1[0] == 1 and s2[0] == 2 and s1[1:] == s2[1:]:
            carries[id(a)] = True
        else:
            who = f"node '{a.producer.name}' ({a.producer.op})" if a.producer else "it"
            raise UnsupportedError(f"{where}: tensor '{a.name}' is {list(s1)} for a batch of 1 and {list(s2)} "
                                   f"for 2; the batch must stay on axis 0 of every tensor ({who} moves or "
                                   "reshapes it)")
    return carries


def _check_nodes(one: Graph, two: Graph, carries: dict, where: str):
    for a, b in zip(one.nodes, two.nodes):
        op = registry.get(a.op)
        reads = any(v is not None and not v.is_const and carries.get(id(v)) for v in a.inputs)
        writes = [carries[id(v)] for v in a.outputs]
        if reads and not all(writes):
            raise UnsupportedError(f"{where}: node '{a.name}' ({a.op}) reduces or mixes over the batch axis")
        if (reads or any(writes)) and not op.item_wise(a):
            raise UnsupportedError(f"{where}: node '{a.name}' ({a.op}) mixes items of the batch "
                                   "(it is not item-wise on axis 0 as configured)")
        for i, (x, y) in enumerate(zip(a.inputs, b.inputs)):
            if x is not None and x.is_const and i not in op.shape_operands and not (
                    y is not None and y.is_const and _same(x.data, y.data)):
                raise UnsupportedError(f"{where}: node '{a.name}' ({a.op}) reads a value computed from "
                                       "the batch size as data")


def _same(x, y) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
