"""--weights-section NAME (#20): every weight and packed-weight array of a build in the ELF
section NAME instead of .rodata.<name>.weights, on the object and the C path; the name
checked as a linker-script word; recorded in the manifest and header, keyed in the cache
and build id, counted as flash; a Cortex-M firmware places it in a region of its own.
Read back from the ELF files with pyelftools, never from the compiler's own report."""
import io
import json
import re

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from onnx import helper

from helpers import make_model
from toolchain import cache, cli, firmware
from toolchain.compiler import build, compile_onnx
from toolchain.errors import InvalidModelError
from toolchain.inspect.size import size_report
from toolchain.targets import get_profile

T = "x86-64-v3"
rng = np.random.default_rng(20)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """MatMul by a constant (packed for the register tiles), a bias, a Relu: weight arrays
    both as graph constants and as packed copies."""
    w = rng.standard_normal((32, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"]),
                    helper.make_node("Relu", ["z"], ["out"])],
                   {"x": (np.float32, (4, 32))}, {"out": (np.float32, (4, 24))}, {"w": w, "b": b})
    path = tmp_path_factory.mktemp("wsec") / "mlp.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def _elf(data: bytes):
    """{section name: (index, size)} of allocated sections, and the data objects (name, section
    name, value, size)."""
    elf = ELFFile(io.BytesIO(data))
    names = {i: s.name for i, s in enumerate(elf.iter_sections())}
    sections = {s.name: (i, s["sh_size"]) for i, s in enumerate(elf.iter_sections()) if s["sh_flags"] & 0x2}
    objects = [(s.name, names.get(s["st_shndx"]), s["st_value"], s["st_size"])
               for s in elf.get_section_by_name(".symtab").iter_symbols()
               if s["st_info"]["type"] == "STT_OBJECT" and isinstance(s["st_shndx"], int)]
    return sections, objects


def _weights(objects, name):
    """The weight arrays: <name>_w<i> and the packed copies (<fn>_packed<i>)."""
    return [o for o in objects if re.fullmatch(rf"{name}_w\d+", o[0]) or "_packed" in o[0]]


def _assert_all_in(data: bytes, name: str, section: str, expect_packed: bool):
    sections, objects = _elf(data)
    assert section in sections and sections[section][1] > 0, sorted(sections)
    if section != f".rodata.{name}.weights":
        assert f".rodata.{name}.weights" not in sections  # nothing left under the default name
    weights = _weights(objects, name)
    assert weights, objects
    if expect_packed:
        assert any("_packed" in o[0] for o in weights), weights
    size = sections[section][1]
    for sym, sec, value, nbytes in weights:
        assert sec == section, (sym, sec)
        assert 0 <= value and value + nbytes <= size, (sym, value, nbytes, size)  # inside it (relocatable: offsets)
    assert all(o in weights for o in objects if o[1] == section)  # and nothing but weights there
    return sections


def test_object_path_puts_every_weight_in_the_named_section(model_file, tmp_path):
    res = build(model_file, T, "mlp", tmp_path, weights_section=".extflash")
    sections = _assert_all_in((tmp_path / "mlp.o").read_bytes(), "mlp", ".extflash", expect_packed=True)
    assert sections[".extflash"][1] >= 32 * 24 * 4  # at least W (packed for the tiles)
    assert res.manifest["weights_section"] == ".extflash"
    header = (tmp_path / "mlp.h").read_text()
    assert "ELF section .extflash" in header and "*(.extflash)" in header
    assert json.loads((tmp_path / "mlp.json").read_text())["weights_section"] == ".extflash"


def test_c_path_puts_every_weight_in_the_named_section(model_file, tmp_path):
    res = build(model_file, T, "mlp", tmp_path, emit="c", weights_section=".weights.mlp")
    source = (tmp_path / "mlp.c").read_text()
    assert '__attribute__((section(".weights.mlp")))' in source and ".rodata.mlp.weights" not in source
    _assert_all_in(res.compiled.object, "mlp", ".weights.mlp", expect_packed=False)  # the check build of mlp.c
    assert res.manifest["weights_section"] == ".weights.mlp"


def test_default_is_unchanged_and_naming_the_default_is_the_same_build(model_file, tmp_path):
    """No flag: .rodata.<name>.weights, nothing in the manifest; giving that very name is the
    same build byte for byte (object, header, manifest, build id)."""
    plain = build(model_file, T, "mlp", tmp_path / "a")
    named = build(model_file, T, "mlp", tmp_path / "b", weights_section=".rodata.mlp.weights")
    for f in ("mlp.o", "libmlp.a", "mlp.h", "mlp.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert "weights_section" not in plain.manifest and "ELF section" not in (tmp_path / "a" / "mlp.h").read_text()
    _assert_all_in(plain.compiled.object, "mlp", ".rodata.mlp.weights", expect_packed=True)
    other = build(model_file, T, "mlp", tmp_path / "c", weights_section=".extflash")
    assert other.manifest["build_id"] != named.manifest["build_id"]  # the section is an option of the build
    # the same bytes, in another section: the same flash, by the manifest and by edgec size
    for key in ("flash_bytes", "ram_bytes", "code_bytes", "rodata_bytes", "weight_bytes"):
        assert other.manifest[key] == plain.manifest[key], key
    report = size_report(tmp_path / "c", "mlp")
    sections, _ = _elf((tmp_path / "c" / "mlp.o").read_bytes())
    assert report.sections[".extflash"] == sections[".extflash"][1]
    assert report.flash_bytes == plain.manifest["flash_bytes"] == sum(
        n for s, (_, n) in sections.items() if not s.startswith((".bss", ".tbss")))


def test_compile_cache_keys_the_section(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE", "1")
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path / "cache"))
    first = build(model_file, T, "mlp", tmp_path / "a", weights_section=".extflash")
    again = build(model_file, T, "mlp", tmp_path / "b", weights_section=".extflash")
    other = build(model_file, T, "mlp", tmp_path / "c", weights_section=".sram2")
    assert first.compiled is not None and again.compiled is None  # the second was a hit
    assert other.compiled is not None  # another section: not the cached build
    sections, _ = _elf((tmp_path / "c" / "mlp.o").read_bytes())
    assert ".sram2" in sections and ".extflash" not in sections
    assert cache.events[-1]["fields"]["options"]["weights_section"] == ".sram2"


BAD = ["", "has space", 'q"uote', "it's", "x" * 65, "1st", "-w", "a/b", "sec*", "(x)", "w\n",
       ".bss.w", ".tbss", ".data", ".text.w", ".init_array", ".note.w", "élan"]


@pytest.mark.parametrize("section", BAD, ids=range(len(BAD)))
def test_bad_section_names_are_refused(section, model_file, tmp_path):
    with pytest.raises(InvalidModelError, match=r"^--weights-section .*") as e:
        build(model_file, T, "mlp", tmp_path, weights_section=section)
    assert repr(section)[1:-1][:20] in str(e.value)  # names it
    assert not (tmp_path / "mlp.o").exists()  # refused before any work


@pytest.mark.parametrize("kind,emit", [("reverse", "object"), ("forward", "c"), ("train", "object"), ("train", "c")])
def test_derivative_and_training_builds_put_their_weights_there_too(kind, emit, model_file, tmp_path):
    opts = {"train": "mse", "trainable": "b"} if kind == "train" else {"grad": kind}  # train: w stays a weight
    res = build(model_file, T, "mlp", tmp_path, emit=emit, weights_section=".weights.mlp", **opts)
    data = res.compiled.object if emit == "c" else (tmp_path / "mlp.o").read_bytes()
    _assert_all_in(data, "mlp", ".weights.mlp", expect_packed=False)
    assert res.manifest["weights_section"] == ".weights.mlp" and "ELF section .weights.mlp" in (tmp_path / "mlp.h").read_text()
    plain = build(model_file, T, "mlp", tmp_path / "plain", emit=emit, **opts)
    assert plain.manifest["build_id"] != res.manifest["build_id"]


def test_longest_legal_name_and_the_characters_allowed(model_file, tmp_path):
    name = ".w$1-" + "x" * 59
    assert len(name) == 64
    import onnx
    c = compile_onnx(onnx.load(str(model_file)), T, "mlp", weights_section=name)  # the in-process API too
    _assert_all_in(c.object, "mlp", name, expect_packed=True)


def test_conflicts_and_the_command_line(model_file, tmp_path, capsys):
    with pytest.raises(InvalidModelError, match="--weights external"):
        build(model_file, T, "mlp", tmp_path, weights="external", weights_section=".extflash")
    assert cli.main(["build", "--target", T, "--model", str(model_file), "--name", "mlp", "--out",
                     str(tmp_path / "bad"), "--weights-section", "my weights"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgec: error: --weights-section 'my weights' ") and "' '" in err
    assert cli.main(["build", "--target", T, "--model", str(model_file), "--name", "mlp", "--out",
                     str(tmp_path / "ok"), "--weights-section", ".extflash"]) == 0
    assert ".extflash" in _elf((tmp_path / "ok" / "mlp.o").read_bytes())[0]
    assert cli.main(["build", "--target", T, "--model", f"{model_file}:a", "--model", f"{model_file}:b",
                     "--name", "lib", "--out", str(tmp_path / "lib"), "--weights-section", ".extflash"]) == 1
    assert "--weights-section" in capsys.readouterr().err


def test_cortex_m4_firmware_places_the_section_in_a_region_of_its_own(tmp_path):
    """The board's script with 1 MiB of its code memory made a region XIP and the WEIGHTS
    alias pointed at it: the image's .weights output section and every weight symbol lie in
    XIP, nothing of the model's weights is left in .rodata, and the firmware still PASSes on
    QEMU's MPS2 AN386."""
    profile = get_profile("cortex-m4")
    board = firmware.board_for(profile)
    text = (firmware.FIRMWARE / board["dir"] / board["linker_script"]).read_text()
    code = "CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M"
    alias = 'REGION_ALIAS("WEIGHTS", FLASH);'
    assert code in text and alias in text
    script = tmp_path / "xip.ld"
    script.write_text(text.replace(code, "CODE (rx) : ORIGIN = 0x00000000, LENGTH = 3M\n"
                                         "    XIP (r) : ORIGIN = 0x00300000, LENGTH = 1M")
                      .replace(alias, 'REGION_ALIAS("WEIGHTS", XIP);'))
    image = firmware.build_image(firmware.DEFAULT_MODEL, profile, "object", tmp_path, weights_section=".weights.kws",
                                 linker_script=script)
    with open(image, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".weights")
        start, end = sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]
        assert 0x00300000 <= start and end <= 0x00400000 and sec["sh_size"] > 0
        names = {i: s.name for i, s in enumerate(elf.iter_sections())}
        weights = [s for s in elf.get_section_by_name(".symtab").iter_symbols()
                   if s["st_info"]["type"] == "STT_OBJECT" and (re.fullmatch(r"model_w\d+", s.name) or "_packed" in s.name)]
        assert weights
        for s in weights:
            assert names[s["st_shndx"]] == ".weights" and start <= s["st_value"] and s["st_value"] + s["st_size"] <= end
    manifest = json.loads((tmp_path / "object" / "model.json").read_text())
    assert sec["sh_size"] >= manifest["weight_bytes"] * 0.9  # the weights (packed copies replace originals)
    rc, output = firmware.boot(image, profile)
    assert rc == 0 and "PASS" in output, output
