"""Quantized graphs (QDQ form): DequantizeLinear -> Conv/MatMul/Gemm -> [Relu/Clip] ->
QuantizeLinear becomes one integer op (ops/integer.py: int8 inputs, int32 accumulation,
fixed-point requantization), when

  - the activation's DequantizeLinear has a constant per-tensor scale and zero point,
  - the weights are a DequantizeLinear of a constant int8 initializer with zero zero points,
    per tensor or per output channel,
  - the bias, if any, is a DequantizeLinear of a constant int32 with zero zero point and
    scale x_scale * w_scale (as quantizers write it),
  - the result goes only, through an optional Relu/Clip, to a QuantizeLinear with constant
    per-tensor scale and zero point,
  - Conv is 2-D; Gemm has transA = 0, alpha = beta = 1; MatMul's second operand is 2-D.

A fused Relu/Clip becomes the clamp of the quantized range (exact: rounding is monotonic).
DequantizeLinear(a) + DequantizeLinear(b) -> [Relu] -> QuantizeLinear (per-tensor int8/uint8,
a residual Add) becomes one QAdd (ops/quant.py: the same float32 arithmetic per element, in
registers; no float tensor); DequantizeLinear -> AveragePool/GlobalAveragePool -> QuantizeLinear
one QAveragePool (the window's sum in int32).
Then every DequantizeLinear of constants left is folded (the float fallback: the model's
float ops read float weights), and every node of a quantized graph left computing in float
is listed in g.notes["float_fallback"] with the reason, for the manifest.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ops import registry
from ..ops.integer import QCONV, QMATMUL, quantize_multiplier, shifts
from ..ops.quant import QADD, QAVGPOOL, RANGES

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", QCONV, QMATMUL, QADD, QAVGPOOL)


def _dq(v, const_input: bool):
    """The DequantizeLinear producing v with constant scale/zero point (and constant input if
    asked): (node, data or value, scale array, zero point array); else None."""
    n = v.producer if v is not None else None
    if n is None or n.op != "DequantizeLinear" or not all(x is None or x.is_const for x in n.inputs[1:]):
        return None
    if const_input and not n.inputs[0].is_const:
        return None
    zp = n.inputs[2].data if len(n.inputs) > 2 and n.inputs[2] is not None else np.zeros((), n.inputs[0].type.dtype)
    return n, n.inputs[0], n.inputs[1].data.astype(np.float32), zp


def _sole_user(g, users, v):
    readers = users.get(id(v), [])
    if len(readers) != 1 or any(o is v for o in g.outputs):
        return None
    return readers[0]


def _match(g: Graph, users, node: Node):
    """(why not) str, or the pieces of the integer op."""
    if node.epilogue:
        return "has a fused epilogue"
    x = _dq(node.inputs[0], False)
    if x is None:
        return "its input is not a DequantizeLinear with constant parameters"
    _, xq, sx, zx = x
    if sx.size != 1 or xq.type.dtype not in ("int8", "uint8"):
        return "its input is not per-tensor int8/uint8"
    w = _dq(node.inputs[1], True)
    if w is None or w[1].type.dtype != "int8" or np.any(w[3]):
        return "its weights are not a constant symmetric int8 initializer"
    wdq, wq, sw, _ = w
    wdata = wq.data
    oc_axis = {"Conv": 0, "MatMul": 1, "Gemm": 0 if node.attrs.get("transB") else 1}[node.op]
    if node.op == "Conv":
        if len(node.inputs[0].type.shape) != 4:
            return "not a 2-D convolution"
    elif node.op == "Gemm":
        a = node.attrs
        if a.get("transA") or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return "Gemm with transA or alpha/beta != 1"
        if a.get("transB"):
            wdata = wdata.T
    elif len(wdata.shape) != 2:
        return "MatMul with a batched second operand"
    channels = wq.type.shape[oc_axis]
    if sw.size != 1 and (sw.size != channels or wdq.attrs["axis"] % len(wq.type.shape) != oc_axis):
        return "weight scales are not per output channel"
    sw = np.broadcast_to(sw.ravel(), (channels,)).astype(np.float32)
    bias = np.zeros(channels, np.int64)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = _dq(node.inputs[2], True)
        if b is None or b[1].type.dtype != "int32" or np.any(b[3]) or b[1].type.size != channels:
            return "its bias is not a constant int32 DequantizeLinear"
        sb = np.broadcast_to(b[2].ravel(), (channels,))
        if not np.allclose(sb, np.float32(sx.ravel()[0]) * sw, rtol=1e-5, atol=0):
            return "its bias scale is not x_scale * w_scale"
        bias = b[1].data.ravel().astype(np.int64)
    out = _output_q(g, users, node.outputs[0], ("Relu", "Clip"))
    if isinstance(out, str):
        return out
    act, q, sy, zy, lo, hi = out
    # M = x_scale * w_scale / y_scale in float32, as onnxruntime computes it
    m = (np.float32(sx.ravel()[0]) * sw) / sy
    mult, exponent = quantize_multiplier(m.astype(np.float32))
    return dict(xq=xq, zx=int(zx.ravel()[0]), w=wdata, bias=bias, mult=mult, exponent=exponent, zy=zy, lo=lo,
                hi=hi, q=q, act=act, out=q.attrs["to"])


def _output_q(g, users, v, acts=("Relu",)):
    """v -> [an activation of `acts`] -> QuantizeLinear (constant per-tensor parameters, to
    int8/uint8) as v's only path: (act, q, sy, zy, lo, hi), [lo, hi] the quantized range the
    activation leaves (exact: rounding is monotonic); or why not."""
    act, user = None, _sole_user(g, users, v)
    if (user is not None and user.op in acts and len(user.inputs) == 1
            and user.outputs[0].type.dtype == "float32"):  # a Clip with bounds read at run time stays float
        act, user = user, _sole_user(g, users, user.outputs[0])
    if user is None or user.op != "QuantizeLinear" or not all(i is None or i.is_const for i in user.inputs[1:]):
        return "its result does not go only to a QuantizeLinear with constant parameters"
    if user.attrs["to"] not in ("int8", "uint8"):  # int16, uint16, float8: stays float
        return f"its QuantizeLinear is to {user.attrs['to']}, not int8/uint8"
    if user.inputs[1].data.size != 1:
        return "its QuantizeLinear is not per tensor"
    sy = np.float32(user.inputs[1].data.ravel()[0])
    zy = int(user.inputs[2].data.ravel()[0]) if len(user.inputs) > 2 and user.inputs[2] is not None else 0
    lo, hi = RANGES[user.attrs["to"]]
    if act is not None:
        amin = 0.0 if act.op == "Relu" else act.attrs["min"]
        amax = np.inf if act.op == "Relu" else act.attrs["max"]
        if np.isfinite(amin):
            lo = max(lo, int(np.clip(np.rint(np.float32(amin) / sy) + zy, lo, hi)))
        if np.isfinite(amax):
            hi = min(hi, int(np.clip(np.rint(np.float32(amax) / sy) + zy, lo, hi)))
    return act, user, sy, zy, lo, hi


def _match_add(g: Graph, users, node: Node):
    """DQ(a) + DQ(b) [-> Relu] -> Q, per-tensor int8/uint8 throughout: the pieces of a QAdd."""
    if node.epilogue:
        return "has a fused epilogue"
    ins = [_dq(v, False) for v in node.inputs]
    if any(x is None or x[2].size != 1 or x[1].type.dtype not in ("int8", "uint8") or x[1].is_const for x in ins):
        return "its operands are not per-tensor int8/uint8 DequantizeLinear outputs"
    out = _output_q(g, users, node.outputs[0])
    if isinstance(out, str):
        return out
    act, q, sy, zy, lo, hi = out
    (da, a, sa, za), (db, b, sb, zb) = ins
    attrs = {"sa": float(sa.ravel()[0]), "za": int(za.ravel()[0]), "sb": float(sb.ravel()[0]),
             "zb": int(zb.ravel()[0]), "sy": float(sy), "zy": zy, "lo": lo, "hi": hi, "out": q.attrs["to"]}
    return dict(op=QADD, inputs=[a, b], attrs=attrs, q=q, dead=[node, act])


def _match_pool(g: Graph, users, node: Node):
    """DQ(x) -> AveragePool/GlobalAveragePool (2-D, no padding) -> Q: the pieces of a QAveragePool."""
    x = _dq(node.inputs[0], False)
    if x is None or x[2].size != 1 or x[1].type.dtype not in ("int8", "uint8") or len(x[1].type.shape) != 4:
        return "its input is not a per-tensor int8/uint8 DequantizeLinear output of rank 4"
    a = node.attrs
    if node.op == "GlobalAveragePool":
        kernel, strides = list(x[1].type.shape[2:]), [1, 1]
    elif any(a["pads"]) or a.get("ceil_mode") or a["dilations"] != [1, 1] or len(a["kernel_shape"]) != 2:
        return "an AveragePool with padding, ceil_mode or dilations"
    else:
        kernel, strides = list(a["kernel_shape"]), list(a["strides"])
    out = _output_q(g, users, node.outputs[0])
    if isinstance(out, str):
        return out
    act, q, sy, zy, lo, hi = out
    attrs = {"kernel_shape": kernel, "strides": strides, "sx": float(x[2].ravel()[0]), "zx": int(x[3].ravel()[0]),
             "sy": float(sy), "zy": zy, "lo": lo, "hi": hi, "out": q.attrs["to"]}
    return dict(op=QAVGPOOL, inputs=[x[1]], attrs=attrs, q=q, dead=[node, act])


def _replace(g: Graph, node: Node, p: dict):
    """The matched nodes give way to one new node writing the QuantizeLinear's output."""
    q = p["q"]
    new = Node(p["op"], node.name, p["inputs"], [q.outputs[0]], p["attrs"])
    q.outputs[0].producer = new
    g.nodes[g.nodes.index(q)] = new
    for dead in p["dead"]:
        if dead is not None:
            g.nodes.remove(dead)


def integer_ops(g: Graph) -> bool:
    """The rewrite described in the module docstring."""
    quantized = any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in g.nodes)
    if not quantized:
        return False
    changed = False
    reasons = {}
    users = g.users()
    for node in list(g.nodes):
        if node.op not in ("Conv", "MatMul", "Gemm") or node not in g.nodes:
            continue
        p = _match(g, users, node)
        if isinstance(p, str):
            reasons[node.name] = p
            continue
        attrs = {"x_zp": p["zx"], "y_zp": p["zy"], "lo": p["lo"], "hi": p["hi"], "out": p["out"]}
        bias = p["bias"]
        if node.op == "Conv":
            op = QCONV
            attrs.update({key: node.attrs[key] for key in ("group", "strides", "pads", "dilations", "kernel_shape")})
        else:
            op = QMATMUL
            p["w"] = p["w"].T  # (N, K): each output's weights contiguous
            bias = bias - p["zx"] * p["w"].astype(np.int64).sum(axis=1)  # fold x's zero point
            attrs["x_zp"] = 0
        # the accumulator's bound per output channel: sum |w| * max |x - x_zp| + |bias|
        lo_x, hi_x = RANGES[p["xq"].type.dtype]
        dev = max(abs(lo_x - attrs["x_zp"]), abs(hi_x - attrs["x_zp"]))
        w_abs = np.abs(p["w"].astype(np.int64))
        bound = w_abs.reshape(w_abs.shape[0], -1).sum(axis=1) * dev + np.abs(bias)
        if bound.max(initial=0) >= 2 ** 31:
            reasons[node.name] = "its accumulator could overflow int32"
            continue
        left, right = shifts(p["exponent"], bound)
        consts = [g.const(node.name + suffix, data) for suffix, data in (
            ("_wq", np.ascontiguousarray(p["w"]).astype(np.int8)), ("_bq", bias.astype(np.int32)),
            ("_mult", p["mult"]), ("_left", left.astype(np.int8)), ("_right", right.astype(np.int8)))]
        _replace(g, node, dict(op=op, inputs=[p["xq"]] + consts, attrs=attrs, q=p["q"], dead=[node, p["act"]]))
        changed = True
        users = g.users()
    for node in list(g.nodes):
        if node.op in ("Add", "AveragePool", "GlobalAveragePool") and node in g.nodes:
            p = (_match_add if node.op == "Add" else _match_pool)(g, users, node)
            if isinstance(p, str):
                reasons[node.name] = p
                continue
            _replace(g, node, p)
            changed = True
            users = g.users()
    for node in list(g.nodes):  # the float fallback reads float weights
        if node.op == "DequantizeLinear" and all(v is None or v.is_const for v in node.inputs):
            args = [v.data for v in node.inputs if v is not None]
            data = registry.get(node.op).reference(node, *args)[0]
            c = g.const(node.outputs[0].name + "_c", data)
            g.replace_all_uses(node.outputs[0], c)
            g.nodes.remove(node)
            changed = True
    g.notes["float_fallback"] = [
        {"node": n.name, "op": n.op, "reason": reasons.get(n.name, "no integer form")}
        for n in g.nodes if n.op not in QUANT_OPS and any(
            o.type.dtype == "float32" for o in n.outputs) and not registry.get(n.op).view]
    return changed
