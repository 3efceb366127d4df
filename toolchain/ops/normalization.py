"""Normalization: BatchNormalization (inference), LayerNormalization,
InstanceNormalization and LRN. BatchNormalization after a Conv/Gemm is folded into
its weights by passes.fuse.fold_batchnorm; the lowering here is for the rest."""
from __future__ import annotations

import numpy as np

from ..kernel import mathfns as m
from .base import Op, in_type, invalid, norm_axis, register, unsupported



def _float_input(node):
    t = in_type(node)
    if t.dtype != "float32":
        raise unsupported(node, "needs float32 input")
    return t


def _check_channel_params(node, first, channels):
    for i in range(first, len(node.inputs)):
        v = node.inputs[i]
        if v is not None and v.type.shape != (channels,):
            raise invalid(node, f"input {i} has shape {v.type.shape}, expected ({channels},)")


@register("BatchNormalization")
class BatchNormalization(Op):
    fusable_epilogue = True
    inplace = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
        if node.attrs.pop("training_mode", 0):
            raise unsupported(node, "training_mode=1 is not an inference graph")
        node.attrs.pop("momentum", None)
        node.attrs.pop("spatial", None)
        node.attrs.pop("is_test", None)
        node.attrs.pop("consumed_inputs", None)

    def infer(self, node):
        t = _float_input(node)
        if len(t.shape) < 2 or len(node.inputs) != 5:
            raise invalid(node, "needs X (N x C x ...), scale, B, mean and var")
        _check_channel_params(node, 1, t.shape[1])
        return [t]

    def reference(self, node, x, scale, b, mean, var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        f = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + node.attrs["epsilon"])
        y = (x - mean.reshape(shape)) * f.reshape(shape) + b.reshape(shape)
        return [y.astype(x.dtype)]

    def vjp(self, b, node, cotangents):
        """Inference form, y = scale (x - mean) / sqrt(var + eps) + bias, differentiated in
        every operand (per-channel sums over the batch and spatial axes)."""
        g, (x, scale, _, mean, var) = cotangents[0], node.inputs[:5]
        xs = x.type.shape
        col, axes = (xs[1],) + (1,) * (len(xs) - 2), [0, *range(2, len(xs))]
        ve = b.op("Add", [b.primal(var), b.scalar(node.attrs["epsilon"])])
        inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [ve])])
        k = b.op("Mul", [b.primal(scale), inv])
        gx = b.op("Mul", [g, b.reshape(k, col)])
        gsum = b.op("ReduceSum", [g], axes=axes, keepdims=0)
        xc = b.op("Sub", [b.primal(x), b.reshape(b.primal(mean), col)])
        gxc = b.op("ReduceSum", [b.op("Mul", [g, xc])], axes=axes, keepdims=0)
        gvar = b.op("Mul", [b.op("Mul", [gxc, b.primal(scale)]), b.op("Mul", [b.op("Div", [inv, ve]), b.scalar(-0.5)])])
        return [gx, b.op("Mul", [gxc, inv]), gsum, b.op("Neg", [b.op("Mul", [gsum, k])]), gvar]

    def jvp(self, b, node, tangents):
        """With constant statistics and affine parameters (a model's): the same normalization
        of the tangent with zero bias and mean, which folds into a Conv/Gemm producing the
        tangent as the forward one folds. Otherwise each operand's term, per channel."""
        (x, scale, _, mean, var), (tx, ts, tb, tm, tv) = node.inputs[:5], tangents[:5]
        eps, xs = node.attrs["epsilon"], x.type.shape
        if ts is None and tb is None and tm is None and tv is None:
            zero = b.g.const("zero", np.zeros(scale.type.shape, scale.type.dtype))
            return [b.op("BatchNormalization", [tx, scale, zero, zero, var], epsilon=eps)]

        def col(v):
            return b.reshape(v, (xs[1],) + (1,) * (len(xs) - 2))

        ve = b.op("Add", [var, b.scalar(eps)])
        inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [ve])])
        xc = b.op("Sub", [x, col(mean)])
        dxc = b.add([tx, tm and b.op("Neg", [col(tm)])])
        terms = [dxc and b.op("Mul", [dxc, col(b.op("Mul", [scale, inv]))]),
                 ts and b.op("Mul", [xc, col(b.op("Mul", [ts, inv]))]),
                 tv and b.op("Mul", [xc, col(b.op("Mul", [b.op("Mul", [tv, scale]),
                                                          b.op("Mul", [b.op("Div", [inv, ve]), b.scalar(-0.5)])]))]),
                 tb and col(tb)]
        return [b.expand(b.add(terms), xs)]

    def lower(self, k, node, ins, outs):
        x, scale, b, mean, var = ins
        n_, c_ = x.shape[:2]
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        x3, y3 = x.reshape((n_, c_, inner)), outs[0].reshape((n_, c_, inner))
        with k.loops((n_, c_)) as (n, c):
            f = scale[c] / k.sqrt(var[c] + node.attrs["epsilon"])
            shift = b[c] - mean[c] * f
            with k.loop(inner) as i:
                y3[n, c, i] = x3[n, c, i] * f + shift


def _normalize_rows(k, x, y, eps, affine):
    """y[r, j] = affine((x[r, j] - mean_r) / sqrt(var_r + eps), r, j) for x viewed as
    (rows, *norm_shape), j a multi-index. Two passes (mean, then the variance of the
    centred values) keep float32 accurate."""
    norm_shape = x.shape[1:]
    count = float(np.prod(norm_shape, dtype=np.int64))
    with k.loop(x.shape[0]) as r:
        total = k.var(0.0)
        with k.loops(norm_shape) as j:
            total += x[(r, *j)]
        mean = total.value * (1.0 / count)
        sq = k.var(0.0)
        with k.loops(norm_shape) as j:
            d = x[(r, *j)] - mean
            sq += d * d
        inv = 1.0 / k.sqrt(sq.value * (1.0 / count) + eps)
        with k.loops(norm_shape) as j:
            y[(r, *j)] = affine((x[(r, *j)] - mean) * inv, r, j)


def _normalize_reference(x, axes, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps)


@register("LayerNormalization")
class LayerNormalization(Op):
    fusable_epilogue = True

    def item_wise(self, node):
        return node.attrs["axis"] != 0

    def canonicalize(self, node, opset):
        t = in_type(node)
        node.attrs["axis"] = norm_axis(node.attrs.get("axis", -1), len(t.shape), node)
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
        node.attrs.pop("stash_type", None)

    def infer(self, node):
        t = _float_input(node)
        norm_shape = t.shape[node.attrs["axis"]:]
        for i in (1, 2):
            if i < len(node.inputs) and node.inputs[i] is not None:
                try:
                    np.broadcast_shapes(node.inputs[i].type.shape, norm_shape)
                except ValueError:
                    raise invalid(node, f"input {i} of shape {node.inputs[i].type.shape} does not broadcast "
                                     f"to the normalized shape {norm_shape}") from None
        return [t]  # Mean and InvStdDev outputs are not produced (training only)

    def reference(self, node, x, scale=None, b=None):
        axes = tuple(range(node.attrs["axis"], x.ndim))
        y = _normalize_reference(x, axes, node.attrs["epsilon"])
        if scale is not None:
            y = y * scale
        if b is not None:
            y = y + b
        return [y.astype(x.dtype)]

    def jvp(self, b, node, tangents):
        """dy = dxhat scale + xhat dscale + dbias, with xhat = (x - mean) inv and
        dxhat = inv (dx - mean(dx) - xhat mean(xhat dx)), means over the normalized axes."""
        x, (tx, ts, tb) = node.inputs[0], (list(tangents) + [None, None])[:3]
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        axes = list(range(node.attrs["axis"], len(x.type.shape)))

        def mean(v):
            return b.op("ReduceMean", [v], axes=axes, keepdims=1)

        xc = b.op("Sub", [x, mean(x)])
        var = mean(b.op("Mul", [xc, xc]))
        inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [b.op("Add", [var, b.scalar(node.attrs["epsilon"])])])])
        xhat = b.op("Mul", [xc, inv])
        dxhat = tx and b.op("Mul", [inv, b.op("Sub", [b.op("Sub", [tx, mean(tx)]),
                                                       b.op("Mul", [xhat, mean(b.op("Mul", [xhat, tx]))])])])
        terms = [dxhat if dxhat is None or scale is None else b.op("Mul", [dxhat, scale]),
                 ts and b.op("Mul", [xhat, ts]), tb]
        return [b.expand(b.add(terms), x.type.shape)]

    def lower(self, k, node, ins, outs):
        ax = node.attrs["axis"]
        shape = ins[0].shape
        rows, norm_shape = int(np.prod(shape[:ax], dtype=np.int64)), shape[ax:]
        scale = ins[1].broadcast_to(norm_shape) if len(ins) > 1 and ins[1] is not None else None
        bias = ins[2].broadcast_to(norm_shape) if len(ins) > 2 and ins[2] is not None else None

        def affine(v, r, j):
            v = v * scale[j] if scale is not None else v
            return v + bias[j] if bias is not None else v

        _normalize_rows(k, ins[0].reshape((rows, *norm_shape)), outs[0].reshape((rows, *norm_shape)),
                        node.attrs["epsilon"], affine)


@register("InstanceNormalization")
class InstanceNormalization(Op):
    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))

    def infer(self, node):
        t = _float_input(node)
        if len(t.shape) < 3 or len(node.inputs) != 3:
            raise invalid(node, "needs X (N x C x spatial...), scale and B")
        _check_channel_params(node, 1, t.shape[1])
        return [t]

    def reference(self, node, x, scale, b):
        y = _normalize_reference(x, tuple(range(2, x.ndim)), node.attrs["epsilon"])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return [(y * scale.reshape(shape) + b.reshape(shape)).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        n_, c_ = ins[0].shape[:2]
        inner = int(np.prod(ins[0].shape[2:], dtype=np.int64))
        x = ins[0].reshape((n_ * c_, inner))
        y = outs[0].reshape((n_ * c_, inner))
        scale, bias = ins[1], ins[2]

        def affine(v, r, j):  # row r = n * C + c
            return v * scale[r % c_] + bias[r % c_]

        _normalize_rows(k, x, y, node.attrs["epsilon"], affine)


@register("LRN")
class LRN(Op):
    """Local response normalization across channels (AlexNet-era models)."""

    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        if "size" not in node.attrs:
            raise invalid(node, "needs size")
        node.attrs["size"] = int(node.attrs["size"])
        for key, default in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)):
            node.attrs[key] = float(node.attrs.get(key, default))

    def infer(self, node):
        t = _float_input(node)
        if len(t.shape) < 3:
            raise invalid(node, f"needs N x C x spatial input, got {t.shape}")
        return [t]

    def _window(self, node):
        size = node.attrs["size"]
        return (size - 1) // 2, size - 1 - (size - 1) // 2  # channels before, after

    def reference(self, node, x):
        a = node.attrs
        before, after = self._window(node)
        sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
        c_ = x.shape[1]
        total = sum(sq[:, i:i + c_] for i in range(a["size"]))
        return [(x / (a["bias"] + a["alpha"] / a["size"] * total) ** a["beta"]).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        a = node.attrs
        before, after = self._window(node)
        n_, c_ = ins[0].shape[:2]
        inner = int(np.prod(ins[0].shape[2:], dtype=np.int64))
        x, y = ins[0].reshape((n_, c_, inner)), outs[0].reshape((n_, c_, inner))
        with k.loops((n_, c_, inner)) as (n, c, i):
            total = k.var(0.0)
            with k.loop(before + after + 1) as w:
                cc = c + w - before
                with k.if_((cc >= 0) & (cc < c_)):
                    v = x[n, cc, i]
                    total += v * v
            base = total.value * (a["alpha"] / a["size"]) + a["bias"]
            y[n, c, i] = x[n, c, i] / m.exp(k, m.log(k, base) * a["beta"])


@register("LpNormalization")
class LpNormalization(Op):
    """x / ||x||_p along one axis (p = 1 or 2); where the norm is 0 (x is 0 there), 0."""

    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", -1)), len(in_type(node).shape), node)
        p = node.attrs.setdefault("p", 2)
        if p not in (1, 2):
            raise invalid(node, f"p must be 1 or 2, got {p}")

    def infer(self, node):
        t = in_type(node)
        if t.dtype != "float32":
            raise unsupported(node, f"needs float32 input, got {t.dtype}")
        return [t]

    def reference(self, node, x):
        x64 = x.astype(np.float64)
        ax, p = node.attrs["axis"], node.attrs["p"]
        norm = np.abs(x64).sum(axis=ax, keepdims=True) if p == 1 else np.sqrt((x64 * x64).sum(axis=ax, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            return [np.where(norm == 0, 0.0, x64 / norm).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        ax, p = node.attrs["axis"], node.attrs["p"]
        kept = x.shape[:ax] + (1,) + x.shape[ax + 1:]
        with k.loops(kept) as idx:
            at = list(idx)
            acc = k.var(0.0)
            with k.loop(x.shape[ax]) as j:
                at[ax] = j
                v = x[tuple(at)]
                acc.value = acc.value + (k.abs(v) if p == 1 else v * v)
            norm = acc.value if p == 1 else k.sqrt(acc.value)
            with k.loop(x.shape[ax]) as j:
                at[ax] = j
                y[tuple(at)] = k.select(norm.eq(0.0), 0.0, x[tuple(at)] / norm)
