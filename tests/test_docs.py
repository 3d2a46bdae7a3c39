"""The documentation site builds with no warning (`mkdocs build --strict`): every page in
the navigation, every internal link and every API reference entry resolves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_site_builds_strict(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "encode_users" in (tmp_path / "site" / "reference" / "pipeline" / "index.html"
                              ).read_text()
