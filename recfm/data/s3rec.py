"""S3-Rec / SASRec / BERT4Rec sequence files: integer ids, order but no time.

``timestamp`` is an interaction's 0-based position in its user's history, and repeats are
never merged (``merge_window_s = 0``): in these benchmarks a repeat is a real interaction.
Layouts, output and errors: docs/guide/data.md.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path
from typing import Literal

import polars as pl

from recfm.data import schema
from recfm.data.readers import RawDataset, check_utf8
from recfm.data.schema import LINE
from recfm.errors import InputError, shorten

FORMAT = "s3rec"
ATTRIBUTES_SUFFIX = "_item2attributes.json"

Layout = Literal["auto", "sequence", "pairs"]

_INT_RE = r"^[0-9]+$"


def _looks_like_sequences(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            lines = [f.readline() for _ in range(5)]
    except OSError:
        return False
    seen = 0
    for raw in lines:
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) < 2 or not all(t.isdigit() for t in tokens):
            return False
        seen += 1
    return seen > 0


def detect(path: str | Path) -> bool:
    """True for a ``.txt`` file of integer lines (≥ 2 tokens), or a folder holding one."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".txt" and _looks_like_sequences(path)
    if path.is_dir():
        return any(_looks_like_sequences(p) for p in sorted(path.glob("*.txt")))
    return False


def _resolve(path: Path, name: str | None) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        if name is not None:
            file = path / (name if name.endswith(".txt") else f"{name}.txt")
            if not file.is_file():
                raise InputError(str(file), None, None, "a sequence file", "nothing at that path")
            return file
        candidates = [p for p in sorted(path.glob("*.txt")) if _looks_like_sequences(p)]
        if len(candidates) == 1:
            return candidates[0]
        names = ", ".join(p.stem for p in candidates) or "none"
        raise InputError(str(path), None, None,
                         "one sequence file, or name= to pick one", f"candidates: {names}")
    raise InputError(str(path), None, None, "a sequence file or a folder", "nothing at that path")


def read_sequences(path: Path, layout: Layout = "auto") -> tuple[pl.DataFrame, str]:
    """Raw events (``user_id``, ``item_id``, ``timestamp``, ``_line``) and the layout used."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    check_utf8(path, data, sep=None)
    file = str(path)
    lines = (
        pl.DataFrame({"raw": pl.Series("raw", [data.decode("utf-8")]).str.split("\n").explode()})
        .with_row_index(LINE, offset=1)
        .with_columns(pl.col(LINE).cast(pl.Int64),
                      pl.col("raw").str.replace_all(r"\s+", " ").str.strip_chars())
        .filter(pl.col("raw") != "")
        .with_columns(pl.col("raw").str.split(" ").alias("tokens"))
        .with_columns(pl.col("tokens").list.len().alias("n"))
    )
    if lines.height == 0:
        raise InputError(file, None, None, "at least one 'user item …' line", "no lines")
    if layout == "auto":
        layout = "pairs" if int(lines["n"].max()) <= 2 else "sequence"
    lonely = lines["n"] < 2
    if lonely.any():
        raise InputError(file, schema.first_bad(lines, lonely)[0], "item",
                         "an item id after the user id (token 2)", "end of line")
    if layout == "pairs":
        extra = lines["n"] > 2
        if extra.any():
            line, i = schema.first_bad(lines, extra)
            raise InputError(file, line, "item", "'user item' (2 tokens) on each line",
                             f"{int(lines['n'][i])} tokens")
    users = lines["tokens"].list.first()
    bad = ~users.str.contains(_INT_RE)
    if bad.any():
        line, i = schema.first_bad(lines, bad)
        raise InputError(file, line, "user", "an integer user id (token 1)", shorten(users[i]))
    events = (
        lines.select(
            pl.col("tokens").list.first().alias("user_id"),
            pl.col("tokens").list.slice(1).alias("item_id"),
            pl.int_ranges(2, pl.col("n") + 1).alias("token"),
            pl.col(LINE),
        )
        .explode("item_id", "token")
    )
    bad = ~events["item_id"].str.contains(_INT_RE)
    if bad.any():
        line, i = schema.first_bad(events, bad)
        raise InputError(file, line, "item",
                         f"an integer item id (token {int(events['token'][i])})",
                         shorten(events["item_id"][i]))
    # Canonical decimal form; a number too big for Int64 is not an id we can use.
    for col, what in (("user_id", "user"), ("item_id", "item")):
        as_int = events[col].cast(pl.Int64, strict=False)
        if as_int.is_null().any():
            line, i = schema.first_bad(events, as_int.is_null())
            token = 1 if col == "user_id" else int(events["token"][i])
            raise InputError(file, line, what,
                             f"an integer {what} id below 2**63 (token {token})",
                             shorten(events[col][i]))
        events = events.with_columns(as_int.cast(pl.Utf8).alias(col))
    events = events.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp")
    ).select("user_id", "item_id", "timestamp", LINE)
    return events, layout


def _line_of_keys(text: str, count: int) -> list[int]:
    """1-based line of each top-level key, in document order (all 1 for one-line files)."""
    if "\n" not in text.strip():
        return [1] * count
    starts = [m.start() for m in re.finditer(r'"(?:[^"\\]|\\.)*"\s*:', text)]
    if len(starts) != count:
        return [1] * count
    newlines = [m.start() for m in re.finditer("\n", text)]
    return [bisect.bisect(newlines, s) + 1 for s in starts]


def _canonical_id(key: str) -> str:
    k = key.strip()
    return str(int(k)) if k.isdigit() else k


def read_item_attributes(path: Path) -> pl.DataFrame:
    """``{"item": [attribute ids]}`` → canonical items (``item_id``, ``attributes``)."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    check_utf8(path, data, sep=None)
    text = data.decode("utf-8")
    file = str(path)
    try:
        pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    except json.JSONDecodeError as e:
        raise InputError(file, e.lineno, None,
                         "a JSON object mapping item ids to lists of attribute ids",
                         f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(pairs, list) or (pairs and not isinstance(pairs[0], tuple)):
        raise InputError(file, 1, None,
                         "a JSON object mapping item ids to lists of attribute ids",
                         f"a JSON {type(pairs).__name__}")
    lines = _line_of_keys(text, len(pairs))
    ids, attrs = [], []
    for (key, value), line in zip(pairs, lines):
        if not isinstance(value, list) or not all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
        ):
            raise InputError(file, line, "attributes",
                             f"a list of attribute ids for item {key!r}", shorten(value))
        ids.append(_canonical_id(key))
        attrs.append(list(dict.fromkeys(str(v) for v in value)))
    df = pl.DataFrame({
        "item_id": pl.Series(ids, dtype=pl.Utf8),
        "attributes": pl.Series(attrs, dtype=pl.List(pl.Utf8)),
        LINE: pl.Series(lines, dtype=pl.Int64),
    })
    return schema.normalize_items(df, file)


def load(path: str | Path, name: str | None = None, *, layout: Layout = "auto",
         attributes: str | Path | None = None) -> RawDataset:
    """Read ``NAME.txt`` (a file, or a folder plus ``name=``) and its item attributes
    (``NAME_item2attributes.json``, or the ``attributes`` path)."""
    if layout not in ("auto", "sequence", "pairs"):
        raise ValueError(f"layout must be 'auto', 'sequence' or 'pairs', not {layout!r}")
    file = _resolve(Path(path), name)
    raw, used = read_sequences(file, layout)
    events = schema.normalize_events(raw, str(file))
    attr_file = Path(attributes) if attributes is not None else \
        file.with_name(file.stem + ATTRIBUTES_SUFFIX)
    items = None
    if attr_file.is_file():
        items = read_item_attributes(attr_file)
    elif attributes is not None:
        raise InputError(str(attr_file), None, None, "an item2attributes JSON file",
                         "nothing at that path")
    meta = {"name": file.stem, "format": FORMAT, "layout": used, "has_time": False,
            "value_kind": None, "tokenizer": {"merge_window_s": 0}}
    return RawDataset(events, items, str(file), str(attr_file) if items is not None else None,
                      meta)
