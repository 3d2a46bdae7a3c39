"""Amazon product reviews (McAuley et al., the 2014 and 2018 releases) from local files.

The 2014 metadata lines are Python literals: a line that is not JSON is read with
:func:`ast.literal_eval`, which evaluates literals only and runs no code. Record fields,
output columns and errors: docs/guide/data.md.
"""

from __future__ import annotations

import ast
import calendar
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from recfm.data import schema
from recfm.data.readers import RawDataset
from recfm.data.schema import LINE
from recfm.errors import InputError, shorten

NAME = "amazon"
_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
_EVENT_NAMES = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime",
                "value": "overall"}


# --------------------------------------------------------------------------- reading lines

def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise first from None


def iter_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line, record)`` for each non-blank line: JSON, else a Python dict literal."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise InputError(file, None, None, "an existing file", "nothing at that path")
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(file, lineno, None, "UTF-8 text",
                                     f"byte 0x{raw[e.start]:02x} that is not UTF-8") from None
                if not text.strip():
                    continue
                try:
                    obj = _parse(text)
                except json.JSONDecodeError as e:
                    raise InputError(file, lineno, None,
                                     "one JSON object (or Python dict literal) per line",
                                     f"invalid JSON ({e.msg} at character {e.colno})") from None
                if not isinstance(obj, dict):
                    raise InputError(file, lineno, None, "a JSON object", shorten(obj))
                yield lineno, obj
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(file, None, None, "a readable (optionally gzipped) file",
                         f"{type(e).__name__}: {e}") from None


def _first_line(path: Path) -> dict | None:
    try:
        with _open(path) as f:
            for _, raw in zip(range(20), f):
                text = raw.decode("utf-8", "replace").strip()
                if text:
                    obj = _parse(text)
                    return obj if isinstance(obj, dict) else None
    except (OSError, EOFError, zlib.error, ValueError, SyntaxError, TypeError, MemoryError,
            RecursionError):
        return None
    return None


# --------------------------------------------------------------------------- finding files

def _is_json_lines(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_SUFFIXES)


def _category(path: Path) -> str:
    """"reviews_Beauty_5.json.gz" / "Beauty_5.json" / "meta_Beauty.json.gz" → "Beauty"."""
    name = path.name
    for suffix in (".gz", ".json", ".jsonl", ".ndjson"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    name = re.sub(r"^(reviews|meta)_", "", name)
    return re.sub(r"_5$", "", name)


def _sibling_meta(reviews: Path) -> Path | None:
    cat = _category(reviews)
    for p in sorted(reviews.parent.iterdir()):
        if _is_json_lines(p) and p.name.startswith("meta_") and _category(p) == cat:
            return p
    return None


def _resolve(path: Path, meta: str | Path | None) -> tuple[Path, Path | None]:
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if _is_json_lines(p)]
        metas = [p for p in files if p.name.startswith("meta")]
        reviews = [p for p in files if p not in metas]
        if len(reviews) != 1:
            names = ", ".join(p.name for p in reviews) or "none"
            raise InputError(str(path), None, None,
                             "one reviews file (.json / .jsonl, optionally .gz)",
                             f"candidates: {names}")
        if meta == "auto":
            if len(metas) > 1:
                raise InputError(str(path), None, None, "at most one meta_* file",
                                 ", ".join(p.name for p in metas))
            return reviews[0], metas[0] if metas else None
        return reviews[0], Path(meta) if meta is not None else None
    if not path.is_file():
        raise InputError(str(path), None, None, "a reviews file or a folder",
                         "nothing at that path")
    if meta == "auto":
        return path, _sibling_meta(path)
    return path, Path(meta) if meta is not None else None


def detect(path: str | Path) -> bool:
    """True for an Amazon reviews file (first record has asin, reviewerID) or a folder of one."""
    path = Path(path)
    candidates = [p for p in sorted(path.iterdir()) if _is_json_lines(p)] if path.is_dir() \
        else [path] if path.is_file() else []
    for p in candidates:
        rec = _first_line(p)
        if rec is not None and "asin" in rec and "reviewerID" in rec:
            return True
    return False


# --------------------------------------------------------------------------- reviews

def _text(value: Any) -> str | None:
    """A scalar as a string; None for null / empty; containers are not scalars."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    raise TypeError


def _id(rec: dict, key: str, file: str, line: int, article: str = "a") -> str:
    """The record's ``key`` as a non-empty id string."""
    if key not in rec:
        raise InputError(file, line, key, f"{article} {key} key", "none")
    try:
        value = _text(rec[key])
    except TypeError:
        value = None
    if value is None:
        raise InputError(file, line, key, "a non-empty id", shorten(rec[key]))
    return value


def _review_time(text: Any, file: str, line: int, cache: dict[str, int]) -> str:
    if not isinstance(text, str):
        raise InputError(file, line, "reviewTime", 'a date like "09 13, 2009"', shorten(text))
    hit = cache.get(text)
    if hit is None:
        try:
            parts = text.replace(",", " ").split()
            month, day, year = (int(p) for p in parts)
            hit = calendar.timegm(datetime(year, month, day).timetuple())
        except (ValueError, TypeError):
            raise InputError(file, line, "reviewTime", 'a date like "09 13, 2009"',
                             shorten(text)) from None
        cache[text] = hit
    return str(hit)


def read_reviews(path: str | Path) -> pl.DataFrame:
    """Reviews → canonical events (docs/guide/data.md)."""
    path = Path(path)
    file = str(path)
    rows: list[tuple] = []
    cache: dict[str, int] = {}
    for line, rec in iter_records(path):
        user, item = _id(rec, "reviewerID", file, line), _id(rec, "asin", file, line)
        ts = rec.get("unixReviewTime")
        if ts is None:
            if "reviewTime" not in rec:
                raise InputError(file, line, "unixReviewTime",
                                 "unixReviewTime (or reviewTime)", "neither key")
            ts_text = _review_time(rec["reviewTime"], file, line, cache)
        else:
            try:
                ts_text = _text(ts)
            except TypeError:
                ts_text = None
            if ts_text is None:
                raise InputError(file, line, "unixReviewTime", "a timestamp in seconds",
                                 shorten(ts))
        try:
            value = _text(rec.get("overall"))
        except TypeError:
            raise InputError(file, line, "overall", "a number",
                             shorten(rec.get("overall"))) from None
        rows.append((user, item, ts_text, "review", value, line))
    if not rows:
        raise InputError(file, None, None, "at least one review", "no records")
    df = pl.DataFrame(rows, orient="row", schema={
        "user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Utf8, "action": pl.Utf8,
        "value": pl.Utf8, LINE: pl.Int64})
    with schema.source_columns(_EVENT_NAMES):
        events = schema.normalize_events(df, file)
    schema.check_star_ratings(events, file, "overall", df["value"])
    return events


# --------------------------------------------------------------------------- metadata

def _join_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return "\n".join(parts) if parts else None
    return str(value).strip() or None


def _flatten(value: Any) -> list[str]:
    out: dict[str, None] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
            continue
        text = str(v).strip()
        if text:
            out.setdefault(text, None)
    return list(out)


def read_metadata(path: str | Path, *, dedupe: bool = True) -> tuple[pl.DataFrame, int]:
    """Metadata → canonical items, and how many repeated asins were dropped."""
    path = Path(path)
    file = str(path)
    rows: list[tuple] = []
    seen: set[str] = set()
    dropped = 0
    for line, rec in iter_records(path):
        asin = _id(rec, "asin", file, line, article="an")
        if dedupe:
            if asin in seen:
                dropped += 1
                continue
            seen.add(asin)
        title = rec.get("title")
        if title is not None and not isinstance(title, str):
            raise InputError(file, line, "title", "a string", shorten(title))
        categories = rec.get("categories", rec.get("category"))
        if categories is not None and not isinstance(categories, (list, tuple, str)):
            raise InputError(file, line, "categories" if "categories" in rec else "category",
                             "a list of categories", shorten(categories))
        rows.append((asin, (title.strip() or None) if isinstance(title, str) else None,
                     _join_text(rec.get("description")), _flatten(categories),
                     _join_text(rec.get("brand")), line))
    df = pl.DataFrame(rows, orient="row", schema={
        "item_id": pl.Utf8, "title": pl.Utf8, "description": pl.Utf8,
        "genres": pl.List(pl.Utf8), "brand": pl.Utf8, LINE: pl.Int64})
    with schema.source_columns({"item_id": "asin"}):
        items = schema.normalize_items(df, file)
    return items, dropped


# --------------------------------------------------------------------------- load

def load(path: str | Path, meta: str | Path | None = "auto", *,
         dedupe_items: bool = True) -> RawDataset:
    """Read Amazon reviews (a file, or a folder) and their metadata: ``meta="auto"`` finds
    ``meta_<Category>.json[.gz]`` beside the reviews file (or the one ``meta_*`` file in the
    folder); a path names it; None reads no metadata."""
    reviews, meta_file = _resolve(Path(path), meta)
    events = read_reviews(reviews)
    items = None
    info = {"name": NAME, "format": NAME, "category": _category(reviews), "has_time": True,
            "value_kind": "rating", "tokenizer": {"value_agg": "max"}}
    if meta_file is not None:
        items, dropped = read_metadata(meta_file, dedupe=dedupe_items)
        info["duplicate_items_dropped"] = dropped
    return RawDataset(events, items, str(reviews),
                      str(meta_file) if meta_file is not None else None, info)
