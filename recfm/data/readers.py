"""Parquet / CSV / JSON-lines → canonical Polars frames, with a column mapping.

Every reader adds the ``_line`` column (1-based line of the record; the header is line 1
in CSV) and runs the schema's validation, so errors point at ``file:line:column``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
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
    "rating" or None); ``tokenizer`` — overrides of the tokenizer defaults that suit
    the format (e.g. no merging of repeats when there is no real time); ``input`` (and
    ``items_input``) — how the files were read (:class:`ReadOptions` as a dict), remembered
    by the prepared dataset and its runs; ``report`` — an adapter's counts for the prepare
    report.
    """

    events: pl.DataFrame
    items: pl.DataFrame | None = None
    events_file: str = ""
    items_file: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


FILE_FORMATS = ("csv", "tsv", "jsonl", "parquet")


@dataclass
class ReadOptions:
    """How a file is read when its name and first line do not say it all, and how its
    columns become recfm's. Saved with a prepared dataset (and the runs trained on it), so
    later files shaped like it — ``recommend --events``, incremental training — need no
    flags. CLI: ``--format``, ``--sep``, ``--header/--no-header``, ``--columns``,
    ``--encoding``, ``--map``."""

    format: str | None = None
    """csv, tsv, jsonl or parquet; None: from the suffix (``.gz`` after it is decompressed)."""
    sep: str | None = None
    """Field separator of csv (default ``,``; tsv: a tab); several characters allowed."""
    header: bool | None = None
    """Whether the first line names the columns; None: yes, unless ``columns`` are given."""
    columns: list[str] | None = None
    """Names of the fields in order: a headerless file's, or replacing the header's."""
    encoding: str = "utf-8"
    map: dict[str, str] = field(default_factory=dict)
    """recfm column ← the file's column, e.g. ``{"user_id": "userId"}``."""
    constants: dict[str, str] = field(default_factory=dict)
    """Columns every row gets, e.g. ``{"action": "rate"}`` for a ratings file."""
    lenient: bool = False
    """Skip a ``map`` entry whose source column is missing when its recfm column is there."""
    keep: list[str] | None = None
    """The (recfm) columns kept, when the file has others that are no event facet (the
    text of a review); None: all."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ReadOptions":
        """Options saved by :meth:`to_dict` (keys it does not know, such as an item file's
        ``flags``, are left out)."""
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_file(self, path: str | Path) -> "ReadOptions":
        """These options (remembered from the training data) for another file: all of them
        when its suffix names no other format; else only the column mapping and constants,
        a mapping whose source column the file lacks then being skipped."""
        try:
            fmt = detect_format(Path(path))
        except InputError:
            return self
        if self.format in (None, fmt):
            return self
        return ReadOptions(map=self.map, constants=self.constants, lenient=True, keep=self.keep)


def detect_format(path: Path) -> Literal["parquet", "csv", "tsv", "jsonl"]:
    suffixes = "".join(path.suffixes).lower().removesuffix(".gz")
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        return "parquet"
    if suffixes.endswith(".tsv"):
        return "tsv"
    if suffixes.endswith(".csv"):
        return "csv"
    if any(suffixes.endswith(s) for s in (".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise InputError(str(path), None, None, "a .parquet, .csv, .tsv or .jsonl file (or the "
                     f"format named: {_format_hint(path)})", f"suffix {path.suffix or '(none)'!r}")


def _format_hint(path: Path) -> str:
    """The options that would read ``path``, guessed from its first line."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    if first.startswith("{"):
        return "--format jsonl"
    sep = next((s for s in ("\t", "::", "|", ";", ",") if s in first), None)
    if sep is None:
        return "--format csv|tsv|jsonl|parquet"
    fields = first.split(sep)
    opts = "--format tsv" if sep == "\t" else f"--format csv --sep '{sep}'"
    if all(schema.numberlike(x) for x in fields[:2]):  # ids where names would be: no header
        opts += f" --no-header --columns {_guess_columns(len(fields))}"
    return opts


def _guess_columns(n: int) -> str:
    names = ["user_id", "item_id", "value", "timestamp"] if n == 4 else \
        ["user_id", "item_id", "timestamp"][:n] + [f"c{i}" for i in range(4, n + 1)]
    return ",".join(names)


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
        raise InputError(str(path), line, column, "UTF-8 text (or its encoding named, "
                         "e.g. --encoding latin-1)",
                         f"byte 0x{data[e.start]:02x} that is not UTF-8") from None


def decoded(path: Path, data: bytes, encoding: str, sep: str | None) -> bytes:
    """``data`` as UTF-8 bytes: checked when it should already be UTF-8, else decoded from
    ``encoding`` (an unknown encoding or undecodable bytes are an InputError)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        check_utf8(path, data, sep.encode() if sep else None)
        return data
    try:
        return data.decode(encoding).encode("utf-8")
    except LookupError:
        raise InputError(str(path), None, None, "an encoding Python knows (--encoding), "
                         "e.g. latin-1 or cp1252", repr(encoding)) from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(str(path), line, None, f"text in {encoding} (--encoding)",
                         f"byte 0x{data[e.start]:02x}") from None


def _csv_record_lines(path: Path, data: str, sep: str, header: bool) -> list[int]:
    """The line each record starts on; an InputError at a record whose field count differs
    from the header's (or the first record's), or that the csv module cannot parse."""
    reader = csv.reader(io.StringIO(data), delimiter=sep)
    starts: list[int] = []
    line = 1
    try:
        first = next(reader, [])
        if not first:
            raise InputError(str(path), 1, None, "a header row" if header else "a record",
                             "an empty line")
        line = reader.line_num + 1
        if not header:
            starts.append(1)
        for row in reader:
            if row and len(row) != len(first):
                names = first if header else [f"field {i + 1}" for i in range(len(first))]
                column = names[len(row)] if len(row) < len(first) \
                    else f"field {len(first) + 1} (past {names[-1]!r})"
                raise InputError(str(path), line, column,
                                 f"{len(first)} fields ({sep!r}-separated; --sep names "
                                 "another separator)", f"{len(row)}")
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


def _named(path: Path, df: pl.DataFrame, columns: list[str] | None) -> pl.DataFrame:
    """``df`` with its fields named ``columns`` (as many as it has)."""
    if not columns:
        return df
    if len(columns) != df.width:
        raise InputError(str(path), 1, None, f"{len(columns)} fields, one per --columns name",
                         f"{df.width}")
    return df.rename(dict(zip(df.columns, columns)))


def read_csv(path: Path, sep: str = ",", header: bool | None = None,
             columns: list[str] | None = None, encoding: str = "utf-8",
             data: bytes | None = None) -> pl.DataFrame:
    """A delimited text file as string columns plus ``_line``. ``header``: whether line 1
    names the fields (default: yes unless ``columns`` names them); ``sep`` may be several
    characters (``::``); ``data``: the file's bytes when already read."""
    has_header = header if header is not None else not columns
    data = decoded(path, path.read_bytes() if data is None else data, encoding,
                   sep if len(sep) == 1 and has_header else None)
    if len(sep) > 1 or sep == "\x1f":  # a unit separator stands in for a long one
        if b"\x1f" in data and sep != "\x1f":
            raise InputError(str(path), None, None, "text without the byte 0x1f", "one")
        data, sep = data.replace(sep.encode(), b"\x1f"), "\x1f"
    try:
        df = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False,
                         has_header=has_header, quote_char=None if sep == "\x1f" else '"')
    except pl.exceptions.PolarsError:
        df = None
    first = 1 + has_header  # the line of the first record
    simple = b'"' not in data and b"\n\n" not in data.replace(b"\r\n", b"\n")
    if df is not None and simple:
        # One record per line: record i (0-based) sits on line i + first.
        return _with_lines(path, _named(path, df, columns), range(first, df.height + first))
    starts = _csv_record_lines(path, data.decode("utf-8"), sep, has_header)
    if df is None:
        raise InputError(str(path), None, None, "a CSV file" + (" with a header row" if
                         has_header else ""), "a file polars could not parse")
    return _with_lines(path, _named(path, df, columns),
                       starts if len(starts) == df.height else range(first, df.height + first))


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


def read_jsonl(path: Path, encoding: str = "utf-8", data: bytes | None = None
               ) -> pl.DataFrame:
    data = decoded(path, path.read_bytes() if data is None else data, encoding, None)
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


def _file_bytes(path: Path) -> bytes:
    """The bytes of a text file, decompressed when they are gzip's (whatever the name)."""
    data = path.read_bytes()
    if not data.startswith(b"\x1f\x8b"):
        return data
    with reading(path, "a gzip-compressed file"):
        return gzip.decompress(data)


def read_table(path: str | Path, options: ReadOptions | None = None) -> pl.DataFrame:
    """Read one file (by its suffix, or ``options.format``) into a raw frame with the
    ``_line`` column, the ``options``' column names and constants applied."""
    path = Path(path)
    opt = options or ReadOptions()
    if not path.is_file():
        raise InputError(str(path), None, None, "an existing file", "nothing at that path")
    if opt.format is not None and opt.format not in FILE_FORMATS:
        raise InputError("--format", None, None, f"one of {', '.join(FILE_FORMATS)}",
                         repr(opt.format))
    fmt = opt.format or detect_format(path)
    if fmt == "parquet":
        df = _named(path, read_parquet(path).drop(LINE), opt.columns)
        df = df.with_columns(pl.int_range(1, df.height + 1, dtype=pl.Int64).alias(LINE))
    elif fmt == "jsonl":
        df = read_jsonl(path, opt.encoding, _file_bytes(path))
    else:
        df = read_csv(path, opt.sep or ("\t" if fmt == "tsv" else ","), opt.header,
                      opt.columns, opt.encoding, _file_bytes(path))
    mapping = {k: v for k, v in opt.map.items() if not opt.lenient or v in df.columns
               or k not in df.columns}
    schema.hint_separator(df, str(path))
    df = schema.apply_mapping(df, mapping, str(path))
    df = df.with_columns(pl.lit(v, pl.Utf8).alias(k) for k, v in opt.constants.items()
                         if not opt.lenient or k not in df.columns)
    return df if opt.keep is None else df.select(c for c in df.columns if c in opt.keep
                                                 or c == LINE)


def read_events(path: str | Path, mapping: dict[str, str] | None = None,
                options: ReadOptions | None = None) -> pl.DataFrame:
    """Read and validate an event file (Parquet, CSV/TSV or JSON lines, maybe gzipped);
    ``mapping`` adds to ``options.map``."""
    opt = dataclasses.replace(options or ReadOptions())
    opt.map = {**opt.map, **(mapping or {})}
    df = read_table(path, opt)
    schema.hint_header(df, str(path), schema.EVENT_REQUIRED, opt)
    return schema.normalize_events(df, str(path))


# The CLI flags of the events file → those of the item file.
ITEM_FLAGS = {"--no-header --columns": "--item-columns", "--format": "--item-format",
              "--sep": "--item-sep", "--map ": "--item-map ", " --columns": " --item-columns"}


def read_items(path: str | Path, mapping: dict[str, str] | None = None,
               options: ReadOptions | None = None,
               flags: list[str] | None = None) -> pl.DataFrame:
    """Read and validate an item catalog; ``flags``: one-hot columns (1 / 0) gathered into
    the ``genres`` list, each named by its column."""
    opt = dataclasses.replace(options or ReadOptions())
    opt.map = {**opt.map, **(mapping or {})}
    try:
        df = read_table(path, opt)
        schema.hint_header(df, str(path), schema.ITEM_REQUIRED, opt)
        if flags:
            df = schema.flags_to_genres(df, schema.flag_columns(df, flags, str(path)),
                                        str(path))
        return schema.normalize_items(df, str(path))
    except InputError as e:  # the options that would fix it are the item file's
        expected = e.expected
        for flag, item_flag in ITEM_FLAGS.items():
            expected = expected.replace(flag, item_flag)
        raise InputError(e.file, e.line, e.column, expected, e.found) from None


def read_generic(events: str | Path, items: str | Path | None = None,
                 event_map: dict[str, str] | None = None,
                 item_map: dict[str, str] | None = None,
                 options: ReadOptions | None = None,
                 item_options: ReadOptions | None = None,
                 item_flags: list[str] | None = None) -> RawDataset:
    """Events (+ items) in the canonical schema, any supported file format."""
    opt = dataclasses.replace(options or ReadOptions())
    opt.map = {**opt.map, **(event_map or {})}
    ev = read_events(events, None, opt)
    it = read_items(items, item_map, item_options, item_flags) if items is not None else None
    return RawDataset(ev, it, str(events), str(items) if items else None,
                      {"name": Path(Path(events).name.removesuffix(".gz")).stem, "has_time": True,
                       "input": opt.to_dict()})
