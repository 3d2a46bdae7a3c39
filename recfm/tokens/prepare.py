"""Raw events → a prepared dataset directory (the input of every later step).

Written atomically; re-running prepare on the same input writes byte-identical Parquet
files. Directory layout: docs/guide/prepare.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from recfm import __version__
from recfm.data import amazon, movielens, s3rec, synthetic
from recfm.data.readers import FILE_FORMATS, RawDataset, ReadOptions, read_generic
from recfm.data.schema import check_times, iso_time
from recfm.data.splits import leave_one_out
from recfm.errors import InputError, reading
from recfm.io import atomic_dir, atomic_write_json
from recfm.tokens.tokenizer import (
    N_RESERVED_ITEMS,
    Tokenizer,
    TokenizerConfig,
    length_percentiles,
    tokenize,
)

log = logging.getLogger(__name__)

# The layouts ``auto`` detects, in the order it tries them (anything else is ``generic``).
LAYOUTS = {"synthetic": synthetic, "movielens": movielens, "s3rec": s3rec, "amazon": amazon}
FORMATS = ("auto", "generic", *LAYOUTS, *FILE_FORMATS)


def load_raw(
    events: str | Path,
    items: str | Path | None = None,
    fmt: str = "auto",
    event_map: dict[str, str] | None = None,
    item_map: dict[str, str] | None = None,
    options: ReadOptions | None = None,
    item_options: ReadOptions | None = None,
    item_flags: list[str] | None = None,
    strict: bool = False,
) -> RawDataset:
    """Read a dataset in any supported layout (``fmt``), detecting it when ``auto``; a file
    format (csv, tsv, jsonl, parquet) reads ``events`` as one file of that format.
    ``options``, ``item_options``, ``item_flags``: see :func:`recfm.data.readers.read_generic`
    (a layout reads its files its own way). ``strict``: refuse Amazon reviews of items
    absent from the metadata (else dropped)."""
    path = Path(events)
    if not path.exists():
        raise InputError(str(path), None, None, "an existing file or folder", "nothing at that path")
    if fmt not in FORMATS:
        raise InputError("--format", None, None, f"one of {', '.join(FORMATS)}", repr(fmt))
    if fmt in FILE_FORMATS:
        options = dataclasses.replace(options or ReadOptions(), format=fmt)
        fmt = "generic"
    if fmt == "auto" and (options or ReadOptions()).format is not None:
        fmt = "generic"
    if fmt == "auto":
        fmt = next((name for name, layout in LAYOUTS.items() if layout.detect(path)), "generic")
    log.info("reading %s as %s", path, fmt)
    t0 = time.perf_counter()
    if fmt in LAYOUTS:
        raw = _read_layout(fmt, path, items, strict)
    elif path.is_dir():
        raise InputError(str(path), None, None, "an event file (or a folder in a known layout: "
                         f"--format {'|'.join(LAYOUTS)})", "a folder in no known layout")
    else:
        raw = read_generic(path, items, event_map, item_map, options, item_options, item_flags)
        if items is not None:
            raw.meta["items_input"] = {**(item_options or ReadOptions()).to_dict(),
                                       "map": item_map or {}, "flags": item_flags or []}
    raw.meta["read_s"] = round(time.perf_counter() - t0, 3)
    return raw


def _read_layout(fmt: str, path: Path, items: str | Path | None, strict: bool) -> RawDataset:
    if fmt == "synthetic":
        return synthetic.load_world(path)
    if fmt == "amazon":
        return amazon.load(path, items if items is not None else "auto", strict=strict)
    return LAYOUTS[fmt].load(path)


def resolve_tokenizer_config(raw: RawDataset, user: TokenizerConfig | None) -> TokenizerConfig:
    """An explicit config wins; otherwise the defaults with the format's own overrides."""
    if user is not None:
        return user
    overrides = raw.meta.get("tokenizer", {})
    return TokenizerConfig.from_dict(overrides, f"{raw.meta.get('name', 'dataset')} defaults")


def _items_table(tok: Tokenizer, raw: RawDataset, seqs: pl.DataFrame,
                 events: pl.DataFrame) -> pl.DataFrame:
    vocab = pl.DataFrame({
        "idx": pl.Series(range(N_RESERVED_ITEMS, tok.n_items), dtype=pl.Int32),
        "item_id": pl.Series(tok.item_ids, dtype=pl.Utf8),
    })
    n_events = events.group_by("item_id").len("n_events")
    n_tokens = (seqs.select(pl.col("item").explode()).group_by("item").len("n_tokens")
                .rename({"item": "idx"}))
    out = (vocab.join(n_events, on="item_id", how="left")
           .join(n_tokens.with_columns(pl.col("idx").cast(pl.Int32)), on="idx", how="left")
           .with_columns(pl.col("n_events").fill_null(0).cast(pl.Int64),
                         pl.col("n_tokens").fill_null(0).cast(pl.Int64)))
    if raw.items is not None:
        clash = [c for c in ("idx", "n_events", "n_tokens") if c in raw.items.columns]
        if clash:  # the join would rename the catalog's column to …_right
            raise InputError(raw.items_file or "items", 1, clash[0], "an item column named "
                             "otherwise (items.parquet has idx, n_events, n_tokens)",
                             repr(clash[0]))
        out = out.join(raw.items.drop("_line"), on="item_id", how="left")
    return out.sort("idx")


def prepare(
    raw: RawDataset,
    out: str | Path,
    config: TokenizerConfig | None = None,
    on_step: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize ``raw`` and write the prepared dataset directory ``out`` atomically; returns
    the report (also written as ``report.json``). ``overwrite``: replace a previous prepared
    dataset at ``out`` (anything else there is refused, see :func:`recfm.io.check_out`)."""
    step = on_step or (lambda name: log.info(name))
    t0 = time.perf_counter()
    cfg = resolve_tokenizer_config(raw, config)
    has_time = bool(raw.meta.get("has_time", True))
    if has_time:
        check_times(raw.events, raw.events_file, *cfg.time_bounds())
    step("tokenizing")
    result = tokenize(raw.events, cfg, raw.items, has_time=has_time,
                      events_file=raw.events_file, items_file=raw.items_file)
    if result.tokens.height == 0:  # a dataset with no user would only fail later
        dropped = ", ".join(f"{k} {n}" for k, n in result.dropped.items())
        raise InputError(raw.events_file, None, None, "at least one event that becomes a token",
                         f"none of {result.events_in} (dropped: {dropped or 'none'})")
    tok = result.tokenizer
    # how the input files read: later files shaped like them read the same way
    inputs = {k: raw.meta[k] for k in ("input", "items_input") if k in raw.meta}
    tok.meta = {"dataset": raw.meta.get("name"), "value_kind": raw.meta.get("value_kind"),
                **inputs}
    seqs = result.tokens

    ev = raw.events
    lengths = seqs["length"]
    split = leave_one_out(seqs)
    tokens_out = int(lengths.sum())
    report = {
        "recfm_version": __version__,
        "dataset": raw.meta.get("name"),
        "events_file": raw.events_file,
        "items_file": raw.items_file,
        "events_in": result.events_in,
        "events_kept": result.events_kept,
        "tokens_out": tokens_out,
        "compression": round(result.events_kept / tokens_out, 4) if tokens_out else None,
        "compression_from_input": round(result.events_in / tokens_out, 4) if tokens_out else None,
        "dropped": result.dropped,
        "dropped_total": sum(result.dropped.values()),
        "users": seqs.height,
        "users_in": int(ev["user_id"].n_unique()),
        "items_with_events": int(ev["item_id"].n_unique()),
        "items_with_tokens": int(seqs.select(pl.col("item").explode().n_unique()).item()),
        "items_in_vocabulary": len(tok.item_ids),
        "catalog_items": raw.items.height if raw.items is not None else None,
        "has_time": has_time,
        "time_range": [iso_time(ev["timestamp"].min()), iso_time(ev["timestamp"].max())]
        if has_time else None,
        "sequence_length": length_percentiles(lengths),
        "split": {"leave_one_out": split.counts},
        "tokenizer": dataclasses.asdict(cfg),
        "adapter": raw.meta.get("report", {}),
        **inputs,
    }

    step("writing")
    items_table = _items_table(tok, raw, seqs, ev)
    with atomic_dir(out, "prepared", overwrite, (raw.events_file, raw.items_file)) as tmp:
        seqs.write_parquet(tmp / "tokens.parquet", compression="zstd", row_group_size=2048)
        items_table.write_parquet(tmp / "items.parquet", compression="zstd")
        tok.save(tmp / "tokenizer.json")
        # reading (load_raw) included: the time the whole command took
        report["read_s"] = raw.meta.get("read_s", 0.0)
        report["wall_s"] = round(time.perf_counter() - t0 + report["read_s"], 3)
        atomic_write_json(tmp / "report.json", report)
    log.info("prepared %s: %d events → %d tokens for %d users in %.1fs", out,
             result.events_in, tokens_out, seqs.height, report["wall_s"])
    return report


@dataclass
class PreparedDataset:
    """A prepared dataset directory, loaded."""

    path: Path
    sequences: pl.DataFrame
    items: pl.DataFrame
    tokenizer: Tokenizer
    report: dict[str, Any]

    @staticmethod
    def check_files(path: Path) -> None:
        """A one-line error naming the first file a prepared dataset ``path`` lacks."""
        for name in ("tokens.parquet", "items.parquet", "tokenizer.json"):
            if not (path / name).is_file():
                raise InputError(str(path / name), None, None,
                                 "a prepared dataset file (run `recfm prepare` first)",
                                 "nothing at that path")

    @classmethod
    def load(cls, path: str | Path, row_groups: int | None = None) -> "PreparedDataset":
        """The dataset at ``path``; ``row_groups``: only the users of the first this many
        row groups of ``tokens.parquet`` (streamed training's validation sample)."""
        path = Path(path)
        cls.check_files(path)
        with reading(path / "items.parquet", "a prepared item catalog (Parquet)"):
            items = pl.read_parquet(path / "items.parquet")
            item_ids = items["item_id"].to_list()
        tok = Tokenizer.load(path / "tokenizer.json", item_ids)
        report_path = path / "report.json"
        with reading(report_path, "a prepared dataset's report (JSON)"):
            report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        with reading(path / "tokens.parquet", "prepared token sequences (Parquet)"):
            if row_groups is None:
                tokens = pl.read_parquet(path / "tokens.parquet")
            else:
                file = pq.ParquetFile(path / "tokens.parquet")
                n = min(max(row_groups, 1), file.metadata.num_row_groups)
                tokens = pl.from_arrow(file.read_row_groups(list(range(n))))
        return cls(path, tokens, items, tok, report)


def describe(path: str | Path, top: int = 10) -> dict[str, Any]:
    """Counts, length percentiles, top items and time range of a prepared dataset."""
    ds = PreparedDataset.load(path)
    seqs = ds.sequences
    counts = (seqs.select(pl.col("item").explode()).group_by("item").len("n")
              .sort(["n", "item"], descending=[True, False]).head(top))
    names = ds.items.select("idx", "item_id", *(["title"] if "title" in ds.items.columns else []))
    top_items = counts.join(names.rename({"idx": "item"}), on="item", how="left")
    ts = seqs.select(pl.col("ts").explode())["ts"] if "ts" in seqs.columns else None
    return {
        "path": str(ds.path),
        "users": seqs.height,
        "tokens": int(seqs["length"].sum()),
        "items_in_vocabulary": len(ds.tokenizer.item_ids),
        "items_with_tokens": int(seqs.select(pl.col("item").explode().n_unique()).item()),
        "sequence_length": length_percentiles(seqs["length"]),
        "time_range": [iso_time(ts.min()), iso_time(ts.max())]
        if ts is not None and ds.tokenizer.has_time else None,
        "facets": {k: len(v) for k, v in ds.tokenizer.facets.items()},
        "top_items": top_items.to_dicts(),
        "report": {k: ds.report.get(k) for k in ("events_in", "tokens_out",
                                                 "compression_from_input", "dropped",
                                                 "items_with_events")},
    }
