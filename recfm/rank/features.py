"""Requests → the ranker's input tensors: context, item, cross and foundation-model features.

The lexical and content features need no foundation model; the last group is what
personalization adds. The feature table: docs/guide/ranker.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from recfm.rank.data import TASKS, RankData, check_task
from recfm.rank.lexical import BM25Index, normalize, words

CROSS_FEATURES = ("bm25", "bm25_share", "bm25_rank", "exact_title", "title_prefix",
                  "query_in_title", "title_in_query", "query_title_cos", "query_content_cos",
                  "genre_in_query", "anchor_content_cos", "anchor_genre_overlap",
                  "language_match", "has_query")
FM_FEATURES = ("fm_score", "fm_score_z", "fm_rank", "fm_anchor_cos")
_CROSS = {name: j for j, name in enumerate(CROSS_FEATURES)}  # feature → column


@dataclass
class Vocab:
    """Categorical values seen in training (index 0: unknown). Saved with the ranker."""

    country: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    item_language: list[str] = field(default_factory=list)
    entity_type: list[str] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, requests: pl.DataFrame, items: pl.DataFrame) -> "Vocab":
        def vals(s: pl.Series) -> list[str]:
            return sorted(str(v) for v in s.drop_nulls().unique().to_list())
        return cls(vals(requests["country"]), vals(requests["language"]),
                   vals(requests["device"]),
                   vals(items["language"]) if "language" in items.columns else [],
                   vals(items["entity_type"]) if "entity_type" in items.columns else [],
                   vals(items["genres"].explode()) if "genres" in items.columns else [])

    def code(self, name: str, values: list) -> np.ndarray:
        index = {v: i + 1 for i, v in enumerate(getattr(self, name))}
        return np.array([index.get(str(v), 0) for v in values], dtype=np.int64)

    def sizes(self) -> dict[str, int]:
        return {"task": len(TASKS), **{k: len(getattr(self, k)) + 1 for k in (
            "country", "language", "device", "item_language", "entity_type")}}


@dataclass
class ItemTables:
    """Per-item inputs (row = item index): ids, dense metadata, text vectors, FM vectors."""

    cat: np.ndarray       # (n_items, 2) entity type, language
    dense: np.ndarray     # (n_items, F_item)
    content: np.ndarray   # (n_items, E) item text embedding
    title: np.ndarray     # (n_items, E) title embedding
    fm: np.ndarray        # (n_items, d) the foundation model's item vectors
    titles: list[str]     # normalised titles
    title_words: list[set[str]]
    genres: list[set[str]]
    item_language: list[str]


def item_tables(items: pl.DataFrame, popularity: np.ndarray, item_vec: np.ndarray,
                vocab: Vocab, embedder) -> ItemTables:
    n = len(popularity)
    items = items.sort("idx")
    idx = items["idx"].to_numpy()
    cat = np.zeros((n, 2), dtype=np.int64)
    cols = items.columns
    ent = items["entity_type"].to_list() if "entity_type" in cols else [None] * len(idx)
    lang = items["language"].to_list() if "language" in cols else [None] * len(idx)
    cat[idx, 0] = vocab.code("entity_type", ent)
    cat[idx, 1] = vocab.code("item_language", lang)
    g_index = {g: i for i, g in enumerate(vocab.genres)}
    n_dense = 4 + len(vocab.genres)
    dense = np.zeros((n, n_dense), dtype=np.float32)
    dense[:, 0] = np.log1p(popularity)
    glist = items["genres"].to_list() if "genres" in cols else [[]] * len(idx)
    kids = (items["kids"].cast(pl.Utf8).str.to_lowercase().is_in(["true", "1", "yes"])
            .to_numpy() if "kids" in cols else np.zeros(len(idx), bool))
    years = items["release_year"].fill_null(2000).to_numpy().astype(np.float64) \
        if "release_year" in cols else np.full(len(idx), 2000.0)
    dense[idx, 1] = kids
    dense[idx, 2] = (years - 2000.0) / 20.0
    titles = [""] * n
    title_words: list[set[str]] = [set() for _ in range(n)]
    genres: list[set[str]] = [set() for _ in range(n)]
    item_language = [""] * n
    raw_titles = items["title"].to_list() if "title" in cols else [""] * len(idx)
    for j, i in enumerate(idx.tolist()):
        gs = list(glist[j] or [])
        dense[i, 3] = len(gs)
        dense[i, [4 + g_index[g] for g in gs if g in g_index]] = 1.0
        titles[i] = normalize(raw_titles[j] or "")
        title_words[i] = set(words(raw_titles[j] or ""))
        genres[i] = {str(g).lower() for g in gs}
        item_language[i] = str(lang[j]) if lang[j] is not None else ""
    content = np.zeros((n, embedder.dim), dtype=np.float32)
    content[idx] = embedder.embed_items(items)
    title = np.zeros((n, embedder.dim), dtype=np.float32)
    title[idx] = embedder.embed_texts([t or "" for t in raw_titles])
    return ItemTables(cat, dense, content, title, item_vec.astype(np.float32), titles,
                      title_words, genres, item_language)


@dataclass
class Batchable:
    """Input tensors of R requests with N candidate slots (padding: ``mask`` false)."""

    ctx: torch.Tensor        # (R, 4) task, country, language, device
    query: torch.Tensor      # (R, E) query embedding (zeros: no query)
    cand: torch.Tensor       # (R, N) item indices (0: padding)
    mask: torch.Tensor       # (R, N) bool
    cross: torch.Tensor      # (R, N, len(CROSS_FEATURES))
    fm_cross: torch.Tensor   # (R, N, len(FM_FEATURES))
    fm_user: torch.Tensor    # (R, d)
    label: torch.Tensor      # (R,) slot of the played item (-1: not among the candidates)

    def __len__(self) -> int:
        return int(self.ctx.size(0))

    def take(self, idx: np.ndarray | torch.Tensor) -> "Batchable":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Batchable(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (R, E) and (R, N, E) → (R, N)."""
    na = np.linalg.norm(a, axis=-1)[:, None]
    nb = np.linalg.norm(b, axis=-1)
    return np.einsum("re,rne->rn", a, b) / np.maximum(na * nb, 1e-9)


def _candidate_slots(cand_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(R, N) candidate item indices padded with 0 to the longest list, and the mask of
    real slots."""
    R = len(cand_lists)
    N = max((len(c) for c in cand_lists), default=1) or 1
    cand = np.zeros((R, N), dtype=np.int64)
    mask = np.zeros((R, N), dtype=bool)
    for i, c in enumerate(cand_lists):
        cand[i, :len(c)] = c
        mask[i, :len(c)] = True
    return cand, mask


def _context_ids(req: pl.DataFrame, vocab: Vocab) -> np.ndarray:
    """(R, 4) ids of the request's task, country, language and device."""
    ctx = np.zeros((req.height, 4), dtype=np.int64)
    ctx[:, 0] = [check_task(t, "requests") for t in req["task"].to_list()]
    for j, name in enumerate(("country", "language", "device"), start=1):
        ctx[:, j] = vocab.code(name, req[name].to_list())
    return ctx


def _query_features(x: np.ndarray, q: str, row: np.ndarray, bm25: BM25Index,
                    tables: ItemTables) -> None:
    """Lexical features of the query ``q`` against each candidate of ``row``, written into
    ``x`` (n, len(CROSS_FEATURES)): BM25 (raw, share of the best, rank) and title/genre
    word matches."""
    f = _CROSS
    n = len(row)
    qn = normalize(q)
    qw = set(words(q))
    s = bm25.scores(q)[row]
    x[:, f["bm25"]] = s
    x[:, f["bm25_share"]] = s / max(float(s.max()), 1e-9)
    order = np.argsort(-s, kind="stable")
    rank = np.empty(n)
    rank[order] = np.arange(n)
    x[:, f["bm25_rank"]] = rank / n  # by the request's own count, not the padding
    for j, c in enumerate(row.tolist()):
        t = tables.titles[c]
        tw = tables.title_words[c]
        x[j, f["exact_title"]] = float(qn == t)
        x[j, f["title_prefix"]] = float(bool(qn) and t.startswith(qn))
        x[j, f["query_in_title"]] = len(qw & tw) / max(len(qw), 1)
        x[j, f["title_in_query"]] = len(qw & tw) / max(len(tw), 1)
        x[j, f["genre_in_query"]] = float(bool(qw & tables.genres[c]))


def _cross_features(req: pl.DataFrame, tables: ItemTables, cand: np.ndarray, mask: np.ndarray,
                    qvec: np.ndarray, has_q: np.ndarray, bm25: BM25Index) -> np.ndarray:
    """(R, N, len(CROSS_FEATURES)) the lexical and content features of every slot: text
    cosines in one pass, then per request the language match, the anchor's genre overlap
    and (for a query) :func:`_query_features`."""
    R, N = cand.shape
    cross = np.zeros((R, N, len(CROSS_FEATURES)), dtype=np.float32)
    f = _CROSS
    cross[:, :, f["query_title_cos"]] = _cos(qvec, tables.title[cand]) * has_q[:, None]
    cross[:, :, f["query_content_cos"]] = _cos(qvec, tables.content[cand]) * has_q[:, None]
    cross[:, :, f["has_query"]] = has_q[:, None]
    anchors = req["anchor"].to_numpy()
    has_a = anchors >= 0
    a_safe = np.where(has_a, anchors, 0)
    cross[:, :, f["anchor_content_cos"]] = (_cos(tables.content[a_safe], tables.content[cand])
                                            * has_a[:, None])
    langs = req["language"].to_list()
    queries = req["query"].to_list()
    for i in range(R):
        row = cand[i, mask[i]]
        n = len(row)
        il = [tables.item_language[c] for c in row]
        cross[i, :n, f["language_match"]] = [x == langs[i] for x in il]
        if has_a[i]:
            ga = tables.genres[anchors[i]]
            cross[i, :n, f["anchor_genre_overlap"]] = [
                len(ga & tables.genres[c]) / max(len(ga | tables.genres[c]), 1) for c in row]
        if has_q[i]:
            _query_features(cross[i, :n], queries[i], row, bm25, tables)
    return cross


def _fm_features(user: np.ndarray, tables: ItemTables, cand: np.ndarray, mask: np.ndarray,
                 anchors: np.ndarray) -> np.ndarray:
    """(R, N, len(FM_FEATURES)) the foundation model's features: the user–item score (raw,
    z-scored and ranked among the request's candidates) and the anchor–candidate cosine."""
    R, N = cand.shape
    has_a = anchors >= 0
    a_safe = np.where(has_a, anchors, 0)
    fm_cross = np.zeros((R, N, len(FM_FEATURES)), dtype=np.float32)
    score = np.einsum("rd,rnd->rn", user, tables.fm[cand])  # (R, N)
    big = np.where(mask, score, np.nan)
    mu = np.nanmean(big, axis=1, keepdims=True)
    sd = np.nanstd(big, axis=1, keepdims=True)
    fm_cross[:, :, 0] = score
    fm_cross[:, :, 1] = np.where(mask, (score - mu) / np.maximum(sd, 1e-6), 0.0)
    order = np.argsort(-np.where(mask, score, -np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(N)[None, :].repeat(R, 0), axis=1)
    fm_cross[:, :, 2] = rank / np.maximum(mask.sum(1, keepdims=True), 1)
    fm_cross[:, :, 3] = _cos(tables.fm[a_safe], tables.fm[cand]) * has_a[:, None]
    return fm_cross


def featurize(data: RankData, tables: ItemTables, vocab: Vocab, embedder,
              bm25: BM25Index | None = None) -> Batchable:
    """Every feature of every request of ``data`` (docs/guide/ranker.md)."""
    req = data.requests
    cand, mask = _candidate_slots(req["candidates"].to_list())
    ctx = _context_ids(req, vocab)
    queries = req["query"].to_list()
    has_q = np.array([q is not None and q != "" for q in queries])
    qvec = np.zeros((req.height, embedder.dim), dtype=np.float32)  # (R, E)
    if has_q.any():
        qvec[has_q] = embedder.embed_texts([q for q in queries if q])
    if bm25 is None:
        bm25 = BM25Index(tables.titles, [sorted(g) for g in tables.genres])
    cross = _cross_features(req, tables, cand, mask, qvec, has_q, bm25)
    user = np.asarray(data.user_vec, dtype=np.float32)  # (R, d)
    fm_cross = _fm_features(user, tables, cand, mask, req["anchor"].to_numpy())
    cross[~mask] = 0.0
    fm_cross[~mask] = 0.0
    label = req["label_pos"].to_numpy().astype(np.int64)
    return Batchable(*(torch.from_numpy(a) for a in (ctx, qvec, cand, mask, cross, fm_cross,
                                                     user, label)))

