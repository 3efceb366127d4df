"""The pass pipeline: small named passes, the IR verified after each, optionally dumped."""
from __future__ import annotations

from typing import Callable, TextIO

from ..errors import CompileError
from ..ir import Graph
from .cleanup import eliminate_common_subexpressions, eliminate_dead_code
from .fold import fold_constants
from .fuse import fold_batchnorm, fuse_activations, fuse_residuals
from .legalize import materialize_outputs


def infer_shapes(g: Graph) -> bool:
    """Re-derive every output type from the shape rules (types are set at import; this
    catches any disagreement, e.g. from a hand-edited graph)."""
    from ..ops import registry

    for node in g.nodes:
        for out, t in zip(node.outputs, registry.get(node.op).infer(node)):
            out.type = t
    return False


PIPELINE: list[tuple[str, Callable[[Graph], bool]]] = [
    ("infer-shapes", infer_shapes),
    ("fold-constants", fold_constants),
    ("eliminate-dead-code", eliminate_dead_code),
    ("eliminate-common-subexpressions", eliminate_common_subexpressions),
    ("fold-batchnorm", fold_batchnorm),
    ("fuse-activations", fuse_activations),
    ("fuse-residuals", fuse_residuals),
    ("fold-constants", fold_constants),
    ("eliminate-dead-code", eliminate_dead_code),
    ("materialize-outputs", materialize_outputs),
]


def run_pipeline(g: Graph, dump: TextIO | None = None, passes=PIPELINE) -> Graph:
    g.verify()
    if dump is not None:
        print(f"// ---- after import ----\n{g}\n", file=dump)
    for name, fn in passes:
        try:
            fn(g)
            g.verify()
        except CompileError as e:
            raise CompileError(f"{e} (in pass {name})") from None
        if dump is not None:
            print(f"// ---- after {name} ----\n{g}\n", file=dump)
    return g
