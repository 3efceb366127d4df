"""Reductions: ReduceMean/Sum/Max/Min/Prod/L1/L2/SumSquare/LogSumExp over constant axes,
with keepdims and noop_with_empty_axes. Axes are an attribute before opset 18 (13 for
ReduceSum) and an input after; canonicalize turns both into one sorted list. float32 and
float64 (accumulated in the input's type); ReduceMax/ReduceMin also take bool (opset 20):
any and all, the empty reduction false and true."""
from __future__ import annotations

import numpy as np

from ..kernel import mathfns as m
from ..kernel.llvm import LLVM_TYPES
from ..ir import TensorType
from .base import Op, const_input, in_type, linear_jvp, norm_axis, register, unsupported

# op: (initial value, accumulate(k, acc, x), finish(k, acc, count), numpy reference)
_KINDS = {
    "ReduceSum": (0.0, lambda k, a, x: a + x, lambda k, a, n: a, lambda x, ax: x.sum(axis=ax, keepdims=True)),
    "ReduceMean": (0.0, lambda k, a, x: a + x, lambda k, a, n: a * (1.0 / n),
                   lambda x, ax: x.mean(axis=ax, keepdims=True)),
    "ReduceMax": (float("-inf"), lambda k, a, x: k.max(x, a), lambda k, a, n: a,
                  lambda x, ax: x.max(axis=ax, keepdims=True, initial=-np.inf)),
    "ReduceMin": (float("inf"), lambda k, a, x: k.min(x, a), lambda k, a, n: a,
                  lambda x, ax: x.min(axis=ax, keepdims=True, initial=np.inf)),
    "ReduceProd": (1.0, lambda k, a, x: a * x, lambda k, a, n: a, lambda x, ax: x.prod(axis=ax, keepdims=True)),
    "ReduceL1": (0.0, lambda k, a, x: a + k.abs(x), lambda k, a, n: a,
                 lambda x, ax: np.abs(x).sum(axis=ax, keepdims=True)),
    "ReduceL2": (0.0, lambda k, a, x: a + x * x, lambda k, a, n: k.sqrt(a),
                 lambda x, ax: np.sqrt((x * x).sum(axis=ax, keepdims=True))),
    "ReduceSumSquare": (0.0, lambda k, a, x: a + x * x, lambda k, a, n: a,
                        lambda x, ax: (x * x).sum(axis=ax, keepdims=True)),
    "ReduceLogSum": (0.0, lambda k, a, x: a + x, lambda k, a, n: m.log(k, a),
                     lambda x, ax: np.log(x.sum(axis=ax, keepdims=True))),
    "ReduceLogSumExp": (0.0, lambda k, a, x: a + m.exp(k, x), lambda k, a, n: m.log(k, a),
                        lambda x, ax: np.log(np.exp(x).sum(axis=ax, keepdims=True))),
}
# the opset from which `axes` is an input rather than an attribute
_AXES_INPUT_FROM = {"ReduceSum": 13}
_FLOATS = ("float32", "float64")
# bool: max is any (starting from false), min is all (starting from true), on the 0/1 bytes
_BOOL = {"ReduceMax": 0, "ReduceMin": 1}


@register(*_KINDS)
class Reduce(Op):
    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        if opset >= _AXES_INPUT_FROM.get(node.op, 18):
            axes = const_input(node, 1, "axes")
            node.inputs = node.inputs[:1]
        else:
            axes = node.attrs.get("axes")
        node.attrs.pop("axes", None)
        keepdims = int(node.attrs.pop("keepdims", 1))
        noop = int(node.attrs.pop("noop_with_empty_axes", 0))
        if axes is None or len(axes) == 0:
            axes = [] if noop else list(range(rank))
        axes = sorted({norm_axis(int(a), rank, node) for a in np.asarray(axes).reshape(-1)})
        node.attrs["axes"] = axes
        node.attrs["keepdims"] = keepdims

    def _shapes(self, node, shape):
        """(shape with reduced dims kept as 1, output shape)."""
        axes = node.attrs["axes"]
        kept = tuple(1 if i in axes else d for i, d in enumerate(shape))
        out = kept if node.attrs["keepdims"] else tuple(d for i, d in enumerate(shape) if i not in axes)
        return kept, out

    def infer(self, node):
        t = in_type(node)
        allowed = _FLOATS + (("bool",) if node.op in _BOOL else ())
        if t.dtype not in allowed:
            raise unsupported(node, f"needs {' or '.join(allowed)} input, got {t.dtype}")
        return [TensorType(t.dtype, self._shapes(node, t.shape)[1])]

    def reference(self, node, x):
        axes = tuple(node.attrs["axes"])
        out = self._shapes(node, x.shape)[1]
        if not axes:
            return [x.copy()]
        if x.dtype == np.bool_:
            r = (np.any if node.op == "ReduceMax" else np.all)(x, axis=axes, keepdims=True)
            return [r.reshape(out)]
        r = _KINDS[node.op][3](x.astype(np.float64), axes)
        return [r.reshape(out).astype(x.dtype)]

    def _slope(self, b, node):
        """(w, count): dy = sum(w dx) / count over the axes, dx = w dy / count (count None
        for 1); w of the input's shape, count of the kept shape. Max/Min: w the mask of the
        elements equal to the result, count how many (ties split evenly, as torch.amax).
        L2: x / y, 0 where y == 0 (torch's subgradient). LogSum: 1 / sum(x) = exp(-y).
        Prod: the product of the other elements, exact at zeros (as torch): y / x where the
        slice has no zero; with one zero, the product of the non-zero elements at the zero
        and 0 elsewhere; 0 with two or more. None for the ops without a rule."""
        x, dt = b.primal(node.inputs[0]), node.inputs[0].type.dtype
        kept, _ = self._shapes(node, x.type.shape)
        axes = node.attrs["axes"]
        if node.op in ("ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp", "ReduceLogSum", "ReduceProd"):
            y = b.reshape(b.primal(node.outputs[0]), kept)
        if node.op in ("ReduceMax", "ReduceMin"):
            w = b.op("Cast", [b.op("Equal", [x, y])], to=dt)
            return w, b.op("ReduceSum", [w], axes=axes, keepdims=1)
        if node.op == "ReduceL2":
            safe = b.op("Where", [b.op("Equal", [y, b.scalar(0.0, dt)]), b.scalar(1.0, dt), y])
            return b.op("Div", [x, safe]), None
        if node.op == "ReduceSumSquare":
            return b.op("Mul", [x, b.scalar(2.0, dt)]), None
        if node.op == "ReduceLogSumExp":
            return b.op("Exp", [b.op("Sub", [x, y])]), None
        if node.op == "ReduceL1":
            return b.op("Sign", [x]), None
        if node.op == "ReduceLogSum":
            return b.op("Expand", [b.op("Exp", [b.op("Neg", [y])])], shape=list(x.type.shape)), None
        if node.op == "ReduceProd":
            zero, one = b.scalar(0.0, dt), b.scalar(1.0, dt)
            is_zero = b.op("Equal", [x, zero])
            zeros = b.op("ReduceSum", [b.op("Cast", [is_zero], to=dt)], axes=axes, keepdims=1)
            nonzero = b.op("Where", [is_zero, one, x])  # x with its zeros replaced by 1
            rest = b.op("ReduceProd", [nonzero], axes=axes, keepdims=1)  # product of the non-zero ones
            at_the_zero = b.op("Where", [b.op("And", [b.op("Equal", [zeros, one]), is_zero]), rest, zero])
            return b.op("Where", [b.op("Equal", [zeros, zero]), b.op("Div", [y, nonzero]), at_the_zero]), None
        return None

    def vjp(self, b, node, cotangents):
        x = node.inputs[0].type
        linear = node.op in ("ReduceSum", "ReduceMean")
        slope = None if linear or x.dtype not in _FLOATS else self._slope(b, node)
        if not linear and slope is None:
            return super().vjp(b, node, cotangents)
        g = b.reshape(cotangents[0], self._shapes(node, x.shape)[0])
        if not linear:
            w, count = slope
            return [b.op("Mul", [w, g if count is None else b.op("Div", [g, count])])]
        g = b.op("Expand", [g], shape=list(x.shape))
        if node.op == "ReduceMean":
            count = int(np.prod([x.shape[a] for a in node.attrs["axes"]], dtype=np.int64))
            g = b.op("Mul", [g, b.scalar(1.0 / count)])
        return [g]

    def jvp(self, b, node, tangents):
        if node.op in ("ReduceSum", "ReduceMean"):
            return linear_jvp(b, node, tangents)
        slope = self._slope(b, node) if node.inputs[0].type.dtype in _FLOATS else None
        if slope is None:
            return super().jvp(b, node, tangents)
        w, count = slope
        dy = b.op("ReduceSum", [b.op("Mul", [w, tangents[0]])], axes=node.attrs["axes"], keepdims=1)
        dy = dy if count is None else b.op("Div", [dy, count])
        return [b.reshape(dy, node.outputs[0].type.shape)]

    def lower(self, k, node, ins, outs):
        init, step, finish, _ = _KINDS[node.op]
        x = ins[0]
        init = k.lift(_BOOL[node.op] if x.dtype == "bool" else init, like=LLVM_TYPES[x.dtype])
        axes = node.attrs["axes"]
        kept, _ = self._shapes(node, x.shape)
        y = outs[0].reshape(kept)
        reduced = [x.shape[a] for a in axes]
        count = int(np.prod(reduced, dtype=np.int64))
        with k.loops(kept) as idx:
            acc = k.var(init)
            with k.loops(reduced) as r:
                full = list(idx)
                for a, ri in zip(axes, r):
                    full[a] = ri
                acc.value = step(k, acc.value, x[tuple(full)])
            y[tuple(idx)] = finish(k, acc.value, count)
