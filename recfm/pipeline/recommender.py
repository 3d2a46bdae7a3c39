"""Recommender: the pipeline around the network — tokenizer + catalog + model (+ prompts).

    rec = Recommender.from_pretrained("runs/beauty")
    users = rec.encode_users(histories)            # (n, d) user vectors
    recs = rec.recommend(history, k=10)            # item ids, scores, titles

:class:`~recfm.model.foundation.FoundationModel` takes and returns tensors; this object
turns item-id lists, raw event frames and prompt names into them with the run's own
vocabularies, and scores back into item ids and titles. A run loads without its training
data and without pickle.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, history_batches
from recfm.data.readers import ReadOptions, read_events
from recfm.data.schema import LINE, normalize_events
from recfm.errors import ConfigError, InputError, reading, shorten
from recfm.model.foundation import FoundationModel, read_vocabulary
from recfm.model.objectives import rollout_scores, window_head
from recfm.io import atomic_write_file
from recfm.pipeline.prompts import check_vectors, read_prompt, read_prompts
from recfm.runinfo import RUN_FILES, verify_manifest, write_manifest
from recfm.tokens.tokenizer import (FACET_UNK, N_RESERVED_FACET, N_RESERVED_ITEMS, UNK, Tokenizer,
                                    hour_of_week, tokenize)


RETRIEVALS = ("score", "generative")
"""How :meth:`Recommender.recommend` finds items: score every item, or decode semantic ids."""


class Recommender:
    """A foundation model with its tokenizer and catalog (see module docstring)."""

    def __init__(self, model: FoundationModel, tokenizer: Tokenizer | None = None,
                 items: pl.DataFrame | None = None, run_dir: str | Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.items = items
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.prompts: dict[str, torch.Tensor] = {}  # name → vectors, see recfm.model.prompt
        self._ids: np.ndarray | None = None  # :meth:`_id_array`, for ``_ids_n`` items
        self._ids_n = -1

    @property
    def cfg(self):
        return self.model.cfg

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "model.safetensors",
                        verify: bool = True) -> "Recommender":
        """A run directory; ``verify``: check its files against its manifest first."""
        path = Path(path)
        if verify:
            verify_manifest(path, (*RUN_FILES, weights))
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
        write_manifest(path, ("tokenizer.json", "items.parquet"))  # the model's: its own save

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

    def read_events(self, path: str | Path, mapping: dict[str, str] | None = None,
                    options: ReadOptions | None = None) -> pl.DataFrame:
        """Raw events from a file shaped like the run's training data: read with the options
        the data was prepared with (:meth:`ReadOptions.for_file`), unless ``options`` are
        given; ``mapping`` adds column names."""
        meta = self.tokenizer.meta if self.tokenizer is not None else {}
        opt = options or ReadOptions.from_dict(meta.get("input")).for_file(path)
        return read_events(path, mapping, opt).drop(LINE)

    @staticmethod
    def read_run_events(run: str | Path, path: str | Path) -> pl.DataFrame:
        """:meth:`read_events` for a run directory, without loading its model."""
        with reading(Path(run) / "tokenizer.json", "a run's tokenizer (JSON)"):
            meta = json.loads((Path(run) / "tokenizer.json").read_text()).get("meta", {})
        return read_events(path, None, ReadOptions.from_dict(meta.get("input")).for_file(path)
                           ).drop(LINE)

    def sequences(self, histories: Any, ignore_unknown: bool = False) -> pl.DataFrame:
        """Histories as a sequences frame, a list of item-id lists, or raw event frames, as a
        sequences frame. An id the catalog lacks is an error, or with ``ignore_unknown`` an
        unknown-item token."""
        if isinstance(histories, pl.DataFrame) and "item" in histories.columns:
            return histories
        if isinstance(histories, pl.DataFrame):  # raw events (canonical columns)
            return self.tokenize_events(histories)
        index = self.tokenizer.item_index() if self.tokenizer else {}
        unknown = [i for h in histories for i in h if str(i) not in index]
        if unknown and self.tokenizer and not ignore_unknown:
            raise InputError("<history>", None, "item_id", "item ids of this run's "
                             "catalog (ignore_unknown=True skips others)",
                             f"{len(unknown)} unknown, e.g. {shorten(unknown[0])}")
        rows = [[index.get(str(i), UNK) for i in h] for h in histories]
        return pl.DataFrame({"item": rows}, schema={"item": pl.List(pl.Int64)})

    def store(self, histories: Any, ignore_unknown: bool = False) -> SequenceStore:
        """:meth:`sequences` as a :class:`SequenceStore` of the model's input columns."""
        return SequenceStore(self.sequences(histories, ignore_unknown), self.model.input_columns)

    def context_store(self, context: dict[str, Any] | None = None) -> SequenceStore:
        """The history of a member with no events: one unknown-item token carrying the
        ``context`` (facet values such as ``{"device": "tv", "country": "SE"}``, and a
        ``timestamp`` in seconds), so the model predicts a first item for that context."""
        facets = self.tokenizer.facets if self.tokenizer else {}
        row = {c: FACET_UNK for c in self.model.input_columns} | {"item": UNK, "gap_bucket": 0}
        for name, value in (context or {}).items():
            if name == "timestamp":  # seconds, or milliseconds as events may give
                ts = int(value) // 1000 if int(value) > 10**11 else int(value)
                row["hour_of_week"] = int(hour_of_week(ts))
            elif name not in facets or str(value) not in facets[name]:
                expected = (f"one of {', '.join(facets[name])}" if name in facets else
                            f"a facet of this run ({', '.join(sorted(facets))}) or timestamp")
                raise InputError("<context>", None, name, expected, shorten(value))
            else:
                row[name] = N_RESERVED_FACET + facets[name].index(str(value))
        seqs = pl.DataFrame({c: [[row[c]]] for c in self.model.input_columns},
                            schema={c: pl.List(pl.Int64) for c in self.model.input_columns})
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

    def _check(self, k: int, horizon: str, retrieval: str = "score") -> None:
        if k < 1:
            raise ConfigError(f"k: expected at least 1 item, found {k}")
        if retrieval not in RETRIEVALS:
            raise ConfigError(f"retrieval: expected one of {', '.join(RETRIEVALS)}, found "
                              f"{retrieval!r}")
        if retrieval == "generative" and (self.model.generative is None or horizon != "next"):
            raise ConfigError("retrieval 'generative' needs a model trained with semantic ids "
                              "(recfm train --semantic-ids RUN) and horizon 'next'")
        if horizon == "window" and window_head(self.model.heads) == "next":
            raise ConfigError("horizon 'window': this model was trained without a future-window "
                              "or multi-token objective, so it would rank as horizon 'next'")

    @torch.no_grad()
    def recommend(self, history: Any, k: int = 10, exclude_seen: bool = True,
                  prompt: str | None = None, horizon: str = "next",
                  context: dict[str, Any] | None = None,
                  ignore_unknown: bool = False, retrieval: str = "score") -> pl.DataFrame:
        """Top-``k`` items (``rank``, ``item_id``, ``score``, titles if the catalog has them)
        for one user's history: item ids or a frame of raw events. ``prompt``: a soft
        prompt's name. ``horizon``: ``next`` item, the next events' items (``window``,
        :meth:`FoundationModel.score`), or ``rollout`` (no prompt): each item's expected
        count among the next two (:func:`recfm.model.objectives.rollout_scores`). An empty
        history is a new member's: the model's first item in ``context``
        (:meth:`context_store`). ``retrieval``: ``score`` every item, or ``generative``:
        decode the next item's semantic-id codes by beam search (a model trained with them).
        """
        self._check(k, horizon, retrieval)
        histories = history if isinstance(history, pl.DataFrame) else [list(history)]
        empty = len(histories) == 0 if isinstance(history, pl.DataFrame) else not histories[0]
        store = self.context_store(context) if empty else self.store(histories, ignore_unknown)
        if len(store) != 1:
            raise ValueError(f"recommend takes one user's history; got {len(store)} users")
        if horizon == "rollout":
            _, seen = store.history_items(np.arange(1))
            scores = self._rollout(store, seen, exclude_seen, prompt)
            if exclude_seen:
                scores[torch.from_numpy(seen)] = float("-inf")
            top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
            out = pl.DataFrame({"rank": np.arange(1, len(top.indices) + 1),
                                "item_id": [self.item_id(i) for i in top.indices.numpy()],
                                "score": top.values.numpy().astype(np.float64)})
        else:
            out = next(self._top_batches(store, np.array([""]), k, exclude_seen, prompt,
                                         horizon, 1, retrieval)).drop("user_id")
        if self.items is not None and "title" in self.items.columns:
            out = out.join(self.items.select("item_id", "title"), on="item_id", how="left")
        return out

    def recommend_batches(self, histories: Any, k: int = 10, exclude_seen: bool = True,
                          prompt: str | None = None, horizon: str = "next",
                          batch_size: int = 256, retrieval: str = "score"
                          ) -> Iterator[pl.DataFrame]:
        """:meth:`recommend` for many users (forms: :meth:`sequences`; a frame's ``user_id``
        names them, else their position), one frame of ``user_id``, ``rank``, ``item_id``,
        ``score`` per batch of ``batch_size`` users, in order: nothing of the size users ×
        items is held at once (``next``: :meth:`FoundationModel.top_items`)."""
        if horizon not in ("next", "window"):
            raise ConfigError(f"horizon: expected next or window for many users, found "
                              f"{horizon!r} (rollout takes one history: recommend)")
        self._check(k, horizon, retrieval)
        seqs = self.sequences(histories)
        store = SequenceStore(seqs, self.model.input_columns)
        users = (seqs["user_id"].cast(pl.Utf8) if "user_id" in seqs.columns
                 else pl.Series("user_id", range(len(store))).cast(pl.Utf8)).to_numpy()
        return self._top_batches(store, users, k, exclude_seen, prompt, horizon, batch_size,
                                 retrieval)

    def _id_array(self) -> np.ndarray:
        """(n_items,) catalog ids by vocabulary index (reserved: ""), built once per
        vocabulary size rather than on every call."""
        n = len(self.tokenizer.item_ids) if self.tokenizer else self.cfg.n_items
        if self._ids is None or self._ids_n != n:
            self._ids_n = n
            self._ids = np.asarray([""] * N_RESERVED_ITEMS + list(self.tokenizer.item_ids)
                                   if self.tokenizer else range(n)).astype(str)
        return self._ids

    @torch.no_grad()
    def _top_batches(self, store: SequenceStore, users: np.ndarray, k: int, exclude_seen: bool,
                     prompt: str | None, horizon: str, batch_size: int,
                     retrieval: str = "score") -> Iterator[pl.DataFrame]:
        """The top-``k`` frames of :meth:`recommend_batches` for the rows of ``store``
        (``users``: their ids)."""
        ids = self._id_array()
        model = self.model
        model.eval()
        extra = {"soft_prompt": self.prompt_vectors(prompt)} if prompt is not None else {}
        for rows, batch in history_batches(store, model.context_len, batch_size):
            vec = model.last_hidden({**batch, **extra})
            seen = store.history_items(rows) if exclude_seen else None
            if retrieval == "generative":
                exclude = torch.zeros(vec.size(0), self.cfg.n_items, dtype=torch.bool)
                if seen is not None:
                    exclude[torch.from_numpy(seen[0]), torch.from_numpy(seen[1])] = True
                top_i, top_s = model.generative_top(vec, k, exclude)
            elif horizon == "next":
                top_s, top_i = model.top_items(vec, min(k, self.cfg.n_items), seen=seen)
            else:
                scores = model.score(vec, horizon)
                if seen is not None:
                    scores[torch.from_numpy(seen[0]), torch.from_numpy(seen[1])] = float("-inf")
                top_s, top_i = torch.topk(scores, min(k, scores.shape[1]))
            b = np.nonzero(torch.isfinite(top_s).numpy())  # fewer than k items left
            yield pl.DataFrame({"user_id": users[rows][b[0]], "rank": b[1] + 1,
                                "item_id": ids[top_i.numpy()[b]],
                                "score": top_s.numpy()[b].astype(np.float64)})

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
