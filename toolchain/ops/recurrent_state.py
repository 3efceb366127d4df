"""Ops that carry a recurrent state between calls, opset 27: LinearAttention (linear,
gated, delta and gated-delta recurrences with grouped-query heads) and CausalConvWithState
(a causal depthwise 1-D convolution whose carry is the last k - 1 positions).

Both take a state in (optional: zeros) and give the updated state out, so a model runs
prefill and decode steps by feeding present_state back as past_state. float32 compute;
float16 is a storage type (frontend/float16.py widens the inputs and rounds the results;
LinearAttention's present_state without a past_state is query's type, as onnx's reference).

LinearAttention is lowered as the recurrence itself, one (batch, key-value head) at a
time: the d_k x d_v state lives in present_state (or a workspace when the model does not
take it) and is updated token by token: decayed by exp(g_t), corrected by the delta rule
into a d_v workspace, added k_t (x) v_t, then read by each query head of the group.
CausalConvWithState copies each (batch, channel) row's past and input end to end into a
workspace of L + k - 1 positions, convolves it (bias, then SiLU when asked) and keeps its
last k - 1 positions as present_state.
"""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from ..kernel import mathfns as m
from .base import Op, in_type, invalid, register, unsupported

RULES = ("linear", "gated", "delta", "gated_delta")
ACTIVATIONS = ("none", "silu", "swish")


def _opt(node, i):
    return node.inputs[i] if i < len(node.inputs) and node.inputs[i] is not None else None


def _as4(t, heads):
    """A (batch, seq, heads * d) tensor seen as (batch, heads, seq, d)."""
    b, s, hidden = t.shape
    return t.reshape((b, s, heads, hidden // heads)).transpose((0, 2, 1, 3))


def _need_float32(node, names):
    for i, name in enumerate(names):
        v = _opt(node, i)
        if v is not None and v.type.dtype != "float32":
            raise unsupported(node, f"needs float32 (or float16) {name}, got {v.type.dtype} (input {i})")


@register("LinearAttention")
class LinearAttention(Op):
    """chunk_size is a tuning hint of the spec with no effect on the result: taken and
    ignored (the recurrence is computed token by token)."""

    INPUTS = ("query", "key", "value", "past_state", "decay", "beta")

    def canonicalize(self, node, opset):
        a = node.attrs
        a["update_rule"] = a.get("update_rule", "gated_delta")
        if a["update_rule"] not in RULES:
            raise invalid(node, f"update_rule must be one of {', '.join(RULES)}, got '{a['update_rule']}'")
        for key in ("q_num_heads", "kv_num_heads"):
            if key not in a:
                raise invalid(node, f"the attribute {key} is required")
            a[key] = int(a[key])
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]
        if hq < 1 or hkv < 1 or hq % hkv:
            raise invalid(node, f"q_num_heads ({hq}) must be a positive multiple of kv_num_heads ({hkv})")
        a["scale"] = float(a.get("scale", 0.0))
        a["chunk_size"] = int(a.get("chunk_size", 64))
        if len(node.inputs) > 6 or len(node.outputs) > 2:
            raise invalid(node, f"takes at most 6 inputs and 2 outputs, got {len(node.inputs)} and "
                                f"{len(node.outputs)}")
        if len(node.inputs) < 3 or any(v is None for v in node.inputs[:3]):
            raise invalid(node, "needs query, key and value")
        rule = a["update_rule"]
        gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
        for i, name, needed in ((4, "decay", gated), (5, "beta", delta)):
            if needed and _opt(node, i) is None:
                raise invalid(node, f"update_rule '{rule}' needs the {name} input")
            if not needed and _opt(node, i) is not None:
                raise invalid(node, f"update_rule '{rule}' takes no {name} input")

    def _dims(self, node):
        """(batch, tokens, q heads, kv heads, d_k, d_v, decay per key dim, beta per head)."""
        a = node.attrs
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]
        q, k_, v = (in_type(node, i).shape for i in range(3))
        if not len(q) == len(k_) == len(v) == 3:
            raise invalid(node, f"query, key and value must be 3-D (B, T, heads * d), got {q}, {k_}, {v}")
        if not (q[:2] == k_[:2] == v[:2]):
            raise invalid(node, f"query {q}, key {k_} and value {v} differ in batch or tokens")
        if q[2] % hq or k_[2] % hkv or v[2] % hkv:
            raise invalid(node, f"hidden sizes query {q[2]}, key {k_[2]}, value {v[2]} do not divide into "
                                f"{hq} query / {hkv} key-value heads")
        b, t, dk, dv = q[0], q[1], q[2] // hq, v[2] // hkv
        if k_[2] // hkv != dk:
            raise invalid(node, f"query head size {dk} differs from key head size {k_[2] // hkv}")
        past, decay, beta = _opt(node, 3), _opt(node, 4), _opt(node, 5)
        if past is not None and past.type.shape != (b, hkv, dk, dv):
            raise invalid(node, f"past_state has shape {past.type.shape}, expected {(b, hkv, dk, dv)}")
        per_dim = False
        if decay is not None:
            s = decay.type.shape
            if len(s) != 3 or s[:2] != (b, t) or s[2] not in (hkv, hkv * dk):
                raise invalid(node, f"decay has shape {s}, expected {(b, t, hkv * dk)} (per key dimension) "
                                    f"or {(b, t, hkv)} (per head)")
            per_dim = s[2] == hkv * dk and dk != 1
        per_head = True
        if beta is not None:
            s = beta.type.shape
            if len(s) != 3 or s[:2] != (b, t) or s[2] not in (hkv, 1):
                raise invalid(node, f"beta has shape {s}, expected {(b, t, hkv)} or {(b, t, 1)}")
            per_head = s[2] == hkv
        return b, t, hq, hkv, dk, dv, per_dim, per_head

    def infer(self, node):
        _need_float32(node, self.INPUTS)
        b, t, hq, hkv, dk, dv, _, _ = self._dims(node)
        types = [TensorType("float32", (b, t, hq * dv)), TensorType("float32", (b, hkv, dk, dv))]
        return types[:len(node.outputs)]

    def macs(self, node):
        b, t, hq, hkv, dk, dv, _, _ = self._dims(node)
        delta = node.attrs["update_rule"] in ("delta", "gated_delta")
        return b * t * dk * dv * (hq + hkv * (2 if delta else 1))

    def _scale(self, node, dk):
        s = node.attrs["scale"]
        return np.float32(s if s != 0.0 else 1.0 / np.sqrt(dk))

    # -- numpy semantics, from the spec's formulas (float64) -------------------------------------
    def reference(self, node, q, k_, v, past=None, decay=None, beta=None):
        b, t, hq, hkv, dk, dv, per_dim, per_head = self._dims(node)
        q4, k4, v4 = (_as4(x.astype(np.float64), h) for x, h in ((q, hq), (k_, hkv), (v, hkv)))
        state = np.zeros((b, hkv, dk, dv)) if past is None else past.astype(np.float64)
        if decay is not None:  # (b, hkv, t, dk or 1)
            decay = _as4(decay.astype(np.float64), hkv if per_dim else decay.shape[2])
        if beta is not None:  # (b, hkv or 1, t, 1)
            beta = _as4(beta.astype(np.float64), beta.shape[2])
        y = np.zeros((b, hq, t, dv))
        reps = hq // hkv
        for i in range(t):
            kt, vt = k4[:, :, i], v4[:, :, i]
            decayed = state * np.exp(decay[:, :, i])[..., None] if decay is not None else state
            if beta is not None:  # S = decayed + beta k (x) (v - decayed^T k)
                vt = beta[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", decayed, kt))
            state = decayed + kt[..., :, None] * vt[..., None, :]
            y[:, :, i] = np.einsum("bhd,bhdm->bhm", q4[:, :, i], np.repeat(state, reps, axis=1))
        y = y * np.float64(self._scale(node, dk))
        out = [y.transpose(0, 2, 1, 3).reshape(b, t, hq * dv), state]
        return [o.astype(q.dtype) for o in out[:len(node.outputs)]]

    # -- lowering --------------------------------------------------------------------------
    def workspace(self, node):
        b, t, hq, hkv, dk, dv, _, _ = self._dims(node)
        ws = [TensorType("float32", (dv,))]
        if _opt(node, 4) is not None:  # exp(decay), laid out as decay
            ws.append(TensorType("float32", in_type(node, 4).shape))
        if len(node.outputs) < 2:  # the state has no output to live in
            ws.append(TensorType("float32", (b, hkv, dk, dv)))
        return ws

    def lower(self, k, node, ins, outs):
        b_, t_, hq, hkv, dk, dv, per_dim, per_head = self._dims(node)
        rule = node.attrs["update_rule"]
        gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
        q, key, val, past, decay, beta = (list(ins) + [None] * 6)[:6]
        n_out = len(node.outputs)
        y = _as4(outs[0], hq)
        u, *spare = outs[n_out:]
        gate = spare.pop(0) if decay is not None else None
        state = outs[1] if n_out == 2 else spare[0]
        q, key, val = _as4(q, hq), _as4(key, hkv), _as4(val, hkv)
        if decay is not None:
            # the decay factors first, in one flat loop (vectorizes as an elementwise Exp does;
            # exp in the recurrence's small loops is SLP-vectorized into a sequence on which
            # qemu-riscv64 7.2 aborts)
            flat_in, flat_out = decay.reshape((decay.size,)), gate.reshape((decay.size,))
            with k.loop(decay.size) as i:
                flat_out[i] = m.exp(k, flat_in[i])
            decay = _as4(gate, hkv if per_dim else decay.shape[2])  # (b, hkv, t, dk or 1)
        if beta is not None:
            beta = _as4(beta, beta.shape[2])  # (b, hkv or 1, t, 1)
        scale = float(self._scale(node, dk))
        reps = hq // hkv
        with k.loops((b_, hkv)) as (b, h):
            with k.loops((dk, dv)) as (d, j):
                state[b, h, d, j] = past[b, h, d, j] if past is not None else 0.0
            with k.loop(t_) as t:
                if gated:
                    with k.loop(dk) as d:
                        g = decay[b, h, t, d if per_dim else 0]
                        with k.loop(dv) as j:
                            state[b, h, d, j] = state[b, h, d, j] * g
                if delta:  # u = beta (v - S^T k), S already decayed
                    rate = beta[b, h if per_head else 0, t, 0]
                    with k.loop(dv) as j:
                        got = k.var(0.0)
                        with k.loop(dk) as d:
                            got += state[b, h, d, j] * key[b, h, t, d]
                        u[j] = rate * (val[b, h, t, j] - got.value)
                with k.loops((dk, dv)) as (d, j):
                    new = u[j] if delta else val[b, h, t, j]
                    state[b, h, d, j] = state[b, h, d, j] + key[b, h, t, d] * new
                with k.loops((reps, dv)) as (r, j):
                    hh = h * reps + r  # query head hh reads key-value head hh // reps
                    acc = k.var(0.0)
                    with k.loop(dk) as d:
                        acc += q[b, hh, t, d] * state[b, h, d, j]
                    y[b, hh, t, j] = acc.value * scale


@register("CausalConvWithState")
class CausalConvWithState(Op):
    INPUTS = ("input", "weight", "bias", "past_state")

    def canonicalize(self, node, opset):
        a = node.attrs
        a["activation"] = a.get("activation", "none")
        if a["activation"] not in ACTIVATIONS:
            raise invalid(node, f"activation must be one of {', '.join(ACTIVATIONS)}, got '{a['activation']}'")
        if len(node.inputs) > 4 or len(node.outputs) > 2:
            raise invalid(node, f"takes at most 4 inputs and 2 outputs, got {len(node.inputs)} and "
                                f"{len(node.outputs)}")
        if len(node.inputs) < 2 or any(v is None for v in node.inputs[:2]):
            raise invalid(node, "needs input and weight")

    def _dims(self, node):
        """(batch, channels, length, kernel size)."""
        x, w = in_type(node, 0).shape, in_type(node, 1).shape
        if len(x) != 3:
            raise invalid(node, f"input must be 3-D (batch, channels, length), got shape {x}")
        b, c, n = x
        if len(w) != 3 or w[0] != c or w[1] != 1 or w[2] < 1:
            raise invalid(node, f"weight has shape {w}, expected ({c}, 1, k) with k >= 1")
        kk = w[2]
        bias, past = _opt(node, 2), _opt(node, 3)
        if bias is not None and bias.type.shape != (c,):
            raise invalid(node, f"bias has shape {bias.type.shape}, expected ({c},)")
        if past is not None and past.type.shape != (b, c, kk - 1):
            raise invalid(node, f"past_state has shape {past.type.shape}, expected {(b, c, kk - 1)}")
        return b, c, n, kk

    def infer(self, node):
        _need_float32(node, self.INPUTS)
        b, c, n, kk = self._dims(node)
        return [TensorType("float32", (b, c, n)), TensorType("float32", (b, c, kk - 1))][:len(node.outputs)]

    def macs(self, node):
        b, c, n, kk = self._dims(node)
        return b * c * n * kk

    def reference(self, node, x, w, bias=None, past=None):
        b, c, n, kk = self._dims(node)
        pad = np.zeros((b, c, kk - 1)) if past is None else past.astype(np.float64)
        padded = np.concatenate([pad, x.astype(np.float64)], axis=2)
        wd = w[:, 0].astype(np.float64)
        y = sum(wd[None, :, j, None] * padded[:, :, j:j + n] for j in range(kk))
        if bias is not None:
            y = y + bias.astype(np.float64)[None, :, None]
        if node.attrs["activation"] != "none":
            y = y / (1 + np.exp(-y))
        out = [y, padded[:, :, n:]]
        return [o.astype(x.dtype) for o in out[:len(node.outputs)]]

    def workspace(self, node):
        b, c, n, kk = self._dims(node)
        return [TensorType("float32", (n + kk - 1,))]

    def lower(self, k, node, ins, outs):
        b_, c_, n, kk = self._dims(node)
        x, w, bias, past = (list(ins) + [None] * 4)[:4]
        n_out = len(node.outputs)
        y, present = outs[0], outs[1] if n_out == 2 else None
        row = outs[n_out]
        silu = node.attrs["activation"] != "none"
        with k.loops((b_, c_)) as (b, c):
            if kk > 1:  # the row: past (or zeros), then the input
                with k.loop(kk - 1) as i:
                    row[i] = past[b, c, i] if past is not None else 0.0
            with k.loop(n) as i:
                row[i + (kk - 1)] = x[b, c, i]
            with k.loop(n) as i:
                acc = k.var(bias[c] if bias is not None else 0.0)
                with k.loop(kk) as j:
                    acc += w[c, 0, j] * row[i + j]
                s = acc.value
                y[b, c, i] = s * m.sigmoid(k, s) if silu else s
            if present is not None and kk > 1:
                with k.loop(kk - 1) as i:
                    present[b, c, i] = row[i + n]
