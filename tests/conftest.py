import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ALL_TARGETS  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--target", action="append", default=None,
                     help="restrict target-parametrized tests to these targets (repeatable)")


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--target") or ALL_TARGETS
        metafunc.parametrize("target", chosen)


def pytest_collection_modifyitems(config, items):
    """--target restricts the system-mode (QEMU board) cases too; and the user-mode
    target-parametrized tests (qemu-user harness) are not run for a system-mode profile
    named by --target: its cases are the system_target ones (tests/test_system_mode.py)."""
    chosen = config.getoption("--target")
    if not chosen:
        return
    from toolchain.targets import runnable_targets

    system = set(runnable_targets("system"))

    def keep(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "system_target" in params:
            return params["system_target"] in chosen
        return params.get("target") not in system

    dropped = [i for i in items if not keep(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if keep(i)]


def pytest_configure(config):
    """build() consults the compile cache (toolchain/cache.py). The suite, and the CLI
    subprocesses it starts, never read or fill the user's; and the cache is off (every
    build compiles, so BuildResult.compiled is always there) except where a test turns it
    on with a directory of its own (tests/test_jit.py). Set here, before test modules are
    imported, so environments they copy at import carry it too."""
    os.environ["EDGEC_CACHE"] = "0"
    os.environ["EDGEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgec-test-cache-")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("edgec")


@pytest.fixture
def harness(workdir):
    """Build a model for a target and run it there (natively or under QEMU):
    harness(model, target, feeds, runs=1, arena_bytes=None) -> (outputs, build, run)."""
    from helpers import compile_and_run

    def run(model, target, feeds, **kw):
        return compile_and_run(model, target, feeds, workdir, **kw)

    return run
