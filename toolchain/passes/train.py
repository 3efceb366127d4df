"""One training step as one graph: forward, loss, pullback, optimizer update.

`train_graph(g, params)` differentiates `g` (passes.autodiff.reverse, parameters as graph
inputs), appends the loss (MSE: the mean of squared differences of each float output from
its target, summed over outputs; or the softmax cross entropy of the class scores against
int64 labels) and its cotangent as the seed, inlines the pullback
(its residual inputs become the forward values themselves: nothing is saved, the step is
one program), and ends with one update per parameter: SGD, p - learning_rate * dL/dp; momentum (classic
heavy ball), v = mu * v + dL/dp, p - learning_rate * v, with a velocity per parameter in
the caller's optimizer state. Under SGD a weight whose gradient is one Gemm (or 2-D MatMul)
read by nothing else takes the update inside that product (`_sgd_into_product`). Each update is placed after every other node reading the
parameter: the build writes it over the parameter's own bytes in the caller's buffer
(and the new velocity over the old; see compiler.compile_train_graph), which is safe only
once nothing else reads the old value.

Only the initializers named in `params` are trained (`select_trainable` picks them from
a --trainable glob); the others stay constants, folded and packed as in an inference
build, and activity analysis differentiates only what reaches a trained one.

Graph inputs: the model's inputs, a target per float output, the parameters, (momentum)
a velocity per parameter, the learning rate (a float32 scalar). Outputs: the loss, each
updated parameter, (momentum) each updated velocity.

`run_graph(g, names)` is the inference graph reading the same parameters as inputs
(<name>_run_params).
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import numpy as np

from ..errors import InternalError, InvalidModelError, UnsupportedError
from ..ir import Graph, TensorType, Value
from ..ops import registry
from ..ops.loss import LOSS_GRAD
from .autodiff import Builder, params_to_inputs, reverse
from .verify import verify

LOSSES = ("mse", "cross-entropy")
OPTIMIZERS = ("sgd", "momentum")
DEFAULT_MOMENTUM = 0.9


@dataclass
class TrainProgram:
    graph: Graph
    n_inputs: int  # graph.inputs: model inputs, targets, params, (momentum) velocities, the learning rate
    n_targets: int
    params: list  # [autodiff.Param], in graph-input order after the targets
    outputs: list  # the model's float outputs (the targets' shapes)
    optimizer: str = "sgd"
    momentum: float = 0.0  # mu of the momentum optimizer


def select_trainable(names: list, pattern: str | None) -> list:
    """The initializer names --trainable PATTERN (a glob, fnmatch rules, case-sensitive)
    selects, in model order; all of them without a pattern."""
    if pattern is None:
        return list(names)
    chosen = [n for n in names if fnmatchcase(n, pattern)]
    if not chosen:
        few = ", ".join(f"'{n}'" for n in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise InvalidModelError(f"--trainable '{pattern}' matches no initializer of the model "
                                f"({'its initializers: ' + few if names else 'it has none'})")
    return chosen


def check_optimizer(optimizer: str, momentum: float | None) -> float:
    """The momentum coefficient the build uses (0 for SGD)."""
    if optimizer not in OPTIMIZERS:
        raise InvalidModelError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got '{optimizer}'")
    if optimizer != "momentum":
        if momentum is not None:
            raise InvalidModelError("--momentum is the coefficient of --optimizer momentum; "
                                    f"--optimizer {optimizer} takes none")
        return 0.0
    mu = DEFAULT_MOMENTUM if momentum is None else float(momentum)
    if not 0.0 <= mu < 1.0:
        raise InvalidModelError(f"--momentum must be in [0, 1), got {momentum}")
    return mu


def train_graph(g: Graph, params, loss: str = "mse", optimizer: str = "sgd", momentum: float | None = None,
                pattern: str | None = None, vector=None) -> TrainProgram:
    if loss not in LOSSES:
        raise UnsupportedError(f"loss '{loss}' is not supported (supported: {', '.join(LOSSES)})")
    mu = check_optimizer(optimizer, momentum)
    prog = reverse(g, params, gemm_layout=True, vector=vector)
    if not prog.params:
        if pattern is not None:
            raise UnsupportedError(f"--trainable '{pattern}' matches no float initializer the model reads "
                                   f"(matched: {', '.join(repr(n) for n in list(params)[:8])})")
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
    updated, velocities, new_velocities, groups = [], [], [], []
    for p, grad in zip(prog.params, grads):
        start = len(t.nodes)
        if optimizer == "sgd" and (fused := _sgd_into_product(t, p, grad, lr)) is not None:
            updated.append(fused[0])
            groups.append(fused[1])
            continue
        if optimizer == "momentum":  # v = mu * v + g; p -= lr * v
            v = Value(t.unique(f"velocity_{p.name}"), p.primal.type)
            velocities.append(v)
            grad = b.op("Add", [b.op("Mul", [v, b.scalar(mu)]), grad])
            new_velocities.append(grad)
        step = b.op("Mul", [grad, lr])
        updated.append(b.op("Sub", [p.primal, step]))
        groups.append(t.nodes[start:])
    _update_early(t, prog.params, groups)
    t.inputs = model_inputs + targets + [p.primal for p in prog.params] + velocities + [lr]
    t.outputs = [total] + updated + new_velocities
    t.output_names = None
    verify(t)
    return TrainProgram(t, len(model_inputs), len(targets), prog.params, [outputs[j] for j in prog.cot_outputs],
                        optimizer, mu)


def run_graph(g: Graph, names: list) -> Graph:
    """<name>_run_params as a graph: `g` (an import of the same model) with the trained
    initializers `names` as graph inputs after the model's own, in that order (as the
    train graph reads them); everything else as in an inference build."""
    plist = params_to_inputs(g, names, gemm_layout=True)
    if [p.name for p in plist] != list(names):
        raise UnsupportedError("the inference graph reads other parameters than the training step "
                               f"({[p.name for p in plist]} vs {list(names)})")
    g.output_names = None
    verify(g)
    return g


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


def _sgd_into_product(t: Graph, p, grad: Value, lr: Value) -> tuple[Value, list] | None:
    """SGD's p - lr * dW where dW = alpha * op(A) op(B) is one Gemm (or a 2-D MatMul, its
    transposed operands read as Gemm's transA/transB) that nothing else reads, as the single
    Gemm(A, B * (-lr * alpha), C=p, beta=1): the product starts from p and accumulates the
    scaled step onto it, so dW is never stored and the update is no second pass over p
    (loading, scaling and subtracting after the product). Only the smaller operand is
    scaled. The product is removed and the new Gemm (its output written over p's bytes, as
    every update) stays on the matmul kernels, whose tiles read each C element before
    storing that same element. Returns the updated value and the nodes computing it. Refused (None: the general update) where p is itself one of
    the product's operands (or a view of it), which the in-place write would overwrite
    while they are still read; a shared weight's gradient is a sum, no product, and keeps
    the general update too."""
    node = grad.producer
    if node is None or node not in t.nodes or node.epilogue or grad.type != p.primal.type or len(grad.type.shape) != 2:
        return None
    if any(v is grad for v in t.outputs) or any(v is grad for n in t.nodes for v in n.inputs):
        return None
    if node.op == "Gemm" and (len(node.inputs) == 2 or node.inputs[2] is None):
        (a, bv), alpha = node.inputs[:2], float(node.attrs["alpha"])
        trans = [int(node.attrs["transA"]), int(node.attrs["transB"])]
    elif node.op == "MatMul" and all(len(v.type.shape) == 2 for v in node.inputs):
        (a, bv), alpha, trans = node.inputs, 1.0, [0, 0]
    else:
        return None
    ops = [a, bv]
    if node.op == "MatMul":  # a Transpose of a 2-D operand becomes the trans flag
        for i, v in enumerate(ops):
            tr = v.producer
            if tr is not None and tr.op == "Transpose" and list(tr.attrs.get("perm", [])) == [1, 0]:
                ops[i], trans[i] = tr.inputs[0], 1
    if any(_reads(v, p.primal) for v in ops):
        return None
    k = min((0, 1), key=lambda i: ops[i].type.size)
    name = f"sgd_{p.name}"
    # (x * lr) * -alpha, not x * (lr * -alpha): no scalar node of its own (the constant's
    # Mul is an epilogue of the first)
    by_lr = Value(t.unique(f"{ops[k].name}_lr"), ops[k].type)
    t.add_node("Mul", f"{name}_lr", [ops[k], lr], [by_lr])
    scaled = Value(t.unique(f"{ops[k].name}_scaled"), ops[k].type)
    t.add_node("Mul", f"{name}_scale", [by_lr, t.const("c", np.array(-alpha, lr.type.dtype))], [scaled])
    ops[k] = scaled
    out = Value(t.unique(f"{p.name}_updated"), p.primal.type)
    gemm = t.add_node("Gemm", name, [*ops, p.primal], [out],
                      {"alpha": 1.0, "beta": 1.0, "transA": trans[0], "transB": trans[1]})
    (typ,) = registry.get("Gemm").infer(gemm)
    if typ != p.primal.type:
        raise InternalError(f"SGD update folded into '{node.name}' is {typ}, the parameter {p.primal.type}")
    group = t.nodes[-3:]
    t.nodes.remove(node)
    return out, group


def _reads(v: Value, p: Value) -> bool:
    """Whether `v` is `p` or a view of it (shares its bytes)."""
    while v is not None:
        if v is p:
            return True
        n = v.producer
        if n is None or not registry.get(n.op).view:
            return False
        v = n.inputs[0]
    return False


def _update_early(t: Graph, params, groups):
    """Each parameter's update (its group of nodes at the end of the graph: Mul and Sub, and
    for momentum the velocity's Mul and Add before them) moves up to just after both its
    gradient is complete and the last other node reading the parameter: the gradient's
    buffer then dies at once instead of staying alive to the end of the step, and no later
    node can read the overwritten parameter."""
    for p, group in zip(params, groups):
        mine = {id(n) for n in group}
        for n in group:
            t.nodes.remove(n)
        made = {id(o) for n in group for o in n.outputs}
        feeds = [v for n in group for v in n.inputs if v is not None and id(v) not in made]
        last = max([i for i, n in enumerate(t.nodes) if any(v is p.primal for v in n.inputs)] +
                   [t.nodes.index(v.producer) for v in feeds if v.producer is not None and id(v.producer) not in mine]
                   + [-1])
        t.nodes[last + 1:last + 1] = group


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
