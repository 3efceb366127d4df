"""The pass pipeline: small named passes, each returning whether it changed the graph;
the IR is verified after each, and dumped after each one that changed it."""
from __future__ import annotations

from functools import partial
from typing import Callable, TextIO

from ..errors import CompileError
from ..ir import Graph
from ..targets import VectorUnit
from .cleanup import eliminate_common_subexpressions, eliminate_dead_code
from .fold import fold_constants
from .fuse import fold_batchnorm, fuse_activations, fuse_residuals
from .legalize import materialize_outputs
from .patterns import fold_matmul_bias, fuse_gelu
from .quantize import integer_ops
from .schedule import choose_schedules
from .verify import infer_shapes, verify

PIPELINE: list[tuple[str, Callable[[Graph], bool]]] = [
    ("infer-shapes", infer_shapes),
    ("integer-ops", integer_ops),
    ("fold-constants", fold_constants),
    ("eliminate-dead-code", eliminate_dead_code),
    ("eliminate-common-subexpressions", eliminate_common_subexpressions),
    ("fuse-gelu", fuse_gelu),
    ("fold-matmul-bias", fold_matmul_bias),
    ("fold-batchnorm", fold_batchnorm),
    ("fuse-activations", fuse_activations),
    ("fuse-residuals", fuse_residuals),
    ("fold-constants", fold_constants),
    ("eliminate-dead-code", eliminate_dead_code),
    ("materialize-outputs", materialize_outputs),
]


def pipeline_for(vector: VectorUnit | None) -> list[tuple[str, Callable[[Graph], bool]]]:
    """The graph passes, then (given a backend's vector unit) the schedule choice."""
    if vector is None:
        return PIPELINE
    return PIPELINE + [("choose-schedules", partial(choose_schedules, vector=vector))]


def run_pipeline(g: Graph, dump: TextIO | None = None, passes=None, vector: VectorUnit | None = None,
                 log: list | None = None) -> Graph:
    """Runs `passes` (default: pipeline_for(vector)). `log`, if given, receives
    (pass name, changed) for each pass run."""
    verify(g)
    if dump is not None:
        print(f"// ---- after import ----\n{g}\n", file=dump)
    for name, fn in passes if passes is not None else pipeline_for(vector):
        try:
            changed = fn(g)
            verify(g)
        except CompileError as e:
            raise type(e)(f"{e} (in pass {name})") from None
        if log is not None:
            log.append((name, bool(changed)))
        if dump is not None and changed:
            print(f"// ---- after {name} ----\n{g}\n", file=dump)
    return g
