"""Incremental training data: only *fresh* (recent) tokens are targets, older ones context.

A prepared dataset with a ``fresh`` list column (1: recent, 0: context; written by
:func:`recfm.adapt.incremental.build_incremental_dataset`) trains incrementally: spans
cover every fresh target, context targets are masked, and the last fresh token of a
sample of users validates.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import Split, drop_last, list_columns

FRESH = "fresh"


def fresh_split(seqs: pl.DataFrame, valid_fraction: float = 0.1, seed: int = 0) -> Split:
    """Train on every fresh token; the last (fresh) token of a sample of users validates."""
    rng = np.random.default_rng([seed, 7])
    pick = rng.random(seqs.height) < valid_fraction
    n = pl.col("length")
    ok = (pick & (seqs["length"] >= 2).to_numpy()
          & (seqs[FRESH].list.last() == 1).fill_null(False).to_numpy())
    seqs = seqs.with_columns(pl.Series("_valid", ok))
    cols = list_columns(seqs)
    held = seqs.filter(pl.col("_valid"))
    train = pl.concat([drop_last(held, 1), seqs.filter(~pl.col("_valid"))]
                      ).drop("_valid").sort("user_idx")
    valid = held.select(
        [pl.col("user_idx"), pl.col("user_id"), pl.col("item").list.get(n - 1).alias("target")]
        + [pl.col(c).list.head(n - 1) for c in cols]
    ).with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))
    counts = {"users": seqs.height, "users_validating": held.height,
              "fresh_tokens": int(seqs[FRESH].list.sum().sum())}
    return Split(train, valid, None, counts)  # type: ignore[arg-type]


def fresh_spans(store: SequenceStore, window: int) -> np.ndarray:
    """(n, 3) (row, start, end) windows of ≤ ``window`` tokens covering every fresh target:
    from each sequence's end, a window ends at the last uncovered fresh token and reaches
    back ``window`` tokens (its position 0 is no target: the next ends before position 1)."""
    fresh = store.values[FRESH]
    out = []
    for row, n in enumerate(store.lengths):
        f = fresh[store.offsets[row]:store.offsets[row] + n]
        pos = np.flatnonzero(f[1:] == 1) + 1  # fresh targets (position 0 is never a target)
        k = len(pos) - 1
        while k >= 0:
            end = int(pos[k]) + 1
            start = max(0, end - window)
            out.append((row, start, end))
            while k >= 0 and pos[k] >= start + 1:
                k -= 1
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def mask_context_targets(batch: dict[str, torch.Tensor]) -> None:
    """Only fresh tokens are targets: zero (= no target) the context ones, in place."""
    full = batch.pop(f"future_{FRESH}", None)
    inputs = batch.pop(FRESH)
    if full is None:  # reconstruct (B, T + 1) from inputs and the last target
        full = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)
    batch["target"] = batch["target"].masked_fill(full[:, 1:] == 0, 0)
    if "future_item" in batch:
        batch["future_item"] = batch["future_item"].masked_fill(full == 0, 0)
