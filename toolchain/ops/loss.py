"""Losses: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, and the internal ops of their
derivatives (edgec.LossGrad in the input, edgec.LossWeightGrad in the class weights: what
their reverse-mode rules build).

Both losses see the input as (N, C, D) with D the product of the trailing dims d1..dk, and
the labels as (N, D). Per sample s = (n, d) with label l: the sample weight w_s is
weight[l] (1 without the weight input), 0 where l equals ignore_index; the loss is
L_s = -w_s * x[n, l, d] (x: log-probabilities; for SoftmaxCrossEntropyLoss the log-softmax
of the scores over C). Reductions: none (L itself), sum (sum L), mean (sum L / sum w_s,
which is NaN when every sample is ignored, as onnxruntime and the onnx reference give).

Labels: ignore_index is matched against the label as given. A label in [-C, 0) counts from
the end, as the ops' function bodies (GatherElements/Gather) and onnxruntime read it. A
label outside [-C, C) that is not ignore_index (invalid input: onnxruntime stops with an
error) makes that sample's loss and weight NaN, so a reduced loss is NaN too; the kernels
read a clamped class then, never outside their buffers. The derivatives follow the same
rule: such a sample's row of the input's cotangent is NaN, and with mean (its NaN weight
in the divisor) every cotangent is NaN; it adds nothing to the class weights' otherwise.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from ..kernel.llvm import I64, LLVM_TYPES
from .base import Op, in_type, invalid, register, unsupported

REDUCTIONS = ("none", "sum", "mean")
LABELS = ("int32", "int64")
LOSS_GRAD = "edgec.LossGrad"
LOSS_WEIGHT_GRAD = "edgec.LossWeightGrad"


def _dims(shape):
    """(N, C, D) of an (N, C, d1, ..., dk) input."""
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


def _optional(items, i):
    return items[i] if i < len(items) else None


# -- numpy semantics -------------------------------------------------------------------------
def _log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _sample_weights(labels, classes, weight, ignore_index, dtype):
    """(ignored, class read, w_s) per sample, in the labels' shape."""
    lab = labels.astype(np.int64)
    ignored = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, bool)
    wrapped = np.where(lab < 0, lab + classes, lab)
    inside = (wrapped >= 0) & (wrapped < classes)
    cls = np.clip(wrapped, 0, classes - 1)
    w = weight.astype(dtype)[cls] if weight is not None else np.ones(lab.shape, dtype)
    return ignored, cls, np.where(ignored, 0.0, np.where(inside, w, np.nan)).astype(dtype)


def _loss_reference(attrs, logp, labels, weight):
    ignored, cls, ws = _sample_weights(labels, logp.shape[1], weight, attrs.get("ignore_index"), np.float64)
    picked = np.take_along_axis(logp, np.expand_dims(cls, 1), axis=1)[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(ignored, 0.0, -picked * ws)
        if attrs["reduction"] == "sum":
            return loss.sum()
        if attrs["reduction"] == "mean":
            return loss.sum() / ws.sum()
    return loss


# -- kernel pieces -----------------------------------------------------------------------------
def _log_sum_exp(k, x3, n, d, classes):
    """log(sum_c exp(x[n, c, d])), with the maximum taken out first."""
    mx = k.var(x3[n, 0, d])
    with k.loop(classes) as c:
        mx.value = k.max(mx.value, x3[n, c, d])
    total = k.var(0.0)
    with k.loop(classes) as c:
        total += m.exp(k, x3[n, c, d] - mx.value)
    return mx.value + m.log(k, total.value)


def _sample(k, attrs, label, classes, weights, ty):
    """(counted: not ignored and in range, ignored or False, class to read (in range), w_s) of
    one sample (see the module doc)."""
    lab = k.cast(label, I64)
    ii = attrs.get("ignore_index")
    ignored = lab.eq(ii) if ii is not None else False
    wrapped = k.select(lab < 0, lab + classes, lab)
    inside = (wrapped >= 0) & (wrapped < classes)
    cls = k.cast(k.min(k.max(wrapped, 0), classes - 1), k.lift(0).v.type)
    w = weights[cls] if weights is not None else k.lift(1.0, like=ty)
    w = k.select(inside, w, k.lift(float("nan"), like=ty))
    counted = inside & ~ignored if ignored is not False else inside
    return counted, ignored, cls, k.select(ignored, k.lift(0.0, like=ty), w)


def _weight_sum(k, node, t2, classes, weights, ty):
    """sum w_s over all samples (the divisor of the mean)."""
    wsum = k.var(k.lift(0.0, like=ty))
    with k.loops(t2.shape) as (n, d):
        wsum += _sample(k, node.attrs, t2[n, d], classes, weights, ty)[3]
    return wsum.value


def _check_types(node, x_dtypes, what):
    x, t = in_type(node, 0), in_type(node, 1)
    if x.dtype not in x_dtypes:
        if x.dtype in ("float16", "bfloat16", "float32", "float64"):
            raise unsupported(node, f"{what} of {x.dtype} is not supported (only {', '.join(x_dtypes)})")
        raise invalid(node, f"{what} must be float, got {x.dtype}")
    if t.dtype not in LABELS:
        raise invalid(node, f"the labels must be int32 or int64, got {t.dtype}")
    if len(x.shape) < 2:
        raise invalid(node, f"{what} needs shape (N, C, d1, ...), got {list(x.shape)}")
    want = x.shape[:1] + x.shape[2:]
    if t.shape != want:
        raise invalid(node, f"labels of shape {list(t.shape)} do not match {what} {list(x.shape)} "
                            f"(expected {list(want)})")
    w = node.inputs[2] if len(node.inputs) > 2 else None
    if w is not None and (w.type.shape != (x.shape[1],) or w.type.dtype != x.dtype):
        raise invalid(node, f"the weight input must be {x.dtype}[{x.shape[1]}], got "
                            f"{w.type.dtype}{list(w.type.shape)}")
    return x, want


class _Loss(Op):
    softmax = False  # SoftmaxCrossEntropyLoss: the input holds scores, not log-probabilities
    dtypes = ("float32", "float64")

    def canonicalize(self, node, opset):
        red = node.attrs.setdefault("reduction", "mean")
        if red not in REDUCTIONS:
            raise invalid(node, f"reduction must be one of {', '.join(REDUCTIONS)}, got {red!r}")
        if "ignore_index" in node.attrs:
            node.attrs["ignore_index"] = int(node.attrs["ignore_index"])

    def item_wise(self, node):
        return node.attrs["reduction"] == "none"

    def infer(self, node):
        x, per_sample = _check_types(node, self.dtypes, "the input")
        out = [TensorType(x.dtype, per_sample if node.attrs["reduction"] == "none" else ())]
        return out + [x] * (self.softmax and len(node.outputs) > 1)

    def macs(self, node):
        return in_type(node).size if self.softmax else 0

    def reference(self, node, x, labels, weight=None):
        logp = _log_softmax(x.astype(np.float64)) if self.softmax else x.astype(np.float64)
        loss = np.asarray(_loss_reference(node.attrs, logp, labels, weight)).astype(x.dtype)
        return [loss] + [logp.astype(x.dtype)] * (len(node.outputs) > 1)

    def lower(self, k, node, ins, outs):
        x, labels, weights = ins[0], ins[1], _optional(ins, 2)
        n_, c_, d_ = _dims(x.shape)
        x3, t2 = x.reshape((n_, c_, d_)), labels.reshape((n_, d_))
        ty = LLVM_TYPES[x.dtype]
        red = node.attrs["reduction"]
        loss = outs[0].reshape((n_, d_) if red == "none" else (1,))
        logp = outs[1].reshape((n_, c_, d_)) if len(outs) > 1 else None
        total, wsum = k.var(k.lift(0.0, like=ty)), k.var(k.lift(0.0, like=ty))
        with k.loops((n_, d_)) as (n, d):
            _, ignored, cls, ws = _sample(k, node.attrs, t2[n, d], c_, weights, ty)
            picked = x3[n, cls, d]
            if self.softmax:
                shift = _log_sum_exp(k, x3, n, d, c_)
                picked = picked - shift
                if logp is not None:
                    with k.loop(c_) as c:
                        logp[n, c, d] = x3[n, c, d] - shift
            v = k.select(ignored, k.lift(0.0, like=ty), -picked * ws)
            if red == "none":
                loss[n, d] = v
            else:
                total += v
                wsum += ws
        if red == "sum":
            loss[0] = total.value
        elif red == "mean":
            loss[0] = total.value / wsum.value

    def jvp(self, b, node, tangents):
        """Forward mode: the loss's tangent is its input cotangent at a unit seed
        (edgec.LossGrad) times the input's tangent, summed over classes (and over samples
        unless reduction is none); log_prob's tangent is LogSoftmax's, dx - sum(p dx)."""
        x, labels, weight = node.inputs[0], node.inputs[1], _optional(node.inputs, 2)
        tx = tangents[0]
        if len(tangents) > 2 and tangents[2] is not None:
            raise unsupported(node, "no derivative rule for class weights computed at run time (forward mode)")
        if tx is None:
            return [None] * len(node.outputs)
        red, shape = node.attrs["reduction"], x.type.shape
        attrs = {key: node.attrs[key] for key in ("reduction", "ignore_index") if key in node.attrs}
        seed = b.scalar(1.0) if red != "none" else b.g.const("ones", np.ones(labels.type.shape, x.type.dtype))
        d = b.op(LOSS_GRAD, [seed, labels, weight, x if self.softmax else None], classes=shape[1], **attrs)
        axes = [1] if red == "none" else list(range(len(shape)))
        out = [b.op("ReduceSum", [b.op("Mul", [d, tx])], axes=axes, keepdims=0)]
        if len(node.outputs) > 1:
            p = b.op("Exp", [node.outputs[1]])
            out.append(b.op("Sub", [tx, b.op("ReduceSum", [b.op("Mul", [p, tx])], axes=[1], keepdims=1)]))
        return out

    def vjp(self, b, node, cotangents):
        """d input = g_s w_s (softmax(scores) - onehot(l)) (SoftmaxCrossEntropyLoss) or
        -g_s w_s onehot(l) (NegativeLogLikelihoodLoss), g_s the loss's cotangent of sample s
        (divided by sum w_s for mean): one edgec.LossGrad node. The log_prob output's
        cotangent adds LogSoftmax's rule. Class weights computed at run time (a parameter)
        get edgec.LossWeightGrad."""
        x, labels, weight = node.inputs[0], node.inputs[1], _optional(node.inputs, 2)
        g, grad, gw = cotangents[0], None, None
        attrs = {key: node.attrs[key] for key in ("reduction", "ignore_index") if key in node.attrs}
        if g is not None:
            ins = [g, b.primal(labels), b.primal(weight), b.primal(x) if self.softmax else None]
            grad = b.op(LOSS_GRAD, ins, classes=x.type.shape[1], **attrs)
            if weight is not None and not weight.is_const:
                y = b.primal(node.outputs[0]) if node.attrs["reduction"] == "mean" else None
                ins = [g, b.primal(labels), b.primal(weight), b.primal(x), y]
                gw = b.op(LOSS_WEIGHT_GRAD, ins, softmax=int(self.softmax), **attrs)
        if len(cotangents) > 1 and cotangents[1] is not None:
            gl, lp = cotangents[1], b.primal(node.outputs[1])
            total = b.op("ReduceSum", [gl], axes=[1], keepdims=1)
            d = b.op("Sub", [gl, b.op("Mul", [b.op("Exp", [lp]), total])])
            grad = d if grad is None else b.op("Add", [grad, d])
        return [grad, None, gw]


@register("NegativeLogLikelihoodLoss")
class NegativeLogLikelihoodLoss(_Loss):
    pass


@register("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(_Loss):
    softmax = True
    dtypes = ("float32",)  # the inline exp/log are single precision


@register(LOSS_GRAD, internal=True)
class LossGrad(Op):
    """The cotangent of a loss's input: inputs (g, labels, weight or None, scores or None),
    attributes reduction, ignore_index (optional) and classes (C). With scores (the softmax
    cross entropy) d = g_s w_s (softmax(scores) - onehot(l)); without (the NLL loss of
    log-probabilities) d = -g_s w_s onehot(l). A sample whose label is out of range gets
    NaN in its whole row (w_s is NaN), as its loss."""

    def infer(self, node):
        g, labels = in_type(node, 0), in_type(node, 1)
        shape = labels.shape[:1] + (node.attrs["classes"],) + labels.shape[1:]
        return [TensorType(g.dtype, shape)]

    def reference(self, node, g, labels, weight=None, scores=None):
        c_, red = node.attrs["classes"], node.attrs["reduction"]
        ignored, cls, ws = _sample_weights(labels, c_, weight, node.attrs.get("ignore_index"), np.float64)
        gs = g.astype(np.float64) / ws.sum() if red == "mean" else np.broadcast_to(g.astype(np.float64), ws.shape)
        hot = np.expand_dims(cls, 1) == np.arange(c_).reshape((1, c_) + (1,) * (labels.ndim - 1))
        f = np.expand_dims(gs * ws, 1)
        d = f * (np.exp(_log_softmax(scores.astype(np.float64))) - hot) if scores is not None else -f * hot
        return [d.astype(g.dtype)]

    def lower(self, k, node, ins, outs):
        g, labels, weights, scores = ins[0], ins[1], _optional(ins, 2), _optional(ins, 3)
        c_, red = node.attrs["classes"], node.attrs["reduction"]
        n_, _, d_ = _dims(outs[0].shape)
        t2, dx = labels.reshape((n_, d_)), outs[0].reshape((n_, c_, d_))
        x3 = scores.reshape((n_, c_, d_)) if scores is not None else None
        ty = LLVM_TYPES[outs[0].dtype]
        gs = g.reshape((n_, d_) if red == "none" else (1,))
        scale = None
        if red == "mean":
            scale = gs[0] / _weight_sum(k, node, t2, c_, weights, ty)
        elif red == "sum":
            scale = gs[0]
        with k.loops((n_, d_)) as (n, d):
            _, _, cls, ws = _sample(k, node.attrs, t2[n, d], c_, weights, ty)
            f = (gs[n, d] if scale is None else scale) * ws
            shift = _log_sum_exp(k, x3, n, d, c_) if x3 is not None else None
            with k.loop(c_) as c:
                hot = k.select(cls.eq(c), k.lift(1.0, like=ty), k.lift(0.0, like=ty))
                dx[n, c, d] = f * (m.exp(k, x3[n, c, d] - shift) - hot) if x3 is not None else -f * hot


@register(LOSS_WEIGHT_GRAD, internal=True)
class LossWeightGrad(Op):
    """The cotangent of a loss's class weights: inputs (g, labels, weight, x, the loss for
    mean or None), attributes reduction, ignore_index (optional) and softmax (x holds scores,
    else log-probabilities). With nll_s = -log p[n, l, d] and the counted samples (not
    ignored, label in range): dweight[c] = sum over counted s of class c of g_s nll_s (none,
    sum), or g (nll_s - loss) / sum w_s (mean)."""

    def infer(self, node):
        return [in_type(node, 2)]

    def reference(self, node, g, labels, weight, x, y=None):
        c_, red = weight.shape[0], node.attrs["reduction"]
        ignored, cls, ws = _sample_weights(labels, c_, weight, node.attrs.get("ignore_index"), np.float64)
        lab = labels.astype(np.int64)
        counted = ~ignored & (lab >= -c_) & (lab < c_)
        x64 = x.astype(np.float64)
        logp = _log_softmax(x64) if node.attrs["softmax"] else x64
        nll = -np.take_along_axis(logp, np.expand_dims(cls, 1), axis=1)[:, 0]
        g64 = g.astype(np.float64)
        v = g64 * (nll - y) / ws.sum() if red == "mean" else g64 * nll
        dw = np.zeros(c_)
        np.add.at(dw, cls[counted], np.broadcast_to(v, nll.shape)[counted])
        return [dw.astype(weight.dtype)]

    def lower(self, k, node, ins, outs):
        g, labels, weights, x, y = ins[0], ins[1], ins[2], ins[3], _optional(ins, 4)
        red, dw = node.attrs["reduction"], outs[0]
        n_, c_, d_ = _dims(x.shape)
        t2, x3 = labels.reshape((n_, d_)), x.reshape((n_, c_, d_))
        ty = LLVM_TYPES[dw.dtype]
        gs = g.reshape((n_, d_) if red == "none" else (1,))
        with k.loop(c_) as c:
            dw[c] = k.lift(0.0, like=ty)
        scale = gs[0] / _weight_sum(k, node, t2, c_, weights, ty) if red == "mean" else None
        with k.loops((n_, d_)) as (n, d):
            counted, _, cls, _ = _sample(k, node.attrs, t2[n, d], c_, weights, ty)
            nll = -x3[n, cls, d]
            if node.attrs["softmax"]:
                nll = nll + _log_sum_exp(k, x3, n, d, c_)
            if red == "mean":
                v = scale * (nll - y.reshape((1,))[0])
            else:
                v = (gs[n, d] if red == "none" else gs[0]) * nll
            with k.if_(counted):
                dw[cls] = dw[cls] + v
