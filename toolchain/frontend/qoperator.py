"""Operator-oriented quantized ONNX (QOperator format: what onnxruntime's quantize_static
writes with QuantFormat.QOperator) rewritten at import into the QDQ form the `integer-ops`
pass (passes/quantize.py) already turns into integer ops.

One rewrite per op, each on the ModelProto before conversion (the model was validated as
written first): every quantized input x with (scale, zero point) becomes
DequantizeLinear(x), the op its float form, and the result QuantizeLinear(y_scale, y_zp):

    QLinearConv      DQ(x), DQ(w, axis 0), DQ(B int32, x_scale * w_scale, axis 0) -> Conv -> Q
    QLinearMatMul    DQ(a), DQ(b, per column) -> MatMul -> Q
    com.microsoft:
    QGemm            DQ(A), DQ(B, per column), DQ(C int32, alpha * a_scale * b_scale) -> Gemm
                     [-> Q when y_scale is given; else the output is float]
    QLinearAdd/Mul   DQ(A), DQ(B) -> Add/Mul -> Q
    QLinearConcat    DQ(each input) -> Concat -> Q
    QLinearGlobalAveragePool, QLinearAveragePool, QLinearSoftmax, QLinearSigmoid,
    QLinearLeakyRelu DQ(X) -> the float op -> Q

Conv/MatMul/Gemm with constant int8 weights become integer ops in the pass; the others run in
float between their DQ and Q (the float fallback the manifest lists, under the model's own
node name). float16 scales (QLinearMatMul-21) are widened to float32 (constants at compile
time, others by a Cast). The new nodes are named after the original (`name` for the float op,
`name/dq_x`, `name/q`...); `origin` maps each to the original node, so an error in one (a
zero scale, a zero point out of range or of the wrong type, a per-axis scale of the wrong
length) names the node and op of the model. Only these ops are taken from the com.microsoft
domain; any other op there stays an "unsupported op domain" error.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CompileError, InvalidModelError, UnsupportedError

MS = "com.microsoft"
# op -> (float op, [(x, scale, zero point) input indices], (y_scale, y_zp) indices)
UNARY_LIKE = {
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2)], (3, 4)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
}
MICROSOFT_OPS = frozenset(UNARY_LIKE) | {"QGemm", "QLinearConcat"}
DEFAULT_OPS = frozenset({"QLinearConv", "QLinearMatMul"})
# attributes the float op does not take
DROPPED = {"channels_last", "opset"}


def rewritten(proto) -> bool:
    """Whether this node is one the rewrite takes (its op in its domain)."""
    if proto.domain in ("", "ai.onnx"):
        return proto.op_type in DEFAULT_OPS
    return proto.domain == MS and proto.op_type in MICROSOFT_OPS


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]
                      if vi.type.HasField("tensor_type")}
        self.types.update({t.name: t.data_type for t in g.initializer})
        self.new_inits: list[TensorProto] = []
        self.names = {n for node in g.node for n in (*node.input, *node.output)} | set(self.inits)
        self.origin: dict[str, tuple[str, str, str]] = {}  # new node name -> (node, op, role)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def const(self, base: str, data) -> str:
        name = self.fresh(base)
        t = numpy_helper.from_array(np.asarray(data), name)
        self.new_inits.append(t)
        self.inits[name] = t
        self.types[name] = t.data_type
        return name

    def array(self, name: str):
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def node(self, op, inputs, outputs, role, **attrs):
        # the float op keeps the model's name (float-fallback notes, profiles)
        name = self.fresh(f"{self.name}/{role}") if role else self.name
        self.origin[name] = (self.name, self.op, role or self.float_role)
        self.out.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def scale(self, s: str) -> str:
        """A scale as float32: a float16 constant converted, a tensor of unknown or float16
        type Cast."""
        data = self.array(s)
        if data is not None:
            return s if data.dtype == np.float32 else self.const(f"{s}_f32", data.astype(np.float32))
        if self.types.get(s) == TensorProto.FLOAT:
            return s
        return self.node("Cast", [s], [self.fresh(f"{s}_f32")], f"cast_{s}", to=TensorProto.FLOAT)

    def dq(self, x, s, z, role, axis=None):
        ins = [x, self.scale(s)] + ([z] if z else [])
        kw = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", ins, [self.fresh(f"{x}_dq")], f"dq_{role}", **kw)

    def q(self, y, s, z, out):
        if not z:  # the output is the input's type (T); a missing zero point is 0 of it
            dtype = self.qtype()
            z = self.const(f"{self.name}_yzp", np.zeros((), helper.tensor_dtype_to_np_dtype(dtype)))
        return self.node("QuantizeLinear", [y, self.scale(s), z], [out], "q")

    def qtype(self):
        for i in (2, 0):
            n = self.inputs[i] if len(self.inputs) > i else ""
            if n and n in self.types:
                return self.types[n]
        raise UnsupportedError("the output zero point is missing and the input's type is not known",
                               node=self.name, op=self.op)

    def bias_scale(self, xs, ws, alpha=1.0):
        """x_scale * w_scale (times alpha), float32: a constant where both are, else a Mul."""
        a, b = self.array(xs), self.array(ws)
        if a is not None and b is not None:
            prod = (np.float32(alpha) * a.astype(np.float32).ravel()[0] * b.astype(np.float32)).astype(np.float32)
            return self.const(f"{self.name}_bias_scale", prod.reshape(-1) if prod.size > 1 else prod.reshape(()))
        prod = self.node("Mul", [self.scale(xs), self.scale(ws)], [self.fresh(f"{self.name}_bias_scale")],
                         "bias_scale")
        if alpha != 1.0:
            prod = self.node("Mul", [prod, self.const(f"{self.name}_alpha", np.float32(alpha))],
                             [self.fresh(f"{self.name}_bias_scale_a")], "bias_scale_alpha")
        return prod

    def rank(self, name):
        data = self.array(name)
        return None if data is None else data.ndim

    def rewrite(self, p) -> list:
        self.name, self.op, self.out = p.name, p.op_type, []
        self.inputs = list(p.input) + [""] * 9
        self.float_role = "float op"
        ins = self.inputs
        attrs = {a.name: helper.get_attribute_value(a) for a in p.attribute}
        y = p.output[0]
        if p.op_type == "QLinearConv":
            x = self.dq(ins[0], ins[1], ins[2], "x")
            w = self.dq(ins[3], ins[4], ins[5], "w", axis=0)
            args = [x, w]
            if ins[8]:
                args.append(self.dq(ins[8], self.bias_scale(ins[1], ins[4]), None, "bias", axis=0))
            f = self.node("Conv", args, [self.fresh(f"{y}_float")], None, **attrs)
            self.q(f, ins[6], ins[7], y)
        elif p.op_type == "QLinearMatMul":
            a = self.dq(ins[0], ins[1], ins[2], "a")
            b = self.dq(ins[3], ins[4], ins[5], "b", axis=-1 if self.rank(ins[3]) != 1 else 0)
            f = self.node("MatMul", [a, b], [self.fresh(f"{y}_float")], None)
            self.q(f, ins[6], ins[7], y)
        elif p.op_type == "QGemm":
            if not all(ins[:6]) or len(p.input) > 9:
                raise InvalidModelError(f"takes A, a_scale, a_zero_point, B, b_scale, b_zero_point and optional C, "
                                        f"y_scale, y_zero_point; got inputs {list(p.input)}", node=p.name, op=p.op_type)
            alpha = float(attrs.pop("alpha", 1.0))
            a = self.dq(ins[0], ins[1], ins[2], "a")
            b = self.dq(ins[3], ins[4], ins[5], "b", axis=0 if attrs.get("transB") else 1)
            args = [a, b]
            if ins[6]:
                c_rank = self.rank(ins[6])
                args.append(self.dq(ins[6], self.bias_scale(ins[1], ins[4], alpha), None, "bias",
                                    axis=(c_rank or 1) - 1))
            if ins[7]:
                f = self.node("Gemm", args, [self.fresh(f"{y}_float")], None, alpha=alpha, **attrs)
                self.q(f, ins[7], ins[8], y)
            else:  # no y_scale: the output is float
                self.node("Gemm", args, [y], None, alpha=alpha, **attrs)
        elif p.op_type == "QLinearConcat":
            n = len(p.input) - 2
            if n <= 0 or n % 3:
                raise InvalidModelError(f"takes Y_scale, Y_zero_point and (X, scale, zero point) "
                                              f"triples; got {len(p.input)} inputs", node=p.name, op=p.op_type)
            xs = [self.dq(ins[2 + 3 * i], ins[3 + 3 * i], ins[4 + 3 * i], f"x{i}") for i in range(n // 3)]
            f = self.node("Concat", xs, [self.fresh(f"{y}_float")], None, **attrs)
            self.inputs = [ins[2], "", ins[1]]  # the output type is the first input's
            self.q(f, ins[0], ins[1], y)
        else:
            op, dqs, (ys, yz) = UNARY_LIKE[p.op_type]
            required = [i for x, sc, _ in dqs for i in (x, sc)] + [ys]
            missing = [i for i in required if not ins[i]]
            if missing or len(p.input) > yz + 1:
                raise InvalidModelError(f"takes {yz + 1} inputs (zero points optional); input(s) {missing} missing"
                                        if missing else f"takes at most {yz + 1} inputs, got {len(p.input)}",
                                        node=p.name, op=p.op_type)
            if attrs.get("channels_last"):
                raise UnsupportedError("channels_last=1 is not supported", node=p.name, op=p.op_type)
            if p.op_type == "QLinearSoftmax" and "axis" not in attrs:
                attrs["axis"] = -1 if attrs.get("opset", 13) >= 13 else 1
            if p.op_type == "QLinearSoftmax" and (attrs.get("opset", 13) < 13) != (self.opset < 13):
                raise UnsupportedError(f"opset {attrs['opset']} Softmax semantics in an opset {self.opset} "
                                       f"model are not supported", node=p.name, op=p.op_type)
            attrs = {k: v for k, v in attrs.items() if k not in DROPPED}
            xs = [self.dq(ins[i], ins[s], ins[z], "ab"[j] if len(dqs) > 1 else "x")
                  for j, (i, s, z) in enumerate(dqs)]
            f = self.node(op, xs, [self.fresh(f"{y}_float")], None, **attrs)
            self.q(f, ins[ys], ins[yz], y)
        return self.out


def expand(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, dict]:
    """The model with every QOperator node rewritten (the same object when there is none),
    and origin: new node name -> (model node name, op, role)."""
    if not any(rewritten(n) for n in model.graph.node):
        return model, {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    r = _Rewriter(m)
    r.opset = opset
    nodes = []
    for i, p in enumerate(m.graph.node):
        if not p.name:
            p.name = f"{p.op_type}_{i}"
        if rewritten(p):
            nodes.extend(r.rewrite(p))
        else:
            nodes.append(p)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(r.new_inits)
    return m, r.origin


def attribute(e: CompileError, origin: dict) -> CompileError:
    """An error raised in a node the rewrite made, told as the model's node's."""
    if e.node not in origin:
        return e
    name, op, role = origin[e.node]
    text = str(e)
    prefix = f"node '{e.node}' ({e.op}): "
    if text.startswith(prefix):
        text = text[len(prefix):]
    return type(e)(f"{role.replace('_', ' ')} ({e.op}): {text}", node=name, op=op)
