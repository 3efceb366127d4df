"""One training step as one graph: forward, loss, pullback, SGD update.

`train_graph(g, params)` differentiates `g` (passes.autodiff.reverse, parameters as graph
inputs), appends the loss (MSE: the mean of squared differences of each float output from
its target, summed over outputs; or the softmax cross entropy of the class scores against
int64 labels) and its cotangent as the seed, inlines the pullback
(its residual inputs become the forward values themselves: nothing is saved, the step is
one program), and ends with one update per parameter, p - learning_rate * dL/dp, placed
after every other node: the build writes each update over the parameter's own bytes in
the caller's buffer (see compiler.compile_train_graph), which is safe only once nothing
else reads the old value.

Graph inputs: the model's inputs, a target per float output, the parameters, the learning
rate (a float32 scalar). Outputs: the loss, then each updated parameter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..ir import Graph, TensorType, Value
from ..ops.loss import LOSS_GRAD
from .autodiff import Builder, reverse
from .verify import verify

LOSSES = ("mse", "cross-entropy")


@dataclass
class TrainProgram:
    graph: Graph
    n_inputs: int  # graph.inputs: model inputs, then targets, then params, then the learning rate
    n_targets: int
    params: list  # [autodiff.Param], in graph-input order after the targets
    outputs: list  # the model's float outputs (the targets' shapes)


def train_graph(g: Graph, params, loss: str = "mse") -> TrainProgram:
    if loss not in LOSSES:
        raise UnsupportedError(f"loss '{loss}' is not supported (supported: {', '.join(LOSSES)})")
    prog = reverse(g, params, gemm_layout=True)
    if not prog.params:
        raise UnsupportedError("the model has no float initializers to train")
    t, n = prog.primal, prog.n_outputs
    model_inputs = t.inputs[:len(t.inputs) - len(prog.params)]
    outputs, residuals = t.outputs[:n], t.outputs[n:]
    b = Builder(t, {}, set())
    targets, seeds, total = _cross_entropy(t, b, outputs, prog.cot_outputs) if loss == "cross-entropy" else \
        _mse(t, b, outputs, prog.cot_outputs)

    pb = prog.pullback
    env = {id(rv): pv for rv, pv in zip(pb.inputs, residuals)}
    env.update({id(c): seeds[j] for c, j in zip(pb.inputs[len(residuals):], prog.cot_outputs)})
    env.update({id(p.pullback): p.primal for p in prog.params if p.pullback is not None})

    def mapped(v):
        return v if v is None or v.is_const else env[id(v)]

    for node in pb.nodes:
        outs = [Value(t.unique(o.name), o.type) for o in node.outputs]
        t.add_node(node.op, f"train_{node.name}", [mapped(v) for v in node.inputs], outs, dict(node.attrs))
        env.update({id(o): c for o, c in zip(node.outputs, outs)})
    grads = [mapped(v) for v in pb.outputs[len(prog.wrt_inputs):]]

    lr = Value(t.unique("learning_rate"), TensorType("float32", ()))
    updated = []
    for p, grad in zip(prog.params, grads):
        step = b.op("Mul", [grad, lr])
        updated.append(b.op("Sub", [p.primal, step]))
    _update_early(t, prog.params, len(prog.params))
    t.inputs = model_inputs + targets + [p.primal for p in prog.params] + [lr]
    t.outputs = [total] + updated
    t.output_names = None
    verify(t)
    return TrainProgram(t, len(model_inputs), len(targets), prog.params, [outputs[j] for j in prog.cot_outputs])


def _mse(t: Graph, b: Builder, outputs, cot_outputs):
    """The mean of squared differences of each float output from its target, summed over
    outputs: (targets, {output: seed cotangent}, loss)."""
    targets, seeds, terms = [], {}, []
    for j in cot_outputs:
        y = outputs[j]
        target = Value(t.unique(f"target_{y.name}"), y.type)
        targets.append(target)
        diff = b.op("Sub", [y, target])
        rank = len(y.type.shape)
        terms.append(b.op("ReduceMean", [b.op("Mul", [diff, diff])], axes=list(range(rank)), keepdims=0)
                     if rank else b.op("Mul", [diff, diff]))
        seeds[j] = b.op("Mul", [diff, b.scalar(2.0 / max(y.type.size, 1))])
    total = terms[0]
    for term in terms[1:]:
        total = b.op("Add", [total, term])
    return targets, seeds, total


def _cross_entropy(t: Graph, b: Builder, outputs, cot_outputs):
    """Softmax cross entropy of the first float output (scores, N x C [x d...]) against
    int64 class labels (N [x d...]), averaged over samples (SoftmaxCrossEntropyLoss,
    reduction mean); its seed is that op's input cotangent, (softmax - onehot) / N."""
    if len(cot_outputs) != 1:
        raise UnsupportedError(f"--loss cross-entropy needs exactly one float output (the class scores); the model "
                               f"has {len(cot_outputs)}")
    (j,) = cot_outputs
    y = outputs[j]
    if len(y.type.shape) < 2:
        raise UnsupportedError(f"--loss cross-entropy needs class scores of shape N x C [x d...]; output '{y.name}' "
                               f"is {y.type}")
    labels = Value(t.unique(f"target_{y.name}"), TensorType("int64", y.type.shape[:1] + y.type.shape[2:]))
    total = b.op("SoftmaxCrossEntropyLoss", [y, labels], reduction="mean")
    seed = b.op(LOSS_GRAD, [b.scalar(1.0), labels, None, y], classes=y.type.shape[1], reduction="mean")
    return [labels], {j: seed}, total


def _update_early(t: Graph, params, count: int):
    """Each parameter's update (the last 2 * count nodes, a Mul and a Sub per parameter)
    moves up to just after both its gradient is complete and the last other node reading
    the parameter: the gradient's buffer then dies at once instead of staying alive to
    the end of the step, and no later node can read the overwritten parameter."""
    updates = t.nodes[len(t.nodes) - 2 * count:]
    for k, p in enumerate(params):
        mul, sub = updates[2 * k], updates[2 * k + 1]
        t.nodes.remove(mul)
        t.nodes.remove(sub)
        grad = mul.inputs[0]
        last = max([i for i, n in enumerate(t.nodes) if any(v is p.primal for v in n.inputs)] +
                   [t.nodes.index(grad.producer) if grad.producer is not None else -1])
        t.nodes[last + 1:last + 1] = [mul, sub]


def init_graph(params, name: str) -> Graph:
    """<name>_params_init as a graph: each parameter's trained value copied to an output."""
    g = Graph(f"{name}_params_init")
    g.outputs = [g.const(p.name, p.data) for p in params]
    return g


def param_layout(params, align: int) -> tuple[list, int]:
    """Offsets of the parameters in the caller's buffer, and its size (as residual_layout)."""
    offsets, end = [], 0
    for p in params:
        end = -(-end // align) * align
        offsets.append(end)
        end += int(np.asarray(p.data).nbytes)
    return offsets, max(-(-end // align) * align, align)
