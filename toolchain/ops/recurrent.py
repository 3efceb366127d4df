"""Recurrent ops: RNN, GRU and LSTM, with ONNX semantics: directions forward, reverse and
bidirectional; layouts 0 and 1; optional B, sequence_lens (known at compile time),
initial_h, initial_c and peepholes P; optional outputs Y, Y_h, Y_c; the activation
functions the spec lists, with activation_alpha/beta; clip; LSTM's input_forget and
GRU's linear_before_reset.

Lowering, per direction: the input projection X W^T + biases of every time step as one
tiled matrix product into a workspace (the node's schedule), then a real loop over time:
the recurrent product H R^T, started from the step's projection, into the gates
workspace (a second tiled product), and a loop over batch x hidden that applies the
gates and updates the state (workspaces h and c) and Y. The op needs scratch memory, so
it declares it (Op.workspace): the memory planner gives it arena bytes alive only while
the node runs.
Sigmoid and Tanh (also ScaledTanh) are kernel/fastmath.py's short gate forms, sigmoid_gate and tanh_gate:
a cell applies three to five of them per hidden unit and step.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import TensorType
from ..kernel import fastmath as fm
from ..kernel import mathfns as m
from ..kernel.tiled_matmul import tiled_matmul
from ..schedules import matmul_schedule
from .base import Op, in_type, invalid, register, unsupported

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def _sigmoid_np(x):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def _exp_np(x):
    with np.errstate(over="ignore"):
        return np.exp(x)


# lower-case name -> (alpha default, beta default (None: not taken), numpy (x, a, b), lowering (k, x, a, b)).
# Defaults are those of the ONNX operators of the same name.
ACTIVATIONS = {
    "relu": (None, None, lambda x, a, b: np.maximum(x, 0), lambda k, x, a, b: k.max(x, 0.0)),
    "tanh": (None, None, lambda x, a, b: np.tanh(x), lambda k, x, a, b: fm.tanh_gate(k, x)),
    "sigmoid": (None, None, lambda x, a, b: _sigmoid_np(x), lambda k, x, a, b: fm.sigmoid_gate(k, x)),
    "affine": (1.0, 0.0, lambda x, a, b: a * x + b, lambda k, x, a, b: x * a + b),
    "leakyrelu": (0.01, None, lambda x, a, b: np.where(x >= 0, x, a * x),
                  lambda k, x, a, b: k.select(x >= 0.0, x, x * a)),
    "thresholdedrelu": (1.0, None, lambda x, a, b: np.where(x > a, x, 0.0),
                        lambda k, x, a, b: k.select(x > a, x, 0.0)),
    "scaledtanh": (1.0, 1.0, lambda x, a, b: a * np.tanh(b * x), lambda k, x, a, b: fm.tanh_gate(k, x * b) * a),
    "hardsigmoid": (0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1),
                    lambda k, x, a, b: k.max(k.min(x * a + b, 1.0), 0.0)),
    "elu": (1.0, None, lambda x, a, b: np.where(x >= 0, x, a * (_exp_np(x) - 1)),
            lambda k, x, a, b: k.select(x >= 0.0, x, (m.exp(k, x) - 1.0) * a)),
    "softsign": (None, None, lambda x, a, b: x / (1 + np.abs(x)), lambda k, x, a, b: x / (k.abs(x) + 1.0)),
    "softplus": (None, None, lambda x, a, b: np.logaddexp(0, x),
                 lambda k, x, a, b: k.select(x > 20.0, x, m.log(k, m.exp(k, x) + 1.0))),
}


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _dim(t, d):
    """t[d] of a tensor view whose first axis is the direction."""
    return t.view(t.shape[1:], t.strides[1:], t.offset + d * t.strides[0])


def _rec_schedule(vec, rows, cols, hid, b_const):
    """The tile of the per-step recurrent product, rows x cols (a block of the gates) over
    hid. One row (batch 1, or rows run one by one for sequence_lens) is a matrix-vector
    product: each weight is loaded once per step whatever the tile, so only the tile's
    per-step overhead (the state's load, the loop, the accumulators' start and store)
    shrinks as it widens, up to as many vectors as the register file holds beside the
    weights in flight (NEON: 16 of 32) and that divide the block."""
    s = matmul_schedule(vec, rows, cols, hid, b_const=b_const)
    if s.rows != 1 or vec.lanes == 1 or cols % vec.lanes:
        return s
    # nv accumulators, the state's register and the weights in flight (LLVM streams them:
    # a quarter of the file, at least 4) within the register file
    fit = vec.registers - 1 - max(4, vec.registers // 4)
    for nv in range(min(fit, 16), s.vectors, -1):
        if (cols // vec.lanes) % nv == 0:
            return replace(s, vectors=nv)
    return s


@register("RNN", "GRU", "LSTM")
class Recurrent(Op):
    # -- attributes and shapes --------------------------------------------------------------
    def item_wise(self, node):
        return node.attrs["layout"] == 1  # batch-first: X is [batch, seq, input]

    def canonicalize(self, node, opset):
        a = node.attrs
        x = in_type(node, 0)
        if x.dtype != "float32":
            raise unsupported(node, f"only float32 {node.op} is supported, got {x.dtype}")
        if len(node.inputs) < 3 or any(v is None for v in node.inputs[:3]):
            raise invalid(node, f"{node.op} needs inputs X, W and R")
        if len(node.inputs) > len(self.inputs()):
            raise invalid(node, f"{node.op} takes at most {len(self.inputs())} inputs")
        a["direction"] = _str(a.get("direction", "forward"))
        if a["direction"] not in ("forward", "reverse", "bidirectional"):
            raise invalid(node, f"unknown direction '{a['direction']}'")
        a.setdefault("layout", 0)
        if a["layout"] not in (0, 1):
            raise invalid(node, f"layout must be 0 or 1, got {a['layout']}")
        r = in_type(node, 2)
        if len(r.shape) != 3:
            raise invalid(node, f"R must have rank 3, got shape {r.shape}")
        a.setdefault("hidden_size", r.shape[-1])
        if node.op == "LSTM":
            a.setdefault("input_forget", 0)
        if node.op == "GRU":
            a.setdefault("linear_before_reset", 0)
        if "clip" in a and not a["clip"] > 0:
            raise invalid(node, f"clip must be positive, got {a['clip']}")
        self._activations(node)
        seq = node.inputs[4] if len(node.inputs) > 4 else None
        if seq is not None:
            if not seq.is_const:
                err = unsupported(node, "sequence_lens (input 4) must be a compile-time constant "
                                        "(runtime sequence lengths are not supported)")
                err.operand = 4  # the importer names the graph inputs it comes from (--bind)
                raise err
            lens = np.asarray(seq.data).reshape(-1)
            steps = x.shape[a["layout"]] if len(x.shape) == 3 else 0
            if lens.size and (lens.min() < 0 or lens.max() > steps):
                raise invalid(node, f"sequence_lens {lens.tolist()} out of range 0..{steps}")

    def inputs(self):
        return INPUTS if self.name == "LSTM" else INPUTS[:6]

    def _activations(self, node):
        """activations -> canonical lower-case names, one list entry per function and direction;
        activation_alpha/beta -> one value per activation (taken in order by the functions
        that use them, defaults otherwise)."""
        a = node.attrs
        dirs = 2 if a["direction"] == "bidirectional" else 1
        n = len(DEFAULT_ACTIVATIONS[node.op])
        names = [_str(s) for s in a.get("activations", DEFAULT_ACTIVATIONS[node.op] * dirs)]
        if len(names) == n and dirs == 2:
            names = names * 2
        if len(names) != n * dirs:
            raise invalid(node, f"{node.op} with direction {a['direction']} takes {n * dirs} activations, "
                                f"got {len(names)}")
        alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
        out_a, out_b = [], []
        for name in names:
            key = name.lower()
            if key not in ACTIVATIONS:
                raise unsupported(node, f"activation '{name}' is not supported (supported: "
                                        f"{', '.join(sorted(ACTIVATIONS))})")
            da, db = ACTIVATIONS[key][:2]
            out_a.append(float(alphas.pop(0)) if da is not None and alphas else da or 0.0)
            out_b.append(float(betas.pop(0)) if db is not None and betas else db or 0.0)
        a["activations"] = [s.lower() for s in names]
        a["activation_alpha"], a["activation_beta"] = out_a, out_b

    def _dims(self, node):
        """(seq, batch, input, hidden, directions, gates)"""
        a = node.attrs
        x, w, r = in_type(node, 0), in_type(node, 1), in_type(node, 2)
        if len(x.shape) != 3 or len(w.shape) != 3:
            raise invalid(node, f"X and W must have rank 3, got {x.shape} and {w.shape}")
        seq, batch = x.shape[:2] if a["layout"] == 0 else x.shape[1::-1]
        hid, dirs, g = a["hidden_size"], 2 if a["direction"] == "bidirectional" else 1, GATES[node.op]
        if w.shape != (dirs, g * hid, x.shape[2]) or r.shape != (dirs, g * hid, hid):
            raise invalid(node, f"W {w.shape} / R {r.shape} do not match {dirs} direction(s), hidden_size {hid} "
                                f"and input size {x.shape[2]}")
        state = (dirs, batch, hid) if a["layout"] == 0 else (batch, dirs, hid)
        want = {3: (dirs, 2 * g * hid), 4: (batch,), 5: state, 6: state, 7: (dirs, 3 * hid)}
        for i, shape in want.items():
            if i < len(node.inputs) and node.inputs[i] is not None and in_type(node, i).shape != shape:
                raise invalid(node, f"{self.inputs()[i]} has shape {in_type(node, i).shape}, expected {shape}")
        return seq, batch, x.shape[2], hid, dirs, g

    def infer(self, node):
        seq, batch, _, hid, dirs, _ = self._dims(node)
        if node.attrs["layout"] == 0:
            y, state = (seq, dirs, batch, hid), (dirs, batch, hid)
        else:
            y, state = (batch, seq, dirs, hid), (batch, dirs, hid)
        outs = [y, state] + ([state] if node.op == "LSTM" else [])
        return [TensorType("float32", s) for s in outs]

    def macs(self, node):
        seq, batch, inp, hid, dirs, g = self._dims(node)
        return dirs * seq * batch * g * hid * (inp + hid)

    def _lens(self, node):
        """Per batch row, the steps it runs (None: all of them)."""
        seq, batch = self._dims(node)[:2]
        v = node.inputs[4] if len(node.inputs) > 4 else None
        if v is None:
            return None
        lens = [int(n) for n in np.asarray(v.data).reshape(-1)]
        return None if all(n == seq for n in lens) else lens

    def _act(self, node, d, i):
        """The i-th activation of direction d: (numpy fn, lowering fn), alpha and beta bound."""
        a = node.attrs
        j = d * len(DEFAULT_ACTIVATIONS[node.op]) + i
        _, _, ref, low = ACTIVATIONS[a["activations"][j]]
        al, be = a["activation_alpha"][j], a["activation_beta"][j]
        return (lambda x: ref(x, al, be)), (lambda k, x: low(k, x, al, be))

    # -- numpy reference (float64) ------------------------------------------------------------
    def reference(self, node, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
        a = node.attrs
        seq, batch, _, hid, dirs, g = self._dims(node)
        lay = a["layout"]
        x = x.astype(np.float64)
        if lay:
            x = x.transpose(1, 0, 2)
            h0 = None if h0 is None else h0.transpose(1, 0, 2)
            c0 = None if c0 is None else c0.transpose(1, 0, 2)
        lens = [seq] * batch if seq_lens is None else [int(n) for n in np.asarray(seq_lens).reshape(-1)]
        clip = a.get("clip")
        cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
        y = np.zeros((seq, dirs, batch, hid))
        yh = np.zeros((dirs, batch, hid))
        yc = np.zeros((dirs, batch, hid))
        for d in range(dirs):
            rev = a["direction"] == "reverse" or d == 1
            acts = [self._act(node, d, i)[0] for i in range(len(DEFAULT_ACTIVATIONS[node.op]))]
            wd, rd = w[d].astype(np.float64), r[d].astype(np.float64)
            bd = np.zeros(2 * g * hid) if b is None else b[d].astype(np.float64)
            wb, rb = bd[:g * hid], bd[g * hid:]
            pd = np.zeros(3 * hid) if p is None else p[d].astype(np.float64)
            for bi in range(batch):
                hh = np.zeros(hid) if h0 is None else h0[d, bi].astype(np.float64)
                cc = np.zeros(hid) if c0 is None else c0[d, bi].astype(np.float64)
                for s in range(lens[bi]):
                    t = lens[bi] - 1 - s if rev else s
                    xw = wd @ x[t, bi] + wb
                    hh, cc = self._cell(node, acts, cl, xw, hh, cc, rd, rb, pd, hid)
                    y[t, d, bi] = hh
                if lens[bi]:  # a row of length 0 ends in zeros, not its initial state (onnxruntime)
                    yh[d, bi], yc[d, bi] = hh, cc
        if lay:
            y, yh, yc = y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
        outs = [y, yh] + ([yc] if node.op == "LSTM" else [])
        return [o.astype(np.float32) for o in outs]

    def _cell(self, node, acts, cl, xw, hh, cc, rd, rb, pd, hid):
        H = hid
        if node.op == "RNN":
            return acts[0](cl(xw + rd @ hh + rb)), cc
        if node.op == "GRU":
            f, gf = acts
            rh = rd @ hh + rb
            z = f(cl(xw[:H] + rh[:H]))
            rr = f(cl(xw[H:2 * H] + rh[H:2 * H]))
            if node.attrs["linear_before_reset"]:
                hc = gf(cl(xw[2 * H:] + rr * rh[2 * H:]))
            else:
                hc = gf(cl(xw[2 * H:] + rd[2 * H:] @ (rr * hh) + rb[2 * H:]))
            return (1 - z) * hc + z * hh, cc
        f, gf, hf = acts
        gt = xw + rd @ hh + rb
        i = f(cl(gt[:H] + pd[:H] * cc))
        fg = 1 - i if node.attrs["input_forget"] else f(cl(gt[2 * H:3 * H] + pd[2 * H:] * cc))
        cc = fg * cc + i * gf(cl(gt[3 * H:]))
        o = f(cl(gt[H:2 * H] + pd[H:2 * H] * cc))
        return o * hf(cc), cc  # clip bounds the gates' inputs, not C's (as onnxruntime)

    # -- schedule, scratch and lowering ---------------------------------------------------------
    def schedule(self, node, vec):
        """The input projection's tile: (seq * batch) x (gates * hidden) over the input size."""
        seq, batch, inp, hid, _, g = self._dims(node)
        return matmul_schedule(vec, seq * batch, g * hid, inp, b_const=node.inputs[1].is_const)

    def workspace(self, node):
        """xw: one direction's input projection, all steps; gates: one step's; h (and c): the
        state; GRU with linear_before_reset=0 also r * h."""
        seq, batch, _, hid, _, g = self._dims(node)
        f = "float32"
        ws = [TensorType(f, (seq * batch, g * hid)), TensorType(f, (batch, g * hid)), TensorType(f, (batch, hid))]
        if node.op == "LSTM" or (node.op == "GRU" and not node.attrs["linear_before_reset"]):
            ws.append(TensorType(f, (batch, hid)))
        return ws

    def lower(self, k, node, ins, outs):
        a = node.attrs
        seq, batch, inp, hid, dirs, g = self._dims(node)
        H, GH, lay = hid, g * hid, a["layout"]
        x, w, r, bias, _, h0, c0, p = (list(ins) + [None] * 8)[:8]
        n_out = len(node.outputs)
        ys, (xw, gates, h, *extra) = list(outs[:n_out]), outs[n_out:]
        ys += [None] * (3 - len(ys))
        y, yh, yc = ys
        if lay:  # everything seen in layout 0's order: (seq, dirs, batch, H), (dirs, batch, H)
            y = y.transpose((1, 2, 0, 3)) if y is not None else None
            yh, yc, h0, c0 = (t.transpose((1, 0, 2)) if t is not None else None for t in (yh, yc, h0, c0))
        xrows = x.reshape((seq * batch, inp))

        def row(t, bi):  # x's (and xw's) row of step t, batch row bi
            return t * batch + bi if lay == 0 else bi * seq + t

        lens = self._lens(node)
        clip = a.get("clip")
        cl = (lambda v: k.min(k.max(v, -clip), clip)) if clip is not None else (lambda v: v)
        lbr = node.op == "GRU" and a["linear_before_reset"]
        for d in range(dirs):
            rev = a["direction"] == "reverse" or d == 1
            acts = [self._act(node, d, i)[1] for i in range(len(DEFAULT_ACTIVATIONS[node.op]))]
            bd = _dim(bias, d) if bias is not None else None
            wt, rt = _dim(w, d).transpose((1, 0)), _dim(r, d).transpose((1, 0))
            w_const = node.inputs[1].data[d].T if node.inputs[1].is_const else None
            r_const = node.inputs[2].data[d].T if node.inputs[2].is_const else None

            def bias_at(j, width, with_rb, bd=bd):
                if bd is None:
                    return k.splat(0.0, width)
                v = k.vload(bd, (j,), width)
                return v + k.vload(bd, (GH + j,), width) if with_rb else v

            # 1. input projection of every step, with both biases (GRU linear_before_reset:
            # the hidden gate's recurrent bias goes inside r * (...), added per step)
            segments = [(0, 2 * H, True), (2 * H, GH, False)] if lbr else [(0, GH, True)]
            for j0, j1, with_rb in segments:
                tiled_matmul(k, node.schedule, seq * batch, j1 - j0, inp, lambda i, kk: (xrows, (i, kk)),
                             lambda kk, j, j0=j0: (wt, (kk, j0 + j)),
                             lambda i, j, wd, j0=j0, rb=with_rb: bias_at(j0 + j, wd, rb),
                             lambda i, j, v, j0=j0: xw.store_vector((i, j0 + j), v),
                             w_const[:, j0:j1] if w_const is not None else None)

            # 2. the state
            with k.loops((batch, H)) as (bi, j):
                h[bi, j] = _dim(h0, d)[bi, j] if h0 is not None else 0.0
                if node.op == "LSTM":
                    extra[0][bi, j] = _dim(c0, d)[bi, j] if c0 is not None else 0.0
            if lens is not None and y is not None:  # steps past a row's length: Y is 0
                for bi, n in enumerate(lens):
                    if n < seq:
                        with k.loops((seq - n, H)) as (t, j):
                            y[t + n, d, bi, j] = 0.0

            # 3. the steps
            with k.loop(seq) as s:
                def time(bi):
                    if lens is None:
                        return seq - 1 - s if rev else s
                    return k.select(s < lens[bi], (lens[bi] - 1) - s, 0) if rev else s

                def rec(j0, j1, left, init_xw):
                    """gates[:, j0:j1] = start + left @ R[d]^T[:, j0:j1], start the step's
                    projection (init_xw) or the recurrent bias. A matrix-vector product
                    of a few tiles runs tile by tile in straight-line code: each tile's
                    start values and results then lie at constant offsets (no address
                    arithmetic per vector) and there is no loop over tiles."""
                    rec_schedule = _rec_schedule(k.vector, batch if lens is None else 1, j1 - j0, H,
                                                 node.inputs[2].is_const)
                    nr = rec_schedule.vectors * k.vector.lanes
                    tiles = -(-(j1 - j0) // nr)
                    if rec_schedule.rows == 1 and batch * tiles <= 8 and tiles > 1:
                        for c0 in range(j0, j1, nr):
                            rec(c0, min(c0 + nr, j1), left, init_xw)
                        return

                    def init(bi, j, wd, t):
                        if init_xw:
                            return k.vload(xw, (row(t, bi), j0 + j), wd)
                        return bias_at(GH + j0 + j, wd, False)
                    groups = [(0, batch, None)] if lens is None else [(bi, 1, bi) for bi in range(batch)]
                    for b0, m_, one in groups:
                        t = time(one if one is not None else 0)
                        tiled_matmul(k, rec_schedule, m_, j1 - j0, H, lambda i, kk: (left, (b0 + i, kk)),
                                     lambda kk, j: (rt, (kk, j0 + j)),
                                     lambda i, j, wd: init(b0 + i, j, wd, t),
                                     lambda i, j, v: gates.store_vector((b0 + i, j0 + j), v),
                                     r_const[:, j0:j1] if r_const is not None else None)

                def pointwise(fn):
                    """fn(bi, j, t) over the batch rows that run at this step."""
                    if lens is None:
                        with k.loops((batch, H)) as (bi, j):
                            fn(bi, j, time(bi))
                        return
                    for bi in range(batch):
                        with k.if_(s < lens[bi]), k.loop(H) as j:
                            fn(bi, j, time(bi))

                def emit(bi, j, t, hn):
                    h[bi, j] = hn
                    if y is not None:
                        y[t, d, bi, j] = hn

                if node.op == "RNN":
                    rec(0, GH, h, True)
                    pointwise(lambda bi, j, t: emit(bi, j, t, acts[0](k, cl(gates[bi, j]))))
                elif node.op == "LSTM":
                    rec(0, GH, h, True)
                    pointwise(lambda bi, j, t: self._lstm_point(k, node, acts, cl, gates, h, extra[0], p, d,
                                                                bi, j, lambda hn: emit(bi, j, t, hn)))
                elif lbr:
                    rec(0, 2 * H, h, True)
                    rec(2 * H, GH, h, False)

                    def gru_lbr(bi, j, t):
                        z = acts[0](k, cl(gates[bi, j]))
                        rr = acts[0](k, cl(gates[bi, H + j]))
                        hc = acts[1](k, cl(xw[row(t, bi), 2 * H + j] + rr * gates[bi, 2 * H + j]))
                        emit(bi, j, t, hc + z * (h[bi, j] - hc))
                    pointwise(gru_lbr)
                else:
                    rh = extra[0]
                    rec(0, 2 * H, h, True)

                    def reset(bi, j, t):
                        rh[bi, j] = acts[0](k, cl(gates[bi, H + j])) * h[bi, j]
                    pointwise(reset)
                    rec(2 * H, GH, rh, True)

                    def gru(bi, j, t):
                        z = acts[0](k, cl(gates[bi, j]))
                        hc = acts[1](k, cl(gates[bi, 2 * H + j]))
                        emit(bi, j, t, hc + z * (h[bi, j] - hc))
                    pointwise(gru)

            # 4. the last state
            for out, state in ((yh, h), (yc, extra[0] if node.op == "LSTM" else None)):
                if out is not None and state is not None:
                    with k.loops((batch, H)) as (bi, j):
                        out[d, bi, j] = state[bi, j]
                    for bi in [bi for bi, n in enumerate(lens or []) if n == 0]:  # as the reference
                        with k.loop(H) as j:
                            out[d, bi, j] = 0.0

    def _lstm_point(self, k, node, acts, cl, gates, h, c, p, d, bi, j, emit):
        H = node.attrs["hidden_size"]
        f, gf, hf = acts
        pd = _dim(p, d) if p is not None else None
        cp = c[bi, j]
        gi = gates[bi, j] + pd[j] * cp if pd is not None else gates[bi, j]
        i = f(k, cl(gi))
        if node.attrs["input_forget"]:
            fg = 1.0 - i
        else:
            gfg = gates[bi, 2 * H + j] + pd[2 * H + j] * cp if pd is not None else gates[bi, 2 * H + j]
            fg = f(k, cl(gfg))
        cn = fg * cp + i * gf(k, cl(gates[bi, 3 * H + j]))
        c[bi, j] = cn
        go = gates[bi, H + j] + pd[H + j] * cn if pd is not None else gates[bi, H + j]
        emit(f(k, cl(go)) * hf(k, cn))  # clip: on the gates only, not on C (onnxruntime)
