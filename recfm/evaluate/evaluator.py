"""Evaluate a model or a baseline on a split, streaming over batches of users."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import torch

from recfm.batching import SequenceStore, history_batches
from recfm.evaluate.metrics import KS, RankingAccumulator
from recfm.tokenizer import N_RESERVED_ITEMS

Scorer = Callable[[np.ndarray, dict[str, torch.Tensor]], torch.Tensor]


def evaluate_scorer(scorer: Scorer, frame: pl.DataFrame, n_items: int, max_len: int,
                    columns: list[str], exclude_seen: bool = True, batch_size: int = 256,
                    ks: tuple[int, ...] = KS, sampled_negatives: int = 0) -> dict[str, float]:
    """Full-ranking metrics of ``scorer`` on ``frame`` (history list columns + ``target``).

    ``scorer(rows, batch)`` returns (B, n_items) scores for the batch's histories.
    """
    store = SequenceStore(frame, columns)
    targets = torch.from_numpy(frame["target"].fill_null(-1).to_numpy().astype(np.int64))
    acc = RankingAccumulator(n_items, N_RESERVED_ITEMS, ks, sampled_negatives)
    repeats = 0
    with torch.no_grad():
        for rows, batch in history_batches(store, max_len, batch_size, by_length=True):
            scores = scorer(rows, batch).float().clone()  # (B, V)
            scores[:, :N_RESERVED_ITEMS] = float("-inf")
            if exclude_seen:
                b, items = store.history_items(rows)
                b_t, i_t = torch.from_numpy(b), torch.from_numpy(items)
                repeats += int((i_t == targets[rows][b_t]).sum())
                scores[b_t, i_t] = float("-inf")
            acc.add(scores, targets[rows])
    out = acc.result()
    out["targets_seen_before"] = repeats
    return out


def model_scorer(model) -> Scorer:
    def score(rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.score(model.last_hidden(batch))
    return score


def popularity_scorer(train: pl.DataFrame, n_items: int) -> Scorer:
    """Items by how often they occur in the training sequences."""
    counts = np.bincount(train["item"].explode().drop_nulls().to_numpy(), minlength=n_items)
    pop = torch.from_numpy(counts[:n_items].astype(np.float32))

    def score(rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pop.expand(len(rows), -1)
    return score


def recent_scorer(train: pl.DataFrame, n_items: int) -> Scorer:
    """Items by the last time anyone interacted with them in training (ties: popularity).

    Without real time (``ts`` missing), the position in the user's sequence stands in.
    """
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
    vec = torch.from_numpy(score_vec)

    def score(rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return vec.expand(len(rows), -1)
    return score


def evaluate_run(run, data_dir, split: str = "test", batch_size: int = 512,
                 sampled_negatives: int = 0, baselines: bool = True) -> dict[str, dict]:
    """The model of ``run`` and the baselines on a split of a prepared dataset.

    Returns ``{"model": {...}, "popularity": {...}, "recent": {...}}`` (metrics dicts).
    """
    from recfm.data.splits import leave_one_out
    from recfm.model.foundation import FoundationModel
    from recfm.prepare import PreparedDataset

    model = FoundationModel.from_pretrained(run)
    ds = PreparedDataset.load(data_dir)
    if ds.tokenizer.item_ids[: len(model.tokenizer.item_ids)] != model.tokenizer.item_ids[
            : len(ds.tokenizer.item_ids)]:
        from recfm.errors import RecfmError
        raise RecfmError(f"{data_dir}: its item vocabulary differs from the run's {run}; "
                         "evaluate on the dataset the model was trained on")
    s = leave_one_out(ds.sequences)
    frame = s.test if split == "test" else s.valid
    n_items, max_len, cols = model.cfg.n_items, model.cfg.max_len, model.input_columns
    kw = dict(batch_size=batch_size, sampled_negatives=sampled_negatives)
    out = {"model": evaluate_scorer(model_scorer(model), frame, n_items, max_len, cols, **kw)}
    if baselines:
        out["popularity"] = evaluate_scorer(popularity_scorer(s.train, n_items), frame, n_items,
                                            max_len, cols, **kw)
        out["recent"] = evaluate_scorer(recent_scorer(s.train, n_items), frame, n_items,
                                        max_len, cols, **kw)
    return out
