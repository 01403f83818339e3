"""scripts/bench_audit.py on a committed model: its row, with and without the naive loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mlp_dense.onnx"


def _bench(*options: str) -> list[str]:
    before = sorted(MODEL.parent.iterdir())
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_audit.py"),
                             str(MODEL), *options], capture_output=True, text=True, check=False,
                            cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr  # 1: a target not met on a busy machine
    assert sorted(MODEL.parent.iterdir()) == before  # its report went to a temporary folder
    return result.stdout.splitlines()


@pytest.mark.parametrize(("options", "ranks"), [(["--naive", "no"], "- (not compared)"),
                                                ([], "3/3 clear, 3/3 all")])
def test_the_row_says_whether_ranks_were_compared(options, ranks):
    """Without the naive loop the ranks cell is a dash, not "0/0 clear, 0/3 all" (which read
    as no rank equal to the loop's); with it, each of the three layers is counted."""
    lines = _bench(*options)
    assert "onnxcollide's bytecode compiled first" in lines[0]
    row = next(line for line in lines if line.startswith("| mlp_dense.onnx (given)"))
    assert row.split(" | ")[-2] == ranks
