"""Elementwise ops: activations and math (unary), arithmetic with numpy broadcasting
(binary/variadic), comparisons and Where (Cast: ops/cast.py).

A unary op is a pair (numpy function, scalar lowering); the scalar lowering is also
what `fuse_activations` applies at a producer's store.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..kernel import fastmath as fm
from ..kernel import mathfns as m
from ..kernel.llvm import LLVM_TYPES
from ..errors import UnsupportedError
from ..ir import UNSIGNED_DTYPES, TensorType, Value
from .base import Op, broadcast_shapes, in_type, invalid, not_differentiable, register, unsupported


def _erf_np(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu_np(x, approximate):
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        return 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    return 0.5 * x64 * (1 + _erf_np(x64 / np.sqrt(2)))


def _gelu(k, x, a):
    if a.get("approximate", "none") == "tanh":
        return 0.5 * x * (m.tanh(k, (x + x * x * x * 0.044715) * 0.7978845608028654) + 1.0)
    return 0.5 * x * (fm.erf_rational(k, x * 0.7071067811865476) + 1.0)


def _hard_sigmoid(k, x, alpha, beta):
    return k.max(k.min(x * alpha + beta, 1.0), 0.0)


# float16 is not here: it is computed as float32 (the importer wraps the op in Casts), and
# an op reaching a lowering with float16 would work on its bits as integers
NUMERIC = ("float32", "float64", "int8", "uint8", "int32", "int64")
SIGNED = ("float32", "float64", "int8", "int32", "int64")
# float64 too: ops whose lowering is arithmetic, selects, sqrt and mathfns' exp, log, tanh,
# erf, sigmoid, softplus, floor (which have float64 versions); not yet the trigonometric ones
# (float32 polynomials), nor Celu (its schema is float only)
FLOATS = ("float32", "float64")


class UnaryFacts(NamedTuple):
    """Everything about one unary op: numpy reference (x, attrs) -> array, scalar lowering
    (k, x, attrs) -> Expr (also applied at a producer's store when fused), attribute
    defaults, accepted input dtypes, and whether the scalar lowering is plain arithmetic
    and selects, valid on short vectors too."""

    reference: Callable
    scalar: Callable
    defaults: dict = {}
    dtypes: tuple = ("float32",)
    vector_safe: bool = False


F = UnaryFacts
UNARY = {
    "Relu": F(lambda x, a: np.maximum(x, 0), lambda k, x, a: k.max(x, 0.0), dtypes=NUMERIC, vector_safe=True),
    "LeakyRelu": F(lambda x, a: np.where(x >= 0, x, x * a["alpha"]),
                   lambda k, x, a: k.select(x >= 0.0, x, x * a["alpha"]), {"alpha": 0.01}, dtypes=FLOATS,
                   vector_safe=True),
    "Elu": F(lambda x, a: np.where(x >= 0, x, a["alpha"] * (np.exp(x.astype(np.float64)) - 1)),
             lambda k, x, a: k.select(x >= 0.0, x, (m.exp(k, x) - 1.0) * a["alpha"]), {"alpha": 1.0}, dtypes=FLOATS),
    "Clip": F(lambda x, a: np.clip(x, a["min"], a["max"]), lambda k, x, a: k.min(k.max(x, a["min"]), a["max"]),
              {"min": -np.inf, "max": np.inf}, NUMERIC, True),
    "Sigmoid": F(lambda x, a: 1 / (1 + np.exp(-x.astype(np.float64))), lambda k, x, a: m.sigmoid(k, x), dtypes=FLOATS),
    "HardSigmoid": F(lambda x, a: np.clip(x * a["alpha"] + a["beta"], 0, 1),
                     lambda k, x, a: _hard_sigmoid(k, x, a["alpha"], a["beta"]), {"alpha": 0.2, "beta": 0.5},
                     dtypes=FLOATS, vector_safe=True),
    "HardSwish": F(lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1), lambda k, x, a: x * _hard_sigmoid(k, x, 1 / 6, 0.5),
                   dtypes=FLOATS, vector_safe=True),
    "Tanh": F(lambda x, a: np.tanh(x), lambda k, x, a: m.tanh(k, x), dtypes=FLOATS),
    "Erf": F(lambda x, a: _erf_np(x), lambda k, x, a: m.erf(k, x), dtypes=FLOATS),
    "Gelu": F(lambda x, a: _gelu_np(x, a["approximate"]), _gelu, {"approximate": "none"}, dtypes=FLOATS),
    "Exp": F(lambda x, a: np.exp(x.astype(np.float64)), lambda k, x, a: m.exp(k, x), dtypes=FLOATS, vector_safe=True),
    "Log": F(lambda x, a: np.log(x.astype(np.float64)), lambda k, x, a: m.log(k, x), dtypes=FLOATS),
    "Sqrt": F(lambda x, a: np.sqrt(x), lambda k, x, a: k.sqrt(x), dtypes=FLOATS),
    "Neg": F(lambda x, a: -x, lambda k, x, a: -x, dtypes=NUMERIC, vector_safe=True),
    "Abs": F(lambda x, a: np.abs(x), lambda k, x, a: k.abs(x), dtypes=NUMERIC, vector_safe=True),
    "Reciprocal": F(lambda x, a: 1 / x, lambda k, x, a: 1.0 / x, dtypes=FLOATS, vector_safe=True),
    "Floor": F(lambda x, a: np.floor(x), lambda k, x, a: m.floor(k, x), dtypes=FLOATS),
    "Ceil": F(lambda x, a: np.ceil(x), lambda k, x, a: m.ceil(k, x), dtypes=FLOATS),
    "Selu": F(lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * (np.exp(x.astype(np.float64)) - 1)),
              lambda k, x, a: k.select(x > 0.0, x, (m.exp(k, x) - 1.0) * a["alpha"]) * a["gamma"],
              {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}, dtypes=FLOATS),
    "Sign": F(lambda x, a: np.sign(x), lambda k, x, a: k.select(x > 0.0, 1.0, k.select(x < 0.0, -1.0, x)),
              dtypes=SIGNED, vector_safe=True),
    "Round": F(lambda x, a: np.round(x), lambda k, x, a: m.round_even(k, x), dtypes=("float32", "float64")),
    "Shrink": F(lambda x, a: np.where(x < -a["lambd"], x + a["bias"], np.where(x > a["lambd"], x - a["bias"], 0)),
                lambda k, x, a: k.select(x < -a["lambd"], x + a["bias"], k.select(x > a["lambd"], x - a["bias"], 0.0)),
                {"lambd": 0.5, "bias": 0.0}, dtypes=FLOATS, vector_safe=True),
    "ThresholdedRelu": F(lambda x, a: np.where(x > a["alpha"], x, 0), lambda k, x, a: k.select(x > a["alpha"], x, 0.0),
                         {"alpha": 1.0}, dtypes=FLOATS, vector_safe=True),
    "Sin": F(lambda x, a: np.sin(x.astype(np.float64)), lambda k, x, a: m.sin(k, x)),
    "Cos": F(lambda x, a: np.cos(x.astype(np.float64)), lambda k, x, a: m.cos(k, x)),
    "Tan": F(lambda x, a: np.tan(x.astype(np.float64)), lambda k, x, a: m.tan(k, x)),
    "Asin": F(lambda x, a: np.arcsin(x.astype(np.float64)), lambda k, x, a: m.asin(k, x)),
    "Acos": F(lambda x, a: np.arccos(x.astype(np.float64)), lambda k, x, a: m.acos(k, x)),
    "Atan": F(lambda x, a: np.arctan(x.astype(np.float64)), lambda k, x, a: m.atan(k, x)),
    "Sinh": F(lambda x, a: np.sinh(x.astype(np.float64)), lambda k, x, a: m.sinh(k, x)),
    "Cosh": F(lambda x, a: np.cosh(x.astype(np.float64)), lambda k, x, a: m.cosh(k, x)),
    "Asinh": F(lambda x, a: np.arcsinh(x.astype(np.float64)), lambda k, x, a: m.asinh(k, x)),
    "Acosh": F(lambda x, a: np.arccosh(x.astype(np.float64)), lambda k, x, a: m.acosh(k, x)),
    "Atanh": F(lambda x, a: np.arctanh(x.astype(np.float64)), lambda k, x, a: m.atanh(k, x)),
    "Celu": F(lambda x, a: np.maximum(x, 0) + np.minimum(0, a["alpha"] * (np.exp(x.astype(np.float64) / a["alpha"]) - 1)),
              lambda k, x, a: k.select(x > 0.0, x, (m.exp(k, x * (1.0 / a["alpha"])) - 1.0) * a["alpha"]),
              {"alpha": 1.0}),
    "Swish": F(lambda x, a: x / (1 + np.exp(-a["alpha"] * x.astype(np.float64))),
               lambda k, x, a: x * m.sigmoid(k, x * a["alpha"]), {"alpha": 1.0}, dtypes=FLOATS),
    "Softsign": F(lambda x, a: x / (1 + np.abs(x)), lambda k, x, a: x / (k.abs(x) + 1.0), dtypes=FLOATS,
                  vector_safe=True),
    "Mish": F(lambda x, a: x * np.tanh(np.log1p(np.exp(x.astype(np.float64)))),
              lambda k, x, a: x * m.tanh(k, m.softplus(k, x)), dtypes=FLOATS),
    "Softplus": F(lambda x, a: np.log1p(np.exp(x.astype(np.float64))),
                  lambda k, x, a: m.softplus(k, x), dtypes=FLOATS),
}


def _x(b, node):
    return b.primal(node.inputs[0])


def _y(b, node):
    return b.primal(node.outputs[0])


# derivative zero almost everywhere: refused, not silently zero
PIECEWISE_CONSTANT = ("Floor", "Ceil", "Sign")


def _times(b, t, *factors):
    for f in factors:
        t = b.op("Mul", [t, f])
    return t


def _step(b, v):
    """1 where v > 0, else 0."""
    return b.op("Sign", [b.op("Relu", [v])])


def _leaky_jvp(b, n, t):
    """slope 1 where x >= 0, alpha elsewhere; with alpha > 0 the output has the input's sign,
    so the slope is read from the output (the producer of x stays fusable)."""
    a = n.attrs["alpha"]
    pos = _step(b, _y(b, n) if a > 0 else _x(b, n))
    return _times(b, t, b.op("Add", [b.op("Mul", [pos, b.scalar(1.0 - a)]), b.scalar(a)]))


def _clip_jvp(b, n, t):
    """1 strictly inside (min, max), 0 outside; read from the output, which is inside
    exactly where the input is."""
    y, lo, hi = _y(b, n), n.attrs["min"], n.attrs["max"]
    masks = ([_step(b, b.op("Sub", [y, b.scalar(lo)]))] if lo > -np.inf else []) + (
        [_step(b, b.op("Sub", [b.scalar(hi), y]))] if hi < np.inf else [])
    return _times(b, t, *masks)


def _gelu_jvp(b, n, t):
    x = _x(b, n)
    if n.attrs["approximate"] == "tanh":  # 0.5 (1 + th) + 0.5 x (1 - th^2) c (1 + 3 k x^2), th = tanh(c (x + k x^3))
        c, kk = float(np.sqrt(2 / np.pi)), 0.044715
        x2 = b.op("Mul", [x, x])
        th = b.op("Tanh", [_times(b, b.op("Add", [x, _times(b, x2, x, b.scalar(kk))]), b.scalar(c))])
        inner = b.op("Add", [b.scalar(1.0), b.op("Mul", [x2, b.scalar(3 * kk)])])
        sech2 = b.op("Sub", [b.scalar(1.0), b.op("Mul", [th, th])])
        slope = b.op("Add", [_times(b, b.op("Add", [th, b.scalar(1.0)]), b.scalar(0.5)),
                             _times(b, x, sech2, inner, b.scalar(0.5 * c))])
    else:  # Phi(x) + x phi(x)
        cdf = _times(b, b.op("Add", [b.op("Erf", [_times(b, x, b.scalar(float(1 / np.sqrt(2))))]), b.scalar(1.0)]),
                     b.scalar(0.5))
        pdf = _times(b, b.op("Exp", [_times(b, x, x, b.scalar(-0.5))]), b.scalar(float(1 / np.sqrt(2 * np.pi))))
        slope = b.op("Add", [cdf, b.op("Mul", [x, pdf])])
    return _times(b, t, slope)


# op -> (b, node, dy) -> dx: the reverse-mode rule of each differentiable unary op, written
# with the op's own output where that is cheaper to keep than its input
UNARY_VJP = {
    "Relu": lambda b, n, g: b.op(RELU_GRAD, [g, _y(b, n)]),
    "Sigmoid": lambda b, n, g: b.op("Mul", [g, b.op("Mul", [_y(b, n), b.op("Sub", [b.scalar(1.0), _y(b, n)])])]),
    "Tanh": lambda b, n, g: b.op("Mul", [g, b.op("Sub", [b.scalar(1.0), b.op("Mul", [_y(b, n), _y(b, n)])])]),
    "Exp": lambda b, n, g: b.op("Mul", [g, _y(b, n)]),
    "Log": lambda b, n, g: b.op("Div", [g, _x(b, n)]),
    "Sqrt": lambda b, n, g: b.op("Mul", [b.op("Div", [g, _y(b, n)]), b.scalar(0.5)]),
    "Neg": lambda b, n, g: b.op("Neg", [g]),
    # 1 inside (min, max), 0 outside: Sign(Relu(x - min)) * Sign(Relu(max - x))
    "Clip": lambda b, n, g: b.op("Mul", [g, b.op("Mul", [
        b.op("Sign", [b.op("Relu", [b.op("Sub", [_x(b, n), b.scalar(n.attrs["min"])])])]),
        b.op("Sign", [b.op("Relu", [b.op("Sub", [b.scalar(n.attrs["max"]), _x(b, n)])])])])]),
    "Erf": lambda b, n, g: _times(b, g, b.op("Exp", [b.op("Neg", [b.op("Mul", [_x(b, n), _x(b, n)])])]),
                                  b.scalar(float(2 / np.sqrt(np.pi)))),
    "Gelu": _gelu_jvp,  # g f'(x): the same product as the tangent's
}

# op -> (b, node, dx) -> dy: the forward-mode rule of each differentiable unary op. For an
# elementwise op dy = f'(x) dx and dx = f'(x) dy are the same product: the reverse-mode
# rules serve, except where reading the output instead of the input keeps fusion possible
UNARY_JVP = {
    **UNARY_VJP,
    "LeakyRelu": _leaky_jvp,
    "Clip": _clip_jvp,
    "Abs": lambda b, n, t: _times(b, t, b.op("Sign", [_x(b, n)])),
    "Reciprocal": lambda b, n, t: b.op("Neg", [_times(b, t, _y(b, n), _y(b, n))]),
    "Softplus": lambda b, n, t: _times(b, t, b.op("Sigmoid", [_x(b, n)])),
    "Sin": lambda b, n, t: _times(b, t, b.op("Cos", [_x(b, n)])),
    "Cos": lambda b, n, t: b.op("Neg", [_times(b, t, b.op("Sin", [_x(b, n)]))]),
}


class Unary(Op):
    fusable_epilogue = True
    unary_epilogue = True
    inplace = True

    def item_wise(self, node):
        return True

    @property
    def vector_safe(self):
        return UNARY[self.name].vector_safe

    def epilogue_vector_safe(self, attrs):
        # Gelu's erf form is arithmetic, selects and one division (fastmath.erf_rational)
        return self.vector_safe or (self.name == "Gelu" and attrs.get("approximate", "none") == "none")

    def epilogue_on_vectors(self, attrs):
        return self.name == "Gelu" and self.epilogue_vector_safe(attrs)

    def canonicalize(self, node, opset):
        for key, val in UNARY[node.op].defaults.items():
            node.attrs.setdefault(key, val)
        if node.op == "Clip":  # opset >= 11 passes min/max as optional inputs
            _clip_bounds(node)
        for key in ("min", "max", "alpha", "beta", "gamma", "lambd", "bias"):
            if key in node.attrs:
                node.attrs[key] = float(node.attrs[key])

    def infer(self, node):
        t = node.inputs[0].type
        if t.dtype not in UNARY[node.op].dtypes:
            raise unsupported(node, f"needs {' or '.join(UNARY[node.op].dtypes)} input, got {t.dtype}")
        for i, what in ((1, "min"), (2, "max")):  # Clip's bounds read at run time
            b = node.inputs[i].type if len(node.inputs) > i and node.inputs[i] is not None else None
            if b is not None and (b.dtype != t.dtype or b.size != 1):
                raise invalid(node, f"{what} (input {i}) must be a single {t.dtype}, got {b.dtype} "
                                    f"of shape {list(b.shape)}")
        return [t]

    def reference(self, node, x, *bounds):
        attrs = node.attrs
        for key, b in zip(("min", "max"), bounds):  # Clip's bounds given at run time
            if b is not None:
                attrs = dict(attrs, **{key: np.asarray(b).reshape(-1)[0]})
        return [np.asarray(UNARY[node.op].reference(x, attrs)).astype(x.dtype)]

    def scalar(self, k, x, attrs):
        return UNARY[self.name].scalar(k, x, attrs)

    def vjp(self, b, node, cotangents):
        if node.op in PIECEWISE_CONSTANT:
            raise not_differentiable(node, "piecewise constant: its derivative is zero almost everywhere")
        # dx = f'(x) dy is the product the tangent rule builds for dy = f'(x) dx
        rule = UNARY_VJP.get(node.op, UNARY_JVP.get(node.op))
        if rule is None:
            return super().vjp(b, node, cotangents)
        if len(node.inputs) > 1:
            raise unsupported(node, "no derivative rule with min/max given at run time (reverse mode)")
        return [rule(b, node, cotangents[0])]

    def jvp(self, b, node, tangents):
        if node.op in PIECEWISE_CONSTANT:
            raise not_differentiable(node, "piecewise constant: its derivative is zero almost everywhere")
        if node.op not in UNARY_JVP:
            return super().jvp(b, node, tangents)
        return [UNARY_JVP[node.op](b, node, tangents[0])]

    def lower(self, k, node, ins, outs):
        x, y = ins[0].flat(), outs[0].flat()
        attrs = node.attrs
        if node.op == "Clip" and not ins[0].dtype.startswith("float"):  # no infinite integer bounds
            info = np.iinfo(ins[0].dtype)
            attrs = dict(attrs, min=max(attrs["min"], info.min), max=min(attrs["max"], info.max))
        for key, b in zip(("min", "max"), ins[1:]):  # Clip's bounds given at run time: loaded once
            if b is not None:
                attrs = dict(attrs, **{key: b.flat()[0]})
        if self.vector_safe and len(ins) == 1 and k.map_vectors(ins, outs[0], lambda v: self.scalar(k, v, attrs)):
            return
        with k.loop(y.size) as i:
            y[i] = self.scalar(k, x[i], attrs)


register(*UNARY)(Unary)


def _clip_bounds(node):
    """Clip's min/max inputs (opset >= 11): a constant becomes the attribute (the fast path:
    an immediate in the code, fusable into the producer's store); a bound computed or given
    at run time stays an input, read from its buffer once per run."""
    kept = [node.inputs[0]]
    for i, key in ((1, "min"), (2, "max")):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is not None and v.is_const:
            data = np.asarray(v.data)
            if data.size != 1:
                raise invalid(node, f"{key} (input {i}) must be a single value, got shape {list(data.shape)}")
            node.attrs[key] = float(data.reshape(-1)[0])
            v = None
        kept.append(v)
    while len(kept) > 1 and kept[-1] is None:
        kept.pop()
    node.inputs = kept


def _div(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    return a / b


def _pow_lower(k, a, b):
    return m.pow(k, a, b)


# name: (numpy, scalar lowering (k, a, b)). Variadic Max/Min/Sum/Mean reduce pairwise.
BINARY = {
    "Add": (np.add, lambda k, a, b: a + b),
    "Sub": (np.subtract, lambda k, a, b: a - b),
    "Mul": (np.multiply, lambda k, a, b: a * b),
    "Div": (_div, lambda k, a, b: a / b),
    "Pow": (lambda a, b: np.trunc(np.power(a.astype(np.float64), b)).astype(a.dtype) if a.dtype.kind in "iu"
            else np.power(a.astype(np.float64), b).astype(a.dtype), _pow_lower),
    "Max": (np.maximum, lambda k, a, b: k.max(a, b)),
    "Min": (np.minimum, lambda k, a, b: k.min(a, b)),
    "Sum": (np.add, lambda k, a, b: a + b),
    "Mean": (np.add, lambda k, a, b: a + b),
    "PRelu": (lambda x, s: np.where(x >= 0, x, x * s), lambda k, x, s: k.select(x >= 0.0, x, x * s)),
}
# unsigned integers: the ops whose result depends on reading the bits as unsigned
UNSIGNED_BINARY = {
    "Div": lambda k, a, b: k.unsigned("/", a, b),
    "Max": lambda k, a, b: k.select(k.unsigned("<", a, b), b, a),
    "Min": lambda k, a, b: k.select(k.unsigned("<", b, a), b, a),
}
COMPARE = {
    "Equal": (np.equal, lambda a, b: a.eq(b)),
    "Less": (np.less, lambda a, b: a < b),
    "LessOrEqual": (np.less_equal, lambda a, b: a <= b),
    "Greater": (np.greater, lambda a, b: a > b),
    "GreaterOrEqual": (np.greater_equal, lambda a, b: a >= b),
}


def _broadcast_loop(k, ins, out, body, vector=False):
    """out[idx] = body(*[x[idx] for x in ins]) with numpy broadcasting; same-shape
    operands are walked as one flat loop, which vectorizes best. vector: `body` works on
    short vectors, and float32 operands of out's shape or of one element are walked in
    explicit vectors (Kernel.map_vectors: in place too)."""
    if vector and k.map_vectors(ins, out, body):
        return
    if all(t.shape == out.shape for t in ins):
        ins, out = [t.flat() for t in ins], out.flat()
        with k.loop(out.size) as i:
            out[i] = body(*[t[i] for t in ins])
        return
    views = [t.broadcast_to(out.shape) for t in ins]
    with k.loops(out.shape) as idx:
        out[idx] = body(*[v[idx] for v in views])


class Binary(Op):
    fusable_epilogue = True
    binary_epilogue = True
    inplace = True

    def item_wise(self, node):
        return True

    @property
    def vector_safe(self):
        return self.name != "Pow"

    @property
    def own_inputs(self):
        """The two-operand arithmetic ops take a fused binary epilogue's operand after their
        own two (passes.fuse_residuals): a training step's update p - lr * g is then one
        Mul node writing p's bytes. Not the variadic ones (Sum, Mean, Max, Min)."""
        return 2 if self.name in ("Add", "Sub", "Mul", "Div") else None

    def canonicalize(self, node, opset):
        """Before opset 7, B broadcast only with broadcast=1, its dims aligned to A's
        starting at `axis` (not at the end): give B trailing 1s to get numpy's rule."""
        legacy, axis = node.attrs.pop("broadcast", 0), node.attrs.pop("axis", None)
        node.attrs.pop("consumed_inputs", None)
        a = in_type(node, 0).shape
        b = in_type(node, 1).shape if len(node.inputs) > 1 else ()
        if node.op == "PRelu" and opset < 7 and len(a) > 1 and b == (a[1],):
            legacy, axis = 1, 1  # the slope was per channel
        if not legacy or axis is None or len(node.inputs) != 2:
            return
        trailing = len(a) - (axis % max(len(a), 1)) - len(b)
        if trailing <= 0:
            return
        v = node.inputs[1]
        if not v.is_const:
            raise unsupported(node, "legacy broadcast with axis needs a constant B")
        data = v.data.reshape(b + (1,) * trailing)
        node.inputs[1] = Value(f"{v.name}_aligned", TensorType.of(data), data=data)

    def infer(self, node):
        types = [v.type for v in node.inputs]
        if any(t.dtype == "float16" for t in types):
            raise unsupported(node, "float16 is not supported")
        if node.op != "Pow" and len({t.dtype for t in types}) > 1:
            raise invalid(node, f"mixed element types {[t.dtype for t in types]}")
        return [TensorType(types[0].dtype, broadcast_shapes(node, *[t.shape for t in types]))]

    def combine(self, k, a, b):
        """The two-operand scalar lowering, for a producer that fuses this op into its store."""
        r = BINARY[self.name][1](k, a, b)
        return r * 0.5 if self.name == "Mean" else r

    def _extreme_masks(self, b, node):
        """Max/Min: each input's mask (1 where it equals the result, of the result's shape)
        and their sum, how many inputs share the extreme (ties split evenly, as torch.maximum)."""
        y, dt = b.primal(node.outputs[0]), node.outputs[0].type.dtype
        masks = [b.op("Cast", [b.op("Equal", [b.primal(x), y])], to=dt) for x in node.inputs]
        count = masks[0]
        for mk in masks[1:]:
            count = b.op("Add", [count, mk])
        return masks, count

    def vjp(self, b, node, cotangents):
        if node.op in ("Max", "Min") and node.outputs[0].type.dtype in FLOATS:
            masks, count = self._extreme_masks(b, node)
            share = b.op("Div", [cotangents[0], count])
            return [b.unbroadcast(b.op("Mul", [mk, share]), x.type.shape) for mk, x in zip(masks, node.inputs)]
        if node.op not in ("Add", "Sub", "Mul", "Div", "Pow") or len(node.inputs) != 2:
            return super().vjp(b, node, cotangents)
        g, (x, y) = cotangents[0], node.inputs
        if node.op == "Pow":  # d(x^y) = y x^(y-1) dx + ln(x) x^y dy (an integer exponent gets none)
            e = b.primal(y) if y.type.dtype == x.type.dtype else b.op("Cast", [b.primal(y)], to=x.type.dtype)
            gx = _times(b, g, e, b.op("Pow", [b.primal(x), b.op("Sub", [e, b.scalar(1.0)])]))
            if not y.type.dtype.startswith("float"):
                return [b.unbroadcast(gx, x.type.shape), None]
            gy = _times(b, g, b.op("Log", [b.primal(x)]), b.primal(node.outputs[0]))
        elif node.op == "Add":
            gx, gy = g, g
        elif node.op == "Sub":
            gx, gy = g, b.op("Neg", [g])
        elif node.op == "Mul":
            gx, gy = b.op("Mul", [g, b.primal(y)]), b.op("Mul", [g, b.primal(x)])
        else:  # d(x/y)/dy = -(x/y)/y
            gx = b.op("Div", [g, b.primal(y)])
            gy = b.op("Neg", [b.op("Div", [b.op("Mul", [g, b.primal(node.outputs[0])]), b.primal(y)])])
        return [b.unbroadcast(gx, x.type.shape), b.unbroadcast(gy, y.type.shape)]

    def jvp(self, b, node, tangents):
        """d(x op y) from dx and dy (either may be None), broadcast to the result's shape."""
        if node.op in ("Max", "Min") and node.outputs[0].type.dtype in FLOATS:
            masks, count = self._extreme_masks(b, node)
            dy = b.add([t and b.op("Mul", [mk, t]) for mk, t in zip(masks, tangents)])
            return [b.op("Div", [dy, count])]
        if node.op not in ("Add", "Sub", "Mul", "Div", "Pow") or len(node.inputs) != 2:
            return super().jvp(b, node, tangents)
        (x, y), (tx, ty), out = node.inputs, tangents, node.outputs[0]
        if node.op == "Add":
            r = b.add([tx, ty])
        elif node.op == "Sub":
            r = b.op("Sub", [tx, ty]) if tx is not None and ty is not None else tx if ty is None else b.op("Neg", [ty])
        elif node.op == "Mul":
            r = b.add([tx and b.op("Mul", [tx, y]), ty and b.op("Mul", [x, ty])])
        elif node.op == "Div":  # (dx - (x/y) dy) / y
            num = tx if ty is None else b.op("Neg", [b.op("Mul", [out, ty])]) if tx is None else \
                b.op("Sub", [tx, b.op("Mul", [out, ty])])
            r = b.op("Div", [num, y])
        else:  # d(x^y) = y x^(y-1) dx + ln(x) x^y dy
            e = y if y.type.dtype == x.type.dtype else b.op("Cast", [y], to=x.type.dtype)
            r = b.add([tx and b.op("Mul", [tx, b.op("Mul", [e, b.op("Pow", [x, b.op("Sub", [e, b.scalar(1.0)])])])]),
                       ty and b.op("Mul", [ty, b.op("Mul", [b.op("Log", [x]), out])])])
        return [b.expand(r, out.type.shape)]

    def reference(self, node, *xs):
        fn = BINARY[node.op][0]
        acc = xs[0]
        for x in xs[1:]:
            acc = fn(acc, x)
        if node.op == "Mean":
            acc = acc / len(xs)
        shape = np.broadcast_shapes(*(np.shape(x) for x in xs))
        return [np.broadcast_to(np.asarray(acc), shape).astype(xs[0].dtype)]

    def lower(self, k, node, ins, outs):
        fn = BINARY[node.op][1]
        if node.op == "Pow" and ins[0].dtype not in ("float32", "float64"):
            _broadcast_loop(k, ins, outs[0], lambda a, b: _int_pow(k, a, b, ins[0].dtype, ins[1].dtype))
            return
        if node.op == "Pow" and ins[1].dtype != ins[0].dtype:  # an integer exponent: as a float
            ty = LLVM_TYPES[ins[0].dtype]
            _broadcast_loop(k, ins, outs[0], lambda a, b: m.pow(k, a, k.cast(b, ty, unsigned=ins[1].dtype in UNSIGNED_DTYPES)))
            return
        if node.op == "Pow" and node.inputs[1].is_const and node.inputs[1].type.size == 1:
            power = _pow_by_constant(float(node.inputs[1].data.ravel()[0]))
            _broadcast_loop(k, ins[:1], outs[0], lambda a: power(k, a, None))
            return
        ins = [_as_dtype(k, t, ins[0].dtype) for t in ins]
        if ins[0].dtype in UNSIGNED_DTYPES and node.op in UNSIGNED_BINARY:
            fn = UNSIGNED_BINARY[node.op]

        def body(*vals):
            acc = vals[0]
            for v in vals[1:]:
                acc = fn(k, acc, v)
            if node.op == "Mean":
                acc = acc * (1.0 / len(vals))
            return acc

        _broadcast_loop(k, ins, outs[0], body, vector=self.vector_safe)


def _int_pow(k, a, b, a_dtype, b_dtype):
    """An integer base: the power in float32, then to the integer as C's (int)pow(a, b) does,
    truncating; a result within float32's error of an integer is that integer."""
    f32 = LLVM_TYPES["float32"]
    r = m.pow(k, k.cast(a, f32, unsigned=a_dtype in UNSIGNED_DTYPES), k.cast(b, f32, unsigned=b_dtype in UNSIGNED_DTYPES))
    near = m.round_even(k, r)
    r = k.select(k.abs(r - near) <= k.abs(near) * 4e-7, near, r)
    return k.cast(r, a.v.type)


def _as_dtype(k, t, dtype):
    if t.dtype == dtype:
        return t
    raise UnsupportedError(f"runtime operand of type {t.dtype} where {dtype} is needed")


def _pow_by_constant(e: float):
    """x**2 and friends are the common case (decomposed LayerNorm): exact multiplies."""
    if e not in (1.0, 2.0, 3.0, 0.5, -1.0):
        return lambda k, a, b: m.pow(k, a, k.lift(e, like=a))
    if e == 1.0:
        return lambda k, a, b: a
    if e == 2.0:
        return lambda k, a, b: a * a
    if e == 3.0:
        return lambda k, a, b: a * a * a
    if e == 0.5:
        return lambda k, a, b: k.sqrt(a)
    if e == -1.0:
        return lambda k, a, b: 1.0 / a
    return _pow_lower


register(*BINARY)(Binary)

# Relu's derivative: dy where the output is positive, else 0. One op (a binary epilogue the
# producer of dy fuses into its store, reading the output), not Sign and Mul passes.
RELU_GRAD = "edgec.ReluGrad"
BINARY[RELU_GRAD] = (lambda g, y: np.where(y > 0, g, np.zeros_like(g)), lambda k, g, y: k.select(y > 0.0, g, 0.0))
register(RELU_GRAD, internal=True)(Binary)


class Compare(Op):
    def infer(self, node):
        a, b = (v.type for v in node.inputs)
        return [TensorType("bool", broadcast_shapes(node, a.shape, b.shape))]

    def item_wise(self, node):
        return True

    def reference(self, node, a, b):
        return [COMPARE[node.op][0](a, b)]

    def lower(self, k, node, ins, outs):
        fn = COMPARE[node.op][1]
        if ins[0].dtype in UNSIGNED_DTYPES and node.op != "Equal":
            op = {"Less": "<", "LessOrEqual": "<=", "Greater": ">", "GreaterOrEqual": ">="}[node.op]
            fn = lambda a, b: k.unsigned(op, a, b)  # noqa: E731
        _broadcast_loop(k, ins, outs[0], lambda a, b: k.cast(fn(a, b), LLVM_TYPES["bool"], unsigned=True))


register(*COMPARE)(Compare)
