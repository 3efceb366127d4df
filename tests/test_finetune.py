"""The worked fine-tuning example (examples/finetune.c, toolchain/finetune.py): the keyword
spotter's last layer trained on the target by a --train build, every step's loss against
an independent float64 simulation of the same SGD steps (features from onnxruntime), under
qemu-user and booted on the QEMU boards. The default suite runs cortex-a76 (qemu-user) and
the cortex-m55 board; --slow the other places."""
from __future__ import annotations

import onnx
import pytest

from helpers import make_model
from toolchain.compiler import DEFAULT_MODEL
from toolchain.errors import CompileError
from toolchain.finetune import TOLERANCE, run, simulate, small_variant

PLACES = [("cortex-a76", False), ("cortex-m55", True), pytest.param("rv64gcv", False, marks=pytest.mark.slow),
          pytest.param("cortex-a76", True, marks=pytest.mark.slow),
          pytest.param("cortex-m4", True, marks=pytest.mark.slow),
          pytest.param("x86-64-v3", False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("where,bare_metal", PLACES)
def test_fine_tuning_on_the_target_follows_the_float64_steps(where, bare_metal, tmp_path):
    o = run(where, tmp_path, bare_metal=bare_metal)
    assert len(o.losses) == 6 * 8 and o.passed, o.output[-800:]
    assert o.deviation <= TOLERANCE
    # it learns: the last epoch's mean loss is a third of the first's, every recording right after
    assert o.losses[-8:].mean() < o.losses[:8].mean() / 3 and o.after == o.samples > o.before


def test_the_check_fails_when_the_steps_differ(tmp_path):
    """The same program against a simulation with a learning rate 2% off: beyond tolerance."""
    o = run("cortex-a76", tmp_path)
    model = small_variant(onnx.load(str(DEFAULT_MODEL)))
    from toolchain.finetune import LEARNING_RATE, recordings
    x, labels = recordings([1, 49, 10], 2, 8)
    off = simulate(model, x, labels, 6, LEARNING_RATE * 1.02)
    assert abs(off - o.losses).max() > 10 * TOLERANCE


def test_a_model_of_another_layout_is_refused():
    from onnx import helper
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ("float32", [1, 4])}, {"y": ("float32", [1, 4])})
    with pytest.raises(CompileError, match="keyword spotter's layout"):
        small_variant(m)
