"""The README's supported-ops table is the generated one (scripts/ops_table.py): adding an
op, or a node case starting to pass, without regenerating it fails here."""
import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import ops_table  # noqa: E402
from node_suite import load_index  # noqa: E402
from toolchain.ops import registry  # noqa: E402


def test_readme_ops_table_is_the_generated_one():
    text = (ROOT / "README.md").read_text()
    assert ops_table.BEGIN in text and ops_table.END in text
    current = ops_table.BEGIN + text.split(ops_table.BEGIN, 1)[1].split(ops_table.END, 1)[0] + ops_table.END
    want = ops_table.section(load_index(), ops_table.passing_names())
    assert current == want, "README.md's ops table is stale: run python scripts/ops_table.py --write"


def test_every_registered_op_has_a_row():
    text = (ROOT / "README.md").read_text()
    for op in registry.names():
        assert f"| `{op}` |" in text, op
