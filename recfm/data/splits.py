"""Evaluation splits over prepared token sequences: leave-one-out, temporal, last-token
(docs/guide/training.md). Every list column is sliced alike, so facets stay aligned; the
building blocks are public so that every "hold out the last k" is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


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


def drop_last(seqs: pl.DataFrame, k: int | pl.Expr) -> pl.DataFrame:
    """Each row without its last ``k`` (a number or a per-row expression) tokens: every list
    column cut, ``length`` updated; a row with fewer than ``k`` tokens is left empty.

    Example:
        >>> seqs = pl.DataFrame({"user_idx": [0], "length": [3], "item": [[4, 5, 6]]})
        >>> drop_last(seqs, 1)["item"].to_list()
        [[4, 5]]
    """
    keep = (pl.col("length") - k).clip(lower_bound=0)
    return (seqs.with_columns([pl.col(c).list.head(keep) for c in list_columns(seqs)])
            .with_columns(keep.alias("length")))


def history_rows(seqs: pl.DataFrame, at: pl.Expr, extra: list[pl.Expr] | tuple = ()
                 ) -> pl.DataFrame:
    """One row per user: the tokens before position ``at`` (every list column), the item at
    ``at`` as ``target``, its other facets as ``target_<facet>``, then ``extra`` columns
    computed from the whole sequences."""
    cols = list_columns(seqs)
    return seqs.select(
        [pl.col("user_idx"), pl.col("user_id"),
         pl.col("item").list.get(at).alias("target")]
        + [pl.col(c).list.get(at).alias(f"target_{c}") for c in cols if c != "item"]
        + list(extra)
        + [pl.col(c).list.head(at) for c in cols]
    ).with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))


def event_rows(seqs: pl.DataFrame, first: pl.Expr) -> pl.DataFrame:
    """One row per token at position ≥ ``first`` (and ≥ 1: a history is never empty): the
    history before it (list columns), ``target`` (its item) and ``pos`` (its position)."""
    cols = list_columns(seqs)
    long = (seqs.with_columns(pl.int_ranges(first.clip(1), pl.col("length")).alias("pos"))
            .explode("pos").drop_nulls("pos"))
    return long.select(
        [pl.col("user_idx"), pl.col("user_id"), pl.col("pos"),
         pl.col("item").list.get(pl.col("pos")).alias("target")]
        + [pl.col(c).list.head(pl.col("pos")) for c in cols]
    ).with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))


def leave_one_out(seqs: pl.DataFrame, min_length: int = 3) -> Split:
    """Last token → test, second-last → validation, the rest → training."""
    n = pl.col("length")
    eligible = seqs.filter(n >= min_length)
    short = seqs.filter(n < min_length)
    train = pl.concat([drop_last(eligible, 2), short]).sort("user_idx")
    valid = history_rows(eligible, n - 2)
    test = history_rows(eligible, n - 1)
    counts = {
        "users": seqs.height,
        "users_evaluated": eligible.height,
        "users_too_short": short.height,
        "min_length": min_length,
    }
    return Split(train, valid, test, counts)


def last_token_split(seqs: pl.DataFrame, min_length: int = 2) -> Split:
    """Train on every token but each user's last, which validates (and is ``test`` too), for
    protocols whose test lies elsewhere. Users under ``min_length`` tokens train on all."""
    n = pl.col("length")
    ok = seqs.filter(n >= min_length)
    train = pl.concat([drop_last(ok, 1), seqs.filter(n < min_length)]).sort("user_idx")
    valid = history_rows(ok, n - 1)
    return Split(train, valid, valid, {"users": seqs.height, "users_validating": ok.height})


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
    test = history_rows(evaluable, nb)
    counts = {
        "users": seqs.height,
        "users_evaluated": evaluable.height,
        "users_cold_at_t": seqs.filter(has_future & (nb == 0)).height,
        "users_without_future": seqs.filter(~has_future).height,
        "split_time": int(t),
    }
    return Split(train, None, test, counts)
