"""Incremental training: fine-tune an existing run on recent events only.

Recent events are tokenized with the run's own tokenizer and appended to each user's older
history; a ``fresh`` list column (1: recent, 0: context) makes only the recent tokens
targets (:func:`recfm.train.loop.train` recognises it; the training side:
:mod:`recfm.train.fresh`). Usage: docs/guide/training.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recfm.data.splits import list_columns
from recfm.errors import RecfmError
from recfm.io import atomic_dir, atomic_write_json
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.tokens.tokenizer import N_RESERVED_ITEMS, UNK
from recfm.train.fresh import FRESH

log = logging.getLogger(__name__)

INCREMENTAL_TRAIN: dict[str, Any] = {"lr": 1e-3, "warmup_steps": 10, "epochs": 20,
                                     "patience": 3}
"""Fine-tuning schedule used by ``recfm train --incremental`` unless a config overrides it."""


# ----------------------------------------------------------------------------- data side


def _remap_items(seqs: pl.DataFrame, from_ids: list[str], to_index: dict[str, int]
                 ) -> pl.DataFrame:
    """Re-express item indices of a dataset in another vocabulary (unknown → UNK)."""
    old = list(range(N_RESERVED_ITEMS, N_RESERVED_ITEMS + len(from_ids)))
    new = [to_index.get(iid, UNK) for iid in from_ids]
    dtype = seqs["item"].dtype.inner
    return seqs.with_columns(pl.col("item").list.eval(
        pl.element().replace_strict(old, new, default=UNK, return_dtype=dtype)))


def _drop_unknown(seqs: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Remove UNK-item tokens (items the run does not know) from every list column."""
    cols = list_columns(seqs)
    n_unknown = int((seqs["item"].explode() == UNK).sum())
    if not n_unknown:
        return seqs, 0
    long = seqs.select(["user_idx", "user_id"] + cols).explode(cols)
    long = long.filter(pl.col("item") != UNK)
    back = long.group_by("user_idx", maintain_order=True).agg(
        [pl.col("user_id").first()] + [pl.col(c) for c in cols])
    back = back.with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))
    return back.select(["user_idx", "user_id", "length"] + cols), n_unknown


def build_incremental_dataset(run: str | Path, events: pl.DataFrame, out: str | Path,
                              history: str | Path | None = None, replay: float = 0.0,
                              seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write a prepared dataset for incremental training of ``run`` on recent canonical
    ``events``. ``history``: a prepared dataset of the events before them, as context (None:
    none). Events on items the run does not know are dropped and counted (add them first
    with ``recfm add-items``). ``replay``: the seeded share of history tokens also trained
    on (docs/guide/training.md). ``overwrite``: replace an earlier dataset at ``out``.
    """
    run, out = Path(run), Path(out)
    rec = Recommender.from_pretrained(run)
    tok = rec.tokenizer
    if tok is None:
        raise RecfmError(f"{run}: the run has no tokenizer.json; cannot tokenize events")
    recent = rec.tokenize_events(events)
    recent, unknown = _drop_unknown(recent)
    if unknown:
        log.warning("%d recent events are on items the run does not know; dropped "
                    "(add them with recfm add-items)", unknown)
    recent = recent.filter(pl.col("length") > 0)
    recent = recent.with_columns(pl.col("item").list.eval(pl.lit(1, pl.Int8)).alias(FRESH))
    n_context = 0
    if history is not None:
        ds = PreparedDataset.load(history)
        if ds.tokenizer.facets != tok.facets or ds.tokenizer.value_edges != tok.value_edges:
            raise RecfmError(f"{history}: its tokenizer differs from the run {run}'s; give the "
                             "dataset the run was trained on as context")
        old = _remap_items(ds.sequences, ds.tokenizer.item_ids, tok.item_index())
        old, _ = _drop_unknown(old)
        old = old.filter(pl.col("user_id").is_in(recent["user_id"].implode()))
        old = old.with_columns(pl.col("item").list.eval(pl.lit(0, pl.Int8)).alias(FRESH))
        if replay > 0:
            rng = np.random.default_rng([seed, 11])
            old = old.with_columns(pl.col("item").map_elements(
                lambda items: (rng.random(len(items)) < replay).astype(np.int8).tolist(),
                return_dtype=pl.List(pl.Int8)).alias(FRESH))
        cols = [c for c in list_columns(recent) if c in old.columns]
        dropped = sorted(set(list_columns(recent)) - set(cols))
        if dropped:
            log.warning("context history lacks columns %s; they are dropped", dropped)
        both = pl.concat([old.select(["user_id"] + cols).with_columns(pl.lit(0).alias("_o")),
                          recent.select(["user_id"] + cols).with_columns(pl.lit(1).alias("_o"))],
                         how="vertical_relaxed")
        n_context = int(old["length"].sum())
        recent = (both.sort(["user_id", "_o"])
                  .group_by("user_id", maintain_order=True)
                  .agg([pl.col(c).list.explode(keep_nulls=True, empty_as_null=False)
                       for c in cols]))
    recent = (recent.sort("user_id")
              .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("user_idx"),
                            pl.col("item").list.len().cast(pl.Int32).alias("length")))
    cols = list_columns(recent)
    recent = recent.select(["user_idx", "user_id", "length"] + cols)
    report = {"dataset": "incremental", "from_run": str(run),
              "history": str(history) if history else None,
              "users": recent.height, "fresh_tokens": int(recent[FRESH].list.sum().sum()),
              "context_tokens": n_context, "events_in": events.height, "replay": replay,
              "unknown_item_tokens_dropped": unknown}
    with atomic_dir(out, "prepared", overwrite, (run, history)) as tmp:
        recent.write_parquet(tmp / "tokens.parquet")
        rec.items.write_parquet(tmp / "items.parquet")
        tok.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "report.json", report)
    log.info("incremental dataset %s: %d users, %d fresh tokens, %d context tokens", out,
             report["users"], report["fresh_tokens"], n_context)
    return report
