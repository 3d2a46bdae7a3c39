"""Parquet / CSV / JSON-lines → canonical Polars frames, with a column mapping.

Every reader adds the ``_line`` column (1-based line of the record; the header is line 1
in CSV) and runs the schema's validation, so errors point at ``file:line:column``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from recfm.data import schema
from recfm.data.schema import LINE
from recfm.errors import InputError, shorten


@dataclass
class RawDataset:
    """What every reader and adapter returns: canonical events and (optional) items.

    ``meta`` tells the tokenizer about the data: ``name``; ``has_time`` (False when the
    timestamps are only an order, as in the S3-Rec files); ``value_kind`` ("duration",
    "rating" or None); and ``tokenizer`` — overrides of the tokenizer defaults that suit
    the format (e.g. no merging of repeats when there is no real time).
    """

    events: pl.DataFrame
    items: pl.DataFrame | None = None
    events_file: str = ""
    items_file: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def detect_format(path: Path) -> Literal["parquet", "csv", "tsv", "jsonl"]:
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        return "parquet"
    if suffixes.endswith(".tsv"):
        return "tsv"
    if suffixes.endswith(".csv"):
        return "csv"
    if any(suffixes.endswith(s) for s in (".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise InputError(str(path), None, None, "a .parquet, .csv, .tsv or .jsonl file",
                     f"suffix {path.suffix or '(none)'!r}")


def check_utf8(path: Path, data: bytes, sep: bytes | None = b",") -> None:
    """Raise an InputError at the first byte that is not UTF-8, naming its column if we can."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column: str | None = None
        if sep is not None:
            header = data.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
            names = next(csv.reader([header], delimiter=sep.decode()))
            pos = data[start:e.start].count(sep)
            column = names[pos] if pos < len(names) else None
        raise InputError(str(path), line, column, "UTF-8 text",
                         f"byte 0x{data[e.start]:02x} that is not UTF-8") from None


def _csv_record_lines(data: str, sep: str) -> tuple[list[str], list[int], int | None]:
    """Header, the line each record starts on, and the index of the first ragged record."""
    reader = csv.reader(io.StringIO(data), delimiter=sep)
    header = next(reader, [])
    starts: list[int] = []
    ragged = None
    line = reader.line_num + 1
    for row in reader:
        if row and len(row) != len(header) and ragged is None:
            ragged = len(starts)
        if row:
            starts.append(line)
        line = reader.line_num + 1
    return header, starts, ragged


def read_csv(path: Path, sep: str = ",") -> pl.DataFrame:
    data = path.read_bytes()
    check_utf8(path, data, sep.encode())
    try:
        df = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False)
    except pl.exceptions.PolarsError:
        df = None
    simple = b'"' not in data and b"\n\n" not in data.replace(b"\r\n", b"\n")
    if df is not None and simple:
        # One record per line: record i (0-based) sits on line i + 2.
        return df.with_columns(pl.int_range(2, df.height + 2, dtype=pl.Int64).alias(LINE))
    text = data.decode("utf-8")
    header, starts, ragged = _csv_record_lines(text, sep)
    if ragged is not None:
        line = starts[ragged]
        row = next(csv.reader([text.splitlines()[line - 1]], delimiter=sep))
        if len(row) > len(header):
            column = f"field {len(header) + 1} (past {header[-1]!r})"
        else:
            column = header[len(row)] if row else header[0]
        raise InputError(str(path), line, column,
                         f"{len(header)} fields ({sep!r}-separated)", f"{len(row)}")
    if df is None:
        raise InputError(str(path), None, None, "a CSV file with a header row",
                         "a file polars could not parse")
    lines = starts if len(starts) == df.height else range(2, df.height + 2)
    return df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64))


def read_jsonl(path: Path) -> pl.DataFrame:
    data = path.read_bytes()
    check_utf8(path, data, sep=None)
    records = []
    lines = []
    for lineno, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(str(path), lineno, f"char {e.colno}", "one JSON object per line",
                             f"invalid JSON ({e.msg} at character {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(str(path), lineno, "char 1", "a JSON object", shorten(obj))
        records.append(obj)
        lines.append(lineno)
    if not records:
        return pl.DataFrame({LINE: pl.Series([], dtype=pl.Int64)})
    try:
        df = pl.from_dicts(records, infer_schema_length=None)
    except pl.exceptions.PolarsError:
        # Mixed types in a column: keep everything as strings; validation casts later.
        keys = sorted({k for r in records for k in r})
        df = pl.DataFrame({k: [None if r.get(k) is None else
                               (r[k] if isinstance(r[k], list) else str(r[k]))
                               for r in records] for k in keys})
    return df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64))


def read_parquet(path: Path) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(str(path), None, None, "a Parquet file",
                         f"unreadable data ({type(e).__name__})") from None
    return df.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))


def read_table(path: str | Path) -> pl.DataFrame:
    """Read one file by its suffix into a raw frame with the ``_line`` column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, None, "an existing file", "nothing at that path")
    fmt = detect_format(path)
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    return read_csv(path, sep="\t" if fmt == "tsv" else ",")


def read_events(path: str | Path, mapping: dict[str, str] | None = None) -> pl.DataFrame:
    """Read and validate an event file (Parquet, CSV/TSV or JSON lines)."""
    df = schema.apply_mapping(read_table(path), mapping or {}, str(path))
    return schema.normalize_events(df, str(path))


def read_items(path: str | Path, mapping: dict[str, str] | None = None) -> pl.DataFrame:
    """Read and validate an item catalog (Parquet, CSV/TSV or JSON lines)."""
    df = schema.apply_mapping(read_table(path), mapping or {}, str(path))
    return schema.normalize_items(df, str(path))


def read_generic(events: str | Path, items: str | Path | None = None,
                 event_map: dict[str, str] | None = None,
                 item_map: dict[str, str] | None = None) -> RawDataset:
    """Events (+ items) in the canonical schema, any supported file format."""
    ev = read_events(events, event_map)
    it = read_items(items, item_map) if items is not None else None
    return RawDataset(ev, it, str(events), str(items) if items else None,
                      {"name": Path(events).stem, "has_time": True})
