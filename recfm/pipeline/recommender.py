"""Recommender: the pipeline around the network — tokenizer + catalog + model (+ prompts).

    rec = Recommender.from_pretrained("runs/beauty")
    users = rec.encode_users(histories)            # (n, d) user vectors
    recs = rec.recommend(history, k=10)            # item ids, scores, titles

:class:`~recfm.model.foundation.FoundationModel` takes tensors and returns tensors; this
object turns what users have — item-id lists, raw event frames, prompt names — into those
tensors with the run's own vocabularies, and the model's scores back into item ids and
titles. A run directory holds ``config.json``, ``model.safetensors`` (the network),
``tokenizer.json`` and ``items.parquet`` (the vocabularies) and ``prompts/``; it loads
without the training data and without pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, history_batches
from recfm.data.schema import normalize_events
from recfm.errors import ConfigError
from recfm.model.foundation import FoundationModel, read_vocabulary
from recfm.model.objectives import rollout_scores
from recfm.io import atomic_write_file
from recfm.pipeline.prompts import check_vectors, read_prompt, read_prompts
from recfm.runinfo import RUN_FILES, verify_manifest, write_manifest
from recfm.tokens.tokenizer import N_RESERVED_ITEMS, UNK, Tokenizer, tokenize


class Recommender:
    """A foundation model with its tokenizer and catalog (see module docstring)."""

    def __init__(self, model: FoundationModel, tokenizer: Tokenizer | None = None,
                 items: pl.DataFrame | None = None, run_dir: str | Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.items = items
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.prompts: dict[str, torch.Tensor] = {}  # name → vectors, see recfm.model.prompt

    @property
    def cfg(self):
        return self.model.cfg

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "model.safetensors",
                        verify: bool = True) -> "Recommender":
        """A run directory; ``verify``: check its files against its manifest first."""
        path = Path(path)
        if verify:
            verify_manifest(path, tuple(dict.fromkeys((*RUN_FILES, weights))))
        tok, items = read_vocabulary(path)
        return cls(FoundationModel.load(path, tok, items, weights), tok, items, path)

    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """The model's files, then ``tokenizer.json`` and ``items.parquet``, each atomic, and
        last the manifest of their SHA-256."""
        path = Path(path)
        self.model.save_pretrained(path, extra)
        if self.tokenizer is not None:
            self.tokenizer.save(path / "tokenizer.json")
        if self.items is not None:
            atomic_write_file(path / "items.parquet", self.items.write_parquet)
        write_manifest(path, RUN_FILES)

    # ------------------------------------------------------------------ inputs → tensors

    def item_id(self, idx: int) -> str:
        """The catalog id of vocabulary index ``idx`` (reserved indices have none)."""
        if self.tokenizer is None:
            return str(idx)
        return self.tokenizer.item_ids[idx - N_RESERVED_ITEMS]

    def tokenize_events(self, events: pl.DataFrame) -> pl.DataFrame:
        """Raw events of (possibly new) users → token sequences with this run's vocabularies."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: load it with from_pretrained")
        ev = normalize_events(events, "<events>")
        return tokenize(ev, self.tokenizer.config, fitted=self.tokenizer,
                        has_time=self.tokenizer.has_time).tokens

    def store(self, histories: Any) -> SequenceStore:
        """Histories as a sequences frame, a list of item-id lists, or raw event frames."""
        if isinstance(histories, pl.DataFrame) and "item" in histories.columns:
            seqs = histories
        elif isinstance(histories, pl.DataFrame):  # raw events (canonical columns)
            seqs = self.tokenize_events(histories)
        else:
            index = self.tokenizer.item_index() if self.tokenizer else {}
            rows = [[index.get(str(i), UNK) for i in h] for h in histories]
            seqs = pl.DataFrame({"item": rows}, schema={"item": pl.List(pl.Int64)})
        return SequenceStore(seqs, self.model.input_columns)

    # ------------------------------------------------------------------ users → vectors

    @torch.no_grad()
    def encode_users(self, histories: Any, pooling: str | None = None,
                     batch_size: int = 256, prompt: str | None = None) -> torch.Tensor:
        """(n, d) user vectors of histories (forms: :meth:`store`). ``pooling``: as
        :meth:`FoundationModel.last_hidden` takes it; ``prompt``: a soft prompt's name."""
        return self.encode_store(self.store(histories), pooling, batch_size, prompt)

    @torch.no_grad()
    def encode_store(self, store: SequenceStore, pooling: str | None = None,
                     batch_size: int = 256, prompt: str | None = None) -> torch.Tensor:
        model = self.model
        model.eval()
        extra = {"soft_prompt": self.prompt_vectors(prompt)} if prompt is not None else {}
        out = [model.last_hidden({**b, **extra}, pooling) for _, b in
               history_batches(store, model.context_len, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, model.cfg.d_model)

    # ------------------------------------------------------------------ soft prompts

    def add_prompt(self, name: str, vectors: torch.Tensor) -> None:
        """Use soft-prompt ``vectors`` for ``prompt=name`` (replaces one so named)."""
        self.prompts[name] = check_vectors(vectors, self.cfg, name)

    def load_prompts(self, path: str | Path | None = None) -> list[str]:
        """(Re)read every prompt of the run's ``prompts/`` (or ``path``); returns all names."""
        self.prompts.update(read_prompts(self.run_dir, self.cfg, path))
        return sorted(self.prompts)

    def prompt_vectors(self, name: str) -> torch.Tensor:
        """The vectors of prompt ``name``, read from the run on first use."""
        if name not in self.prompts:
            self.prompts[name] = read_prompt(self.run_dir, self.cfg, name, list(self.prompts))
        return self.prompts[name]

    # ------------------------------------------------------------------ histories → ids

    @torch.no_grad()
    def recommend(self, history: Any, k: int = 10, exclude_seen: bool = True,
                  prompt: str | None = None, horizon: str = "next") -> pl.DataFrame:
        """Top-``k`` items (``rank``, ``item_id``, ``score``, titles if the catalog has them)
        for one user's history: item ids or a frame of raw events. ``prompt``: a soft
        prompt's name. ``horizon``: ``next`` item, the next events' items (``window``,
        :meth:`FoundationModel.score`), or ``rollout`` (no prompt): each item's expected
        count among the next two (:func:`recfm.model.objectives.rollout_scores`).
        """
        if k < 1:
            raise ConfigError(f"k: expected at least 1 item, found {k}")
        histories = history if isinstance(history, pl.DataFrame) else [list(history)]
        store = self.store(histories)
        if len(store) != 1:
            raise ValueError(f"recommend takes one user's history; got {len(store)} users")
        _, seen = store.history_items(np.arange(1))
        if horizon == "rollout":
            scores = self._rollout(store, seen, exclude_seen, prompt)
        else:
            user = self.encode_store(store, prompt=prompt)
            scores = self.model.score(user, horizon)[0]
        if exclude_seen:
            scores[torch.from_numpy(seen)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        ids = [self.item_id(i) for i in top.indices.numpy()]
        out = pl.DataFrame({"rank": np.arange(1, k + 1), "item_id": ids,
                            "score": top.values.numpy().astype(np.float64)})
        if self.items is not None and "title" in self.items.columns:
            out = out.join(self.items.select("item_id", "title"), on="item_id", how="left")
        return out

    def _rollout(self, store: SequenceStore, seen: np.ndarray, exclude_seen: bool,
                 prompt: str | None) -> torch.Tensor:
        """(n_items,) rollout scores of the one history in ``store``."""
        if prompt is not None:
            raise ValueError("the rollout horizon does not take a prompt")
        model = self.model
        model.eval()
        _, batch = next(history_batches(store, model.context_len, 1))
        exclude = torch.zeros(1, model.cfg.n_items, dtype=torch.bool)
        if exclude_seen:
            exclude[0, torch.from_numpy(seen)] = True
        return rollout_scores(model, batch, exclude)[0]
