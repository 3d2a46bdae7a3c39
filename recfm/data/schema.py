"""Event and item columns, and validation with errors that name file, line and column.

Raw frames carry ``_line`` (the 1-based line, or Parquet row, of each record) so that
:func:`normalize_events` / :func:`normalize_items` can raise an
:class:`~recfm.errors.InputError` pointing at it. Column tables: docs/guide/data.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import polars as pl

from recfm.errors import InputError, shorten

LINE = "_line"

EVENT_REQUIRED = ("user_id", "item_id", "timestamp")
EVENT_CATEGORICAL = ("action", "device", "country", "surface")
EVENT_NUMERIC = {"value": pl.Float64, "row": pl.Int64}
EVENT_KNOWN = EVENT_REQUIRED + EVENT_CATEGORICAL + tuple(EVENT_NUMERIC)

ITEM_REQUIRED = ("item_id",)
ITEM_TEXT = ("title", "description", "entity_type", "language")
ITEM_LISTS = ("genres", "attributes")
ITEM_KNOWN = ITEM_REQUIRED + ITEM_TEXT + ITEM_LISTS + ("release_year",)

# Integer timestamps above this are taken as milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 100_000_000_000
# Seconds of 9999-12-31: later times are beyond what dates (and the report) can show.
TIME_LIMIT = 253_402_214_400
# Column types whose values read as text: ids and timestamps come as these or as numbers.
TEXT_TYPES = (pl.Utf8, pl.Categorical, pl.Enum, pl.Null)


def scalar(dtype: pl.DataType, boolean: bool = True) -> bool:
    """Whether values of ``dtype`` read as one string each: text, a number (or a boolean)."""
    return dtype in TEXT_TYPES or dtype.is_numeric() or (boolean and dtype == pl.Boolean)


def parse_mapping(spec: str | None) -> dict[str, str]:
    """Parse ``"user_id=userId,item_id=movieId"`` into ``{"user_id": "userId", …}``."""
    mapping: dict[str, str] = {}
    if not spec:
        return mapping
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise InputError("--map", None, None, "canonical=source pairs such as user_id=userId",
                             shorten(part))
        canon, source = (s.strip() for s in part.split("=", 1))
        mapping[canon] = source
    return mapping


def apply_mapping(df: pl.DataFrame, mapping: dict[str, str], file: str) -> pl.DataFrame:
    """Rename source columns to canonical names; a missing source column is an error."""
    renames = {}
    for canon, source in mapping.items():
        if source not in df.columns:
            found = ", ".join(c for c in df.columns if c != LINE) or "no columns"
            raise InputError(file, 1, source, f"column {source!r} (mapped to {canon})",
                             f"columns {found}")
        if source != canon:
            renames[source] = canon
    return df.rename(renames) if renames else df


@contextlib.contextmanager
def source_columns(names: dict[str, str]) -> Iterator[None]:
    """Re-raise an InputError about a canonical column with the column named as the source
    file names it (``names``: canonical → source), so the user can find it."""
    try:
        yield
    except InputError as e:
        if e.column in names:
            raise InputError(e.file, e.line, names[e.column], e.expected, e.found) from None
        raise


def first_bad(df: pl.DataFrame, mask: pl.Series) -> tuple[int | None, int]:
    """(line, row index) of the first True in ``mask``."""
    idx = int(mask.arg_true()[0])
    line = int(df[LINE][idx]) if LINE in df.columns else idx + 1
    return line, idx


def check_star_ratings(events: pl.DataFrame, file: str, column: str, raw) -> None:
    """A ``value`` outside 0..5 is an error naming the source ``column`` and the value as it
    was read (``raw``, one per event row)."""
    bad = ~events["value"].is_between(0.0, 5.0) & events["value"].is_not_null()
    if bad.any():
        line, i = first_bad(events, bad)
        raise InputError(file, line, column, "a star rating from 0 to 5", shorten(raw[i]))


def wrong_type(df: pl.DataFrame, col: str, file: str, expected: str) -> InputError:
    """The error for a column whose type cannot hold ``col`` (a list, a struct, bytes…),
    at its first value."""
    s = df[col]
    present = s.is_not_null()
    line, idx = first_bad(df, present if present.any() else ~present)
    value = s.slice(idx, 1).to_physical().to_list()[0]  # a date of the year 0 stays a number
    return InputError(file, line, col, expected, f"{shorten(value)} (a {s.dtype} column)")


def require_columns(df: pl.DataFrame, required: tuple[str, ...], file: str, what: str) -> None:
    for col in required:
        if col not in df.columns:
            found = ", ".join(c for c in df.columns if c != LINE) or "no columns"
            raise InputError(file, 1, col, f"{what} column {col!r} (--map {col}=NAME names "
                             "yours)", f"columns {found}")


SEPARATORS = {"\t": "--format tsv", ";": "--sep ';'", "|": "--sep '|'", "::": "--sep '::'"}


def numberlike(text: str) -> bool:
    """Whether a header name reads as a number (a first line of data taken for a header)."""
    return text.strip().replace(".", "", 1).lstrip("-").isdigit()


def hint_separator(df: pl.DataFrame, file: str) -> None:
    """A file read as one field whose name holds another separator: an InputError naming
    the option that splits it."""
    names = [c for c in df.columns if c != LINE]
    if len(names) == 1:
        sep = next((s for s in SEPARATORS if s in names[0]), None)
        if sep is not None:
            raise InputError(file, 1, None, f"several fields ({SEPARATORS[sep]} reads "
                             f"{sep!r}-separated ones)", f"one field {shorten(names[0])}")


def hint_header(df: pl.DataFrame, file: str, required: tuple[str, ...], options) -> None:
    """When a ``required`` column is missing because of how the file was read — a first
    line of data taken for a header, or the wrong separator — an InputError saying which
    reading options (``options``: :class:`~recfm.data.readers.ReadOptions`) would fix it."""
    if all(c in df.columns for c in required):
        return
    names = [c for c in df.columns if c != LINE]
    cols = ",".join((*required, "…"))
    hint_separator(df, file)
    if options.header is not False and not options.columns and sum(
            numberlike(n) for n in names) >= 2:
        raise InputError(file, 1, None, f"a header naming the columns (or --no-header "
                         f"--columns {cols} naming them)",
                         f"a first line of values: {shorten(', '.join(names), 60)}")
    if options.columns and not options.map:
        raise InputError(file, 1, next(c for c in required if c not in df.columns),
                         f"a --columns name (give {cols})", f"{', '.join(options.columns)}")


def flag_columns(df: pl.DataFrame, spec: list[str], file: str) -> list[str]:
    """The columns ``spec`` names: names, or ``FIRST..LAST`` for a run of them."""
    names = [c for c in df.columns if c != LINE]
    out: list[str] = []
    for part in spec:
        first, _, last = part.partition("..")
        for name in (first, last) if last else (first,):
            if name not in names:
                raise InputError(file, 1, name, "a flag column (--item-flags)",
                                 f"columns {', '.join(names)}")
        out += names[names.index(first):names.index(last) + 1] if last else [first]
    return out


def flags_to_genres(df: pl.DataFrame, flags: list[str], file: str) -> pl.DataFrame:
    """One-hot ``flags`` columns (1/0, true/false, yes/no) → the ``genres`` list of the
    names set on each row, appended to any ``genres`` already there; the flags dropped."""
    values = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False,
              "": False}
    sets = []
    for col in flags:
        text = _as_string(df[col]).str.strip_chars().str.to_lowercase().fill_null("")
        bad = ~text.is_in(list(values))
        if bad.any():
            line, idx = first_bad(df, bad)
            raise InputError(file, line, col, "a flag: 1 or 0 (true/false, yes/no)",
                             shorten(df[col][idx]))
        sets.append(pl.when(text.replace_strict(values, return_dtype=pl.Boolean))
                    .then(pl.lit(col)))
    genres = pl.concat_list(sets).list.drop_nulls()
    if "genres" in df.columns:
        genres = pl.concat_list(_as_list(df["genres"]), genres)
    return df.with_columns(genres.alias("genres")).drop(flags)


def _as_string(s: pl.Series) -> pl.Series:
    if s.dtype == pl.Utf8:
        return s
    if s.dtype == pl.Float64 or s.dtype == pl.Float32:
        # 12.0 → "12": ids read as floats (JSON numbers, nullable Parquet) stay readable.
        as_int = s.cast(pl.Int64, strict=False)
        if ((as_int.cast(s.dtype) == s) | s.is_null()).all():
            return as_int.cast(pl.Utf8)
    return s.cast(pl.Utf8)


def _check_ids(df: pl.DataFrame, col: str, file: str) -> pl.DataFrame:
    if not scalar(df[col].dtype, boolean=False):
        raise wrong_type(df, col, file, "an id (a string or an integer)")
    s = _as_string(df[col])
    bad = s.is_null() | (s.str.strip_chars() == "")
    if bad.any():
        line, idx = first_bad(df, bad)
        raise InputError(file, line, col, "a non-empty id", shorten(df[col][idx]))
    return df.with_columns(s.alias(col))


def _cast_numeric(df: pl.DataFrame, col: str, dtype: pl.DataType, file: str,
                  expected: str) -> pl.DataFrame:
    if not scalar(df[col].dtype, boolean=False):
        raise wrong_type(df, col, file, expected)
    s = df[col]
    if s.dtype == pl.Utf8:
        s = s.str.strip_chars().replace("", None)
    out = s.cast(dtype, strict=False)
    bad = out.is_null() & s.is_not_null()
    if s.dtype in (pl.Float32, pl.Float64):
        bad = bad | out.is_nan()
    if bad.any():
        line, idx = first_bad(df, bad)
        raise InputError(file, line, col, expected, shorten(df[col][idx]))
    return df.with_columns(out.alias(col))


def iso_time(secs: int | None) -> str | None:
    """Seconds since 1970 as ``2024-05-01T12:00:00Z`` (None stays None; a time no date can
    show stays a number of seconds)."""
    if secs is None:
        return None
    try:
        t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=int(secs))
    except OverflowError:
        return f"{secs} seconds from 1970-01-01"
    return t.isoformat().replace("+00:00", "Z")


def check_times(df: pl.DataFrame, file: str, lo: int, hi: int, found: pl.Series | None = None,
                col: str = "timestamp") -> None:
    """An InputError at the first ``col`` (seconds) outside [``lo``, ``hi``), showing the
    value as read (``found``, one per row) or else as a date."""
    bad = (df[col] < lo) | (df[col] >= hi)
    if bad.any():
        line, idx = first_bad(df, bad)
        shown = shorten(found[idx]) if found is not None else iso_time(int(df[col][idx]))
        raise InputError(file, line, col, f"a time from {iso_time(lo)[:10]} to before "
                         f"{iso_time(hi)[:10]}", shown)


def parse_timestamps(df: pl.DataFrame, file: str, col: str = "timestamp") -> pl.DataFrame:
    """Date-times, integer seconds or milliseconds, or ISO-8601 strings → Int64 seconds from
    1970-01-01 to before 9999-12-31 (a plausible range: the tokenizer's min/max_time)."""
    s = df[col]
    if s.dtype in (pl.Datetime, pl.Date):
        secs = s.dt.epoch("s")
    elif not scalar(s.dtype, boolean=False):
        raise wrong_type(df, col, file, "a timestamp (a date-time, integer seconds or "
                         "milliseconds, or ISO-8601)")
    else:
        text = _as_string(s).str.strip_chars()
        numeric = text.cast(pl.Float64, strict=False)
        iso = pl.Series(col, [None] * len(text), dtype=pl.Int64)
        need_iso = numeric.is_null() & text.is_not_null()
        if need_iso.any():
            iso = text.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
        secs = numeric.cast(pl.Int64, strict=False)
        # Milliseconds: decided per value, so mixed files still convert sensibly.
        secs = pl.select(
            pl.when(secs >= _MS_THRESHOLD).then(secs // 1000).otherwise(secs)
        ).to_series()
        secs = secs.fill_null(iso)
    if secs.is_null().any():
        line, idx = first_bad(df, secs.is_null())
        raise InputError(file, line, col,
                         "a timestamp (integer seconds or milliseconds, or ISO-8601)",
                         shorten(s[idx]))
    df = df.with_columns(secs.alias(col).cast(pl.Int64))
    check_times(df, file, 0, TIME_LIMIT, None if s.dtype in (pl.Datetime, pl.Date) else s, col)
    return df


def normalize_events(df: pl.DataFrame, file: str) -> pl.DataFrame:
    """Validate a raw event frame and return the canonical typed frame (docs/guide/data.md)."""
    if LINE not in df.columns:
        df = df.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))
    require_columns(df, EVENT_REQUIRED, file, "event")
    if df.height == 0:
        raise InputError(file, None, None, "at least one event", "no rows")
    df = _check_ids(df, "user_id", file)
    df = _check_ids(df, "item_id", file)
    df = parse_timestamps(df, file)
    for col, dtype in EVENT_NUMERIC.items():
        if col in df.columns:
            df = _cast_numeric(df, col, dtype, file,
                               "a number" if dtype == pl.Float64 else "an integer")
    cats = [c for c in df.columns if c not in EVENT_REQUIRED and c not in EVENT_NUMERIC
            and c != LINE]
    for col in cats:
        if not scalar(df[col].dtype):
            raise wrong_type(df, col, file, "a categorical value (string, number or boolean)")
        df = df.with_columns(_as_string(df[col]).replace("", None).alias(col))
    ordered = [c for c in EVENT_KNOWN if c in df.columns]
    extra = sorted(c for c in df.columns if c not in EVENT_KNOWN and c != LINE)
    return df.select(ordered + extra + [LINE])


def _as_list(s: pl.Series, sep: str = "|") -> pl.Series:
    if s.dtype == pl.List(pl.Utf8):
        return s
    if isinstance(s.dtype, pl.List):
        return s.cast(pl.List(pl.Utf8))
    text = _as_string(s)
    out = text.str.split(sep).list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != "")
    )
    return out.alias(s.name)


def normalize_items(df: pl.DataFrame, file: str) -> pl.DataFrame:
    """Validate a raw item frame; ids must be unique."""
    if LINE not in df.columns:
        df = df.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64))
    require_columns(df, ITEM_REQUIRED, file, "item")
    df = _check_ids(df, "item_id", file)
    dup = df["item_id"].is_duplicated()
    if dup.any():
        # Report the second occurrence: the first is the one we would have kept.
        first_seen = df["item_id"].is_first_distinct()
        line, idx = first_bad(df, dup & ~first_seen)
        raise InputError(file, line, "item_id", "a unique item id",
                         f"{shorten(df['item_id'][idx])} again")
    for col in [c for c in ITEM_TEXT + ITEM_LISTS if c in df.columns]:
        dtype = df[col].dtype
        if not scalar(dtype.inner if col in ITEM_LISTS and isinstance(dtype, pl.List) else dtype):
            raise wrong_type(df, col, file, "text" if col in ITEM_TEXT else
                             "a list of names, or names separated by |")
    df = df.with_columns([_as_string(df[c]) for c in ITEM_TEXT if c in df.columns]
                         + [_as_list(df[c]) for c in ITEM_LISTS if c in df.columns])
    if "release_year" in df.columns:
        df = _cast_numeric(df, "release_year", pl.Int64, file, "an integer year")
    extra = sorted(c for c in df.columns if c not in ITEM_KNOWN and c != LINE)
    # Other columns are kept: as text when they read as text, else as they are (lists, dates)
    df = df.with_columns(_as_string(df[c]) for c in extra if scalar(df[c].dtype))
    ordered = [c for c in ITEM_KNOWN if c in df.columns]
    return df.select(ordered + extra + [LINE])
