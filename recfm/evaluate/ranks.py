"""Per-event ranks and target log-probabilities, streaming over batches of users.

Where :func:`recfm.evaluate.evaluator.evaluate_scorer` keeps means, these keep one number
per row, for protocols that slice the events afterwards (cold vs warm items, a bootstrap
interval, a paired comparison). Batches are scored as the evaluator scores them
(:func:`scored_batches`), so a rank here is the rank it counts. Memory is O(batch × items).

A frame is one row per evaluated event: history list columns and ``target`` (the item
index, as :func:`recfm.data.splits.history_rows` and :func:`~recfm.data.splits.event_rows`
build them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, history_batches
from recfm.evaluate.metrics import ranks_of
from recfm.tokens.tokenizer import N_RESERVED_ITEMS

Scorer = Callable[[np.ndarray, dict[str, torch.Tensor]], torch.Tensor]
"""``scorer(rows, batch)`` → (B, n_items) scores of the batch's histories."""

Seen = tuple[torch.Tensor, torch.Tensor]
"""(batch row, item) index pairs of the items in each history."""


def frame_targets(frame: pl.DataFrame) -> torch.Tensor:
    """(n,) int64 target item of each row; -1 where the row has none (null)."""
    return torch.from_numpy(frame["target"].fill_null(-1).to_numpy().astype(np.int64))


@torch.no_grad()
def scored_batches(scorer: Scorer, store: SequenceStore, max_len: int, batch_size: int,
                   exclude_seen: bool = True, candidates: torch.Tensor | None = None
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, Seen | None]]:
    """``(rows, scores, seen)`` per batch of histories, grouped by length: (B, n_items) float
    scores, -inf at reserved ids, at non-``candidates`` (n_items,) bool, and with
    ``exclude_seen`` at each history's items (``seen``: their index pairs, else None)."""
    for rows, batch in history_batches(store, max_len, batch_size, by_length=True):
        scores = scorer(rows, batch).float().clone()  # (B, V)
        scores[:, :N_RESERVED_ITEMS] = float("-inf")
        seen = None
        if exclude_seen:
            b, items = store.history_items(rows)
            seen = (torch.from_numpy(b), torch.from_numpy(items))
            scores[seen] = float("-inf")
        if candidates is not None:
            scores[:, ~candidates] = float("-inf")
        yield rows, scores, seen


def target_ranks(scorer: Scorer, frame: pl.DataFrame, max_len: int, columns: list[str],
                 exclude_seen: bool = True, candidates: torch.Tensor | None = None,
                 batch_size: int = 256) -> np.ndarray:
    """(n,) 0-based pessimistic rank of each row's target, in frame order: n_items when
    excluded (seen, or not a candidate), -1 without a target. ``columns``: scorer inputs.

    Example:
        >>> ranks = target_ranks(model_scorer(model), split.test, model.cfg.max_len,
        ...                      model.input_columns)                # doctest: +SKIP
        >>> rank_summary(ranks)["ndcg@10"]                           # doctest: +SKIP
    """
    store = SequenceStore(frame, columns)
    targets = frame_targets(frame)
    out = np.full(len(store), -1, dtype=np.int64)
    for rows, scores, _ in scored_batches(scorer, store, max_len, batch_size, exclude_seen,
                                          candidates):
        t = targets[rows]
        has = t >= 0
        if not has.all():
            rows, scores, t = rows[has.numpy()], scores[has], t[has]
        out[rows] = ranks_of(scores, t).numpy()
    return out


def target_log_probs(scorer: Scorer, frame: pl.DataFrame, max_len: int, columns: list[str],
                     batch_size: int = 512) -> np.ndarray:
    """(n,) log p(target | history) of each row under a full softmax over every item
    (seen ones included: a repeat is a real event here), in frame order; rows without a
    target get NaN."""
    store = SequenceStore(frame, columns)
    targets = frame_targets(frame)
    out = np.full(len(store), np.nan)
    for rows, scores, _ in scored_batches(scorer, store, max_len, batch_size,
                                          exclude_seen=False):
        t = targets[rows]
        has = t >= 0
        if not has.all():
            rows, scores, t = rows[has.numpy()], scores[has], t[has]
        out[rows] = torch.log_softmax(scores, -1).gather(1, t[:, None])[:, 0].numpy()  # (B,)
    return out
