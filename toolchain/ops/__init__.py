"""The ops: one module per family, each op's semantics, schedule choice and lowering in
one class (base.py has the base class and the registry). Importing this package
registers every op."""
from . import (  # noqa: F401  (one family per line: a new family is a one-line change)
    attention,
    cast,
    conv_transpose,
    elementwise,
    indexing,
    integer,
    integer_onnx,
    linalg,
    logic,
    loss,
    misc_ops,
    movement,
    nn,
    normalization,
    onnx_ml,
    pooling,
    quant,
    recurrent,
    recurrent_state,
    reduce,
    resize,
    sampling,
    scatter,
    selection,
    shape,
    spectral,
    text,
)
from .base import (COPY, Op, apply_epilogue_reference, const_input, in_type, own_inputs, register,
                   registry)

__all__ = ["COPY", "Op", "apply_epilogue_reference", "const_input", "in_type", "own_inputs", "register",
           "registry"]
