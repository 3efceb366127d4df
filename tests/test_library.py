"""Several models in one library: one object exporting both entry points, each model's
header, a shared arena; a C program runs both from that one arena on the target."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_close

from toolchain import cli
from toolchain.bench import seeded_inputs
from toolchain.harness.oracle import onnxruntime_outputs
from toolchain.harness.runner import launcher, zig_cc
from toolchain.inspect.elf import read_object
from toolchain.library import build_library
from toolchain.targets import get_profile

KWS = ROOT / "models" / "kws_dscnn.onnx"
AD = ROOT / "tests" / "models" / "fc_autoencoder.onnx"


@pytest.mark.parametrize("where", ["x86-64-v3", "cortex-a76"])
def test_two_models_share_one_arena_and_match_onnxruntime(where, tmp_path):
    target = where
    out = tmp_path / "lib"
    res = build_library([(KWS, "kws"), (AD, "ad")], target, "models", out)
    m = res["manifest"]
    assert m["shared_arena"]["size"] == max(x["arena"]["size"] for x in m["models"].values())
    obj = read_object((out / "models.o").read_bytes())
    exported = {s.name for s in obj.symbols if s.binding == "STB_GLOBAL"}
    assert {"kws_run", "ad_run"} <= exported and not obj.undefined
    header = (out / "models.h").read_text()
    assert f"#define MODELS_SHARED_ARENA_SIZE  {m['shared_arena']['size']}u" in header
    assert "#define KWS_ARENA_SIZE" in (out / "kws.h").read_text()

    profile = get_profile(target)
    exe = tmp_path / "two_models"
    proc = subprocess.run(zig_cc(profile) + [f"-I{out}", str(ROOT / "tests" / "c" / "two_models.c"),
                                             str(out / "libmodels.a"), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    feeds = {}
    for stem, path in (("kws", KWS), ("ad", AD)):
        feeds[stem] = seeded_inputs(onnx.load(path))
        (tmp_path / f"{stem}.in").write_bytes(next(iter(feeds[stem].values())).tobytes())
    run = subprocess.run(launcher(profile) + [str(exe), str(tmp_path / "kws.in"), str(tmp_path / "kws.out"),
                                              str(tmp_path / "ad.in"), str(tmp_path / "ad.out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr)
    for stem, path in (("kws", KWS), ("ad", AD)):
        want = onnxruntime_outputs(onnx.load(path), feeds[stem])[0]
        got = np.fromfile(tmp_path / f"{stem}.out", dtype=np.float32).reshape(want.shape)
        assert_close(got, want, what=f"{stem} on {target}")
    assert json.loads((out / "models.json").read_text())["models"]["ad"]["inputs"][0]["shape"]


@pytest.mark.parametrize("argv,message", [
    (["--model", f"{KWS}:kws", "--model", f"{AD}"], "each is FILE:NAME"),
    (["--model", f"{KWS}:kws", "--model", f"{AD}:kws"], "model names must differ"),
    (["--model", f"{KWS}:kws", "--model", f"{AD}:ad", "--name", "kws"], "must differ from the model names"),
    (["--model", f"{KWS}:kws", "--model", f"{AD}:ad", "--emit", "c"], "takes no --dim, --emit c, --weights"),
    (["--model", f"{KWS}:kws", "--model", f"{AD}:9ad"], "must be a C identifier"),
])
def test_bad_library_requests_are_one_line_errors(argv, message, tmp_path, capsys):
    assert cli.main(["build", "--target", "x86-64-v3", "--out", str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_size_report_of_a_library_shows_each_model_and_the_shared_arena(tmp_path, capsys):
    out = tmp_path / "lib"
    res = build_library([(KWS, "kws"), (AD, "ad")], "cortex-a76", "models", out)
    assert cli.main(["size", "--target", "cortex-a76", "--name", "models", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = res["manifest"]
    assert re.search(rf"^  arena +{m['shared_arena']['size']:,d}$", text, re.M), text
    for n in ("kws", "ad"):
        mm = m["models"][n]
        assert f"{n:16} {mm['arena']['size']:10,d} {mm['stack_bytes'][n + '_run']:8,d} {mm['weight_bytes']:10,d}" in text
