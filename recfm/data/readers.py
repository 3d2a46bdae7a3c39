"""Parquet / CSV / JSON-lines → canonical Polars frames, with a column mapping.

Every reader adds the ``_line`` column (1-based line of the record; the header is line 1
in CSV) and runs the schema's validation, so errors point at ``file:line:column``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recfm.data import schema
from recfm.data.schema import LINE
from recfm.errors import InputError, reading, shorten


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


# Leading bytes of files that are not text: a compressed or Parquet file under a text name.
NOT_TEXT = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"(\xb5/\xfd": "zstd",
            b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"PAR1": "Parquet"}


def check_utf8(path: Path, data: bytes, sep: bytes | None = b",") -> None:
    """Raise an InputError unless ``data`` is text: a compressed (or Parquet) file is named
    as such; otherwise the first byte that is not UTF-8, with its column if we can."""
    kind = next((k for magic, k in NOT_TEXT.items() if data.startswith(magic)), None)
    if kind is not None:
        how = "name it .parquet" if kind == "Parquet" else "decompress it first"
        raise InputError(str(path), None, None, "a plain-text file",
                         f"what looks like {kind} data ({how})")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column: str | None = None
        if sep is not None:
            names = data.split(b"\n", 1)[0].rstrip(b"\r").split(sep)
            pos = data[start:e.start].count(sep)
            column = names[pos].decode("utf-8", "replace") if pos < len(names) else None
        raise InputError(str(path), line, column, "UTF-8 text",
                         f"byte 0x{data[e.start]:02x} that is not UTF-8") from None


def _csv_record_lines(path: Path, data: str, sep: str) -> list[int]:
    """The line each record starts on; an InputError at a record whose field count differs
    from the header's, or that the csv module cannot parse."""
    reader = csv.reader(io.StringIO(data), delimiter=sep)
    starts: list[int] = []
    line = 1
    try:
        header = next(reader, [])
        if not header:
            raise InputError(str(path), 1, None, "a header row", "an empty line")
        line = reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                column = header[len(row)] if len(row) < len(header) \
                    else f"field {len(header) + 1} (past {header[-1]!r})"
                raise InputError(str(path), line, column,
                                 f"{len(header)} fields ({sep!r}-separated)", f"{len(row)}")
            if row:
                starts.append(line)
            line = reader.line_num + 1
    except csv.Error as e:
        raise InputError(str(path), line, None, "CSV text", str(e)) from None
    return starts


def _with_lines(path: Path, df: pl.DataFrame, lines: Iterable[int]) -> pl.DataFrame:
    """``df`` with the ``_line`` column; a column of that name in the file is refused."""
    if LINE in df.columns:
        raise InputError(str(path), 1, LINE, "a column name other than _line (recfm's own)",
                         repr(LINE))
    return df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64))


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
        return _with_lines(path, df, range(2, df.height + 2))
    starts = _csv_record_lines(path, data.decode("utf-8"), sep)
    if df is None:
        raise InputError(str(path), None, None, "a CSV file with a header row",
                         "a file polars could not parse")
    return _with_lines(path, df, starts if len(starts) == df.height else range(2, df.height + 2))


# JSON value → its kind, to find a column that mixes kinds (Polars would coerce them).
JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
              list: "an array", dict: "an object"}


def _mixed_json_columns(path: Path, records: list[dict], lines: list[int]) -> set[str]:
    """Keys whose values mix kinds of scalar (they are read as strings); a key that mixes
    an array or object with anything else is an InputError at the first line that differs."""
    first: dict[str, dict[str, int]] = {}  # key → kind → first line
    for obj, lineno in zip(records, lines):
        for key, value in obj.items():
            if value is not None:
                first.setdefault(key, {}).setdefault(JSON_KINDS[type(value)], lineno)
    mixed = {key for key, kinds in first.items() if len(kinds) > 1}
    for key in mixed:
        (kind, line0), (other, line) = sorted(first[key].items(), key=lambda kv: kv[1])[:2]
        if {"an array", "an object"} & first[key].keys():
            raise InputError(str(path), line, key, f"{kind} as on line {line0}", other)
    return mixed


def read_jsonl(path: Path) -> pl.DataFrame:
    data = path.read_bytes()
    check_utf8(path, data, sep=None)
    records = []
    lines = []
    for lineno, raw in enumerate(data.decode("utf-8").split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(str(path), lineno, f"char {e.colno}", "one JSON object per line",
                             f"invalid JSON ({e.msg} at character {e.colno})") from None
        except RecursionError:
            raise InputError(str(path), lineno, None, "one JSON object per line",
                             "values nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise InputError(str(path), lineno, "char 1", "a JSON object", shorten(obj))
        records.append(obj)
        lines.append(lineno)
    if not records:
        return pl.DataFrame({LINE: pl.Series([], dtype=pl.Int64)})
    for key in _mixed_json_columns(path, records, lines):
        for obj in records:  # "True" is then no timestamp, as it should not be
            if obj.get(key) is not None:
                obj[key] = str(obj[key])
    with reading(path, "JSON lines whose keys hold one kind of value each"):
        df = pl.from_dicts(records, infer_schema_length=None)
    return _with_lines(path, df, lines)


def _names(fields: Iterable[pa.Field]) -> list[str]:
    """Every column name, nested ones included (decoding each: bytes that are not UTF-8
    raise here, where polars would panic)."""
    return [name for f in fields for name in
            (f.name, *_names(f.type.field(i) for i in range(f.type.num_fields)))]


def read_parquet(path: Path) -> pl.DataFrame:
    # Through pyarrow: polars' own reader can abort the process on a damaged file.
    with reading(path, "a Parquet file"):
        table = pq.read_table(path).replace_schema_metadata(None)
        table.validate(full=True)  # string columns hold UTF-8
        _names(table.schema)
        df = pl.from_arrow(table)
    return _with_lines(path, df, range(1, df.height + 1))


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
