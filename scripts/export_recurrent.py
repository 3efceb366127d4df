"""Export recurrent test models from PyTorch (a real exporter) with seeded weights.

    pip install torch==2.13.0   # only for this script; the project does not need torch
    python scripts/export_recurrent.py

Writes tests/models/lstm.onnx (2-layer LSTM, batch_first), gru.onnx (GRU, sequence first)
and lstm_bidir.onnx (bidirectional LSTM): input size 16, hidden 32, 20 steps, batch 1.
Each model takes the input sequence and the initial hidden state (and cell state for
LSTM), and returns the whole output sequence and the last hidden state (and cell state). tests/test_recurrent.py also calls `export` for more variants when
torch is installed.
"""
from __future__ import annotations

import io
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
INPUT, HIDDEN, SEQ, BATCH = 16, 32, 20, 1

MODELS = {  # file stem -> (kind, layers, bidirectional, batch_first)
    "lstm": ("LSTM", 2, False, True),
    "gru": ("GRU", 1, False, False),
    "lstm_bidir": ("LSTM", 1, True, False),
}


def export(kind: str, layers: int, bidirectional: bool, batch_first: bool, seed: int = 0,
           nonlinearity: str = "tanh") -> onnx.ModelProto:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            extra = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
            self.rnn = getattr(nn, kind)(INPUT, HIDDEN, num_layers=layers, bidirectional=bidirectional,
                                         batch_first=batch_first, **extra)

        def forward(self, x, *state):
            y, state = self.rnn(x, state if kind == "LSTM" else state[0])
            return (y, *state) if kind == "LSTM" else (y, state)

    torch.manual_seed(seed)
    model = Net().eval()
    shape = (BATCH, SEQ, INPUT) if batch_first else (SEQ, BATCH, INPUT)
    # The initial state is an input: left implicit, the exporter builds a zero state at run
    # time from Shape/Gather/Unsqueeze/Concat/Expand of the input, and edgec's front end
    # folds the scalar Gather index to shape [1] (ir.Graph.const's np.ascontiguousarray
    # makes 0-d arrays 1-d), so that Concat refuses [1] with [1, 1].
    state = torch.zeros(layers * (2 if bidirectional else 1), BATCH, HIDDEN)
    states = (state, state) if kind == "LSTM" else (state,)
    names = ["y", "h", "c"][:1 + len(states)]
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(shape), *states), buf, input_names=["input", "h0", "c0"][:1 + len(states)],
                      output_names=names,
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_version = ""  # keep the bytes independent of the exporter's patch version
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main():
    for stem, spec in MODELS.items():
        path = ROOT / "tests" / "models" / f"{stem}.onnx"
        proto = export(*spec)
        onnx.save(proto, str(path))
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes, ops {sorted({n.op_type for n in proto.graph.node})}")


if __name__ == "__main__":
    main()
