"""invoke profile: per-node instruction counts of the final graph under QEMU.

The counts are checked against facts the profiler does not produce itself: the
whole-program counter (runtime/insn_count_plugin.c) run on the same executable and on
the shipped build, the ONNX graph's own nodes (for the fused-source names) and the
manifest's MACs. KWS builds for cortex-a76 (mode functions, mode lines) are shared by
the module; the CLI run adds one more (repeatability across builds, the
table, the HTML page); the diff compares the two modes' JSON profiles."""
import json
import subprocess
import sys
from html.parser import HTMLParser

import onnx
import pytest

from helpers import ROOT

KWS = ROOT / "models" / "kws_dscnn.onnx"


def edgec(*args):
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, cwd=ROOT)


def one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.startswith("edgec: error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def kws():
    from toolchain.profile import measure, prepare

    prepared = prepare(KWS, "cortex-a76")
    return prepared, measure(prepared)


@pytest.fixture(scope="module")
def kws_lines():
    from toolchain.profile import measure, prepare

    return measure(prepare(KWS, "cortex-a76", mode="lines"))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`edgec profile --target cortex-a76 --json --html` (a build of its own)."""
    d = tmp_path_factory.mktemp("profile")
    proc = edgec("profile", "--target", "cortex-a76", "--json", str(d / "a76.json"), "--html", str(d / "a76.html"))
    assert proc.returncode == 0, proc.stderr
    return d, proc


def test_node_counts_add_up_to_the_whole_run_counter(kws):
    prepared, r = kws
    assert sum(n.insns for n in r.nodes) + r.other_insns == r.total_insns
    # the independent counter, on the same executable: exactly the same instructions
    assert r.whole_run_insns == r.total_insns
    # the shipped build (kernels inlined into one function) against the profiling build
    print(f"\nKWS cortex-a76: per-node sum {r.total_insns:,}, shipped build {r.shipped_insns:,} "
          f"({100 * r.deviation:+.2f}%), outside nodes {r.other_insns}")
    assert abs(r.deviation) < 0.05
    # every node with MACs got instructions; the four identical pointwise layers cost the same
    assert all(n.insns > 0 for n in r.nodes if n.macs)
    pointwise = [n.insns for n in r.nodes if n.op == "Conv" and n.macs == 512_000]
    assert len(pointwise) == 4 and max(pointwise) - min(pointwise) <= max(pointwise) // 1000


def test_lines_mode_counts_the_shipped_code_exactly(kws_lines, kws):
    """mode lines profiles the shipped code itself: the per-node sum is the shipped build's
    whole-program count (`invoke bench`'s figure), to the instruction."""
    r = kws_lines
    assert r.mode == "lines" and r.code == "identical"  # .text byte for byte the shipped object's
    assert sum(n.insns for n in r.nodes) + r.other_insns == r.total_insns == r.whole_run_insns
    assert r.total_insns == r.shipped_insns
    assert r.shipped_insns == kws[1].shipped_insns  # the same shipped build as the functions mode saw
    assert all(n.insns > 0 for n in r.nodes if n.macs)
    print("\nKWS cortex-a76 per node, functions mode vs lines mode (the shipped code):")
    for f, l in zip(kws[1].nodes, r.nodes):
        assert f.name == l.name
        print(f"  {f.name:32} {f.insns:9,d} {l.insns:9,d}  {100 * (f.insns - l.insns) / max(l.insns, 1):+6.1f}%")


def test_macs_match_the_manifest(kws):
    prepared, r = kws
    manifest = json.loads((prepared.shipped_exe.parent / "model.json").read_text())  # the shipped build's
    assert r.macs == manifest["macs"]


def test_two_runs_are_identical(kws):
    from toolchain.profile import measure

    prepared, first = kws
    assert measure(prepared, runs=first.runs) == first


def test_fused_sources_are_the_models_own_nodes(kws):
    _, r = kws
    model = onnx.load(str(KWS))
    names = {n.name for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in r.nodes:
        assert node.sources and set(node.sources) <= names, node
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    assert relus
    for relu in relus:  # each activation is folded into the node of the Conv that feeds it
        holders = [n for n in r.nodes if relu.name in n.sources]
        assert len(holders) == 1
        assert producer[relu.input[0]].name in holders[0].sources


def test_residual_fusion_records_the_add():
    """ResNet-8 (compile only): the residual Add and its Relu live in the Conv that does them."""
    from toolchain.frontend.onnx_import import import_model, load_model
    from toolchain.passes import run_pipeline

    path = ROOT / "tests" / "models" / "resnet8_cifar10.onnx"
    model = onnx.load(str(path))
    g = run_pipeline(import_model(load_model(path), "model"))
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert adds
    for add in adds:
        holder = [n for n in g.nodes if add.name in n.sources]
        assert len(holder) == 1 and holder[0].op == "Conv" and len(holder[0].sources) >= 3, holder


def test_cli_json_is_repeatable_across_builds(kws, cli_run):
    d, proc = cli_run
    _, r = kws
    data = json.loads((d / "a76.json").read_text())
    assert [(n["name"], n["insns"]) for n in data["nodes"]] == [(n.name, n.insns) for n in r.nodes]
    assert data["total_insns"] == r.total_insns
    table = proc.stdout
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("/")]
    by_cost = sorted(data["nodes"], key=lambda n: (-n["insns"], n["name"]))
    assert rows == [n["name"] for n in by_cost]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.bars, self.rows, self.external = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.rows += tag == "tr"
        if tag == "div" and "bar" in (a.get("class") or ""):
            self.bars.append(float(a["style"].split("width:")[1].rstrip("%")))
        for key in ("src", "href"):
            if key in a:
                self.external.append(a[key])


def test_html_page_is_self_contained(cli_run):
    d, _ = cli_run
    data = json.loads((d / "a76.json").read_text())
    page = _Page()
    page.feed((d / "a76.html").read_text())
    assert "script" not in page.tags and "link" not in page.tags and not page.external
    assert page.rows == len(data["nodes"]) + 2  # header, a row per node, the line outside nodes
    assert len(page.bars) == len(data["nodes"]) + 1 and max(page.bars) == 100.0


def test_diff_of_two_profiles(kws, kws_lines, tmp_path):
    """The two modes' profiles of KWS on cortex-a76, written as JSON and compared."""
    (tmp_path / "functions.json").write_text(kws[1].to_json())
    (tmp_path / "lines.json").write_text(kws_lines.to_json())
    old, new = (json.loads((tmp_path / f"{m}.json").read_text()) for m in ("functions", "lines"))
    proc = edgec("profile", "--diff", str(tmp_path / "functions.json"), str(tmp_path / "lines.json"))
    assert proc.returncode == 0, proc.stderr
    print("\n" + proc.stdout)
    lines = proc.stdout.splitlines()
    for n in old["nodes"]:
        other = next(m for m in new["nodes"] if m["name"] == n["name"])
        line = next(x for x in lines if x.endswith(f" {n['name']} ({n['op']})"))
        assert line.split()[:1] == [f"{other['insns'] - n['insns']:+,d}"]
    total = next(x for x in lines if x.endswith("[total]")).split()
    assert total[0] == f"{new['total_insns'] - old['total_insns']:+,d}"
    assert total[2:4] == [f"{old['total_insns']:,}", f"{new['total_insns']:,}"]


def test_bad_arguments(tmp_path):
    one_line_error(edgec("profile", "--target", "cortex-a76", "--model", str(tmp_path / "nope.onnx")),
                   "model file not found")
    one_line_error(edgec("profile"), "needs --target")
    one_line_error(edgec("profile", "--target", "no-such-cpu"), "no-such-cpu")
    one_line_error(edgec("profile", "--target", "cortex-a76", "--json", str(tmp_path)), "is a directory")
    one_line_error(edgec("profile", "--target", "cortex-a76", "--mode", "guess"), "--mode")
    one_line_error(edgec("profile", "--target", "cortex-a76", "--runs", "1"), "--runs")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"name": "model"}')
    one_line_error(edgec("profile", "--diff", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")),
                   "bad.json", "is not JSON")
    one_line_error(edgec("profile", "--diff", str(tmp_path / "other.json"), str(tmp_path / "bad.json")),
                   "other.json", "not a profile")
    one_line_error(edgec("profile", "--diff", str(tmp_path / "missing.json"), str(tmp_path / "bad.json")),
                   "missing.json", "not found")
    proc = subprocess.run([sys.executable, "-m", "invoke", "profile", "--diff", "only-one.json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "OLD.json,NEW.json" in proc.stderr


def test_line_table_code_check():
    """Identical code passes; the same sizes with bytes in another order are reported (the
    run must then execute exactly the shipped count); another size is an error."""
    from toolchain.errors import InternalError
    from toolchain.profile import _compare_code

    assert _compare_code([(".text", b"abcd")], [(".text", b"abcd")]) == "identical"
    assert _compare_code([(".text", b"abcd")], [(".text", b"abdc")]) == "same sizes, 2 of 4 bytes in another order"
    with pytest.raises(InternalError):
        _compare_code([(".text", b"abcd")], [(".text", b"abcde")])


def test_a_training_step_is_profiled_node_by_node(tmp_path):
    """profile --train: the shipped training step's own code, its forward, loss, pullback and
    update nodes told apart; the per-node sum is, to the instruction, what the whole-program
    counter counts for a training step of the shipped --train build, built and linked as
    bench --train does (build(train=...), link_train_harness)."""
    import onnx

    from autodiff_helpers import cnn
    from toolchain.profile import measure, prepare

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), str(path))
    r = measure(prepare(path, "cortex-a76", train="mse"))
    assert r.unit == "training step" and r.code == "identical"
    assert sum(n.insns for n in r.nodes) + r.other_insns == r.total_insns == r.whole_run_insns == r.shipped_insns
    assert any(n.op == "Conv" and "_grad_" in n.name and n.insns for n in r.nodes)  # the pullback's own nodes
    one_line_error(edgec("profile", "--target", "cortex-a76", "--train", "--mode", "functions"), "mode lines")
