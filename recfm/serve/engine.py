"""The serving engine: one loaded model version and everything derived from it.

An :class:`Engine` resolves requests into :class:`Query` objects, encodes them through the
user-state cache and retrieves items. It knows nothing about HTTP; a hot reload builds a new
engine beside the old one and swaps the reference. The network is used only through
:class:`~recfm.model.foundation.FoundationModel`'s public methods.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore
from recfm.errors import InputError, RecfmError
from recfm.pipeline import Recommender
from recfm.rank.serve import RankerHook
from recfm.pipeline.histories import history_sources, known_histories
from recfm.runinfo import model_version, run_data_dir
from recfm.serve.config import ServeConfig
from recfm.serve.errors import NotFound, Unprocessable
from recfm.serve.index import ExactIndex, build_index
from recfm.serve.rules import Filters, ItemRules
from recfm.serve.state import CachedState, UserStateCache
from recfm.serve.step import OneTokenStep
from recfm.tokens.serving import EventTokenizer
from recfm.tokens.tokenizer import FACET_UNK, N_RESERVED_ITEMS, gap_bucket

log = logging.getLogger(__name__)

EVENT_FIELDS = ("item_id", "timestamp", "action", "value", "device", "country", "surface", "row")


def window_start(length: int, max_len: int, hop: int) -> int:
    """First token of the context window of a ``length``-token history: the last ``max_len``
    tokens, the start rounded up to a multiple of ``hop`` so it stays put (cacheable) while the
    history grows by up to ``hop`` tokens."""
    if length <= max_len:
        return 0
    hop = max(1, hop)
    return -(-(length - max_len) // hop) * hop


@dataclass
class Query:
    """One user's request resolved against one engine."""

    window: np.ndarray
    """(T, C) int64 tokens of the context window, columns ``Engine.columns``; T may be 0."""
    seen: np.ndarray
    """Item indices of the whole history, in order (repeats included)."""
    history_tokens: int
    allowed: np.ndarray
    """(n_items,) bool: items eligible under the rules (and not seen, when asked)."""
    k: int = 10
    how: str = "model"
    user_id: str | None = None
    cache: str = "off"
    extra: dict[str, Any] = field(default_factory=dict)


class UserHistories:
    """Known users' token histories, read from a prepared dataset's ``tokens.parquet``."""

    def __init__(self, sources: list[Path], columns: list[str]) -> None:
        """``sources``: prepared datasets, a user's first found kept
        (:func:`recfm.pipeline.histories.history_sources`)."""
        for data in sources:
            if not (data / "tokens.parquet").is_file():
                raise InputError(str(data / "tokens.parquet"), None, None,
                                 "a prepared dataset (tokens.parquet)", "nothing at that path")
        seqs = known_histories(sources)
        self.columns = columns
        extra = ["ts_last"] if "ts_last" in seqs.columns else []
        self.store = SequenceStore(seqs, columns + extra)
        self.ids: list[str] = seqs["user_id"].cast(pl.Utf8).to_list()
        self.row = {u: i for i, u in enumerate(self.ids)}
        self.lengths = self.store.lengths

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def item_counts(self) -> np.ndarray:
        """(largest item index + 1,) events on each item index over all known histories:
        what "popular" means to the explorer. Counted once, on first use."""
        return np.bincount(self.store.values["item"])

    def tokens(self, user_id: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(L, C) tokens and (L,) last times of a known user, or None."""
        r = self.row.get(user_id)
        if r is None:
            return None
        a, b = self.store.offsets[r], self.store.offsets[r + 1]
        mat = np.full((b - a, len(self.columns)), FACET_UNK, dtype=np.int64)
        for c, col in enumerate(self.columns):
            if col in self.store.values:
                mat[:, c] = self.store.values[col][a:b]
        ts = self.store.values["ts_last"][a:b] if "ts_last" in self.store.values else None
        return mat, ts


class Engine:
    """A loaded run ready to serve (see module docstring)."""

    def __init__(self, run: str | Path, cfg: ServeConfig | None = None,
                 data: str | Path | None = None) -> None:
        t0 = time.perf_counter()
        self.cfg = cfg or ServeConfig()
        self.run = Path(run)
        self.rec = Recommender.from_pretrained(self.run)
        self.fm = self.rec.model
        if self.rec.tokenizer is None or self.rec.items is None:
            raise RecfmError(f"{self.run}: a run directory needs tokenizer.json and "
                             "items.parquet to be served")
        self.version = model_version(self.run)
        self.columns = list(self.fm.input_columns)
        self.max_len = self.fm.cfg.max_len
        self.has_time = self.rec.tokenizer.has_time
        self.n_gap_buckets = self.rec.tokenizer.config.n_gap_buckets
        with torch.no_grad():
            self.table = self.fm.item_table().detach().contiguous()  # (N, d) scoring side
            self.input_table = self.fm.input_item_table()  # (N, d) input side
            if self.input_table.shape == self.table.shape \
                    and torch.equal(self.input_table, self.table):  # tied: keep one copy
                self.input_table = self.table
        self.n_items = int(self.table.size(0))
        self.d = int(self.table.size(1))
        cache_dir = self.run / "serve-index" if self.cfg.index_cache else None
        self.index = build_index(self.table, self.cfg.retrieval, self.cfg.hnsw_min_items,
                                 self.cfg.hnsw_m, self.cfg.hnsw_ef_construction,
                                 self.cfg.hnsw_ef_search, cache_dir)
        self.exact = self.index if isinstance(self.index, ExactIndex) else ExactIndex(self.table)
        items = self.rec.items
        self.rules = ItemRules(items, self.n_items)
        self.pooled = self.fm.cfg.user_repr != "last"
        """A pooled ``user_repr``: windows are encoded whole by ``last_hidden``, without the
        user-state cache (its keys/values give the last position's state only)."""
        cache_bytes = 0 if self.pooled else int(self.cfg.cache_mb * 2**20)
        self.cache = UserStateCache(cache_bytes, len(self.columns), self.max_len)
        self.step = (OneTokenStep(self.fm, self.input_table)
                     if self.cfg.fast_step and not self.pooled else None)
        """The lean one-token extension of a cached state (None: the reference path only)."""
        self.item_ids = [""] * self.n_items
        for i, iid in enumerate(self.rec.tokenizer.item_ids):
            self.item_ids[N_RESERVED_ITEMS + i] = iid
        self.index_of = {iid: N_RESERVED_ITEMS + i
                         for i, iid in enumerate(self.rec.tokenizer.item_ids)}
        self.event_tokenizer = EventTokenizer(self.rec.tokenizer, self.columns, self.index_of)
        self.fast_tokens = True
        """False: tokenize requests with the reference tokenizer only."""
        self.titles: list[str | None] | None = None
        if "title" in items.columns:
            self.titles = [None] * self.n_items
            for i, v in zip(items["idx"].to_list(), items["title"].cast(pl.Utf8).to_list()):
                self.titles[i] = v
        self._lower_titles: pl.Series | None = None
        self.genres = self.rules.item_genres
        self.unit_table = torch.nn.functional.normalize(self.table, dim=1)
        self.surface_filters = {name: Filters.of_surface(s)
                                for name, s in self.cfg.surfaces.items()}
        self.degraded: str | None = None
        """Why known users are missing (the run's dataset is not there), or None."""
        self.data = Path(data) if data is not None else self._default_data()
        # an incremental run's own data holds its recent users: the others are in the data
        # of the run it was tuned from
        self.histories = UserHistories(
            [self.data] if data is not None else history_sources(self.run),
            self.columns) if self.data is not None else None
        self.ranker = None
        """Second pass (``cfg.ranker``): a :class:`recfm.rank.serve.RankerHook`, or None."""
        if self.cfg.ranker:
            self.ranker = RankerHook(self.cfg.ranker)
            if self.ranker.n_items != self.n_items:
                raise RecfmError(f"ranker {self.cfg.ranker}: it scores {self.ranker.n_items} "
                                 f"items, the model {self.n_items}; train it with this model")
        self.load_s = time.perf_counter() - t0
        log.info("engine %s: %d items, %s retrieval, %s known users, loaded in %.1f s",
                 self.version, self.n_items - N_RESERVED_ITEMS, self.index.kind,
                 len(self.histories) if self.histories else "no", self.load_s)

    def _default_data(self) -> Path | None:
        """The run's own dataset, or None (degraded, when it records one that is not there)."""
        found = run_data_dir(self.run, own=True)
        recorded = json.loads((self.run / "config.json").read_text()).get("data", {}).get("path")
        if found is None and recorded:
            self.degraded = (f"{self.run}: its dataset {recorded} is not there; serving "
                             "without known users (give --data)")
            log.warning(self.degraded)
        return found

    def lowercase_titles(self) -> pl.Series | None:
        """Titles in lower case, by item index (built on first use), for title search."""
        if self.titles is None:
            return None
        if self._lower_titles is None:
            self._lower_titles = pl.Series(self.titles, dtype=pl.Utf8).str.to_lowercase()
        return self._lower_titles

    # ------------------------------------------------------------------ requests → queries

    def describe_item(self, idx: int) -> dict[str, Any]:
        out: dict[str, Any] = {"item_id": self.item_ids[idx]}
        if self.titles is not None:
            out["title"] = self.titles[idx]
        if self.rules.genre:
            out["genres"] = list(self.genres[idx])
        return out

    def ranked_items(self, idx: list[int], scores: list[float] | None = None
                     ) -> list[dict[str, Any]]:
        """:meth:`describe_item` of each of ``idx`` with its rank (from 1), and its score."""
        items = []
        for rank, i in enumerate(idx, start=1):
            row = self.describe_item(i)
            row["rank"] = rank
            if scores is not None:
                row["score"] = float(scores[rank - 1])
            items.append(row)
        return items

    def item_index(self, item_id: str) -> int:
        idx = self.index_of.get(str(item_id))
        if idx is None:
            raise NotFound(f"item {item_id!r} is not in the catalog of model {self.version}")
        return idx

    def _event_tokens(self, events: list[dict[str, Any]], ignore_unknown: bool
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw events of one user → (L, C) tokens with the model's tokenizer, and (L,) times."""
        index_of = self.index_of  # keyed by the ids as text
        items = [index_of.get(i if type(i) is str else str(i))
                 for i in (e["item_id"] for e in events)]
        if None in items:
            unknown = [e["item_id"] for e, i in zip(events, items) if i is None]
            if not ignore_unknown:
                shown = ", ".join(repr(str(u)) for u in unknown[:5])
                raise Unprocessable(f"events: {len(unknown)} item id(s) not in the catalog of "
                                    f"model {self.version}: {shown} (set ignore_unknown_items "
                                    "to drop them)")
            events = [e for e, i in zip(events, items) if i is not None]
            items = [i for i in items if i is not None]
        if not events:
            return np.zeros((0, len(self.columns)), np.int64), None
        if self.fast_tokens and EventTokenizer.supports(events):
            return self.event_tokenizer(events, items)
        cols: dict[str, list] = {"user_id": ["request"] * len(events)}
        present = [f for f in EVENT_FIELDS if any(e.get(f) is not None for e in events)]
        for f in present:
            cols[f] = [e.get(f) for e in events]
        cols["item_id"] = [str(e["item_id"]) for e in events]
        if "timestamp" not in present:  # order only: positions as times
            cols["timestamp"] = list(range(len(events)))
        else:
            ts = cols["timestamp"]
            if any(t is None for t in ts):
                raise Unprocessable("events: give a timestamp on every event or on none")
            cols["timestamp"] = [str(t) for t in ts] if any(isinstance(t, str) for t in ts) \
                else ts
        for f in ("action", "device", "country", "surface"):
            if f in cols:
                cols[f] = [None if v is None else str(v) for v in cols[f]]
        try:
            seqs = self.rec.tokenize_events(pl.DataFrame(cols, strict=False))
        except InputError as e:
            raise Unprocessable(str(e)) from None
        if seqs.height == 0:  # every event filtered out (e.g. impressions only)
            return np.zeros((0, len(self.columns)), np.int64), None
        mat = np.full((int(seqs["length"][0]), len(self.columns)), FACET_UNK, dtype=np.int64)
        for c, col in enumerate(self.columns):
            if col in seqs.columns:
                mat[:, c] = np.asarray(seqs[col][0].to_numpy(), dtype=np.int64)
        first_ts = seqs["ts"][0].to_numpy() if "ts" in seqs.columns else None
        return mat, first_ts

    def query(self, user_id: str | None = None, events: list[dict[str, Any]] | None = None,
              k: int = 10, exclude_seen: bool = True, filters: Filters | None = None,
              surface: str = "home", ignore_unknown: bool = False,
              context: dict[str, Any] | None = None) -> Query:
        """Resolve a request: the history (stored, sent, or both: sent events are appended to
        the stored ones), its context window, and the eligible items."""
        surface_filters = self.surface_filters.get(surface)
        if surface_filters is None:
            raise Unprocessable(f"surface: unknown surface {surface!r}; this service has "
                                f"{', '.join(sorted(self.surface_filters))}")
        tokens = np.zeros((0, len(self.columns)), np.int64)
        ts_last = None
        how, unknown_user = "model", ""
        if user_id is not None:
            stored = self.histories.tokens(str(user_id)) if self.histories else None
            if stored is not None:
                tokens, ts_last = stored
            else:  # a member the served data does not know: new, unless events say more
                unknown_user = f"user {str(user_id)!r} is not among the known users: "
        if events:
            new, new_ts = self._event_tokens(events, ignore_unknown)
            if len(tokens) and len(new) and self.has_time and "gap_bucket" in self.columns \
                    and ts_last is not None and new_ts is not None:
                # the first sent token follows the stored history: its gap is from there
                gap = int(new_ts[0]) - int(ts_last[-1])
                new = new.copy()
                new[0, self.columns.index("gap_bucket")] = pl.select(
                    gap_bucket(pl.lit(gap, dtype=pl.Int64), self.n_gap_buckets)).item()
            tokens = np.concatenate([tokens, new]) if len(tokens) else new
        seen = tokens[:, 0]
        n_history = len(tokens)
        if n_history == 0:  # a new member: one unknown-item token carrying the context
            store = self.rec.context_store(context)
            tokens = np.array([[store.values[c][0] for c in self.columns]], np.int64)
            given = ", ".join(f"{k}={v}" for k, v in sorted((context or {}).items()))
            how = (f"model: {unknown_user}no history, first items for the context "
                   f"({given or 'none given'})")
            user_id = None  # nothing of this member to cache
        start = window_start(len(tokens), self.max_len, self.cfg.window_hop)
        allowed = self.rules.mask(filters or Filters()) & self.rules.mask(surface_filters)
        if exclude_seen and len(seen):
            allowed = allowed.copy()
            allowed[seen[seen < self.n_items]] = False
        return Query(np.ascontiguousarray(tokens[start:]), seen, n_history, allowed, k, how,
                     None if user_id is None else str(user_id), extra={"surface": surface})

    # ------------------------------------------------------------------ batched work

    def _batch(self, windows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        T = max(len(w) for w in windows)
        arr = np.zeros((len(windows), T, len(self.columns)), dtype=np.int64)  # (B, T, C)
        for b, w in enumerate(windows):
            arr[b, :len(w)] = w
        return {col: torch.from_numpy(np.ascontiguousarray(arr[:, :, c]))
                for c, col in enumerate(self.columns)}

    @torch.inference_mode()  # cheaper per op than no_grad; cached states stay inference-only
    def encode(self, queries: list[Query]) -> torch.Tensor:
        """(B, d) user vectors of queries with a history; sets each ``query.cache``."""
        if self.pooled:
            for q in queries:
                q.cache = "off"
            return self.fm.last_hidden(self._batch([q.window for q in queries]))
        users: list[torch.Tensor | None] = [None] * len(queries)
        cold = []
        for i, q in enumerate(queries):
            n, state, hashes = self.cache.lookup_hashed(q.window)
            if state is None:
                cold.append(i)
                q.cache = "miss" if self.cache.enabled else "off"
            elif n == len(q.window):
                users[i] = state.user
                q.cache = "hit"
            else:
                past = state.kv if n == len(state.tokens) else state.kv.prefix(n)
                out = None
                if self.step is not None and self.step.supports(past, len(q.window)):
                    out = self.step(q.window[-1], past)  # None: the room was taken
                if out is not None:
                    u, kv = out[0][None], out[1]
                else:
                    u, kv = self.fm.encode_incremental(self._batch([q.window]), past,
                                                       self.input_table)
                users[i] = u[0]
                q.cache = f"extend:{len(q.window) - n}"
                self.cache.put(CachedState(q.window, kv, u[0]), hashes)
        if cold:
            cold.sort(key=lambda i: len(queries[i].window))
            u, kv = self.fm.encode_incremental(self._batch([queries[i].window for i in cold]),
                                               None, self.input_table)
            for j, i in enumerate(cold):
                users[i] = u[j]
                if self.cache.enabled:
                    w = queries[i].window
                    room = kv.row(j, len(w), self.max_len)  # later tokens fill it in place
                    self.cache.put(CachedState(w, room, u[j].clone()))
        return torch.stack(users) if users else torch.zeros(0, self.d)  # type: ignore[arg-type]

    @torch.inference_mode()
    def recommend(self, queries: list[Query]) -> list[dict[str, Any]]:
        """Top-k eligible items per query (a new member's window is one context token)."""
        users = self.encode(queries)
        gen = [q.extra.get("retrieval") == "generative" for q in queries]
        out: list[dict[str, Any] | None] = [None] * len(queries)
        for i in (i for i, g in enumerate(gen) if g):  # beam search over the eligible items
            q = queries[i]
            items, logp = self.fm.generative_top(users[i:i + 1], q.k,
                                                 eligible=torch.from_numpy(q.allowed))
            found = items[0] >= 0
            out[i] = self._answer(q, items[0][found].numpy(), logp[0][found].numpy(),
                                  "generative")
        rest = [i for i, g in enumerate(gen) if not g]
        if rest:
            scored = [queries[i] for i in rest]
            k = max(q.k for q in scored)
            n = max(k, self.ranker.n_candidates) if self.ranker is not None else k
            found = self.index.search(users[rest], n, [q.allowed for q in scored])
            if self.ranker is not None:  # second pass over the top-n candidates
                found = self.ranker.rerank_found(users[rest].numpy(), found,
                                                 [q.extra.get("surface", "home") for q in scored])
            for i, q, (idx, scores) in zip(rest, scored, found):
                out[i] = self._answer(q, idx[:q.k], scores[:q.k])
        return out  # type: ignore[return-value]

    def _answer(self, q: Query, idx: np.ndarray, scores: np.ndarray,
                retrieval: str | None = None) -> dict[str, Any]:
        return {"items": self.ranked_items(idx.tolist(), scores.tolist()),
                "model_version": self.version, "how": q.how,
                "retrieval": retrieval or self.index.kind,
                "history_tokens": q.history_tokens, "window_tokens": int(len(q.window)),
                "cache": q.cache}

    @torch.inference_mode()
    def embed(self, queries: list[Query]) -> list[list[float] | None]:
        with_history = [i for i, q in enumerate(queries) if len(q.window)]
        out: list[list[float] | None] = [None] * len(queries)
        if with_history:
            users = self.encode([queries[i] for i in with_history])
            for j, i in enumerate(with_history):
                out[i] = users[j].tolist()
        return out

    @torch.inference_mode()
    def similar(self, item_id: str, k: int, filters: Filters | None = None,
                surface: str = "home") -> dict[str, Any]:
        """Items nearest to ``item_id`` by cosine of the model's item vectors (exact)."""
        idx = self.item_index(item_id)
        surface_filters = self.surface_filters.get(surface)
        if surface_filters is None:
            raise Unprocessable(f"surface: unknown surface {surface!r}")
        allowed = (self.rules.mask(filters or Filters()) & self.rules.mask(surface_filters)).copy()
        allowed[idx] = False
        scores = self.unit_table @ self.unit_table[idx]  # (N,)
        scores = scores.masked_fill(~torch.from_numpy(allowed), float("-inf"))
        top = torch.topk(scores, min(k, int(allowed.sum())))
        return {"item": self.describe_item(idx),
                "items": self.ranked_items(top.indices.tolist(), top.values.tolist()),
                "model_version": self.version, "how": "cosine of item vectors"}
