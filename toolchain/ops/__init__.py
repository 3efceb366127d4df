"""The ops: one module per family, each op's semantics, schedule choice and lowering in
one class (base.py has the base class and the registry). Importing this package
registers every op."""
from . import (conv_transpose, elementwise, indexing, integer, logic, movement, nn, normalization,  # noqa: F401
               pooling, quant, recurrent, reduce, resize, sampling, shape)
from .base import (COPY, Op, apply_epilogue_reference, const_input, in_type, own_inputs, register,
                   registry)

__all__ = ["COPY", "Op", "apply_epilogue_reference", "const_input", "in_type", "own_inputs", "register",
           "registry"]
