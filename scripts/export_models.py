"""Export the bundled and test models from PyTorch (a real exporter) with seeded weights.

    pip install torch==2.13.0   # only for this script; the project does not need torch
    python scripts/export_models.py

Writes models/kws_dscnn.onnx (the default model of `invoke build`) and tests/models/*.onnx:
the MLPerf Tiny reference architectures (DS-CNN keyword spotting, MobileNetV1-0.25 visual
wake words at 96x96, ResNet-8 on CIFAR-10, the FC autoencoder for anomaly detection) and a
one-layer transformer encoder. BatchNorm running statistics are randomized so that folding
them is really exercised; weights are seeded, so the files are reproducible.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17


def randomize_batchnorm(model: nn.Module, gen: torch.Generator):
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            mod.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            mod.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def conv_bn_relu(cin, cout, k, stride=1, groups=1, padding=None):
    pad = k // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DSCNN(nn.Module):
    """MLPerf Tiny keyword spotting (DS-CNN small): 49x10 MFCC in, 12 classes out."""

    def __init__(self, channels=64, blocks=4, classes=12):
        super().__init__()
        layers = [nn.Conv2d(1, channels, (10, 4), (2, 2), (5, 1), bias=True), nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(blocks):
            layers += conv_bn_relu(channels, channels, 3, groups=channels)
            layers += conv_bn_relu(channels, channels, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return torch.softmax(self.fc(torch.flatten(self.pool(self.features(x)), 1)), dim=1)


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier 0.25 for visual wake words (96x96x3, 2 classes)."""

    def __init__(self, alpha=0.25, classes=2):
        super().__init__()
        c = lambda n: max(8, int(n * alpha))  # noqa: E731
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
        layers = conv_bn_relu(3, c(32), 3, stride=2)
        cin = c(32)
        for cout, stride in cfg:
            layers += conv_bn_relu(cin, cin, 3, stride=stride, groups=cin)
            layers += conv_bn_relu(cin, c(cout), 1)
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = nn.functional.avg_pool2d(self.features(x), 3)
        return torch.softmax(self.fc(torch.flatten(x, 1)), dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny image classification: ResNet-8 on CIFAR-10 (32x32x3, 10 classes)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, 16, 3))
        self.stacks = nn.Sequential(ResidualBlock(16, 16, 1), ResidualBlock(16, 32, 2), ResidualBlock(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.avg_pool2d(self.stacks(self.stem(x)), 8)
        return torch.softmax(self.fc(torch.flatten(x, 1)), dim=1)


class FCAutoencoder(nn.Module):
    """MLPerf Tiny anomaly detection: dense 640-128-128-128-128-8-128-128-128-128-640."""

    def __init__(self, n=640, hidden=128, bottleneck=8):
        super().__init__()
        sizes = [n] + [hidden] * 4 + [bottleneck] + [hidden] * 4
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(hidden, n))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class EncoderLayer(nn.Module):
    """One post-norm transformer encoder layer, attention written out (MatMul, Softmax,
    Transpose, Reshape), exact GELU (erf) in the feed-forward block."""

    def __init__(self, d=64, heads=4, ffn=128):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x):  # x: (1, seq, d)
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / self.dk ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ff(x))


MODELS = {
    ROOT / "models" / "kws_dscnn.onnx": (DSCNN, (1, 1, 49, 10)),
    ROOT / "tests" / "models" / "mobilenet_v1_025_vww.onnx": (MobileNetV1, (1, 3, 96, 96)),
    ROOT / "tests" / "models" / "resnet8_cifar10.onnx": (ResNet8, (1, 3, 32, 32)),
    ROOT / "tests" / "models" / "fc_autoencoder.onnx": (FCAutoencoder, (1, 640)),
    ROOT / "tests" / "models" / "transformer_encoder.onnx": (EncoderLayer, (1, 16, 64)),
}


def export(cls, shape, path: Path, seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = cls()
    with torch.no_grad():
        randomize_batchnorm(model, gen)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(shape),), buf, input_names=["input"], output_names=["output"],
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_version = ""  # keep the bytes independent of the exporter's patch version
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes, ops {sorted({n.op_type for n in proto.graph.node})}")


def main(argv):
    for path, (cls, shape) in MODELS.items():
        if not argv or path.stem in argv:
            export(cls, shape, path)


if __name__ == "__main__":
    main(sys.argv[1:])
