"""Amazon product reviews (McAuley et al., the 2014 and 2018 releases) from local files.

The 2014 metadata lines are Python literals: a line that is not JSON is read with
:func:`ast.literal_eval`, which evaluates literals only and runs no code. Item text is
cleaned of HTML (the 2018 titles are often a bare ``<span …`` fragment), a missing title
falls back to the brand and description, and the dump's own root category is not a genre.
Record fields, output columns, defaults and errors: docs/guide/data.md.
"""

from __future__ import annotations

import ast
import calendar
import gzip
import html
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from recfm.data import schema
from recfm.data.readers import RawDataset, ReadOptions
from recfm.data.schema import LINE
from recfm.errors import InputError, shorten

log = logging.getLogger(__name__)

NAME = "amazon"
_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
_EVENT_NAMES = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime",
                "value": "overall"}
_TAG = re.compile(r"</?[A-Za-z!][^>]*(?:>|$)")  # a tag, or one cut off at the end
_SPACE = re.compile(r"\s+")
FALLBACK_WORDS = 8
"""Words of the description (or feature) in a title made for an item without one."""
ROOT_SHARE = 0.9
ROOT_MIN_ITEMS = 10
"""A root category is the first category of ``ROOT_SHARE`` of at least ``ROOT_MIN_ITEMS``
items with a category (a smaller catalog cannot tell a root from a genre)."""


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
                             "one reviews file (.json / .jsonl, optionally .gz) in the folder; "
                             "name the reviews file itself, and its metadata with meta= / "
                             "--items", f"candidates: {names}")
        if meta == "auto":
            if len(metas) > 1:
                raise InputError(str(path), None, None, "at most one meta_* file (name "
                                 "the one to read with meta= / --items)",
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


# --------------------------------------------------------------------------- item text

def clean_text(value: str) -> str | None:
    """``value`` with HTML entities decoded (``&amp;amp;`` too), tags removed (an unclosed
    ``<span class="…"`` too) and whitespace collapsed; None when nothing is left."""
    text = value
    for _ in range(3):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    text = _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    return text or None


def _join_text(value: Any) -> str | None:
    """A string, or a list of strings joined with newlines, cleaned (:func:`clean_text`)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [clean_text(str(v)) for v in value if v is not None]
        kept = [p for p in parts if p]
        return "\n".join(kept) if kept else None
    return clean_text(str(value))


def _flatten(value: Any) -> list[str]:
    """Distinct cleaned names of a category list (or a list of category paths), in order."""
    out: dict[str, None] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
            continue
        text = clean_text(str(v))
        if text:
            out.setdefault(text, None)
    return list(out)


def _roots(value: Any) -> set[str]:
    """The first element of each category path: 2018's ``category`` is one path, 2014's
    ``categories`` a list of them."""
    if value is None or isinstance(value, str):
        return set(_flatten(value))
    paths = value if value and all(isinstance(p, (list, tuple)) for p in value) else [value]
    return {root for path in paths for root in _flatten(path[:1])}


def _first_words(text: str | None) -> str | None:
    return " ".join(text.split()[:FALLBACK_WORDS]) if text else None


# --------------------------------------------------------------------------- metadata

@dataclass
class _Item:
    """One metadata record, cleaned: the title as given (None when missing or markup)."""

    line: int
    title: str | None
    description: str | None
    feature: str | None
    genres: list[str]
    roots: set[str]
    brand: str | None

    def completeness(self) -> int:
        """How many of the fields an item card shows are present."""
        return sum(bool(v) for v in (self.title, self.description, self.genres, self.brand))

    def display_title(self) -> str | None:
        """The title; else ``brand - first words of description`` (or of ``feature``
        without a description), either part alone when the other is missing."""
        if self.title:
            return self.title
        parts = [self.brand, _first_words(self.description or self.feature)]
        return " - ".join(p for p in parts if p) or None


def _item(rec: dict, file: str, line: int) -> _Item:
    title = rec.get("title")
    if title is not None and not isinstance(title, str):
        raise InputError(file, line, "title", "a string", shorten(title))
    key = "categories" if "categories" in rec else "category"
    categories = rec.get(key)
    if categories is not None and not isinstance(categories, (list, tuple, str)):
        raise InputError(file, line, key, "a list of categories", shorten(categories))
    return _Item(line, clean_text(title) if title else None, _join_text(rec.get("description")),
                 _join_text(rec.get("feature")), _flatten(categories), _roots(categories),
                 _join_text(rec.get("brand")))


def _read_items(path: Path, dedupe: bool) -> tuple[dict[str, _Item], int]:
    """asin → its record (the most complete of its records, the first among equals), and
    how many repeated records were dropped."""
    file = str(path)
    items: dict[str, _Item] = {}
    repeats = 0
    for line, rec in iter_records(path):
        asin = _id(rec, "asin", file, line, article="an")
        item = _item(rec, file, line)
        kept = items.get(asin)
        if kept is None:
            items[asin] = item
            continue
        if not dedupe:
            raise InputError(file, line, "asin", "a unique asin (dedupe_items=True, the "
                             "default, keeps the most complete record of each)",
                             f"{shorten(asin)} again (first at line {kept.line})")
        repeats += 1
        if item.completeness() > kept.completeness():
            items[asin] = item
    return items, repeats


def root_category(roots: list[set[str]]) -> str | None:
    """The dump's own category (e.g. "Video Games"): the first category of at least
    ``ROOT_SHARE`` of the items that have a category, when at least ``ROOT_MIN_ITEMS`` do.
    It says nothing about an item, so it is not made a genre."""
    with_category = [r for r in roots if r]
    if len(with_category) < ROOT_MIN_ITEMS:
        return None
    root, n = Counter(c for r in with_category for c in sorted(r)).most_common(1)[0]
    return root if n >= ROOT_SHARE * len(with_category) else None


def _warn_repeated_title(titles: list[str | None], file: str) -> dict[str, Any] | None:
    """A warning (and its report entry) when most items share one title."""
    counts = Counter(t for t in titles if t)
    if not counts:
        return None
    title, n = counts.most_common(1)[0]
    if n < 2 or n <= len(titles) / 2:
        return None
    log.warning("%s: %d of %d items have the title %r after cleaning; item cards and search "
                "will not tell them apart", file, n, len(titles), title)
    return {"title": title, "items": n}


def read_metadata(path: str | Path, *, dedupe: bool = True
                  ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Metadata → canonical items with cleaned text, and a report of what was changed:
    ``duplicate_items_dropped``, ``root_category``, ``titles_from_fallback``,
    ``titles_missing`` and ``repeated_title`` (docs/guide/data.md)."""
    path = Path(path)
    file = str(path)
    items, repeats = _read_items(path, dedupe)
    if repeats:
        log.warning("%s: %d repeated metadata record(s) dropped; each of the %d asins keeps "
                    "its most complete record", file, repeats, len(items))
    root = root_category([x.roots for x in items.values()])
    rows = [(asin, x.display_title(), x.description,
             [g for g in x.genres if g != root], x.brand, x.line) for asin, x in items.items()]
    titles = [row[1] for row in rows]
    report = {
        "duplicate_items_dropped": repeats,
        "root_category": root,
        "titles_from_fallback": sum(1 for x in items.values() if not x.title and
                                    x.display_title()),
        "titles_missing": sum(1 for t in titles if not t),
        "repeated_title": _warn_repeated_title(titles, file),
    }
    df = pl.DataFrame(rows, orient="row", schema={
        "item_id": pl.Utf8, "title": pl.Utf8, "description": pl.Utf8,
        "genres": pl.List(pl.Utf8), "brand": pl.Utf8, LINE: pl.Int64})
    with schema.source_columns({"item_id": "asin"}):
        return schema.normalize_items(df, file), report


# --------------------------------------------------------------------------- load

def _unknown_items(events: pl.DataFrame, items: pl.DataFrame, reviews: str, meta: str,
                   strict: bool) -> dict[str, int]:
    """Count the reviews of asins absent from the metadata; refuse them when ``strict``."""
    unknown = ~events["item_id"].is_in(items["item_id"].implode())
    n = int(unknown.sum())
    if n and strict:
        line, idx = schema.first_bad(events, unknown)
        raise InputError(reviews, line, "asin", f"an asin present in the metadata {meta} "
                         "(without strict / --strict such reviews are dropped and counted)",
                         shorten(events["item_id"][idx]))
    asins = int(events.filter(unknown)["item_id"].n_unique()) if n else 0
    if n:
        log.warning("%s: %d reviews of %d asins absent from %s are dropped (strict=True / "
                    "--strict refuses them)", reviews, n, asins, meta)
    return {"reviews_of_unknown_items": n, "unknown_items": asins}


def load(path: str | Path, meta: str | Path | None = "auto", *,
         dedupe_items: bool = True, strict: bool = False) -> RawDataset:
    """Read Amazon reviews (a file, or a folder) and their metadata: ``meta="auto"`` finds
    ``meta_<Category>.json[.gz]`` beside the reviews file (or the one ``meta_*`` file in the
    folder); a path names it; None reads no metadata.

    Reviews of asins absent from the metadata are dropped by the tokenizer and counted in
    the prepare report (``dropped["item_not_in_catalog"]``); ``strict=True`` refuses them
    instead, naming the first one's line."""
    reviews, meta_file = _resolve(Path(path), meta)
    events = read_reviews(reviews)
    info: dict[str, Any] = {
        "name": NAME, "format": NAME, "category": _category(reviews), "has_time": True,
        "value_kind": "rating",
        "tokenizer": {"value_agg": "max", "unknown_items": "error" if strict else "drop"},
        # a later reviews file reads as JSON lines (recommend --events, incremental training)
        "input": ReadOptions(format="jsonl", map=dict(_EVENT_NAMES),
                             constants={"action": "review"},
                             keep=[*_EVENT_NAMES, "action"]).to_dict()}
    if meta_file is None:
        log.info("%s: no metadata (name a meta_<Category> file with meta= / --items); items "
                 "have no titles", reviews)
        return RawDataset(events, None, str(reviews), None, info)
    items, report = read_metadata(meta_file, dedupe=dedupe_items)
    report.update(_unknown_items(events, items, str(reviews), str(meta_file), strict))
    info["duplicate_items_dropped"] = report["duplicate_items_dropped"]
    info["root_category"] = report["root_category"]
    info["report"] = report
    return RawDataset(events, items, str(reviews), str(meta_file), info)
