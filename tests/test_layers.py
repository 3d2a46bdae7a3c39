"""The import contract of pyproject.toml ([tool.importlinter]): layers, no cycles.

A module may import only from the layers below its own (recfm.cli at the top, the plain
helpers at the bottom), and no package's modules import each other in a cycle.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_keep_the_layers_and_have_no_cycles():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
