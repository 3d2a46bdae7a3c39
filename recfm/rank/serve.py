"""The ranker as a second pass: rerank a first pass's candidates for live requests (the
serving engine with ``ServeConfig.ranker``, ``recfm rank serve-hook``; docs/guide/ranker.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from recfm.content.embedders import make_embedder
from recfm.errors import InputError
from recfm.rank.data import COUNTRY_LANGUAGE, RankData, check_task, require_files
from recfm.rank.features import featurize, item_tables
from recfm.rank.lexical import BM25Index
from recfm.rank.model import UnifiedRanker

SURFACE_TASK = {"home": "home", "kids": "kids", "search": "search",
                "more-like-this": "more-like-this", "more_like_this": "more-like-this"}


class RankerHook:
    """A loaded ranker plus the item tables its features need (see module docstring)."""

    def __init__(self, path: str | Path, embedder=None) -> None:
        path = Path(path)
        self.path = path
        self.model = UnifiedRanker.load(path)
        require_files(path, ("items.parquet",),
                      "the ranker's item table (recfm rank train writes it)")
        self.items = pl.read_parquet(path / "items.parquet")
        self.embedder = embedder or make_embedder(self.model.cfg.embedder)
        m = self.model
        popularity = np.expm1(m.item_dense[:, 0].numpy().astype(np.float64))
        self.tables = item_tables(self.items, popularity, m.item_fm.numpy(), m.vocab,
                                  self.embedder)
        self.bm25 = BM25Index(self.tables.titles, [sorted(g) for g in self.tables.genres])
        self.n_items = m.n_items
        self.n_candidates = 30

    def rerank(self, user_vec: np.ndarray, candidates: list[list[int]], tasks: list[str],
               queries: list[str | None] | None = None, countries: list[str] | None = None,
               devices: list[str] | None = None, anchors: list[int] | None = None,
               knob: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request: its candidates (item indices) in the ranker's order, and their scores.
        ``user_vec``: (R, d) FM user vectors; ``tasks``: one of :data:`~recfm.rank.data.TASKS`
        each; ``knob``: personalization of every request (None: the ranker's per task)."""
        R = len(candidates)
        for t in tasks:
            check_task(t, "request")
        for c in candidates:
            bad = [i for i in c if not 0 <= int(i) < self.n_items]
            if bad:
                raise InputError("request", None, "candidates",
                                 f"item indices below {self.n_items}", repr(bad[0]))
        countries = countries or ["unknown"] * R
        frame = pl.DataFrame({
            "request": np.arange(R), "task": tasks, "country": countries,
            "language": [COUNTRY_LANGUAGE.get(c, "unknown") for c in countries],
            "device": devices or ["unknown"] * R,
            "query": pl.Series(queries or [None] * R, dtype=pl.Utf8),
            "anchor": np.asarray(anchors if anchors is not None else [-1] * R, dtype=np.int64),
            "candidates": pl.Series([[int(i) for i in c] for c in candidates],
                                    dtype=pl.List(pl.Int64)),
            "label_pos": np.full(R, -1, dtype=np.int64),
        })
        data = RankData(frame, self.items, np.asarray(user_vec, dtype=np.float32),
                        self.tables.fm, np.zeros(self.n_items))
        b = featurize(data, self.tables, self.model.vocab, self.embedder, self.bm25)
        with torch.no_grad():
            k = None if knob is None else torch.full((R,), float(knob))
            scores = self.model(b, k).numpy()  # (R, N)
        out = []
        for i, c in enumerate(candidates):
            s = scores[i, :len(c)]
            order = np.argsort(-s, kind="stable")
            out.append((np.asarray(c, dtype=np.int64)[order], s[order]))
        return out

    def rerank_found(self, user_vec: np.ndarray, found: list[tuple[np.ndarray, np.ndarray]],
                     surfaces: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The serving engine's second pass: ``found`` as the index returns it, one task per
        surface (unknown surfaces rank as home)."""
        cands = [np.asarray(idx[:self.n_candidates]).tolist() for idx, _ in found]
        tasks = [SURFACE_TASK.get(s, "home") for s in surfaces]
        return self.rerank(user_vec, cands, tasks)
