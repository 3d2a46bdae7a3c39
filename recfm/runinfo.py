"""Facts about a saved run read from its files alone: its version tag and its training data.

A plain helper at the bottom layer (standard library only, no torch), so that every layer
above — store, serve, adapt, the CLI — reads a run's identity the same way; and the run's
``manifest.json``: the SHA-256 of each file, written on save and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from recfm.errors import InputError, reading
from recfm.io import atomic_write_json


RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "items.parquet")
MANIFEST = "manifest.json"
NO_VERIFY = "RECFM_NO_VERIFY"
"""Set (non-empty) in the environment: no manifest is checked (``recfm --no-verify``)."""


def files_sha256(*paths: Path) -> str:
    """SHA-256 over the bytes of ``paths`` in order, read in blocks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_sha256(run: str | Path) -> str:
    """SHA-256 of a run's ``model.safetensors`` (what prompts and downstream models need)."""
    return files_sha256(Path(run) / "model.safetensors")


def model_version(run: Path) -> str:
    """``<run name>@<sha256 of config.json and the weights, 12 hex>``."""
    return f"{run.name}@{files_sha256(run / 'config.json', run / 'model.safetensors')[:12]}"


def write_manifest(run: Path, names: tuple[str, ...] | list[str]) -> None:
    """Record the SHA-256 of the files ``names`` of ``run`` in its ``manifest.json`` (beside
    those recorded before); written after the files it vouches for."""
    path = run / MANIFEST
    try:
        sums = json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        sums = {}  # none yet, or one a crash damaged: the files are hashed anew
    sums.update({n: files_sha256(run / n) for n in names if (run / n).is_file()})
    atomic_write_json(path, {"format": 1, "sha256": dict(sorted(sums.items()))})


def verify_manifest(run: Path, names: tuple[str, ...] | list[str]) -> None:
    """An InputError naming the first of ``names`` whose bytes differ from the SHA-256 the
    run's manifest records (a run saved before manifests has none: nothing to check)."""
    path = run / MANIFEST
    if not path.is_file() or os.environ.get(NO_VERIFY):
        return
    with reading(path, "a run manifest: JSON with the sha256 of each file"):
        sums = json.loads(path.read_text())["sha256"]
    for name in dict.fromkeys(names):
        if name in sums and (run / name).is_file() and files_sha256(run / name) != sums[name]:
            raise InputError(str(run / name), None, None, f"the bytes whose SHA-256 {MANIFEST} "
                             "records (recfm --no-verify loads it anyway)",
                             "other bytes: the file is damaged or was changed after the run "
                             "was saved")


def run_data_dir(run: str | Path, own: bool = False) -> Path | None:
    """The prepared dataset a run was trained on, if present. An incremental run's data
    holds recent users only: this follows ``init_from`` back (``own``: its own data). An
    older run's relative path is tried against the working directory, then each folder above.
    """
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if not own and meta.get("incremental") and meta.get("init_from"):
        base = _find(meta["init_from"], run, "config.json")
        return run_data_dir(base) if base is not None else None
    data = meta.get("data", {}).get("path")
    return _find(data, run, "tokens.parquet") if data else None


def _find(recorded: str, run: str | Path, marker: str) -> Path | None:
    """The folder holding ``marker`` at a path recorded in ``run``'s config.json, if any."""
    path = Path(recorded)
    above = [] if path.is_absolute() else [p / path for p in Path(run).resolve().parents]
    return next((p for p in [path, *above] if (p / marker).is_file()), None)
