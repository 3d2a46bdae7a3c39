"""Evaluation splits over prepared token sequences.

* **Leave-one-out** (the offline protocol of ``docs/BENCHMARKS.md``): per user, the last
  token is the test target, the second-last the validation target (model selection and
  early stopping only), the rest is training. Users with fewer than three tokens cannot
  give both targets: they train on everything and are counted, never silently lost.
* **Global temporal split**: tokens before time ``T`` train; each user's first token at
  or after ``T`` is the test target, with everything before ``T`` as its history. Users
  with no history before ``T`` (cold) and users with nothing after ``T`` are counted.

Sequences are rows of list columns (see :func:`recfm.tokenizer.tokenize`); the split
slices every list column the same way, so facets stay aligned with items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

META_COLUMNS = ("user_idx", "user_id", "length")


def list_columns(seqs: pl.DataFrame) -> list[str]:
    return [c for c, t in seqs.schema.items() if isinstance(t, pl.List)]


@dataclass
class Split:
    """``train``: sequences to learn from. ``valid`` / ``test``: one row per evaluated user
    with the history (list columns, as in ``train``), ``target`` (item index) and the
    target token's other facets as ``target_<facet>``."""

    train: pl.DataFrame
    valid: pl.DataFrame | None
    test: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)


def _history(seqs: pl.DataFrame, keep: pl.Expr, target_at: pl.Expr) -> pl.DataFrame:
    cols = list_columns(seqs)
    return seqs.select(
        [pl.col("user_idx"), pl.col("user_id"),
         pl.col("item").list.get(target_at).alias("target")]
        + [pl.col(c).list.get(target_at).alias(f"target_{c}") for c in cols if c != "item"]
        + [pl.col(c).list.head(keep) for c in cols]
    ).with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))


def leave_one_out(seqs: pl.DataFrame, min_length: int = 3) -> Split:
    """Last token → test, second-last → validation, the rest → training."""
    n = pl.col("length")
    eligible = seqs.filter(n >= min_length)
    short = seqs.filter(n < min_length)
    cols = list_columns(seqs)
    train = pl.concat([
        eligible.with_columns([pl.col(c).list.head(n - 2) for c in cols])
        .with_columns((n - 2).alias("length")),
        short,
    ]).sort("user_idx")
    valid = _history(eligible, n - 2, n - 2)
    test = _history(eligible, n - 1, n - 1)
    counts = {
        "users": seqs.height,
        "users_evaluated": eligible.height,
        "users_too_short": short.height,
        "min_length": min_length,
    }
    return Split(train, valid, test, counts)


def temporal_split(seqs: pl.DataFrame, t: int) -> Split:
    """Train on tokens before ``t`` (seconds); test on each user's first token at/after it."""
    cols = list_columns(seqs)
    n_before = pl.col("ts").list.eval((pl.element() < t).sum()).list.first()
    seqs = seqs.with_columns(n_before.cast(pl.Int32).alias("_nb"))
    nb = pl.col("_nb")
    train = (seqs.filter(nb > 0)
             .with_columns([pl.col(c).list.head(nb) for c in cols])
             .with_columns(nb.alias("length")).drop("_nb"))
    has_future = nb < pl.col("length")
    evaluable = seqs.filter(has_future & (nb > 0))
    test = _history(evaluable, nb, nb)
    counts = {
        "users": seqs.height,
        "users_evaluated": evaluable.height,
        "users_cold_at_t": seqs.filter(has_future & (nb == 0)).height,
        "users_without_future": seqs.filter(~has_future).height,
        "split_time": int(t),
    }
    return Split(train, None, test, counts)
