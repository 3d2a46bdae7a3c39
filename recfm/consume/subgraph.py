"""The foundation model as a subgraph (an ``nn.Module``) inside a downstream model.

:class:`FoundationEncoder`: token batches → (B, d) user vectors, frozen or with the top
``n`` blocks trainable. :func:`save_downstream` / :func:`load_downstream` store the
downstream weights and a reference (path, SHA-256) to the foundation run; frozen
foundation weights are never duplicated. Example and files: docs/guide/finetune.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recfm import __version__
from recfm.tokens.batching import SequenceStore, history_batches
from recfm.errors import InputError, RecfmError
from recfm.io import atomic_dir
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender
from recfm.runinfo import MANIFEST, RUN_FILES, weights_sha256

log = logging.getLogger(__name__)

DOWNSTREAM_WEIGHTS = "downstream.safetensors"
DOWNSTREAM_CONFIG = "downstream.json"


def trainable_modules(fm: FoundationModel, trainable_layers: int | None) -> list[nn.Module]:
    """The parts of ``fm`` that train: all (None), none (0), or the top n blocks, ln_f, heads."""
    n_blocks = len(fm.backbone.blocks)
    if trainable_layers is None:
        return [fm]
    if not 0 <= trainable_layers <= n_blocks:
        raise ValueError(f"trainable_layers must be in 0..{n_blocks} (the model has {n_blocks} "
                         f"blocks), got {trainable_layers}")
    if trainable_layers == 0:
        return []
    return [*fm.backbone.blocks[n_blocks - trainable_layers:], fm.backbone.ln_f, fm.heads]


def freeze(fm: FoundationModel, trainable_layers: int | None) -> list[nn.Module]:
    """Set ``requires_grad`` on ``fm`` for :func:`trainable_modules`; returns them."""
    keep = trainable_modules(fm, trainable_layers)
    fm.requires_grad_(False)
    for m in keep:
        m.requires_grad_(True)
    return keep


class FoundationEncoder(nn.Module):
    """(B, T) token batches → (B, d) user vectors of a (partly) frozen foundation model.

    ``trainable_layers``: None trains everything; n ≥ 0 freezes all but the top n blocks
    (frozen parts stay in eval mode: no dropout). ``pooling``: as
    :meth:`FoundationModel.last_hidden` takes it (default: the one trained with).

    Example:
        >>> enc = FoundationEncoder.from_pretrained("runs/base")          # doctest: +SKIP
        >>> enc(enc.batch([["i0001", "i0042"], ["i0100"]])).shape          # doctest: +SKIP
        torch.Size([2, 64])
    """

    def __init__(self, rec: Recommender, trainable_layers: int | None = 0,
                 pooling: str | None = None, run: str | Path | None = None) -> None:
        super().__init__()
        fm = rec.model
        self.fm = fm
        self.rec = rec  # the pipeline around fm: item ids, raw events
        self.trainable_layers = trainable_layers
        self.pooling = pooling
        self.run = Path(run).resolve() if run is not None else None
        self.run_sha256 = weights_sha256(run) if run is not None else None
        self._trainable = freeze(fm, trainable_layers)
        self.train(False)

    @classmethod
    def from_pretrained(cls, run: str | Path, trainable_layers: int | None = 0,
                        pooling: str | None = None) -> "FoundationEncoder":
        return cls(Recommender.from_pretrained(run), trainable_layers, pooling, run)

    @classmethod
    def from_downstream(cls, path: str | Path) -> "FoundationEncoder":
        """The encoder a saved downstream model was built on (its copy, or the run it names)."""
        path = Path(path)
        meta = _read_meta(path)
        ref = meta["foundation"]
        run = path / "foundation" if ref.get("copied") else Path(ref["run"])
        if not (run / "model.safetensors").is_file():
            raise RecfmError(f"{path / DOWNSTREAM_CONFIG}: its foundation run {run} is not "
                             "there (save with copy_foundation=True to keep a copy)")
        sha = weights_sha256(run)
        if sha != ref["sha256"]:
            raise RecfmError(f"{path / DOWNSTREAM_CONFIG}: the foundation run {run} changed "
                             f"since this model was saved (sha256 {sha[:12]}…, expected "
                             f"{ref['sha256'][:12]}…)")
        return cls.from_pretrained(run, ref["trainable_layers"], ref["pooling"])

    @property
    def dim(self) -> int:
        return self.fm.cfg.d_model

    def train(self, mode: bool = True) -> "FoundationEncoder":
        """Trainable parts follow ``mode``; frozen parts stay in eval mode."""
        super().train(mode)
        if self.trainable_layers is not None:
            self.fm.train(False)
            for m in self._trainable:
                m.train(mode)
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) right-padded token tensors → (B, d) user vectors."""
        return self.fm.last_hidden(batch, self.pooling)

    def item_table(self) -> torch.Tensor:
        """(n_items, d) item vectors the foundation model scores with."""
        return self.fm.item_table()

    def batch(self, histories: Any) -> dict[str, torch.Tensor]:
        """One (B, T) batch of the last ``max_len`` tokens of each history (lists of item
        ids, a sequences frame, or raw events; see :meth:`Recommender.store`)."""
        store = self.rec.store(histories)
        return next(history_batches(store, self.fm.cfg.max_len, max(len(store), 1)))[1]

    def store(self, frame: Any) -> SequenceStore:
        """A sequences frame (e.g. a split's ``valid``) as a store of this model's inputs."""
        return SequenceStore(frame, self.fm.input_columns)

    def frozen_keys(self, prefix: str = "") -> set[str]:
        """State-dict keys (under ``prefix``) that come from the foundation run unchanged."""
        trainable = {id(p) for p in self.fm.parameters() if p.requires_grad}
        keys = set()
        for name, p in self.fm.named_parameters():
            if id(p) not in trainable:
                keys.add(f"{prefix}fm.{name}")
        for name, _ in self.fm.named_buffers():
            keys.add(f"{prefix}fm.{name}")
        return keys


def _encoder_of(model: nn.Module) -> tuple[str, FoundationEncoder]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, FoundationEncoder)]
    if len(found) != 1:
        raise ValueError(f"a downstream model holds exactly one FoundationEncoder; found "
                         f"{len(found)}")
    name, enc = found[0]
    return (f"{name}." if name else ""), enc


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / DOWNSTREAM_CONFIG
    if not file.is_file():
        raise InputError(str(file), None, None, "a saved downstream model", "nothing at that path")
    meta = json.loads(file.read_text())
    if "foundation" not in meta:
        raise InputError(str(file), None, "foundation", "a foundation reference", "none")
    return meta


def save_downstream(model: nn.Module, path: str | Path, config: dict[str, Any] | None = None,
                    copy_foundation: bool = False, overwrite: bool = False) -> None:
    """Write ``model``'s own weights and its foundation reference to ``path`` (atomically;
    ``overwrite``: replace one saved there). ``config``: JSON to rebuild ``model`` with."""
    prefix, enc = _encoder_of(model)
    if enc.run is None:
        raise ValueError("the FoundationEncoder was not loaded from a run directory "
                         "(use FoundationEncoder.from_pretrained)")
    frozen = enc.frozen_keys(prefix)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if k not in frozen}
    meta = {"foundation": {"run": str(enc.run), "sha256": enc.run_sha256,
                           "trainable_layers": enc.trainable_layers, "pooling": enc.pooling,
                           "copied": copy_foundation, "prefix": prefix},
            "config": config or {}, "recfm_version": __version__,
            "weights": sorted(state)}
    with atomic_dir(path, "downstream", overwrite, (enc.run,)) as tmp:
        save_file(state, str(tmp / DOWNSTREAM_WEIGHTS), metadata={"recfm_version": __version__})
        (tmp / DOWNSTREAM_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if copy_foundation:
            (tmp / "foundation").mkdir()
            for name in (*RUN_FILES, MANIFEST):
                if (enc.run / name).is_file():
                    shutil.copy2(enc.run / name, tmp / "foundation" / name)


def load_downstream(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by :func:`save_downstream` into a freshly built ``model``, whose
    encoder has the same foundation weights (:meth:`FoundationEncoder.from_downstream`)."""
    path = Path(path)
    meta = _read_meta(path)
    prefix, enc = _encoder_of(model)
    if enc.run_sha256 != meta["foundation"]["sha256"]:
        saved = meta["foundation"]["sha256"]
        raise RecfmError(f"{path}: saved on foundation weights {saved[:12]}…, the model's "
                         f"encoder has {str(enc.run_sha256)[:12]}…")
    state = load_file(str(path / DOWNSTREAM_WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = enc.frozen_keys(prefix)
    really_missing = [k for k in missing if k not in frozen]
    if unexpected or really_missing:
        raise RecfmError(f"{path / DOWNSTREAM_WEIGHTS}: does not fit this model (missing "
                         f"{really_missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    return model
