"""The preview-domain ops, decomposed at import into existing ops.

Only these ops are taken from the two preview domains (any other op there stays an
"unsupported op domain" error):

- ai.onnx.preview FlexAttention-1: Q (B, Hq, L, E), K (B, Hkv, S, E), V (B, Hkv, S, Ev),
  Hq a multiple of Hkv (query head h reads K/V head h // (Hq / Hkv): a Gather on axis 1).
  As the spec's function body and onnx's reference compute it:

      c = float32(sqrt(float32(scale)))  in the inputs' type (scale: 1/sqrt(E) unless given)
      scores = (Q * c) @ Transpose(K * c)              in the inputs' type
      scores = Cast(scores, P); score_mod(scores)      P: softmax_precision, else float32
      probs = Softmax(scores, -1); prob_mod(probs)        for float16 inputs, else their type
      Y = Cast(probs @ Cast(V, P), the inputs' type)

  The score_mod / prob_mod subgraphs (one rank-4 input, one output of its type and shape)
  are imported inline, as the If/Loop/Scan bodies of frontend/control_flow.py are: their
  nodes are named `<node>/score_mod/<name>`, their initializers are constants, and outer
  names resolve. Each node is an existing op, so nothing here computes: exactness is the ops'.

- ai.onnx.preview.training Adagrad-1, Adam-1, Momentum-1: one update step of the optimized
  tensors, inputs R (learning rate), T (update count, int64) then the groups (X..., G...,
  [V...], [H...]), outputs the new X... then the new V... / H.... The update formulas of the
  spec are written out as elementwise nodes (Mul, Add, Sqrt, Div, Pow, Where on T > 0) in
  X's type (R is cast to it); attributes are constants of that type, and 1 - alpha etc.
  are computed in float64 first, as onnx's reference does with Python floats.

A model that imports only ai.onnx.preview.training (the onnx test cases do) gets the newest
supported default opset for the nodes these ops become.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InvalidModelError, UnsupportedError
from ..ir import DTYPES, Value
from ..ops.elementwise import UNARY

PREVIEW = "ai.onnx.preview"
TRAINING = "ai.onnx.preview.training"
OPS = {(PREVIEW, "FlexAttention"), (TRAINING, "Adagrad"), (TRAINING, "Adam"), (TRAINING, "Momentum")}
DOMAINS = frozenset(d for d, _ in OPS)
# softmax_precision (an ONNX element type) -> dtype
PRECISIONS = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}
ONNX_TYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE}
GRAPH = onnx.AttributeProto.GRAPH


def taken(proto: onnx.NodeProto) -> bool:
    """Whether the importer takes this node of a preview domain."""
    return (proto.domain, proto.op_type) in OPS


def inline(imp, proto: onnx.NodeProto, name: str, env: dict[str, Value]):
    """Imports preview op `proto` as existing ops; binds its outputs in `env`."""
    c = _Node(imp, proto, name, env)
    outs = {"FlexAttention": _flex_attention, "Adagrad": _adagrad, "Adam": _adam,
            "Momentum": _momentum}[proto.op_type](c)
    named = [o for o in proto.output if o]
    if len(proto.output) > len(outs):
        raise c.invalid(f"{len(proto.output)} outputs, but the op gives {len(outs)}")
    if not named:
        raise c.invalid("no outputs")
    for onnx_name, v in zip(proto.output, outs):
        if onnx_name:
            env[onnx_name] = v


class _Node:
    def __init__(self, imp, proto, name, env):
        self.imp, self.proto, self.name, self.env = imp, proto, name, env
        self.op = proto.op_type
        self.attrs = {a.name: a for a in proto.attribute}

    def invalid(self, msg):
        return InvalidModelError(msg, node=self.name, op=self.op)

    def unsupported(self, msg):
        return UnsupportedError(msg, node=self.name, op=self.op)

    def inputs(self) -> list[Value]:
        vals = []
        for k, x in enumerate(self.proto.input):
            if not x:
                raise self.invalid(f"input {k} is empty (no input of {self.op} is optional)")
            if x not in self.env:
                raise self.invalid(f"input '{x}' is not produced by any earlier node")
            vals.append(self.env[x])
        return vals

    def attr(self, key, kind, default=None):
        a = self.attrs.get(key)
        if a is None:
            return default
        if a.type != kind:
            raise self.invalid(f"attribute '{key}' has type {onnx.AttributeProto.AttributeType.Name(a.type)}, "
                               f"expected {onnx.AttributeProto.AttributeType.Name(kind)}")
        return a.g if kind == GRAPH else helper.get_attribute_value(a)

    def const(self, tag, data) -> Value:
        return self.imp.g.const(f"{self.name}_{tag}", np.asarray(data))

    def emit(self, op, tag, inputs, **attrs) -> Value:
        return self.imp.emit(op, f"{self.name}/{tag}", inputs, attrs, source=self.name)[0]

    def cast(self, v: Value, dtype: str, tag: str) -> Value:
        return v if v.type.dtype == dtype else self.emit("Cast", tag, [v], to=ONNX_TYPE[dtype])


# -- FlexAttention ------------------------------------------------------------------------
def _flex_attention(c: _Node) -> list[Value]:
    ins = c.inputs()
    if len(ins) != 3:
        raise c.invalid(f"takes 3 inputs (Q, K, V), given {len(ins)}")
    q, k, v = ins
    dtype = q.type.dtype
    for what, x in (("Q", q), ("K", k), ("V", v)):
        if len(x.type.shape) != 4:
            raise c.invalid(f"{what} must be rank 4 (batch, heads, sequence, head size), given shape "
                            f"{list(x.type.shape)}")
        if x.type.dtype != dtype:
            raise c.invalid(f"Q, K and V must have one element type: Q is {dtype}, {what} is {x.type.dtype}")
    if dtype not in ONNX_TYPE:
        raise c.invalid(f"Q, K and V must be float16, float32 or float64, given {dtype}")
    (b, hq, _, e), (bk, hkv, s, ek), (bv, hv, sv, _) = q.type.shape, k.type.shape, v.type.shape
    if not b == bk == bv:
        raise c.invalid(f"Q, K and V have different batch sizes ({b}, {bk}, {bv})")
    if ek != e:
        raise c.invalid(f"Q's head size {e} differs from K's {ek}")
    if hv != hkv or sv != s:
        raise c.invalid(f"K {list(k.type.shape)} and V {list(v.type.shape)} must agree in heads and sequence length")
    if hkv == 0 or hq % hkv:
        raise c.invalid(f"q_num_heads {hq} must be a multiple of kv_num_heads {hkv}")
    scale = c.attr("scale", onnx.AttributeProto.FLOAT)
    precision = c.attr("softmax_precision", onnx.AttributeProto.INT)
    if precision is None:
        compute = "float32" if dtype == "float16" else dtype
    elif precision in PRECISIONS:
        compute = PRECISIONS[precision]
    else:
        raise c.unsupported(f"softmax_precision {precision} ({onnx_type_name(precision)}) is not supported "
                            f"(float16, float32 or float64)")
    if scale is None:
        scale = 1.0 / np.sqrt(e) if e else 1.0
    factor = c.const("sqrt_scale", np.sqrt(np.float32(scale)).astype(dtype))
    if hq != hkv:  # GQA: query head h reads K/V head h // group
        heads = c.const("kv_heads", np.arange(hq, dtype=np.int64) // (hq // hkv))
        k = c.emit("Gather", "k_heads", [k, heads], axis=1)
        v = c.emit("Gather", "v_heads", [v, heads], axis=1)
    qs = c.emit("Mul", "q_scaled", [q, factor])
    ks = c.emit("Mul", "k_scaled", [k, factor])
    kt = c.emit("Transpose", "k_t", [ks], perm=[0, 1, 3, 2])
    scores = c.cast(c.emit("MatMul", "scores", [qs, kt]), compute, "scores_cast")
    scores = _modifier(c, "score_mod", scores)
    probs = _modifier(c, "prob_mod", c.emit("Softmax", "probs", [scores], axis=-1))
    y = c.emit("MatMul", "y", [probs, c.cast(v, compute, "v_cast")])
    return [c.cast(y, v.type.dtype, "y_cast")]


def onnx_type_name(elem: int) -> str:
    try:
        return TensorProto.DataType.Name(elem).lower()
    except ValueError:
        return "no element type"


def _modifier(c: _Node, key: str, x: Value) -> Value:
    """Subgraph attribute `key` (score_mod / prob_mod) applied to `x`, its nodes imported
    inline; `x` itself when the node has none."""
    body = c.attr(key, GRAPH)
    if body is None:
        return x
    if len(body.input) != 1 or len(body.output) != 1:
        raise c.invalid(f"{key} must take one input and give one output; it takes {len(body.input)} and gives "
                        f"{len(body.output)}")
    decl = body.input[0]
    tt = decl.type.tensor_type
    if decl.type.HasField("tensor_type") and tt.elem_type:
        want = onnx_type_name(tt.elem_type)
        want = {"float": "float32", "double": "float64"}.get(want, want)
        if want != x.type.dtype:
            raise c.invalid(f"{key} input '{decl.name}' is declared {want}, but the scores are {x.type.dtype} "
                            f"(softmax_precision decides it)")
        if tt.HasField("shape") and len(tt.shape.dim) != 4:
            raise c.invalid(f"{key} input '{decl.name}' is declared rank {len(tt.shape.dim)}; it is rank 4")
    scope = dict(c.env)
    for t in body.initializer:
        data = numpy_helper.to_array(t)
        if np.dtype(data.dtype).name not in DTYPES:
            raise c.unsupported(f"{key} initializer '{t.name}' has unsupported element type {data.dtype}")
        scope[t.name] = c.imp.g.const(f"{c.name}/{key}/{t.name}", data)
    if len(body.sparse_initializer):
        raise c.unsupported(f"{key} has sparse initializers (not supported)")
    scope[decl.name] = x
    c.imp.nodes(body, scope, f"{c.name}/{key}/")
    out = body.output[0].name
    if out not in scope:
        raise c.invalid(f"{key} output '{out}' is not produced by any node")
    y = scope[out]
    if y.type != x.type:
        raise c.invalid(f"{key} must give its input's type and shape {x.type}, gives {y.type}")
    return y


# -- the optimizers -------------------------------------------------------------------------
def _groups(c: _Node, per: int, names: str) -> tuple[Value, Value, list[list[Value]]]:
    """R (cast to the tensors' type) and T (int64), both as scalars, and the `per` lists of tensors."""
    ins = c.inputs()
    n = (len(ins) - 2) // per
    if len(ins) < 2 + per or (len(ins) - 2) % per:
        raise c.invalid(f"takes R, T and {per} lists of equal length ({names}), given {len(ins)} inputs")
    if len(c.proto.output) > (per - 1) * n:  # new X, then new V and/or H
        raise c.invalid(f"{len(c.proto.output)} outputs for {n} optimized tensors")
    r, t, groups = ins[0], ins[1], [ins[2 + j * n:2 + (j + 1) * n] for j in range(per)]
    dtype = groups[0][0].type.dtype
    for x in [v for g in groups for v in g] + [r]:
        if x.type.dtype not in ("float32", "float64"):
            raise c.invalid(f"'{x.name}' is {x.type.dtype}: R and the optimized tensors are float32 or float64")
    for x in [v for g in groups for v in g]:
        if x.type.dtype != dtype:
            raise c.invalid(f"the optimized tensors must have one element type: {dtype} and {x.type.dtype}")
    if t.type.dtype != "int64":
        raise c.invalid(f"T (the update count) must be int64, given {t.type.dtype}")
    for what, x in (("R", r), ("T", t)):
        if x.type.size != 1:
            raise c.invalid(f"{what} must be a scalar, given shape {list(x.type.shape)}")
    scalar = c.const("scalar_shape", np.zeros(0, np.int64))
    r = c.cast(r if r.type.shape == () else c.emit("Reshape", "r_scalar", [r, scalar]), dtype, "r_cast")
    t = t if t.type.shape == () else c.emit("Reshape", "t_scalar", [t, scalar])
    return r, t, groups


def _k(c: _Node, dtype: str, tag: str, value: float) -> Value:
    """An attribute-derived constant of the tensors' type (computed in float64 first)."""
    return c.const(tag, np.array(np.float64(value), dtype))


def _fattr(c: _Node, key: str, default: float | None = None) -> float:
    v = c.attr(key, onnx.AttributeProto.FLOAT, default)
    if v is None:
        raise c.invalid(f"attribute '{key}' is required")
    return float(np.float32(v))  # a FLOAT attribute is 32-bit, its schema default too (float64 tensors see it)


def _regularized(c: _Node, x: Value, g: Value, norm: Value, i: int) -> Value:
    """norm_coefficient * X + G."""
    return c.emit("Add", f"g_reg{i}", [c.emit("Mul", f"x_norm{i}", [norm, x]), g])


def _adagrad(c: _Node) -> list[Value]:
    r, t, (xs, gs, hs) = _groups(c, 3, "X, G, H")
    dt = xs[0].type.dtype
    decay, eps, norm = _fattr(c, "decay_factor", 0.0), _fattr(c, "epsilon", 1e-6), _fattr(c, "norm_coefficient", 0.0)
    tf = c.cast(t, dt, "t_cast")
    # r = R / (1 + T * decay_factor)
    den = c.emit("Add", "r_den", [c.emit("Mul", "t_decay", [tf, _k(c, dt, "decay", decay)]), _k(c, dt, "one", 1)])
    r = c.emit("Div", "r", [r, den])
    norm_c, eps_c = _k(c, dt, "norm", norm), _k(c, dt, "eps", eps)
    x_new, h_new = [], []
    for i, (x, g, h) in enumerate(zip(xs, gs, hs)):
        gr = _regularized(c, x, g, norm_c, i)
        hn = c.emit("Add", f"h_new{i}", [h, c.emit("Mul", f"g_sq{i}", [gr, gr])])
        ha = c.emit("Add", f"h_adaptive{i}", [c.emit("Sqrt", f"h_sqrt{i}", [hn]), eps_c])
        step = c.emit("Div", f"step{i}", [c.emit("Mul", f"r_g{i}", [r, gr]), ha])
        x_new.append(c.emit("Sub", f"x_new{i}", [x, step]))
        h_new.append(hn)
    return x_new + h_new


def _momentum(c: _Node) -> list[Value]:
    r, t, (xs, gs, vs) = _groups(c, 3, "X, G, V")
    dt = xs[0].type.dtype
    alpha, beta, norm = _fattr(c, "alpha"), _fattr(c, "beta"), _fattr(c, "norm_coefficient")
    mode = c.attr("mode", onnx.AttributeProto.STRING)
    if mode is None:
        raise c.invalid("attribute 'mode' is required")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("standard", "nesterov"):
        raise c.invalid(f"mode is '{mode}'; it is 'standard' or 'nesterov'")
    # beta_adjusted = T > 0 ? beta : 1
    first = c.emit("Greater", "t_pos", [t, c.const("zero", np.array(0, np.int64))])
    beta_adj = c.emit("Where", "beta_adj", [first, _k(c, dt, "beta", beta), _k(c, dt, "one", 1)])
    alpha_c, norm_c = _k(c, dt, "alpha", alpha), _k(c, dt, "norm", norm)
    x_new, v_new = [], []
    for i, (x, g, v) in enumerate(zip(xs, gs, vs)):
        gr = _regularized(c, x, g, norm_c, i)
        vn = c.emit("Add", f"v_new{i}", [c.emit("Mul", f"v_decay{i}", [alpha_c, v]),
                                         c.emit("Mul", f"g_beta{i}", [beta_adj, gr])])
        if mode == "standard":
            direction = vn
        else:
            direction = c.emit("Add", f"dir{i}", [gr, c.emit("Mul", f"v_alpha{i}", [alpha_c, vn])])
        x_new.append(c.emit("Sub", f"x_new{i}", [x, c.emit("Mul", f"step{i}", [r, direction])]))
        v_new.append(vn)
    return x_new + v_new


def _adam(c: _Node) -> list[Value]:
    r, t, (xs, gs, vs, hs) = _groups(c, 4, "X, G, V, H")
    dt = xs[0].type.dtype
    if dt not in UNARY["Exp"].dtypes:  # alpha**T at a run-time T is Pow's exp(T log alpha)
        raise c.unsupported(f"{dt} tensors are not supported: the bias correction alpha**T, beta**T needs Pow in "
                            f"{dt} at a run-time exponent (exp and log in {dt})")
    alpha, beta = _fattr(c, "alpha", 0.9), _fattr(c, "beta", 0.999)
    eps, norm = _fattr(c, "epsilon", 1e-6), _fattr(c, "norm_coefficient", 0.0)
    post = _fattr(c, "norm_coefficient_post", 0.0)
    # R_adjusted = T > 0 ? R * Sqrt(1 - beta**T) / (1 - alpha**T) : R
    tf = c.cast(t, dt, "t_cast")
    one = _k(c, dt, "one", 1)
    beta_t = c.emit("Pow", "beta_t", [_k(c, dt, "beta", beta), tf])
    alpha_t = c.emit("Pow", "alpha_t", [_k(c, dt, "alpha", alpha), tf])
    corr = c.emit("Div", "bias_corr", [c.emit("Sqrt", "beta_corr", [c.emit("Sub", "one_beta_t", [one, beta_t])]),
                                       c.emit("Sub", "one_alpha_t", [one, alpha_t])])
    first = c.emit("Greater", "t_pos", [t, c.const("zero", np.array(0, np.int64))])
    r = c.emit("Where", "r_adj", [first, c.emit("Mul", "r_corr", [r, corr]), r])
    alpha_c, beta_c = _k(c, dt, "alpha_c", alpha), _k(c, dt, "beta_c", beta)
    one_alpha, one_beta = _k(c, dt, "one_alpha", 1 - np.float64(alpha)), _k(c, dt, "one_beta", 1 - np.float64(beta))
    norm_c, eps_c, post_c = _k(c, dt, "norm", norm), _k(c, dt, "eps", eps), _k(c, dt, "post", 1 - np.float64(post))
    x_new, v_new, h_new = [], [], []
    for i, (x, g, v, h) in enumerate(zip(xs, gs, vs, hs)):
        gr = _regularized(c, x, g, norm_c, i)
        vn = c.emit("Add", f"v_new{i}", [c.emit("Mul", f"v_decay{i}", [alpha_c, v]),
                                         c.emit("Mul", f"g_part{i}", [one_alpha, gr])])
        g2 = c.emit("Mul", f"g_sq{i}", [gr, gr])
        hn = c.emit("Add", f"h_new{i}", [c.emit("Mul", f"h_decay{i}", [beta_c, h]),
                                         c.emit("Mul", f"g2_part{i}", [one_beta, g2])])
        hs_ = c.emit("Add", f"h_sqrt{i}", [c.emit("Sqrt", f"h_root{i}", [hn]), eps_c])
        step = c.emit("Mul", f"step{i}", [r, c.emit("Div", f"dir{i}", [vn, hs_])])
        xn = c.emit("Sub", f"x_upd{i}", [x, step])
        x_new.append(c.emit("Mul", f"x_new{i}", [post_c, xn]))
        v_new.append(vn)
        h_new.append(hn)
    return x_new + v_new + h_new
