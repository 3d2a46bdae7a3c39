"""Serve configs: the example TOML loads, typos are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfm.errors import InputError
from recfm.serve.config import SurfaceConfig, load_serve_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve.toml"


def test_example_config_loads():
    cfg = load_serve_config(EXAMPLE)
    assert cfg.retrieval == "auto" and cfg.hnsw_ef_search == 2048 and cfg.hnsw_m == 48
    assert cfg.surfaces["kids"] == SurfaceConfig(kids_only=True, available_only=True)


def test_unknown_keys_are_named(tmp_path):
    bad = tmp_path / "serve.toml"
    bad.write_text("[serve]\nretreival = 'exact'\n")
    with pytest.raises(InputError, match="retreival"):
        load_serve_config(bad)
    bad.write_text("[serve.surfaces.kids]\nkids_onyl = true\n")
    with pytest.raises(InputError, match="kids_onyl"):
        load_serve_config(bad)


def test_serve_cli_refuses_a_missing_run_in_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "recfm", "serve", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "config.json" in r.stderr and "nothing at that path" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
