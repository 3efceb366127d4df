"""Transformer blocks of opsets 23-25: Attention (scaled dot-product attention with
grouped-query heads, causal / sliding-window / padding / explicit masks, a KV cache,
softcap and the debug output of the scores) and RotaryEmbedding (RoPE).
RMSNormalization is with the other normalizations (normalization.py).

Attention is lowered as one loop nest per query row (batch, head, query): the scores of
the row against every key into a row workspace (with the bias and the running maximum),
then the exponentials and their sum, then the probability-weighted sum of the value rows
into a second workspace, scaled by 1/sum at the store. A row whose keys are all masked
(decided on the bias, not on the scores, as the spec says) gives zeros, also where a
masked score is NaN.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from .base import Op, in_type, invalid, register, unsupported

NEG_INF = float("-inf")
# softmax_precision codes (onnx element types) taken with float32 inputs: FLOAT, and DOUBLE,
# whose softmax is computed in float32 all the same (no float64 exp in kernel/mathfns.py; the
# probabilities differ by float32 rounding). The narrower ones would round the scores: refused.
PRECISE_SOFTMAX = (1, 11)


class Geometry(NamedTuple):
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int  # new keys (K's sequence length)
    past: int  # cached keys before them
    head: int  # Q and K head size
    v_head: int
    rank3: bool

    @property
    def total(self):
        return self.past + self.kv_len


def _opt(node, i):
    return node.inputs[i] if i < len(node.inputs) and node.inputs[i] is not None else None


def _geometry(node) -> Geometry:
    q, k_, v = (in_type(node, i).shape for i in range(3))
    a = node.attrs
    ranks = {len(q), len(k_), len(v)}
    if ranks not in ({3}, {4}):
        raise invalid(node, f"Q, K and V must all be 3-D or all 4-D, got shapes {q}, {k_}, {v}")
    if not q[0] == k_[0] == v[0]:
        raise invalid(node, f"batch sizes differ: Q {q}, K {k_}, V {v}")
    if len(q) == 3:
        hq, hkv = a.get("q_num_heads"), a.get("kv_num_heads")
        if not hq or not hkv or hq < 1 or hkv < 1:
            raise invalid(node, "3-D Q, K and V need q_num_heads and kv_num_heads")
        if q[2] % hq or k_[2] % hkv or v[2] % hkv:
            raise invalid(node, f"hidden sizes Q {q[2]}, K {k_[2]}, V {v[2]} do not divide into "
                                f"{hq} query / {hkv} key-value heads")
        if k_[1] != v[1]:
            raise invalid(node, f"K and V sequence lengths differ: {k_[1]} and {v[1]}")
        g = Geometry(q[0], hq, hkv, q[1], k_[1], 0, q[2] // hq, v[2] // hkv, True)
        if k_[2] // hkv != g.head:
            raise invalid(node, f"query head size {g.head} differs from key head size {k_[2] // hkv}")
    else:
        if k_[1] != v[1] or k_[2] != v[2]:
            raise invalid(node, f"K {k_} and V {v} differ in heads or sequence length")
        if k_[3] != q[3]:
            raise invalid(node, f"query head size {q[3]} differs from key head size {k_[3]}")
        for key, have in (("q_num_heads", q[1]), ("kv_num_heads", k_[1])):
            if a.get(key) not in (None, have):
                raise invalid(node, f"{key}={a[key]} contradicts the 4-D input's {have} heads")
        g = Geometry(q[0], q[1], k_[1], q[2], k_[2], 0, q[3], v[3], False)
    if g.q_heads % g.kv_heads:
        raise invalid(node, f"{g.q_heads} query heads are not a multiple of {g.kv_heads} key-value heads")
    pk, pv = _opt(node, 4), _opt(node, 5)
    if (pk is None) != (pv is None):
        raise invalid(node, "past_key and past_value must be given together")
    if pk is not None:
        past = pk.type.shape[2] if len(pk.type.shape) == 4 else -1
        for name, t, d in (("past_key", pk.type, g.head), ("past_value", pv.type, g.v_head)):
            if t.shape != (g.batch, g.kv_heads, past, d):
                raise invalid(node, f"{name} has shape {t.shape}, expected {(g.batch, g.kv_heads, 'P', d)}")
        g = g._replace(past=past)
    return g


def _check_types(node, g: Geometry):
    for i in range(3):
        if in_type(node, i).dtype != "float32":
            raise unsupported(node, f"needs float32 Q, K and V, got {in_type(node, i).dtype} (input {i})")
    for i in (4, 5):
        if _opt(node, i) is not None and in_type(node, i).dtype != "float32":
            raise unsupported(node, f"needs float32 past_key and past_value, got {in_type(node, i).dtype}")
    mask, nonpad = _opt(node, 3), _opt(node, 6)
    if mask is not None:
        t = mask.type
        if t.dtype not in ("bool", "float32"):
            raise unsupported(node, f"attn_mask must be bool or float32 (the type of Q), got {t.dtype}")
        want = (g.batch, g.q_heads, g.q_len, g.total)
        if not 1 <= len(t.shape) <= 4 or t.shape[-1] > g.total or any(
                d not in (1, w) for d, w in zip(t.shape[-2::-1], want[-2::-1])):
            raise invalid(node, f"attn_mask of shape {t.shape} does not broadcast to {want} "
                                f"(its last axis may be shorter: padded as masked)")
    if nonpad is not None:
        if _opt(node, 4) is not None:
            raise invalid(node, "nonpad_kv_seqlen cannot be combined with past_key and past_value")
        if nonpad.type.dtype != "int64" or nonpad.type.shape != (g.batch,):
            raise invalid(node, f"nonpad_kv_seqlen must be int64 of shape ({g.batch},), got "
                                f"{nonpad.type.dtype} {nonpad.type.shape}")


def _as4(t, heads):
    """A (batch, seq, heads * d) tensor seen as (batch, heads, seq, d)."""
    b, s, hidden = t.shape
    return t.reshape((b, s, heads, hidden // heads)).transpose((0, 2, 1, 3))


def _both(a, b):
    """Conjunction of conditions that are Python bools or I1 Exprs."""
    if a is True or b is False:
        return b
    if b is True or a is False:
        return a
    return a & b


@register("Attention")
class Attention(Op):
    """Where the texts differ, the operator's spec: qk_matmul_output_mode 0 is the raw
    product Q K^T even with a softcap (so onnxruntime; onnx's reference returns the capped
    one); the scores of modes 2 and 3 hold -inf where the bias masks (onnxruntime writes
    -FLT_MAX). A mask whose key axis is shorter than the keys is padded as masked (onnx's
    reference; onnxruntime refuses it). A cache without the present outputs is taken, the
    concatenation going to a workspace (onnxruntime refuses it). float32 only."""

    def canonicalize(self, node, opset):
        a = node.attrs
        a["is_causal"] = int(a.get("is_causal", 0))
        a["softcap"] = float(a.get("softcap", 0.0))
        a["qk_matmul_output_mode"] = int(a.get("qk_matmul_output_mode", 0))
        for key in ("left_window_size", "right_window_size"):
            a[key] = int(a.get(key, -1))
            if a[key] < -1:
                raise invalid(node, f"{key} must be -1 or nonnegative, got {a[key]}")
        if a["qk_matmul_output_mode"] not in (0, 1, 2, 3):
            raise invalid(node, f"qk_matmul_output_mode must be 0..3, got {a['qk_matmul_output_mode']}")
        if "scale" in a:
            a["scale"] = float(a["scale"])
        if len(node.inputs) > 7 or len(node.outputs) > 4:
            raise invalid(node, f"takes at most 7 inputs and 4 outputs, got {len(node.inputs)} and {len(node.outputs)}")
        sp = a.get("softmax_precision")
        if sp is not None and int(sp) not in PRECISE_SOFTMAX:
            raise unsupported(node, f"softmax_precision {sp} (a narrower float than the float32 inputs)")

    def infer(self, node):
        g = _geometry(node)
        _check_types(node, g)
        y = (g.batch, g.q_len, g.q_heads * g.v_head) if g.rank3 else (g.batch, g.q_heads, g.q_len, g.v_head)
        f = "float32"
        types = [TensorType(f, y), TensorType(f, (g.batch, g.kv_heads, g.total, g.head)),
                 TensorType(f, (g.batch, g.kv_heads, g.total, g.v_head)),
                 TensorType(f, (g.batch, g.q_heads, g.q_len, g.total))]
        return types[:len(node.outputs)]

    def macs(self, node):
        g = _geometry(node)
        return g.batch * g.q_heads * g.q_len * g.total * (g.head + g.v_head)

    def _scale(self, node, g):
        """sqrt(scale) in float32, applied to Q and to K (as the spec's pattern does)."""
        scale = node.attrs.get("scale", 1.0 / np.sqrt(g.head))
        return np.float32(np.sqrt(np.float64(scale)))

    # -- numpy semantics, from the spec -------------------------------------------------------
    def reference(self, node, q, k_, v, mask=None, past_k=None, past_v=None, nonpad=None):
        a, g = node.attrs, _geometry(node)
        if g.rank3:
            q, k_, v = (x.reshape(x.shape[0], x.shape[1], h, -1).transpose(0, 2, 1, 3)
                        for x, h in ((q, g.q_heads), (k_, g.kv_heads), (v, g.kv_heads)))
        present_k = k_ if past_k is None else np.concatenate([past_k, k_], axis=2)
        present_v = v if past_v is None else np.concatenate([past_v, v], axis=2)
        reps = g.q_heads // g.kv_heads
        keys = np.repeat(present_k, reps, axis=1)  # query head h reads key-value head h // reps
        values = np.repeat(present_v, reps, axis=1)
        s = self._scale(node, g)
        raw = ((q * s).astype(np.float64) @ (keys * s).astype(np.float64).transpose(0, 1, 3, 2))
        capped = a["softcap"] * np.tanh(raw / a["softcap"]) if a["softcap"] > 0 else raw

        # the bias: the mask (bool: 0 / -inf; float: added; its key axis padded as masked)
        # where the causal, window and padding constraints allow the key, else -inf
        tq, tk = np.arange(g.q_len)[:, None], np.arange(g.total)[None, :]
        if nonpad is not None:
            offset = (nonpad.astype(np.int64) - g.q_len).reshape(-1, 1, 1, 1)
        else:
            offset = np.full((1, 1, 1, 1), g.past)
        pos = tq + offset  # absolute position of each query: (b, 1, q, 1)
        allowed = np.ones((g.batch, 1, g.q_len, g.total), bool)
        if a["is_causal"]:
            allowed &= tk <= pos
        if a["left_window_size"] >= 0:
            allowed &= pos - tk <= a["left_window_size"]
        if a["right_window_size"] >= 0:
            allowed &= tk - pos <= a["right_window_size"]
        if nonpad is not None:
            allowed &= tk < nonpad.reshape(-1, 1, 1, 1)
        bias = np.zeros(allowed.shape)
        if mask is not None:
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, g.total - mask.shape[-1])]
            if mask.dtype == np.bool_:
                mask = np.where(np.pad(mask, pad, constant_values=False), 0.0, -np.inf)
            else:
                mask = np.pad(mask.astype(np.float64), pad, constant_values=-np.inf)
            bias = bias + mask
        bias = np.where(allowed, bias, -np.inf)
        logits = capped + bias

        row_masked = np.all(np.isneginf(bias), axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", over="ignore"):
            top = np.max(logits, axis=-1, keepdims=True)
            e = np.exp(logits - np.where(np.isneginf(top), 0.0, top))
            total = e.sum(axis=-1, keepdims=True)
            probs = e / np.where(total == 0, 1.0, total)
        probs = np.where(row_masked, 0.0, probs)
        y = probs @ values.astype(np.float64)
        if g.rank3:
            y = y.transpose(0, 2, 1, 3).reshape(g.batch, g.q_len, -1)
        qk = (raw, capped, logits, probs)[a["qk_matmul_output_mode"]]
        outs = [y, present_k, present_v, qk]
        return [x.astype(q.dtype) for x in outs[:len(node.outputs)]]

    # -- lowering --------------------------------------------------------------------------
    def _missing_presents(self, node, g):
        """With a cache and no present output to hold the concatenation, a workspace does."""
        if g.past == 0:
            return []
        shapes = [(g.batch, g.kv_heads, g.total, g.head), (g.batch, g.kv_heads, g.total, g.v_head)]
        return [shapes[i] for i in (0, 1) if len(node.outputs) <= i + 1]

    def workspace(self, node):
        g = _geometry(node)
        return ([TensorType("float32", (g.total,)), TensorType("float32", (g.v_head,))]
                + [TensorType("float32", s) for s in self._missing_presents(node, g)])

    def lower(self, k, node, ins, outs):
        a, g = node.attrs, _geometry(node)
        ins = list(ins) + [None] * (7 - len(ins))
        q, key, val, mask, past_k, past_v, nonpad = ins
        n_out = len(node.outputs)
        y = outs[0]
        scores, acc, *spare = outs[n_out:]
        presents = list(outs[1:min(n_out, 3)])
        presents += spare
        qk_out = outs[3] if n_out == 4 else None
        if g.rank3:
            q, key, val, y = _as4(q, g.q_heads), _as4(key, g.kv_heads), _as4(val, g.kv_heads), _as4(y, g.q_heads)

        # the keys and values of every position: the cache then the new ones, written to the
        # present outputs (or a workspace); without a cache, K and V themselves
        full = []
        for new, old, slot in ((key, past_k, presents[0] if presents else None),
                               (val, past_v, presents[1] if len(presents) > 1 else None)):
            if slot is not None:
                if old is not None:
                    with k.loops(old.shape) as (b, h, j, d):
                        slot[b, h, j, d] = old[b, h, j, d]
                with k.loops(new.shape) as (b, h, j, d):
                    slot[b, h, j + g.past, d] = new[b, h, j, d]
            full.append(slot if old is not None else new)
        keys, values = full

        s2 = float(np.float32(self._scale(node, g)) * np.float32(self._scale(node, g)))
        cap, mode = a["softcap"], a["qk_matmul_output_mode"]
        left, right = a["left_window_size"], a["right_window_size"]
        reps = g.q_heads // g.kv_heads
        mlen = mask.shape[-1] if mask is not None else 0
        m4 = mask.broadcast_to((g.batch, g.q_heads, g.q_len, mlen)) if mask is not None else None
        with k.loops((g.batch, g.kv_heads, reps, g.q_len)) as (b, hk, r, i):
            h = hk * reps + r
            if nonpad is not None:
                npad = k.cast(nonpad[b], k.lift(0).v.type)
                pos = i + npad - g.q_len
            else:
                npad, pos = None, i + g.past
            top = k.var(NEG_INF)
            live = k.var(0.0)  # 1 once a key of the row is attended
            with k.loop(g.total) as j:
                dot = k.var(0.0)
                with k.loop(g.head) as d:
                    dot += q[b, h, i, d] * keys[b, hk, j, d]
                raw = dot.value * s2
                capped = m.tanh(k, raw / cap) * cap if cap > 0 else raw
                allowed = True
                if a["is_causal"]:
                    allowed = _both(allowed, j <= pos)
                if left >= 0:
                    allowed = _both(allowed, pos - j <= left)
                if right >= 0:
                    allowed = _both(allowed, j - pos <= right)
                if npad is not None:
                    allowed = _both(allowed, j < npad)
                bias = k.lift(0.0)
                if m4 is not None:
                    jm = j if mlen == g.total else k.min(j, mlen - 1)
                    mv = m4[b, h, i, jm]
                    if mask.dtype == "bool":
                        allowed = _both(allowed, mv.ne(k.lift(0, like=mv)))
                    else:
                        bias = mv
                    if mlen < g.total:
                        allowed = _both(allowed, j < mlen)
                    if mask.dtype != "bool":
                        live.value = k.max(live.value, k.select(_both(allowed, ~mv.eq(NEG_INF)), 1.0, 0.0))
                if m4 is None or mask.dtype == "bool":
                    live.value = k.max(live.value, k.select(allowed, 1.0, 0.0))
                bias = k.select(allowed, bias, NEG_INF)
                logit = capped + bias
                scores[j] = logit
                if qk_out is not None and mode < 3:
                    qk_out[b, h, i, j] = (raw, capped, logit)[mode]
                top.value = k.max(logit, top.value)
            shift = k.select(top.value.eq(NEG_INF), 0.0, top.value)
            total = k.var(0.0)
            with k.loop(g.total) as j:
                e = m.exp(k, scores[j] - shift)
                scores[j] = e
                total += e
            inv = 1.0 / k.select(total.value.eq(0.0), 1.0, total.value)
            live_row = live.value > 0.5
            if qk_out is not None and mode == 3:
                with k.loop(g.total) as j:
                    qk_out[b, h, i, j] = k.select(live_row, scores[j] * inv, 0.0)
            with k.loop(g.v_head) as d:
                acc[d] = 0.0
            with k.loop(g.total) as j:
                p = scores[j]
                with k.loop(g.v_head) as d:
                    acc[d] = acc[d] + p * values[b, hk, j, d]
            with k.loop(g.v_head) as d:
                y[b, h, i, d] = k.select(live_row, acc[d] * inv, 0.0)


@register("RotaryEmbedding")
class RotaryEmbedding(Op):
    """Rotates pairs of each head's first rotary_embedding_dim channels (halves, or
    neighbours when interleaved) by the angle of the token's position: cos/sin from the
    caches, at position_ids when given (clamped into the cache: an out-of-range id is the
    model's error, never an out-of-bounds read), else per (batch, sequence)."""

    def canonicalize(self, node, opset):
        a = node.attrs
        a["interleaved"] = int(a.get("interleaved", 0))
        a["rotary_embedding_dim"] = int(a.get("rotary_embedding_dim", 0))
        a["num_heads"] = int(a.get("num_heads", 0))

    def _dims(self, node):
        """(batch, heads, seq, head size, rotary dim)."""
        x, a = in_type(node).shape, node.attrs
        if len(x) == 4:
            b, h, s, d = x
        elif len(x) == 3:
            if a["num_heads"] < 1 or x[2] % a["num_heads"]:
                raise invalid(node, f"a 3-D input needs num_heads dividing its hidden size {x[2]}, "
                                    f"got num_heads={a['num_heads']}")
            b, s, h, d = x[0], x[1], a["num_heads"], x[2] // a["num_heads"]
        else:
            raise invalid(node, f"input must be 3-D or 4-D, got shape {x}")
        rd = a["rotary_embedding_dim"] or d
        if rd % 2 or not 0 < rd <= d:
            raise invalid(node, f"rotary_embedding_dim {rd} must be even and at most the head size {d}")
        return b, h, s, d, rd

    def infer(self, node):
        x = in_type(node)
        if len(node.inputs) < 3 or any(v is None for v in node.inputs[:3]):
            raise invalid(node, "needs X, cos_cache and sin_cache")
        b, h, s, d, rd = self._dims(node)
        for i in (0, 1, 2):
            if in_type(node, i).dtype != "float32":
                raise unsupported(node, f"needs float32 X and caches, got {in_type(node, i).dtype} (input {i})")
        cos, sin = in_type(node, 1).shape, in_type(node, 2).shape
        if cos != sin:
            raise invalid(node, f"cos_cache {cos} and sin_cache {sin} differ in shape")
        pid = node.inputs[3] if len(node.inputs) > 3 else None
        if pid is not None:
            if pid.type.dtype != "int64" or pid.type.shape != (b, s):
                raise invalid(node, f"position_ids must be int64 of shape {(b, s)}, got "
                                    f"{pid.type.dtype} {pid.type.shape}")
            want = "(max_position, rotary_dim / 2)"
            ok = len(cos) == 2 and cos[1] == rd // 2 and cos[0] >= 1
        else:
            want = f"{(b, s, rd // 2)}"
            ok = cos == (b, s, rd // 2)
        if not ok:
            raise invalid(node, f"cos_cache/sin_cache of shape {cos} do not fit: expected {want}")
        return [x]

    def _view(self, t, node):
        """X or Y as (batch, heads, seq, head size)."""
        b, h, s, d, _ = self._dims(node)
        return t if len(t.shape) == 4 else t.reshape((b, s, h, d)).transpose((0, 2, 1, 3))

    def reference(self, node, x, cos, sin, pid=None):
        b, h, s, d, rd = self._dims(node)
        x4 = x.reshape(b, s, h, d).transpose(0, 2, 1, 3) if x.ndim == 3 else x
        if pid is not None:
            cos, sin = cos[pid], sin[pid]  # (b, s, rd / 2)
        c, sn = cos[:, None].astype(np.float64), sin[:, None].astype(np.float64)  # (b, 1, s, rd / 2)
        rot = x4[..., :rd].astype(np.float64)
        x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if node.attrs["interleaved"] else np.split(rot, 2, axis=-1)
        re, im = c * x1 - sn * x2, sn * x1 + c * x2
        if node.attrs["interleaved"]:
            rot = np.stack([re, im], axis=-1).reshape(rot.shape)
        else:
            rot = np.concatenate([re, im], axis=-1)
        y = np.concatenate([rot, x4[..., rd:]], axis=-1)
        y = y.transpose(0, 2, 1, 3).reshape(x.shape) if x.ndim == 3 else y
        return [y.astype(x.dtype)]

    def lower(self, k, node, ins, outs):
        b_, h_, s_, d_, rd = self._dims(node)
        half, inter = rd // 2, node.attrs["interleaved"]
        x, y = self._view(ins[0], node), self._view(outs[0], node)
        cos, sin = ins[1], ins[2]
        pid = ins[3] if len(ins) > 3 else None
        with k.loops((b_, s_)) as (b, s):
            if pid is not None:
                p = k.cast(pid[b, s], k.lift(0).v.type)
                p = k.min(k.max(p, 0), cos.shape[0] - 1)
                row = (lambda i, t: t[p, i])
            else:
                row = (lambda i, t: t[b, s, i])
            with k.loops((h_, half)) as (h, i):
                c, sn = row(i, cos), row(i, sin)
                i1, i2 = (2 * i, 2 * i + 1) if inter else (i, i + half)
                x1, x2 = x[b, h, s, i1], x[b, h, s, i2]
                y[b, h, s, i1] = c * x1 - sn * x2
                y[b, h, s, i2] = sn * x1 + c * x2
            if rd < d_:
                with k.loops((h_, d_ - rd)) as (h, i):
                    y[b, h, s, i + rd] = x[b, h, s, i + rd]
