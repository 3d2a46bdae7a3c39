"""Events → interaction tokens: filter, merge repeats, encode facets, number the items.

A token is one interaction *event* with many facets, not a bare item id. Codes: 0 is
padding everywhere, 1 "missing or unknown" for every categorical facet; items come after
the reserved ids (pad, unknown/new, mask), and the vocabulary grows by appending, never
renumbering. The steps: docs/guide/prepare.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from recfm import __version__
from recfm.config import from_dict
from recfm.data.schema import EVENT_REQUIRED, LINE
from recfm.errors import InputError, reading, shorten
from recfm.io import atomic_write_json

TOKENIZER_FORMAT = 1

PAD, UNK, MASK = 0, 1, 2
N_RESERVED_ITEMS = 3
FACET_PAD, FACET_UNK = 0, 1
N_RESERVED_FACET = 2

DEFAULT_STRENGTH = [
    "impression", "search", "trailer", "short_play", "play", "add_to_list",
    "thumbs_up", "review", "rate", "complete",
]


@dataclass
class TokenizerConfig:
    """How events become tokens. Saved inside ``tokenizer.json`` with a version."""

    drop_actions: list[str] = field(default_factory=lambda: ["impression"])
    """Actions that never become tokens (counted in the report)."""
    short_play_actions: list[str] = field(default_factory=lambda: ["play"])
    min_play_seconds: float = 0.0
    """Plays (``short_play_actions``) with ``value`` below this are dropped or relabelled."""
    short_play_mode: Literal["drop", "relabel"] = "drop"
    short_play_label: str = "short_play"
    merge_window_s: float = 1800.0
    """Adjacent same-item events at most this far apart merge into one token; 0 disables."""
    action_strength: list[str] = field(default_factory=lambda: list(DEFAULT_STRENGTH))
    value_agg: Literal["sum", "max", "last"] = "sum"
    """How a merged token's value is formed: durations sum, ratings take the max."""
    n_value_buckets: int = 16
    n_gap_buckets: int = 32
    max_row: int = 64
    max_history: int | None = None
    """Keep only each user's last ``max_history`` tokens in the prepared data (None: all)."""
    max_len: int = 200
    """Model context: sequences longer than this are truncated or cut into windows."""
    window: Literal["truncate", "sliding"] = "truncate"
    stride: int | None = None
    unknown_items: Literal["error", "drop"] = "error"
    """Events whose item is missing from the catalog: stop with an error, or drop and count."""
    min_time: str = "1970-01-01"
    max_time: str = "2100-01-01"
    """Plausible event times (ISO-8601, UTC unless given): ``prepare`` refuses an event
    outside [min_time, max_time), naming its line (a time in a wrong unit lands outside)."""

    def __post_init__(self) -> None:
        self.time_bounds()

    def time_bounds(self) -> tuple[int, int]:
        """``min_time`` and ``max_time`` in seconds since 1970-01-01 UTC."""
        bounds = []
        for key in ("min_time", "max_time"):
            try:
                t = datetime.fromisoformat(getattr(self, key))
                bounds.append(int((t if t.tzinfo else t.replace(tzinfo=timezone.utc))
                                  .timestamp()))
            except (TypeError, ValueError, OverflowError):
                raise InputError("<tokenizer config>", None, key,
                                 "an ISO-8601 date such as 2100-01-01",
                                 shorten(getattr(self, key))) from None
        return bounds[0], bounds[1]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<tokenizer config>"
                  ) -> "TokenizerConfig":
        return from_dict(cls, data, source)


@dataclass
class Tokenizer:
    """A fitted tokenizer: config + vocabularies. ``tokenizer.json`` round-trips it."""

    config: TokenizerConfig
    item_ids: list[str]
    """Item id of vocabulary index ``N_RESERVED_ITEMS + i``."""
    facets: dict[str, list[str]]
    """Categorical facet → its values; value ``v`` has code ``N_RESERVED_FACET + index``."""
    value_edges: list[float]
    has_time: bool = True
    item_facets: dict[str, list[str]] = field(default_factory=dict)
    """Item-side vocabularies (entity_type, genres, language, attributes) for the model."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Size of the item table, reserved ids included."""
        return N_RESERVED_ITEMS + len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        return {iid: N_RESERVED_ITEMS + i for i, iid in enumerate(self.item_ids)}

    def add_items(self, new_ids: list[str]) -> list[int]:
        """Append items not yet known; existing ids keep their numbers. Returns all indices."""
        index = self.item_index()
        out = []
        for iid in new_ids:
            if iid not in index:
                index[iid] = N_RESERVED_ITEMS + len(self.item_ids)
                self.item_ids.append(iid)
            out.append(index[iid])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TOKENIZER_FORMAT,
            "recfm_version": __version__,
            "config": dataclasses.asdict(self.config),
            "reserved_items": {"pad": PAD, "unknown": UNK, "mask": MASK},
            "reserved_facet_codes": {"pad": FACET_PAD, "unknown": FACET_UNK},
            "n_items": self.n_items,
            "facets": self.facets,
            "item_facets": self.item_facets,
            "value_edges": self.value_edges,
            "has_time": self.has_time,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (the item ids live in ``items.parquet`` beside it)."""
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, item_ids: list[str]) -> "Tokenizer":
        with reading(path, f"a tokenizer.json of format {TOKENIZER_FORMAT}"):
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != TOKENIZER_FORMAT:
                raise InputError(str(path), None, "format", str(TOKENIZER_FORMAT),
                                 shorten(data.get("format")))
            return cls(
                config=TokenizerConfig.from_dict(data["config"], str(path)),
                item_ids=list(item_ids),
                facets={k: list(v) for k, v in data["facets"].items()},
                value_edges=list(data["value_edges"]),
                has_time=bool(data["has_time"]),
                item_facets={k: list(v) for k, v in data.get("item_facets", {}).items()},
                meta=data.get("meta", {}),
            )


# ---------------------------------------------------------------------------- helpers


def sort_ids(ids: pl.Series) -> list[str]:
    """Distinct ids in a canonical order that depends only on the set of ids, never on the
    row order: numeric when every id is an integer, else text."""
    uniq = ids.unique()
    as_int = uniq.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:
        return pl.DataFrame({"id": uniq, "n": as_int}).sort("n")["id"].to_list()
    return uniq.sort().to_list()


def gap_bucket(gap_s: pl.Expr, n_buckets: int) -> pl.Expr:
    """0 = no previous token; otherwise 1 + floor(log2(1 + gap)), capped."""
    b = (gap_s.clip(lower_bound=0).cast(pl.Float64) + 1.0).log(2).floor().cast(pl.Int32) + 1
    return pl.when(gap_s.is_null()).then(0).otherwise(b.clip(upper_bound=n_buckets - 1))


def hour_of_week(ts):
    """Hours since Monday 00:00 UTC, 0..167 (1970-01-01 was a Thursday), of seconds ``ts``
    (a Polars expression, or a NumPy array for the serving tokenizer)."""
    return (ts // 3600 + 72) % 168


def quantile_edges(values: pl.Series, n_buckets: int) -> list[float]:
    """Distinct inner edges of ``n_buckets`` quantile buckets over the non-null values."""
    v = values.drop_nulls().cast(pl.Float64).to_numpy()
    if v.size == 0 or n_buckets < 2:
        return []
    qs = np.quantile(v, np.linspace(0, 1, n_buckets + 1)[1:-1])
    return [float(x) for x in np.unique(qs)]


def bucketize(values: pl.Expr, edges: list[float]) -> pl.Expr:
    """Value bucket 1..len(edges)+1; 0 for a missing value."""
    if not edges:
        return pl.when(values.is_null()).then(0).otherwise(1).cast(pl.Int16)
    idx = pl.lit(pl.Series(edges, dtype=pl.Float64)).search_sorted(values, side="right")
    return pl.when(values.is_null()).then(0).otherwise(idx + 1).cast(pl.Int16)


def encode(col: pl.Expr, values: list[str]) -> pl.Expr:
    """Categorical values → codes (``N_RESERVED_FACET + index``; 1 when missing/unknown)."""
    mapping = {v: N_RESERVED_FACET + i for i, v in enumerate(values)}
    return col.replace_strict(mapping, default=FACET_UNK, return_dtype=pl.Int32)


def context_windows(length: int, max_len: int, mode: str = "truncate",
                    stride: int | None = None) -> list[tuple[int, int]]:
    """[start, end) spans of a sequence of ``length`` tokens under a context of ``max_len``.

    ``truncate`` keeps the last ``max_len`` tokens; ``sliding`` cuts windows every
    ``stride`` tokens (default ``max_len``) ending with the last token, so every token is
    inside some window and the last window is aligned to the end.

    Example:
        >>> context_windows(10, 4, "sliding")
        [(0, 4), (4, 8), (6, 10)]
    """
    if length <= max_len:
        return [(0, length)]
    if mode == "truncate":
        return [(length - max_len, length)]
    step = stride or max_len
    spans = [(s, s + max_len) for s in range(0, length - max_len, step)]
    spans.append((length - max_len, length))
    return spans


# ---------------------------------------------------------------------------- tokenize


@dataclass
class TokenizeResult:
    tokens: pl.DataFrame
    """One row per user: ``user_idx``, ``user_id``, ``length`` and one list column per facet."""
    tokenizer: Tokenizer
    dropped: dict[str, int]
    events_in: int
    events_kept: int


SEQ_COLUMNS = ("item", "ts", "ts_last", "count", "value", "value_bucket", "gap_bucket",
               "hour_of_week", "action", "row")
# Names the tokenizer gives its own columns: an event column may not have one.
RESERVED = ("item", "ts", "ts_last", "count", "value_bucket", "gap_bucket", "hour_of_week",
            "user_idx", "length", "_order", "_tok")


def _filter(events: pl.DataFrame, cfg: TokenizerConfig, dropped: Counter) -> pl.DataFrame:
    if "action" not in events.columns:
        return events
    if cfg.drop_actions:
        mask = events["action"].is_in(cfg.drop_actions).fill_null(False)
        for action, n in events.filter(mask)["action"].value_counts().iter_rows():
            dropped[f"action:{action}"] += n
        events = events.filter(~mask)
    if cfg.min_play_seconds > 0 and "value" in events.columns:
        short = (pl.col("action").is_in(cfg.short_play_actions)
                 & (pl.col("value") < cfg.min_play_seconds))
        n = events.select(short.sum()).item()
        if cfg.short_play_mode == "drop":
            dropped["short_play"] += n
            events = events.filter(~short.fill_null(False))
        else:
            events = events.with_columns(
                pl.when(short).then(pl.lit(cfg.short_play_label)).otherwise(pl.col("action"))
                .alias("action"))
    return events


def _merge(events: pl.DataFrame, cfg: TokenizerConfig, facet_cols: list[str]) -> pl.DataFrame:
    """Adjacent same-item events → one token (count, value, first/last time, strongest action);
    ``events`` is sorted by (user, timestamp, file order)."""
    if "value" not in events.columns:
        events = events.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))
    if cfg.merge_window_s > 0:
        new = ((pl.col("user_id") != pl.col("user_id").shift(1))
               | (pl.col("item_id") != pl.col("item_id").shift(1))
               | (pl.col("timestamp").diff() > cfg.merge_window_s)).fill_null(True)
        tok = new.cum_sum()
    else:
        tok = pl.int_range(1, pl.len() + 1)
    events = events.with_columns(tok.alias("_tok"))
    n_tokens = events["_tok"].max() if events.height else 0
    if n_tokens == events.height:  # nothing merges: no group-by needed
        out = events.with_columns(
            pl.col("timestamp").alias("ts"), pl.col("timestamp").alias("ts_last"),
            pl.lit(1, dtype=pl.Int32).alias("count"),
        )
        return out.select(["user_id", "item_id", "ts", "ts_last", "count", "value"]
                          + facet_cols)
    strength = {a: i + 1 for i, a in enumerate(cfg.action_strength)}
    aggs = [
        pl.col("user_id").first(), pl.col("item_id").first(),
        pl.col("timestamp").first().alias("ts"), pl.col("timestamp").last().alias("ts_last"),
        pl.len().cast(pl.Int32).alias("count"),
    ]
    v = pl.col("value")
    agg = {"sum": v.sum(), "max": v.max(), "last": v.drop_nulls().last()}[cfg.value_agg]
    aggs.append(pl.when(v.is_not_null().any()).then(agg).otherwise(None).alias("value"))
    for col in facet_cols:
        if col == "action":
            rank = pl.col("action").replace_strict(strength, default=0, return_dtype=pl.Int32)
            # Strongest action; ties go to the later event.
            aggs.append(pl.col("action").sort_by(rank, maintain_order=True).last())
        else:
            aggs.append(pl.col(col).first())
    return events.group_by("_tok", maintain_order=True).agg(aggs).drop("_tok")


def _drop_unknown_items(events: pl.DataFrame, cfg: TokenizerConfig, items: pl.DataFrame,
                        events_file: str, items_file: str | None,
                        dropped: Counter) -> pl.DataFrame:
    """Events whose item is in the catalog ``items``; the others are an error naming the
    first one's line, or dropped and counted (``cfg.unknown_items``)."""
    known = events["item_id"].is_in(items["item_id"].implode())
    if known.all():
        return events
    if cfg.unknown_items == "error":
        idx = int((~known).arg_true()[0])
        line = int(events[LINE][idx]) if LINE in events.columns else idx + 1
        raise InputError(events_file, line, "item_id",
                         f"an item id present in the catalog {items_file} (unknown_items = "
                         '"drop" in a --tokenizer TOML drops and counts the others)',
                         shorten(events["item_id"][idx]))
    dropped["item_not_in_catalog"] += int((~known).sum())
    return events.filter(known)


def _code_exprs(tokens: pl.DataFrame, cfg: TokenizerConfig, facet_cols: list[str],
                item_ids: list[str], fitted: Tokenizer | None
                ) -> tuple[list[pl.Expr], dict[str, list[str]]]:
    """Expressions coding the item (vocabulary index, unknown: ``UNK``), the row (clipped to
    ``max_row``) and every other facet (``fitted``'s values, else the sorted distinct ones),
    and those facet values."""
    item_map = {iid: N_RESERVED_ITEMS + i for i, iid in enumerate(item_ids)}
    facets: dict[str, list[str]] = {}
    exprs = [pl.col("item_id").replace_strict(item_map, default=UNK, return_dtype=pl.Int32)
             .alias("item")]
    for col in facet_cols:
        if col == "row":
            exprs.append((pl.col("row").clip(0, cfg.max_row) + N_RESERVED_FACET)
                         .fill_null(FACET_UNK).cast(pl.Int16).alias("row"))
            continue
        if fitted is not None:
            values = fitted.facets.get(col, [])
        else:
            values = sorted(tokens[col].drop_nulls().unique().to_list())
        facets[col] = values
        exprs.append(encode(pl.col(col), values).alias(col))
    return exprs, facets


def _time_value_exprs(cfg: TokenizerConfig, has_time: bool,
                      edges: list[float]) -> list[pl.Expr]:
    """Gap to the user's previous token and hour of the week (0 without times), and the
    value bucket under ``edges``."""
    prev_last = pl.col("ts_last").shift(1).over("user_id")
    if has_time:
        exprs = [gap_bucket(pl.col("ts") - prev_last, cfg.n_gap_buckets)
                 .cast(pl.Int16).alias("gap_bucket"),
                 hour_of_week(pl.col("ts")).cast(pl.Int16).alias("hour_of_week")]
    else:
        exprs = [pl.lit(0, dtype=pl.Int16).alias("gap_bucket"),
                 pl.lit(0, dtype=pl.Int16).alias("hour_of_week")]
    return exprs + [bucketize(pl.col("value"), edges).alias("value_bucket")]


def _sequences(tokens: pl.DataFrame, cfg: TokenizerConfig,
               facet_cols: list[str]) -> pl.DataFrame:
    """Tokens → one row per user (``user_idx`` by :func:`sort_ids` order) with a list
    column per facet, cut to the last ``max_history`` tokens."""
    user_ids = sort_ids(tokens["user_id"])
    user_map = {u: i for i, u in enumerate(user_ids)}
    seq_cols = [c for c in SEQ_COLUMNS if c in tokens.columns]
    seq_cols += [c for c in facet_cols if c not in seq_cols]
    seqs = (
        tokens.with_columns(pl.col("user_id").replace_strict(user_map, return_dtype=pl.Int32)
                            .alias("user_idx"))
        .group_by("user_idx", maintain_order=True)
        .agg([pl.col("user_id").first()] + [pl.col(c) for c in seq_cols])
        .sort("user_idx")
    )
    if cfg.max_history:
        seqs = seqs.with_columns([pl.col(c).list.tail(cfg.max_history) for c in seq_cols])
    seqs = seqs.with_columns(pl.col("item").list.len().cast(pl.Int32).alias("length"))
    return seqs.select(["user_idx", "user_id", "length"] + seq_cols)


def _item_facets(items: pl.DataFrame | None, fitted: Tokenizer | None) -> dict[str, list[str]]:
    """Item-side vocabularies: ``fitted``'s, else the catalog's sorted distinct values."""
    item_facets: dict[str, list[str]] = dict(fitted.item_facets) if fitted else {}
    if items is not None and fitted is None:
        for col in ("entity_type", "language"):
            if col in items.columns:
                item_facets[col] = sorted(items[col].drop_nulls().unique().to_list())
        for col in ("genres", "attributes"):
            if col in items.columns:
                item_facets[col] = sorted(items[col].explode().drop_nulls().unique().to_list())
    return item_facets


def tokenize(
    events: pl.DataFrame,
    cfg: TokenizerConfig,
    items: pl.DataFrame | None = None,
    *,
    has_time: bool = True,
    events_file: str = "<events>",
    items_file: str | None = None,
    fitted: Tokenizer | None = None,
) -> TokenizeResult:
    """Tokenize canonical events (see :mod:`recfm.data.schema`) into per-user sequences.

    ``fitted``: use its vocabularies and value edges instead of learning them (unknown items
    and facet values get the unknown code), as inference encodes a new user's raw events.

    Output frame, one row per user sorted by ``user_idx``::

        user_idx Int32, user_id Utf8, length Int32,
        item List(Int32)          vocabulary index (≥ 3)
        ts, ts_last List(Int64)   first / last time of the token (seconds)
        count List(Int32)         events merged into the token
        value List(Float64)       aggregated value (null when absent)
        value_bucket, gap_bucket, hour_of_week, action, device, … List(Int16/Int32) codes
    """
    dropped: Counter = Counter()
    events_in = events.height
    clash = [c for c in events.columns if c in RESERVED]
    if clash:
        raise InputError(events_file, 1, clash[0], "an event column named otherwise (recfm's "
                         f"tokens have columns {', '.join(RESERVED)})", repr(clash[0]))
    events = events.with_row_index("_order")
    if items is not None and fitted is None:
        events = _drop_unknown_items(events, cfg, items, events_file, items_file, dropped)
    events = _filter(events, cfg, dropped)
    events = events.sort(["user_id", "timestamp", "_order"])

    facet_cols = [c for c in events.columns
                  if c not in EVENT_REQUIRED and c not in ("value", LINE, "_order")]
    tokens = _merge(events, cfg, facet_cols)

    # Vocabularies: items from the catalog (or the events), users and facets by sorted value.
    if fitted is not None:
        item_ids = list(fitted.item_ids)
        edges = list(fitted.value_edges)
    else:
        item_ids = sort_ids(items["item_id"] if items is not None else events["item_id"])
        edges = quantile_edges(tokens["value"], cfg.n_value_buckets)
    codes, facets = _code_exprs(tokens, cfg, facet_cols, item_ids, fitted)
    tokens = tokens.with_columns(codes + _time_value_exprs(cfg, has_time, edges))
    seqs = _sequences(tokens, cfg, facet_cols)
    if fitted is not None:
        facets = dict(fitted.facets)
    tok = Tokenizer(cfg, item_ids, facets, edges, has_time, _item_facets(items, fitted))
    return TokenizeResult(seqs, tok, dict(sorted(dropped.items())), events_in, events.height)


def length_percentiles(lengths: pl.Series) -> dict[str, float]:
    if lengths.len() == 0:
        return {}
    arr = lengths.to_numpy()
    out = {f"p{q}": float(np.percentile(arr, q)) for q in (10, 50, 90, 99)}
    out.update(min=float(arr.min()), max=float(arr.max()), mean=round(float(arr.mean()), 3))
    return out
