"""Incremental training: fine-tune an existing run on recent events only.

New titles join a run with ``recfm add-items``; their interactions (and everything else
that happened since) then arrive as *recent events*. Instead of retraining from scratch,

    recfm train --init-from RUN2 --events recent.parquet --incremental --out RUN3

tokenizes the recent events with the run's own tokenizer, appends them to each user's
older history (the run's training data, when it is still there, as context), and
fine-tunes the run's weights with the loss on the recent tokens only: older tokens are
context, never targets. A ``fresh`` list column (1: recent, 0: context) marks them; the
training loop (:func:`recfm.train.loop.train`) recognises it.

Validation: the last recent token of a sample of users is held out (model selection and
early stopping only); everything else recent is trained on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.data.splits import Split, list_columns
from recfm.errors import RecfmError
from recfm.io import atomic_dir, atomic_write_json
from recfm.tokenizer import UNK

log = logging.getLogger(__name__)

FRESH = "fresh"

INCREMENTAL_TRAIN: dict[str, Any] = {"lr": 1e-3, "warmup_steps": 10, "epochs": 20,
                                     "patience": 3}
"""Fine-tuning schedule used by ``recfm train --incremental`` unless a config overrides it."""


# ----------------------------------------------------------------------------- training side


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
    train = pl.concat([
        held.with_columns([pl.col(c).list.head(n - 1) for c in cols])
        .with_columns((n - 1).alias("length")),
        seqs.filter(~pl.col("_valid")),
    ]).drop("_valid").sort("user_idx")
    valid = held.select(
        [pl.col("user_idx"), pl.col("user_id"), pl.col("item").list.get(n - 1).alias("target")]
        + [pl.col(c).list.head(n - 1) for c in cols]
    ).with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))
    counts = {"users": seqs.height, "users_validating": held.height,
              "fresh_tokens": int(seqs[FRESH].list.sum().sum())}
    return Split(train, valid, None, counts)  # type: ignore[arg-type]


def fresh_spans(store, window: int) -> np.ndarray:
    """(n, 3) (row, start, end) windows of ≤ ``window`` tokens covering every fresh target.

    Walks each sequence from its end: a window ends at the last fresh token not yet
    covered and reaches back ``window`` tokens of context; only positions ≥ 1 of a window
    are targets, so the next window ends at the last fresh token before that.
    """
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


# ----------------------------------------------------------------------------- data side


def _remap_items(seqs: pl.DataFrame, from_ids: list[str], to_index: dict[str, int]
                 ) -> pl.DataFrame:
    """Re-express item indices of a dataset in another vocabulary (unknown → UNK)."""
    old = list(range(3, 3 + len(from_ids)))
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
                              seed: int = 0) -> dict[str, Any]:
    """Write a prepared dataset for incremental training of ``run`` on ``events``.

    ``events``: canonical raw events (recent ones). ``history``: a prepared dataset whose
    sequences precede them (the run's training data), used as context; None: the recent
    events alone. Events on items the run does not know are dropped and counted (add
    them first with ``recfm add-items``). ``replay``: the fraction of the history's tokens,
    drawn at random (seeded), that are trained on too (replay of older events): recent
    events over-represent new titles, and a model fine-tuned on them alone learns to
    recommend new titles far more often than they are chosen (cold_start benchmark).
    """
    from recfm.model.foundation import FoundationModel
    from recfm.prepare import PreparedDataset

    run, out = Path(run), Path(out)
    fm = FoundationModel.from_pretrained(run)
    tok = fm.tokenizer
    if tok is None:
        raise RecfmError(f"{run}: the run has no tokenizer.json; cannot tokenize events")
    recent = fm.tokenize_events(events)
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
    with atomic_dir(out) as tmp:
        recent.write_parquet(tmp / "tokens.parquet")
        fm.items.write_parquet(tmp / "items.parquet")
        tok.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "report.json", report)
    log.info("incremental dataset %s: %d users, %d fresh tokens, %d context tokens", out,
             report["users"], report["fresh_tokens"], n_context)
    return report


def run_data_dir(run: str | Path) -> Path | None:
    """The prepared dataset a run (or the run it was derived from) was trained on, if present."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("incremental") and meta.get("init_from"):  # its data holds recent users only
        return run_data_dir(meta["init_from"])
    data = meta.get("data", {}).get("path")
    return Path(data) if data and Path(data, "tokens.parquet").is_file() else None
