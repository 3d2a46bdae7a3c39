"""The files of a run directory that training writes: checkpoint, metrics log, provenance.

    checkpoint/model.safetensors, checkpoint/state.pt   the last checkpoint (exact resume)
    metrics.csv, tb/       one row per validation (and TensorBoard events)

Writes are atomic or appended and fsync-ed: a crash never leaves a half-written file that
a resume would read as whole.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recfm.errors import RecfmError

log = logging.getLogger(__name__)


def data_fingerprint(path: Path) -> str:
    """sha256 (16 hex) of a prepared dataset's token, item and tokenizer files."""
    h = hashlib.sha256()
    for name in ("tokens.parquet", "items.parquet", "tokenizer.json"):
        p = path / name
        if p.is_file():
            with p.open("rb") as f:  # in blocks: the token file may not fit in memory
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU, cores, GPU and versions: recorded in a run's ``config.json``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


class Checkpointer:
    """Atomic save / load of everything needed to resume exactly."""

    def __init__(self, run: Path) -> None:
        self.dir = run / "checkpoint"

    def exists(self) -> bool:
        return (self.dir / "state.pt").is_file()

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        tmp = self.dir.parent / ".checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    **state}, tmp / "state.pt")
        # swap the directory in one rename; the old one is removed after
        old = self.dir.parent / ".checkpoint.old"
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        if old.exists():
            for p in old.iterdir():
                p.unlink()
            old.rmdir()

    def load(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
        state = torch.load(self.dir / "state.pt", weights_only=True)
        model.load_state_dict(load_file(str(self.dir / "model.safetensors")))
        opt.load_state_dict(state.pop("optimizer"))
        torch.set_rng_state(state.pop("torch_rng"))
        return state


def recover_interrupted_checkpoint(run: Path) -> None:
    """A crash between the two renames of Checkpointer.save leaves only .checkpoint.old."""
    ckpt, old = run / "checkpoint", run / ".checkpoint.old"
    if not ckpt.exists() and old.exists():
        os.replace(old, ckpt)


def open_checkpoint(run: Path, ckpt, resume: bool, model: nn.Module,
                    opt: torch.optim.Optimizer) -> dict | None:
    """Create ``run``; the saved state when resuming (None: a new run). Refuses to start a
    new run over an existing one."""
    run.mkdir(parents=True, exist_ok=True)
    recover_interrupted_checkpoint(run)
    if resume and ckpt.exists():
        return ckpt.load(model, opt)
    if (run / "checkpoint").exists() and not resume:
        raise RecfmError(f"{run}: a run already exists here; pass --resume to continue it "
                         "or choose another --out")
    return None


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one row (a header first for a new file), flushed to disk."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_csv(path: Path, column: str, keep_below: float) -> None:
    """Drop rows whose ``column`` is ≥ ``keep_below`` (logged before a crash, redone on resume)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if float(r[column]) < keep_below]
    if len(keep) == len(rows):
        return
    path.unlink()
    for r in keep:
        append_csv(path, r)


class MetricsLog:
    """``metrics.csv`` and, when asked for and installed, TensorBoard events in ``tb/``."""

    def __init__(self, run: Path, tensorboard: bool) -> None:
        self.path = run / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:  # tensorboard is optional at run time: imported only when asked for
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.csv only")

    def write(self, row: dict[str, Any], index: str) -> None:
        """One row; TensorBoard gets every column but ``index`` at step ``row[index]``."""
        append_csv(self.path, row)
        if self.writer is not None:
            for k, v in row.items():
                if k != index:
                    self.writer.add_scalar(k, v, row[index])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
