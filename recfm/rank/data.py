"""Ranking requests from a prepared dataset: search sessions and recommendation impressions.

The last ``holdout`` tokens of every user are requests, and the foundation model trains on
the tokens before them only (:func:`holdout_dataset`), so its features never saw a label.
Tasks, queries and candidates: docs/guide/ranker.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.numpy import load_file, save_file

from recfm.tokens.batching import SequenceStore
from recfm.config import from_dict
from recfm.errors import InputError, RecfmError
from recfm.io import atomic_dir, atomic_write_json
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.rank.lexical import STOPWORDS, BM25Index, normalize, words
from recfm.tokens.tokenizer import N_RESERVED_FACET, N_RESERVED_ITEMS

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("search", "home", "more-like-this", "kids")
QUERY_KINDS: tuple[str, ...] = ("navigational", "partial", "words", "genre", "misspelling")
# Country → language of the synthetic world (recfm.data.synthetic.COUNTRIES).
COUNTRY_LANGUAGE = {"US": "en", "GB": "en", "CA": "en", "BR": "pt", "MX": "es", "ES": "es",
                    "FR": "fr", "DE": "de", "JP": "ja", "KR": "ko", "IN": "hi"}
REQUESTS_FILE = "requests.parquet"
ARRAYS_FILE = "arrays.safetensors"
META_FILE = "rank_data.json"


def require_files(path: Path, names: tuple[str, ...], expected: str) -> None:
    """An error naming the first of ``names`` that is not a file under ``path``."""
    for name in names:
        if not (path / name).is_file():
            raise InputError(str(path / name), None, None, expected, "nothing at that path")


def check_task(task: str, where: str = "task") -> int:
    """The index of ``task`` in :data:`TASKS`; an unknown task is an error naming both."""
    try:
        return TASKS.index(task)
    except ValueError:
        raise InputError(where, None, "task", f"a task type ({', '.join(TASKS)})",
                         repr(task)) from None


@dataclass
class RankDataConfig:
    """How requests are drawn from a prepared dataset. The same config gives the same requests."""

    seed: int = 0
    holdout: int = 6
    """The last this-many tokens of each user are requests (the FM trains on the rest)."""
    min_history: int = 2
    """Requests need at least this many earlier tokens."""
    n_candidates: int = 30
    """Candidates per request from the first pass."""
    p_extra_search: float = 0.25
    """Share of non-search, non-kids tokens that become search requests."""
    p_more_like_this: float = 0.35
    """Share of the remaining home tokens shown on a more-like-this page."""
    anchor_candidates: int = 20
    """More-like-this: candidates nearest to the anchor (the rest: the user's top items)."""
    query_mix: dict[str, float] = field(default_factory=lambda: {
        "navigational": 0.2, "partial": 0.2, "words": 0.2, "genre": 0.2, "misspelling": 0.2})

    @classmethod
    def from_dict(cls, data: dict, source: str = "<rank data config>") -> "RankDataConfig":
        cfg = from_dict(cls, data, source)
        unknown = set(cfg.query_mix) - set(QUERY_KINDS)
        if unknown:
            raise InputError(source, None, "query_mix", f"query kinds ({', '.join(QUERY_KINDS)})",
                             repr(sorted(unknown)[0]))
        return cfg


@dataclass
class RankData:
    """Requests and the arrays their features are computed from.

    ``requests``: one row per request — request, user_id, position (of the label token),
    split, task, country, language, device, query (null unless search), query_kind, anchor
    (item index, -1 unless more-like-this), label (item index), candidates (item indices,
    best first), label_pos (-1: not retrieved). ``items``: the prepared item table.
    ``user_vec``: (R, d) FM user vectors after each request's history; ``item_vec``:
    (n_items, d) its scoring item vectors; ``popularity``: (n_items,) token counts in the
    part the FM trained on.
    """

    requests: pl.DataFrame
    items: pl.DataFrame
    user_vec: np.ndarray
    item_vec: np.ndarray
    popularity: np.ndarray
    counts: dict = field(default_factory=dict)

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        with atomic_dir(path, "rank-data", overwrite) as tmp:
            self.requests.write_parquet(tmp / REQUESTS_FILE)
            self.items.write_parquet(tmp / "items.parquet")
            save_file({k: np.ascontiguousarray(getattr(self, k), np.float32)
                       for k in ("user_vec", "item_vec", "popularity")}, str(tmp / ARRAYS_FILE))
            atomic_write_json(tmp / META_FILE, {"format": "recfm.rank_data/1",
                                                "counts": self.counts})

    @classmethod
    def load(cls, path: str | Path) -> "RankData":
        path = Path(path)
        require_files(path, (REQUESTS_FILE, ARRAYS_FILE, "items.parquet"),
                      "a rank data file (recfm rank train writes it)")
        arrays = load_file(str(path / ARRAYS_FILE))
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
        return cls(pl.read_parquet(path / REQUESTS_FILE), pl.read_parquet(path / "items.parquet"),
                   arrays["user_vec"], arrays["item_vec"], arrays["popularity"],
                   meta.get("counts", {}))

    def subset(self, mask: np.ndarray) -> "RankData":
        """The requests where ``mask`` is true (arrays follow)."""
        idx = np.nonzero(mask)[0]
        return RankData(self.requests[idx], self.items, self.user_vec[idx], self.item_vec,
                        self.popularity, self.counts)


# ----------------------------------------------------------------------------- FM holdout


def holdout_dataset(prepared: str | Path, out: str | Path, holdout: int,
                    overwrite: bool = False) -> dict[str, int]:
    """A copy of a prepared dataset without each user's last ``holdout`` tokens, for the
    foundation model to train on (no request label is a target). Users left with no token
    are dropped; item indices are unchanged."""
    src = Path(prepared)
    ds = PreparedDataset.load(src)
    seqs = ds.sequences
    lists = [c for c, t in seqs.schema.items() if isinstance(t, pl.List)]
    keep = (pl.col("length") - holdout).clip(lower_bound=0)
    cut = (seqs.with_columns([pl.col(c).list.head(keep) for c in lists])
           .with_columns(pl.col("item").list.len().cast(seqs["length"].dtype).alias("length"))
           .filter(pl.col("length") > 0))
    with atomic_dir(out, "prepared", overwrite, (src,)) as tmp:
        cut.write_parquet(tmp / "tokens.parquet")
        for name in ("items.parquet", "tokenizer.json", "content.parquet", "content.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        report = {**ds.report, "rank_holdout": holdout, "users": cut.height,
                  "tokens_out": int(cut["length"].sum())}
        atomic_write_json(tmp / "report.json", report)
    counts = {"users": cut.height, "tokens": int(cut["length"].sum()),
              "tokens_held_out": int(seqs["length"].sum() - cut["length"].sum())}
    log.info("holdout dataset %s: %s", out, counts)
    return counts


# ----------------------------------------------------------------------------- queries


def _typo(word: str, rng: np.random.Generator) -> str:
    """One typing error in a word of 4+ letters: a dropped, doubled, swapped or wrong letter."""
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + word[i] + word[i:]
    if kind == 2:
        return word[:i - 1] + word[i] + word[i - 1] + word[i + 1:]
    letter = "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))]
    return word[:i] + letter + word[i + 1:]


def make_query(title: str, genres: list[str], entity: str | None, kind: str,
               rng: np.random.Generator) -> str:
    """A query a user types to find the title ``title`` (docs/guide/ranker.md)."""
    content = [w for w in words(title) if w not in STOPWORDS and not w.isdigit()] or words(title)
    if kind == "navigational":
        return title if rng.random() < 0.5 else title.lower()
    if kind == "partial":
        norm = normalize(title)
        lo = min(len(norm), 3)
        cut = int(rng.integers(lo, max(lo + 1, len(norm)))) if len(norm) > 3 else len(norm)
        return norm[:cut].rstrip()
    if kind == "words":
        k = 1 if len(content) < 2 or rng.random() < 0.6 else 2
        pick = rng.choice(len(content), size=k, replace=False)
        return " ".join(content[int(j)] for j in sorted(pick))
    if kind == "genre":
        g = genres[int(rng.integers(0, len(genres)))] if genres else content[0]
        if entity and rng.random() < 0.3:
            return f"{g} {entity}"
        return g
    if kind == "misspelling":
        ws = words(title)
        targets = [j for j, w in enumerate(ws) if len(w) >= 4] or [0]
        hit = set(int(j) for j in rng.choice(targets, size=min(2, len(targets)), replace=False))
        return " ".join(_typo(w, rng) if j in hit else w for j, w in enumerate(ws))
    raise ValueError(f"unknown query kind {kind!r}; expected one of {', '.join(QUERY_KINDS)}")


# ----------------------------------------------------------------------------- requests


def _facet_strings(ds: PreparedDataset, name: str, codes: np.ndarray) -> list[str]:
    values = ds.tokenizer.facets.get(name, [])
    codes = codes.astype(np.int64) - N_RESERVED_FACET
    return [values[j] if 0 <= j < len(values) else "unknown" for j in codes.tolist()]


@torch.no_grad()
def user_vectors(fm, store: SequenceStore, rows: np.ndarray, positions: np.ndarray,
                 batch_size: int = 256) -> np.ndarray:
    """(R, d) the model's user vector after tokens ``[0, position)`` of each ``rows`` entry:
    one causal pass per user, over the window ending before its last request."""
    fm.eval()
    max_len = fm.cfg.max_len
    out = np.zeros((len(rows), fm.cfg.d_model), dtype=np.float32)
    users = np.unique(rows)
    last = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=np.int64)
    np.maximum.at(last, rows, positions)
    for s in range(0, len(users), batch_size):
        u = users[s:s + batch_size]
        end = last[u]  # the window covers tokens [start, end): end is the last request's position
        start = np.maximum(end - max_len, 0)
        batch = store.gather(np.stack([u, start, end], axis=1))
        h = fm.positions(batch).numpy()  # (B, T, d)
        where = {int(r): j for j, r in enumerate(u)}
        sel = np.nonzero(np.isin(rows, u))[0]
        for i in sel:
            j = where[int(rows[i])]
            p = int(positions[i]) - 1 - int(start[j])
            if p < 0:
                raise RecfmError(f"a request at position {positions[i]} has its history cut by "
                                 f"the context ({max_len}); raise max_len or lower holdout")
            out[i] = h[j, p]
    return out


def _request_tokens(store: SequenceStore, cfg: RankDataConfig, n_items: int,
                    counts: dict[str, int]) -> tuple[np.ndarray, ...]:
    """(R,) user rows, positions, flat token indices and labels of the requests (each user's
    last ``holdout`` tokens after ``min_history``, less re-watches, counted in ``counts``), and
    (n_items,) popularity: token counts in the part the foundation model trained on."""
    lengths = store.lengths
    first = np.maximum(lengths - cfg.holdout, cfg.min_history)
    n_req = np.maximum(lengths - first, 0)
    rows = np.repeat(np.arange(len(lengths)), n_req)
    pos = first[rows] + (np.arange(n_req.sum()) - np.repeat(np.cumsum(n_req) - n_req, n_req))
    flat = store.offsets[rows] + pos
    label = store.values["item"][flat]
    train_len = np.maximum(lengths - cfg.holdout, 0)
    in_train = np.arange(len(store.values["item"])) - np.repeat(store.offsets[:-1], lengths) \
        < np.repeat(train_len, lengths)
    popularity = np.bincount(store.values["item"][in_train], minlength=n_items).astype(np.float64)
    repeat = np.zeros(len(rows), dtype=bool)
    for i in range(len(rows)):
        a = store.offsets[rows[i]]
        repeat[i] = label[i] in store.values["item"][a:a + pos[i]]
    counts["tokens_in_holdout"] = int(len(rows))
    counts["repeats_dropped"] = int(repeat.sum())
    return rows[~repeat], pos[~repeat], flat[~repeat], label[~repeat], popularity


def _splits(rows: np.ndarray, pos: np.ndarray, n_users: int) -> np.ndarray:
    """Each user's last request is ``test``, the one before ``valid``, the rest ``train``."""
    last_pos = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(last_pos, rows, pos)
    second = np.full(n_users, -1, dtype=np.int64)
    earlier = pos != last_pos[rows]
    np.maximum.at(second, rows[earlier], pos[earlier])
    return np.where(pos == last_pos[rows], "test", np.where(pos == second[rows], "valid", "train"))


def _request_context(ds: PreparedDataset, store: SequenceStore,
                     flat: np.ndarray) -> tuple[list[str], list[str], list[str], list[str]]:
    """Surface, country, device (the label token's facets) and language (the country's) of
    each request."""
    def facet(name: str, default: str) -> list[str]:
        return (_facet_strings(ds, name, store.values[name][flat]) if name in store.values
                else [default] * len(flat))
    surface, country = facet("surface", "home"), facet("country", "unknown")
    device = facet("device", "unknown")
    return surface, country, device, [COUNTRY_LANGUAGE.get(c, "unknown") for c in country]


def _tasks(rng: np.random.Generator, cfg: RankDataConfig, surface: list[str]) -> np.ndarray:
    """Task of each request: ``kids`` on the kids surface, ``search`` on the search surface
    and for ``p_extra_search`` of the others, then ``more-like-this`` or ``home``."""
    u_task = rng.random((len(surface), 2))
    s = np.array(surface)
    return np.select([s == "kids", (s == "search") | (u_task[:, 0] < cfg.p_extra_search),
                      u_task[:, 1] < cfg.p_more_like_this],
                     ["kids", "search", "more-like-this"], "home")


def _item_meta(items: pl.DataFrame, n_items: int) -> tuple[list, list, list, np.ndarray]:
    """Per item index: title, genres, entity type and kids flag (empty for reserved ids)."""
    kids_items = np.zeros(n_items, dtype=bool)
    if "kids" in items.columns:
        kids_items[items["idx"].to_numpy()] = items["kids"].cast(pl.Utf8).str.to_lowercase() \
            .is_in(["true", "1", "yes"]).to_numpy()
    titles = [""] * n_items
    genres: list[list[str]] = [[] for _ in range(n_items)]
    entity: list[str | None] = [None] * n_items
    for row in items.iter_rows(named=True):
        titles[row["idx"]] = row.get("title") or ""
        genres[row["idx"]] = list(row.get("genres") or [])
        entity[row["idx"]] = row.get("entity_type")
    return titles, genres, entity, kids_items


def _queries(rng: np.random.Generator, cfg: RankDataConfig, task: np.ndarray,
             label: np.ndarray, titles: list[str], genres: list[list[str]],
             entity: list[str | None]) -> tuple[list[str | None], list[str | None]]:
    """Query and query kind (drawn from ``query_mix``) of each search request; None else."""
    kinds = list(cfg.query_mix)
    p_kind = np.array([cfg.query_mix[k] for k in kinds], dtype=np.float64)
    p_kind = p_kind / p_kind.sum()
    query: list[str | None] = [None] * len(task)
    query_kind: list[str | None] = [None] * len(task)
    for i in np.nonzero(task == "search")[0]:
        k = kinds[int(rng.choice(len(kinds), p=p_kind))]
        query_kind[i] = k
        query[i] = make_query(titles[label[i]], genres[label[i]], entity[label[i]], k, rng)
    return query, query_kind


def _more_like_this(cfg: RankDataConfig, unit: torch.Tensor, anc: int, seen: np.ndarray,
                    scores: torch.Tensor) -> list[int]:
    """More-like-this candidates: the unseen items nearest to the anchor ``anc`` by the
    model's (normalised: ``unit``) item vectors, then the user's top items by ``scores``."""
    N = cfg.n_candidates
    near = unit @ unit[anc]
    near[:N_RESERVED_ITEMS] = float("-inf")
    near[seen] = float("-inf")
    first_part = torch.topk(near, min(cfg.anchor_candidates, N)).indices.tolist()
    rest = [c for c in torch.topk(scores, N).indices.tolist() if c not in set(first_part)]
    return (first_part + rest)[:N]


def _recommend_candidates(cfg: RankDataConfig, store: SequenceStore, rows: np.ndarray,
                          pos: np.ndarray, task: np.ndarray, user_vec: np.ndarray,
                          item_vec: np.ndarray, kids_items: np.ndarray
                          ) -> tuple[list[list[int]], np.ndarray]:
    """Candidates of the home, kids and more-like-this requests: the foundation model's top
    unseen items (kids titles only for kids; nearest to the anchor first for
    more-like-this). Returns them (empty for search) and (R,) anchors (-1: none)."""
    N = cfg.n_candidates
    item_t = torch.from_numpy(item_vec)
    unit = torch.nn.functional.normalize(item_t, dim=1)
    anchor = np.full(len(rows), -1, dtype=np.int64)
    cands: list[list[int]] = [[] for _ in range(len(rows))]
    rec = np.nonzero(task != "search")[0]
    for s in range(0, len(rec), 512):
        idx = rec[s:s + 512]
        scores = torch.from_numpy(user_vec[idx]) @ item_t.T  # (b, n_items)
        scores[:, :N_RESERVED_ITEMS] = float("-inf")
        for j, i in enumerate(idx.tolist()):
            a = store.offsets[rows[i]]
            seen = store.values["item"][a:a + pos[i]]
            sc = scores[j]
            sc[seen] = float("-inf")
            if task[i] == "kids":
                sc[~torch.from_numpy(kids_items)] = float("-inf")
            if task[i] == "more-like-this":
                anc = int(store.values["item"][a + pos[i] - 1])
                anchor[i] = anc
                cands[i] = _more_like_this(cfg, unit, anc, seen, sc)
            else:
                k = min(N, int(torch.isfinite(sc).sum()))
                cands[i] = torch.topk(sc, k).indices.tolist()
    return cands, anchor


def build_requests(prepared: str | Path, rec: Recommender, cfg: RankDataConfig | None = None,
                   progress=None) -> RankData:
    """Requests of every user of ``prepared`` (docs/guide/ranker.md) with the vectors of
    ``rec``'s model, trained on :func:`holdout_dataset` of ``prepared``."""
    cfg = cfg or RankDataConfig()
    rng = np.random.default_rng(cfg.seed)
    ds = PreparedDataset.load(prepared)
    fm = rec.model
    if rec.tokenizer is not None and rec.tokenizer.item_ids != ds.tokenizer.item_ids:
        raise RecfmError(f"{prepared}: its item vocabulary differs from the foundation model's; "
                         "train the model on holdout_dataset() of this prepared dataset")
    seqs = ds.sequences
    cols = list(dict.fromkeys(list(fm.input_columns) + ["device", "country", "surface"]))
    store = SequenceStore(seqs, cols)
    n_items = ds.tokenizer.n_items
    items = ds.items.sort("idx")
    counts: dict[str, int] = {}
    rows, pos, flat, label, popularity = _request_tokens(store, cfg, n_items, counts)
    R = len(rows)
    if R == 0:
        raise RecfmError(f"{prepared}: no ranking requests (users need more than "
                         f"{cfg.min_history} tokens)")
    split = _splits(rows, pos, len(store.lengths))
    surface, country, device, language = _request_context(ds, store, flat)
    task_arr = _tasks(rng, cfg, surface)

    if progress:
        progress("encoding histories")
    user_vec = user_vectors(fm, store, rows, pos)  # (R, d)
    with torch.no_grad():
        item_vec = fm.item_table().detach().float().numpy()  # (n_items, d)
    titles, genres, entity, kids_items = _item_meta(items, n_items)
    query, query_kind = _queries(rng, cfg, task_arr, label, titles, genres, entity)

    if progress:
        progress("retrieving candidates")
    bm25 = BM25Index(titles, genres, entity)
    cands, anchor = _recommend_candidates(cfg, store, rows, pos, task_arr, user_vec, item_vec,
                                          kids_items)
    log_pop = np.log1p(popularity)
    for i in np.nonzero(task_arr == "search")[0]:
        top, _ = bm25.top(query[i], cfg.n_candidates, tie_break=log_pop)
        cands[i] = top.tolist()
    label_pos = np.array([c.index(int(label[i])) if int(label[i]) in c else -1
                          for i, c in enumerate(cands)], dtype=np.int64)

    requests = pl.DataFrame({
        "request": np.arange(R, dtype=np.int64),
        "user_id": seqs["user_id"].cast(pl.Utf8).to_numpy()[rows],
        "position": pos.astype(np.int64),
        "split": split,
        "task": task_arr,
        "country": country,
        "language": language,
        "device": device,
        "query": pl.Series(query, dtype=pl.Utf8),
        "query_kind": pl.Series(query_kind, dtype=pl.Utf8),
        "anchor": anchor,
        "label": label.astype(np.int64),
        "candidates": pl.Series(cands, dtype=pl.List(pl.Int64)),
        "label_pos": label_pos,
    })
    for t in TASKS:
        sel = task_arr == t
        counts[f"requests_{t}"] = int(sel.sum())
        counts[f"retrieved_{t}"] = int((label_pos[sel] >= 0).sum())
    counts["requests"] = R
    log.info("ranking requests: %s", counts)
    return RankData(requests, items, user_vec, item_vec, popularity, counts)
