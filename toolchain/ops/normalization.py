"""Normalization: BatchNormalization (inference; training mode as its own op), LayerNormalization, RMSNormalization,
InstanceNormalization, LRN and LpNormalization. BatchNormalization after a Conv/Gemm is
folded into its weights by passes.fuse.fold_batchnorm; the lowering here is for the rest."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidModelError, UnsupportedError
from ..kernel import mathfns as m
from ..ir import TensorType
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
            if opset < 14:
                raise unsupported(node, "training_mode=1 is not an inference graph")
            node.op = TRAINING  # the importer goes on with that op
            node.attrs = {"epsilon": node.attrs["epsilon"], "momentum": float(node.attrs.get("momentum", 0.9))}
            return
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


TRAINING = "edgec.BatchNormTraining"


@register(TRAINING, internal=True)
class BatchNormTraining(Op):
    """BatchNormalization with training_mode=1 (opset 14+): normalized by the batch's own
    per-channel mean and (population) variance over N and the spatial axes; outputs 1 and
    2 are the running statistics, input * momentum + batch's * (1 - momentum).
    Deterministic; a separate op so nothing fuses or folds it as the inference form."""

    def infer(self, node):
        def named(kind, msg):  # errors name the model's op
            return kind(msg + " (training_mode=1)", node=node.name, op="BatchNormalization")
        if len(node.inputs) != 5 or any(v is None for v in node.inputs) or len(in_type(node).shape) < 2:
            raise named(InvalidModelError, "needs X (N x C x ...), scale, B, input_mean and input_var")
        t = in_type(node)
        for i, v in enumerate(node.inputs):
            if v.type.dtype != "float32":
                raise named(UnsupportedError, f"input {i} is {v.type.dtype}: float32 only")
            if i and v.type.shape != (t.shape[1],):
                raise named(InvalidModelError, f"input {i} has shape {list(v.type.shape)}, expected [{t.shape[1]}]")
        return [t, *[TensorType("float32", (t.shape[1],))] * 2][:len(node.outputs)]

    def reference(self, node, x, scale, b, mean, var):
        axes, shape = (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
        x64, mom = x.astype(np.float64), node.attrs["momentum"]
        bm, bv = x64.mean(axis=axes), x64.var(axis=axes)
        y = (x64 - bm.reshape(shape)) / np.sqrt(bv.reshape(shape) + node.attrs["epsilon"])
        y = y * scale.reshape(shape) + b.reshape(shape)
        outs = [y, mean * mom + bm * (1 - mom), var * mom + bv * (1 - mom)]
        return [o.astype(np.float32) for o in outs[:len(node.outputs)]]

    def lower(self, k, node, ins, outs):
        x, scale, b, mean, var = ins
        n_, c_ = x.shape[:2]
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        x3, y3 = x.reshape((n_, c_, inner)), outs[0].reshape((n_, c_, inner))
        count, mom = float(n_ * inner), node.attrs["momentum"]
        with k.loop(c_) as c:  # two passes (mean, then the centred squares) keep float32 accurate
            total = k.var(0.0)
            with k.loops((n_, inner)) as (n, i):
                total += x3[n, c, i]
            bm = total.value * (1.0 / count)
            sq = k.var(0.0)
            with k.loops((n_, inner)) as (n, i):
                d = x3[n, c, i] - bm
                sq += d * d
            bv = sq.value * (1.0 / count)
            f = scale[c] / k.sqrt(bv + node.attrs["epsilon"])
            shift = b[c] - bm * f
            with k.loops((n_, inner)) as (n, i):
                y3[n, c, i] = x3[n, c, i] * f + shift
            for out, given, batch in zip(outs[1:], (mean, var), (bm, bv)):
                out[c] = given[c] * mom + batch * (1.0 - mom)


def _normalize_rows(k, x, y, eps, affine, stats=None, lead=1, eps_on_std=False):
    """y[r, j] = affine((x[r, j] - mean_r) / sqrt(var_r + eps), r, j) for x viewed as
    (*rows, *norm_shape), r the multi-index of the `lead` row axes and j of the others
    (eps_on_std: / (sqrt(var_r) + eps), MeanVarianceNormalization's form). Two passes
    (mean, then the variance of the centred values) keep float32 accurate.
    `stats(r, mean, inv_std)`, if given, stores a row's statistics (LayerNormalization's
    Mean and InvStdDev outputs)."""
    norm_shape = x.shape[lead:]
    count = float(np.prod(norm_shape, dtype=np.int64))
    with k.loops(x.shape[:lead]) as r:
        total = k.var(0.0)
        with k.loops(norm_shape) as j:
            total += x[(*r, *j)]
        mean = total.value * (1.0 / count)
        sq = k.var(0.0)
        with k.loops(norm_shape) as j:
            d = x[(*r, *j)] - mean
            sq += d * d
        var = sq.value * (1.0 / count)
        inv = 1.0 / (k.sqrt(var) + eps) if eps_on_std else 1.0 / k.sqrt(var + eps)
        if stats is not None:
            stats(r, mean, inv)
        with k.loops(norm_shape) as j:
            y[(*r, *j)] = affine((x[(*r, *j)] - mean) * inv, r, j)


def _normalize_reference(x, axes, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps)


def _layer_norm_stats(b, node, x):
    """For LayerNormalization's derivative rules, as graph ops: the mean over the normalized
    axes (a function), 1 / sqrt(var + epsilon) and xhat = (x - mean(x)) inv."""
    axes = list(range(node.attrs["axis"], len(x.type.shape)))

    def mean(v):
        return b.op("ReduceMean", [v], axes=axes, keepdims=1)

    xc = b.op("Sub", [x, mean(x)])
    inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [b.op("Add", [mean(b.op("Mul", [xc, xc])),
                                                              b.scalar(node.attrs["epsilon"])])])])
    return mean, inv, b.op("Mul", [xc, inv])


@register("LayerNormalization")
class LayerNormalization(Op):
    """Y, and optionally Mean and InvStdDev: the statistics of each normalized row, of X's
    rank with the normalized axes kept as 1 (float32: stash_type 1, the only one supported
    for them; Y alone is computed in float32 whatever stash_type says)."""

    fusable_epilogue = True  # only while Y is the one output (passes.fuse checks)

    def item_wise(self, node):
        return node.attrs["axis"] != 0

    def canonicalize(self, node, opset):
        t = in_type(node)
        node.attrs["axis"] = norm_axis(node.attrs.get("axis", -1), len(t.shape), node)
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
        stash = int(node.attrs.pop("stash_type", 1))
        if stash != 1 and len(node.outputs) > 1:  # Mean/InvStdDev in another type: not produced
            node.attrs["stash_type"] = stash  # (the importer refuses them if something reads them)

    def _stats_type(self, node, t):
        ax = node.attrs["axis"]
        return TensorType("float32", t.shape[:ax] + (1,) * (len(t.shape) - ax))

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
        if len(node.outputs) > 3:
            raise invalid(node, f"has {len(node.outputs)} outputs, at most 3 (Y, Mean, InvStdDev)")
        stats = len(node.outputs) - 1 if node.attrs.get("stash_type", 1) == 1 else 0
        return [t] + [self._stats_type(node, t)] * stats

    def reference(self, node, x, scale=None, b=None):
        axes = tuple(range(node.attrs["axis"], x.ndim))
        eps = node.attrs["epsilon"]
        y = _normalize_reference(x, axes, eps)
        if scale is not None:
            y = y * scale
        if b is not None:
            y = y + b
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
        return [y.astype(x.dtype), mean.astype(np.float32), inv.astype(np.float32)][:len(node.outputs)]

    def jvp(self, b, node, tangents):
        """dy = dxhat scale + xhat dscale + dbias, with xhat = (x - mean) inv and
        dxhat = inv (dx - mean(dx) - xhat mean(xhat dx)), means over the normalized axes."""
        x, (tx, ts, tb) = node.inputs[0], (list(tangents) + [None, None])[:3]
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        mean, inv, xhat = _layer_norm_stats(b, node, x)
        dxhat = tx and b.op("Mul", [inv, b.op("Sub", [b.op("Sub", [tx, mean(tx)]),
                                                       b.op("Mul", [xhat, mean(b.op("Mul", [xhat, tx]))])])])
        terms = [dxhat if dxhat is None or scale is None else b.op("Mul", [dxhat, scale]),
                 ts and b.op("Mul", [xhat, ts]), tb]
        return [b.expand(b.add(terms), x.type.shape)]

    def vjp(self, b, node, cotangents):
        """With xhat = (x - mean) inv (recomputed from the saved input) and g' = g scale:
        dx = inv (g' - mean(g') - xhat mean(xhat g')), dscale = sum(g xhat), dbias = sum(g),
        the sums over what the scale and bias broadcast along."""
        if any(c is not None for c in cotangents[1:]):
            raise unsupported(node, "no derivative rule through the Mean/InvStdDev outputs (reverse mode)")
        g, x = cotangents[0], b.primal(node.inputs[0])
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        mean, inv, xhat = _layer_norm_stats(b, node, x)
        gs = g if scale is None else b.op("Mul", [g, b.primal(scale)])
        dx = b.op("Mul", [inv, b.op("Sub", [b.op("Sub", [gs, mean(gs)]),
                                            b.op("Mul", [xhat, mean(b.op("Mul", [xhat, gs]))])])])
        return [dx, None if scale is None else b.unbroadcast(b.op("Mul", [g, xhat]), scale.type.shape),
                None if bias is None else b.unbroadcast(g, bias.type.shape)]

    def lower(self, k, node, ins, outs):
        ax = node.attrs["axis"]
        shape = ins[0].shape
        rows, norm_shape = int(np.prod(shape[:ax], dtype=np.int64)), shape[ax:]
        scale = ins[1].broadcast_to(norm_shape) if len(ins) > 1 and ins[1] is not None else None
        bias = ins[2].broadcast_to(norm_shape) if len(ins) > 2 and ins[2] is not None else None

        def affine(v, r, j):
            v = v * scale[j] if scale is not None else v
            return v + bias[j] if bias is not None else v

        stat_outs = [o.reshape((rows,)) for o in outs[1:3]]

        def stats(r, mean, inv):
            for o, v in zip(stat_outs, (mean, inv)):
                o[r] = v

        _normalize_rows(k, ins[0].reshape((rows, *norm_shape)), outs[0].reshape((rows, *norm_shape)),
                        node.attrs["epsilon"], affine, stats if stat_outs else None)


@register("RMSNormalization")
class RMSNormalization(Op):
    """y = x / sqrt(mean(x^2 over axis..end) + epsilon) * scale, scale broadcast to x
    (unidirectionally: it may vary along the outer axes too)."""

    fusable_epilogue = True

    def item_wise(self, node):
        s = in_type(node, 1).shape
        return node.attrs["axis"] != 0 and (len(s) < len(in_type(node).shape) or s[0] == 1)

    def canonicalize(self, node, opset):
        node.attrs["axis"] = norm_axis(int(node.attrs.get("axis", -1)), len(in_type(node).shape), node)
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
        stash = int(node.attrs.pop("stash_type", 1))
        if stash != 1:
            raise unsupported(node, f"stash_type {stash} (only 1, float32, is supported)")

    def infer(self, node):
        t = _float_input(node)
        if len(node.inputs) != 2 or node.inputs[1] is None:
            raise invalid(node, "needs X and scale")
        s = in_type(node, 1)
        if s.dtype != "float32":
            raise unsupported(node, f"needs float32 scale, got {s.dtype}")
        try:
            ok = np.broadcast_shapes(s.shape, t.shape) == t.shape
        except ValueError:
            ok = False
        if not ok:
            raise invalid(node, f"scale of shape {s.shape} does not broadcast to the input's {t.shape}")
        return [t]

    def reference(self, node, x, scale):
        axes = tuple(range(node.attrs["axis"], x.ndim))
        x64 = x.astype(np.float64)
        rms = np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + node.attrs["epsilon"])
        return [(x64 / rms * scale).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        x, y = ins[0], outs[0]
        ax = node.attrs["axis"]
        outer, inner = x.shape[:ax], x.shape[ax:]
        scale = ins[1].broadcast_to(x.shape)
        count = float(np.prod(inner, dtype=np.int64))
        with k.loops(outer) as o:
            sq = k.var(0.0)
            with k.loops(inner) as j:
                v = x[(*o, *j)]
                sq += v * v
            inv = 1.0 / k.sqrt(sq.value * (1.0 / count) + node.attrs["epsilon"])
            with k.loops(inner) as j:
                y[(*o, *j)] = x[(*o, *j)] * inv * scale[(*o, *j)]


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
            return v * scale[r[0] % c_] + bias[r[0] % c_]

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


@register("GroupNormalization")
class GroupNormalization(Op):
    """Normalization over groups of channels, per item: X (N x C x spatial...) read as
    (N, G, C/G x spatial). scale and bias are per channel (C values) from opset 21, per
    group (G values) in opset 18; canonicalize records which (`per_group`)."""

    fusable_epilogue = True

    def item_wise(self, node):
        return True

    def canonicalize(self, node, opset):
        if "num_groups" not in node.attrs:
            raise invalid(node, "needs num_groups")
        node.attrs["num_groups"] = int(node.attrs["num_groups"])
        node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
        node.attrs.pop("stash_type", None)  # float32 input: computed in float32 (stash_type 1)
        node.attrs["per_group"] = int(opset < 21)

    def infer(self, node):
        t = _float_input(node)
        groups = node.attrs["num_groups"]
        if len(t.shape) < 2 or len(node.inputs) != 3 or any(v is None for v in node.inputs):
            raise invalid(node, "needs X (N x C x ...), scale and bias")
        if groups <= 0 or t.shape[1] % groups:
            raise invalid(node, f"num_groups {groups} does not divide the {t.shape[1]} channels")
        _check_channel_params(node, 1, groups if node.attrs["per_group"] else t.shape[1])
        return [t]

    def reference(self, node, x, scale, b):
        n_, c_, groups = x.shape[0], x.shape[1], node.attrs["num_groups"]
        xg = x.reshape((n_, groups, -1))
        y = _normalize_reference(xg, (2,), node.attrs["epsilon"]).reshape(x.shape)
        if node.attrs["per_group"]:
            scale, b = np.repeat(scale, c_ // groups), np.repeat(b, c_ // groups)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return [(y * scale.reshape(shape) + b.reshape(shape)).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        n_, c_ = ins[0].shape[:2]
        groups = node.attrs["num_groups"]
        inner = int(np.prod(ins[0].shape[2:], dtype=np.int64))
        shape = (n_, groups, c_ // groups, inner)
        scale, bias = ins[1], ins[2]
        per_group = node.attrs["per_group"]

        def affine(v, r, j):
            c = r[1] if per_group else r[1] * (c_ // groups) + j[0]
            return v * scale[c] + bias[c]

        _normalize_rows(k, ins[0].reshape(shape), outs[0].reshape(shape), node.attrs["epsilon"], affine, lead=2)


@register("MeanVarianceNormalization")
class MeanVarianceNormalization(Op):
    """(X - mean) / (sqrt(variance) + 1e-9) over `axes` (default N and the two spatial
    axes of NCHW data), the form of the spec's function body."""

    EPS = 1e-9
    fusable_epilogue = True

    def canonicalize(self, node, opset):
        rank = len(in_type(node).shape)
        axes = node.attrs.get("axes", [0, 2, 3])
        # empty: every axis (the function body's ReduceMean with an empty axes input)
        axes = [norm_axis(int(a), rank, node) for a in axes] if len(axes) else list(range(rank))
        if len(set(axes)) != len(axes):
            raise invalid(node, f"axes {node.attrs.get('axes')} repeat an axis")
        node.attrs["axes"] = sorted(axes)

    def item_wise(self, node):
        return 0 not in node.attrs["axes"]

    def infer(self, node):
        return [_float_input(node)]

    def reference(self, node, x):
        axes = tuple(node.attrs["axes"])
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=axes, keepdims=True)
        std = np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True))
        return [((x64 - mean) / (std + self.EPS)).astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        axes = node.attrs["axes"]
        rank = ins[0].rank
        perm = [a for a in range(rank) if a not in axes] + axes  # rows first, then the reduced axes
        _normalize_rows(k, ins[0].transpose(perm), outs[0].transpose(perm), self.EPS, lambda v, r, j: v,
                        lead=rank - len(axes), eps_on_std=True)
