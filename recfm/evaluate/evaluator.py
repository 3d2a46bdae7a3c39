"""Evaluate a model or a baseline on a split, streaming over batches of users."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, history_batches
from recfm.data.splits import leave_one_out
from recfm.errors import RecfmError
from recfm.evaluate.metrics import KS, RankingAccumulator, sampled_rank
from recfm.evaluate.ranks import Scorer, frame_targets, scored_batches
from recfm.model.device import Placement
from recfm.model.scoring import ChunkFn, chunked_ranks, without_reserved
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.tokens.tokenizer import N_RESERVED_ITEMS


# Catalogs larger than this are scored in chunks of this many items (when the scorer can).
AUTO_ITEM_CHUNK = 131072


def evaluate_scorer(scorer: Scorer, frame: pl.DataFrame, n_items: int, max_len: int,
                    columns: list[str], exclude_seen: bool = True, batch_size: int = 256,
                    ks: tuple[int, ...] = KS, sampled_negatives: int = 0,
                    item_chunk: int | None = None) -> dict[str, float]:
    """Full-ranking metrics of ``scorer`` on ``frame`` (history list columns + ``target``).

    ``item_chunk``: for scorers with a ``chunked`` method, stream the catalog this many items
    at a time (same metrics, no (B, n_items) matrix); None: chunk above ``AUTO_ITEM_CHUNK``.
    """
    if item_chunk is None:
        item_chunk = AUTO_ITEM_CHUNK if n_items > AUTO_ITEM_CHUNK else 0
    store = SequenceStore(frame, columns)
    targets = frame_targets(frame)
    acc = RankingAccumulator(n_items, N_RESERVED_ITEMS, ks, sampled_negatives)
    repeats = 0
    with torch.no_grad():
        if item_chunk and hasattr(scorer, "chunked"):
            repeats = _add_chunked(acc, scorer, store, targets, n_items, max_len, exclude_seen,
                                   batch_size, item_chunk)
        else:
            for rows, scores, seen in scored_batches(scorer, store, max_len, batch_size,
                                                     exclude_seen):
                if seen is not None:
                    b_t, i_t = seen
                    repeats += int((i_t == targets[rows][b_t]).sum())
                acc.add(scores, targets[rows])
    out = acc.result()
    out["targets_seen_before"] = repeats
    return out


def _add_chunked(acc: RankingAccumulator, scorer, store: SequenceStore, targets: torch.Tensor,
                 n_items: int, max_len: int, exclude_seen: bool, batch_size: int, chunk: int
                 ) -> int:
    """:func:`evaluate_scorer`'s batches streamed over item chunks into ``acc`` (memory
    O(B × chunk)); returns how many targets were seen before."""
    repeats = 0
    for rows, batch in history_batches(store, max_len, batch_size, by_length=True):
        t = targets[rows]
        has = t >= 0
        acc.skipped += int((~has).sum())
        if not has.any():
            continue
        keep = has.nonzero().squeeze(1).numpy()
        sub = {k: v[keep] for k, v in batch.items()}
        fn = without_reserved(scorer.chunked(rows[keep], sub), N_RESERVED_ITEMS)
        t = t[keep]
        seen = None
        if exclude_seen:
            b, items = store.history_items(rows[keep])
            repeats += int((items == t.numpy()[b]).sum())
            seen = (b, items)
        negs = acc.draw_negatives(len(t), n_items) if acc.sampled else None
        rank, top, neg_s, t_s = chunked_ranks(fn, n_items, t, chunk, seen, k=max(acc.ks),
                                              extra=negs)
        acc.add_ranked(rank, top)
        if negs is not None:
            acc.add_sampled_ranks(sampled_rank(neg_s, negs, t_s[:, None], t))
    return repeats


class ModelScorer:
    """The model's scores for a batch of histories; also by item chunk (large catalogs), with
    the item table computed once per scorer (make a new one after the weights change).
    ``placement``: run the model there (a GPU, autocast); fp32 scores come back to the CPU."""

    def __init__(self, model, placement: Placement | None = None) -> None:
        self.model = model
        self.at = placement or Placement(torch.device("cpu"))
        self._table: torch.Tensor | None = None

    def __call__(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.at.autocast():
            return self.model.score(self.model.last_hidden(self.at.to(batch))).float().cpu()

    def chunked(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> ChunkFn:
        at, model = self.at, self.model
        with at.autocast():
            if self._table is None:
                self._table = model.item_table().detach()
            users, table = model.last_hidden(at.to(batch)), self._table

        def score(u: torch.Tensor, start: int, end: int) -> torch.Tensor:
            with at.autocast():
                return model.score_items(u, start, end, table).float().cpu()  # (B, C)

        score_chunk = lambda start, end: score(users, start, end)  # noqa: E731
        score_chunk.rows = lambda r, start, end: score(users[torch.as_tensor(r)], start, end)
        return score_chunk


class GenerativeScorer:
    """Generative retrieval as scores: the top ``k`` items of the beam search over the items'
    code trie (:meth:`FoundationModel.generative_top`) get their log-probabilities, every
    other item -inf (all ranked last, tied); the history's items are excluded inside the
    decoding, so k unseen items come back when the trie has them."""

    def __init__(self, model, k: int = 10, beam: int | None = None,
                 placement: Placement | None = None) -> None:
        self.model, self.k, self.beam = model, k, beam
        self.at = placement or Placement(torch.device("cpu"))

    def __call__(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self.at.to(batch)
        with self.at.autocast():
            users = self.model.last_hidden(batch).float()  # (B, d)
        B, n = users.size(0), self.model.cfg.n_items
        seen = torch.zeros(B, n, dtype=torch.bool, device=users.device)
        seen.scatter_(1, batch["item"], True)  # (B, n_items)
        items, logp = self.model.generative_top(users, self.k, seen, self.beam)  # (B, k)
        out = torch.full((B, n), float("-inf"))
        hit = items >= 0
        out[torch.arange(B)[:, None].expand_as(items)[hit.cpu()], items[hit].cpu()] = \
            logp[hit].float().cpu()
        return out


def model_scorer(model, placement: Placement | None = None) -> Scorer:
    return ModelScorer(model, placement)


class VectorScorer:
    """The same (n_items,) scores for every user (popularity, recency baselines)."""

    def __init__(self, vec: torch.Tensor) -> None:
        self.vec = vec

    def __call__(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.vec.expand(len(rows), -1)

    def chunked(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> ChunkFn:
        n, vec = len(rows), self.vec
        return lambda start, end: vec[start:end].expand(n, -1).clone()  # (B, C)


def random_scorer(n_items: int, seed: int) -> Scorer:
    """Uniform random scores, a fresh draw per batch (seeded): the chance baseline."""
    gen = torch.Generator().manual_seed(seed)
    return lambda rows, batch: torch.rand(len(rows), n_items, generator=gen)


def popularity_scorer(train: pl.DataFrame, n_items: int) -> Scorer:
    """Items by how often they occur in the training sequences."""
    counts = np.bincount(train["item"].explode().drop_nulls().to_numpy(), minlength=n_items)
    return VectorScorer(torch.from_numpy(counts[:n_items].astype(np.float32)))


def recent_scorer(train: pl.DataFrame, n_items: int) -> Scorer:
    """Items by the last time anyone interacted with them in training (ties: popularity);
    without ``ts``, the position in the user's sequence stands in."""
    items = train["item"].explode().to_numpy()
    if "ts" in train.columns:
        ts = train["ts"].explode().to_numpy().astype(np.float64)
    else:
        ts = train.select(pl.col("item").list.eval(pl.int_range(pl.len()))).explode("item")
        ts = ts["item"].to_numpy().astype(np.float64)
    last = np.full(n_items, -np.inf)
    np.maximum.at(last, items, ts)
    counts = np.bincount(items, minlength=n_items)[:n_items]
    # rank by last time, then by popularity: combine into one order-preserving score
    order = np.lexsort((counts, last))
    score_vec = np.empty(n_items, dtype=np.float32)
    score_vec[order] = np.arange(n_items, dtype=np.float32)
    score_vec[~np.isfinite(last)] = -1.0
    return VectorScorer(torch.from_numpy(score_vec))


def evaluate_run(run, data_dir, split: str = "test", batch_size: int = 512,
                 sampled_negatives: int = 0, baselines: bool = True,
                 device: str = "auto", precision: str = "auto") -> dict[str, dict]:
    """Metrics of the model of ``run`` and of the baselines on a split of a prepared dataset:
    ``{"model": {...}, "popularity": {...}, "recent": {...}}``; the model is scored on
    ``device`` (:class:`~recfm.model.device.Placement`)."""
    rec = Recommender.from_pretrained(run)  # its files checked against the manifest
    at = Placement.of(device, precision)
    model, tok = rec.model.to(at.device), rec.tokenizer
    ds = PreparedDataset.load(data_dir)
    run_ids = tok.item_ids if tok is not None else []
    if ds.tokenizer.item_ids[:len(run_ids)] != run_ids[:len(ds.tokenizer.item_ids)]:
        raise RecfmError(f"{data_dir}: its item vocabulary differs from the run's {run}; "
                         "evaluate on the dataset the model was trained on")
    s = leave_one_out(ds.sequences)
    frame = s.test if split == "test" else s.valid
    n_items, max_len, cols = model.cfg.n_items, model.context_len, model.input_columns
    scorers = {"model": model_scorer(model, at)}
    if baselines:
        scorers["popularity"] = popularity_scorer(s.train, n_items)
        scorers["recent"] = recent_scorer(s.train, n_items)
    return {name: evaluate_scorer(scorer, frame, n_items, max_len, cols, batch_size=batch_size,
                                  sampled_negatives=sampled_negatives)
            for name, scorer in scorers.items()}
