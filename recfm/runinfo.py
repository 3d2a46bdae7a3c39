"""Facts about a saved run read from its files alone: its version tag and its training data.

A plain helper at the bottom layer (standard library only, no torch), so that every layer
above — store, serve, adapt, the CLI — reads a run's identity the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def weights_sha256(run: str | Path) -> str:
    """SHA-256 of a run's ``model.safetensors`` (what prompts and downstream models were
    built on)."""
    h = hashlib.sha256()
    with (Path(run) / "model.safetensors").open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_version(run: Path) -> str:
    """``<run name>@<sha256 of config.json and the weights, 12 hex>``."""
    h = hashlib.sha256((run / "config.json").read_bytes())
    with open(run / "model.safetensors", "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return f"{run.name}@{h.hexdigest()[:12]}"


def run_data_dir(run: str | Path, own: bool = False) -> Path | None:
    """The prepared dataset a run (or the run it was derived from) was trained on, if present.

    An incremental run's own data holds the recent users only, so for it this follows
    ``init_from`` back to the run whose data holds every history (``own``: its own data).
    Runs record absolute paths; an older run's relative path is tried against the working
    directory, then against each folder above the run.
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
