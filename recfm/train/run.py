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
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recfm.errors import RecfmError, reading
from recfm.io import full_disk_error

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
        """Write ``.checkpoint.tmp``, move ``checkpoint`` aside to ``.checkpoint.old``, rename
        the new one into place, remove the old one. A crash at any point leaves a state
        :func:`recover_interrupted_checkpoint` turns back into one whole checkpoint."""
        run = self.dir.parent
        tmp, old = run / ".checkpoint.tmp", run / ".checkpoint.old"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                      str(tmp / "model.safetensors"))
            checkpoint_step("weights written")
            torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                        **state}, tmp / "state.pt")
            for f in tmp.iterdir():  # on disk before the rename that makes them the checkpoint
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        except Exception as e:  # a full disk: no half-written checkpoint is left behind
            full = full_disk_error(e, tmp, self.dir)
            if full is not None:
                _remove(tmp)
                raise full from None
            raise
        checkpoint_step("new checkpoint written")
        if self.dir.exists():
            os.replace(self.dir, old)
            checkpoint_step("old checkpoint moved aside")
        os.replace(tmp, self.dir)
        checkpoint_step("new checkpoint in place")
        _remove(old)

    def load(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
        with reading(self.dir / "state.pt", "a training checkpoint (delete the checkpoint "
                     "folder to start over)"):
            state = torch.load(self.dir / "state.pt", weights_only=True)
            opt.load_state_dict(state.pop("optimizer"))
            torch.set_rng_state(state.pop("torch_rng"))
        with reading(self.dir / "model.safetensors", "the checkpoint's weights (delete the "
                     "checkpoint folder to start over)"):
            model.load_state_dict(load_file(str(self.dir / "model.safetensors")))
        return state


SAVE_STEPS = ("weights written", "new checkpoint written", "old checkpoint moved aside",
              "new checkpoint in place", "old checkpoint partly removed")


KILL_AT = "RECFM_KILL_AT"
"""Fault injection: ``RECFM_KILL_AT="<step>@<n>"`` SIGKILLs the process the n-th time it
reaches save step ``<step>`` (``benchmarks/reliability.py`` kills at every step)."""
_reached: dict[str, int] = {}


def checkpoint_step(name: str) -> None:
    """A named point of :meth:`Checkpointer.save` (``SAVE_STEPS``), where ``KILL_AT`` kills."""
    step, _, n = os.environ.get(KILL_AT, "").rpartition("@")
    if step == name:
        _reached[name] = _reached.get(name, 0) + 1
        if str(_reached[name]) == n:
            os.kill(os.getpid(), signal.SIGKILL)


def _remove(folder: Path) -> None:
    """Delete a folder of checkpoint files, one file at a time (a crash may stop it)."""
    if not folder.exists():
        return
    for i, p in enumerate(sorted(folder.iterdir())):
        p.unlink()
        if i == 0:
            checkpoint_step("old checkpoint partly removed")
    folder.rmdir()


def recover_interrupted_checkpoint(run: Path) -> None:
    """Turn what a crash inside :meth:`Checkpointer.save` left back into one checkpoint:
    the old one while the new one was not yet in place, else the new one; leftovers go."""
    ckpt, old, tmp = run / "checkpoint", run / ".checkpoint.old", run / ".checkpoint.tmp"
    if not ckpt.exists() and old.exists():
        os.replace(old, ckpt)
    _remove(old)
    _remove(tmp)


def open_checkpoint(run: Path, ckpt, resume: bool, model: nn.Module,
                    opt: torch.optim.Optimizer) -> dict | None:
    """Create ``run``; the saved state when resuming (None: a new run, never over one)."""
    run.mkdir(parents=True, exist_ok=True)
    recover_interrupted_checkpoint(run)
    if resume and ckpt.exists():
        return ckpt.load(model, opt)
    refuse_existing_run(run, resume)
    return None


def refuse_existing_run(run: Path, resume: bool) -> None:
    """A new run never starts over an existing one (one with a checkpoint)."""
    if (run / "checkpoint").exists() and not resume:
        raise RecfmError(f"{run}: a run already exists here; pass --resume to continue it "
                         "or choose another --out")


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
