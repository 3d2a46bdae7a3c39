"""MovieLens adapter: the CSV layout (ml-latest-small, ml-25m, ml-32m), the ``::`` layout
(ml-1m, ml-10m) and the 100K layout (``u.data``, ``u.item``, ``u.genre``, ``u.user``), read
from a local folder into a :class:`MovieLensDataset`.

Errors name ``file:line:column`` with the file's own column names. Output columns, tags
and file encodings: docs/guide/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recfm.data import schema
from recfm.data.readers import RawDataset, ReadOptions, check_utf8, read_csv, read_table
from recfm.data.schema import LINE
from recfm.errors import InputError

NAME = "movielens"

# Field names of the ``::`` files, as the MovieLens READMEs call them.
RATINGS_DAT = ("UserID", "MovieID", "Rating", "Timestamp")
MOVIES_DAT = ("MovieID", "Title", "Genres")
TAGS_DAT = ("UserID", "MovieID", "Tag", "Timestamp")

RATINGS_CSV = ("userId", "movieId", "rating", "timestamp")
MOVIES_CSV = ("movieId", "title", "genres")
TAGS_CSV = ("userId", "movieId", "tag", "timestamp")
# Per layout: the fields of its ratings, tags and movies files.
_FIELDS = {"csv": (RATINGS_CSV, TAGS_CSV, MOVIES_CSV), "dat": (RATINGS_DAT, TAGS_DAT, MOVIES_DAT)}

# The 100K layout: tab-separated u.data, '|'-separated latin-1 u.item and u.user.
DATA_100K = ("user id", "item id", "rating", "timestamp")
ITEM_100K = ("movie id", "movie title", "release date", "video release date", "IMDb URL")
USER_100K = ("user id", "age", "gender", "occupation", "zip code")
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
# Age groups of ml-1m's users, used for u.user's ages (a facet of every event).
AGE_GROUPS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
              (56, "50-55"))

NO_GENRES = "(no genres listed)"
# A trailing "(1995)", or a range such as "(2006–2007)" / "(2006-)" whose start year is taken.
_YEAR_RE = r"\s*\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)$"


@dataclass
class MovieLensDataset(RawDataset):
    """A :class:`RawDataset` with the raw tag applications kept beside it."""

    tags: pl.DataFrame | None = None


# The file that marks each layout's folder.
RATINGS = {"csv": "ratings.csv", "dat": "ratings.dat", "100k": "u.data"}


def _layout(root: Path) -> str | None:
    return next((lay for lay, name in RATINGS.items() if (root / name).is_file()), None)


def _find_root(path: Path) -> Path | None:
    """The folder holding ratings.csv, ratings.dat or u.data, or None."""
    if path.is_file():
        return path.parent if path.name in RATINGS.values() else None
    if not path.is_dir():
        return None
    if _layout(path) is not None:
        return path
    # An extracted archive: dest/ml-10M100K/ratings.dat given as dest.
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return subs[0] if len(subs) == 1 and _layout(subs[0]) is not None else None


def detect(path: str | Path) -> bool:
    """True for a MovieLens folder (or its ratings file) in any layout."""
    root = _find_root(Path(path))
    if root is None:
        return False
    layout = _layout(root)
    with open(root / RATINGS[layout], "rb") as f:
        head = f.readline().decode("latin-1").strip().lstrip("\ufeff").removeprefix("ï»¿")
    if layout == "csv":
        return head.split(",")[:3] == ["userId", "movieId", "rating"]
    return head.count("::") == 3 if layout == "dat" else len(head.split("\t")) == 4


def load(path: str | Path, *, tags: bool = True, encoding: str = "auto") -> MovieLensDataset:
    """Read a MovieLens folder (CSV or ``::`` layout); the output: docs/guide/data.md."""
    path = Path(path)
    root = _find_root(path)
    if root is None:
        found = "nothing at that path" if not path.exists() else "no ratings.csv or ratings.dat"
        raise InputError(str(path), None, None,
                         "a MovieLens folder with ratings.csv, ratings.dat or u.data", found)
    layout = _layout(root)
    if layout == "100k":
        return _load_100k(root, encoding)
    return _load(root, layout, tags, encoding)


def _load(root: Path, layout: str, want_tags: bool, encoding: str) -> MovieLensDataset:
    """The ratings, tags (when wanted and present) and movies files of one layout."""
    ratings_fields, tags_fields, movies_fields = _FIELDS[layout]

    def read(path: Path, fields: tuple[str, ...], free: int | None = None) -> pl.DataFrame:
        if layout == "csv":
            return _read_csv(path, fields)
        return read_dat(path, fields, free=free, encoding=encoding)

    ratings = root / f"ratings.{layout}"
    events = _ratings_events(read(ratings, ratings_fields), str(ratings), ratings_fields)
    meta = _meta(layout, ReadOptions(
        format="csv", sep="," if layout == "csv" else "::", columns=None if layout == "csv"
        else list(ratings_fields), map=dict(zip(EVENT_COLUMNS, ratings_fields))))
    tags_file = root / f"tags.{layout}"
    tag_table = None
    if want_tags and tags_file.is_file():
        tag_table = _tag_table(read(tags_file, tags_fields, free=2), str(tags_file), tags_fields)
    if tag_table is not None:
        meta["tags_file"] = str(tags_file)
        meta["tag_count"] = tag_table.height
    movies = root / f"movies.{layout}"
    items = None
    if movies.is_file():
        items = _movie_items(read(movies, movies_fields, free=1), str(movies), movies_fields,
                             tag_table)
    return MovieLensDataset(events, items, str(ratings),
                            str(movies) if items is not None else None, meta, tags=tag_table)


def _meta(layout: str, ratings: ReadOptions) -> dict:
    """The dataset's meta; ``ratings``: how its ratings file reads (a file shaped like it is
    then read the same way by ``recommend --events``)."""
    ratings.constants = {"action": "rate"}
    return {"name": NAME, "format": NAME, "layout": layout, "has_time": True,
            "value_kind": "rating", "tokenizer": {"value_agg": "max"},
            "input": ratings.to_dict()}


def _load_100k(root: Path, encoding: str) -> MovieLensDataset:
    """u.data (+ u.user's age group, gender and occupation on each event) and u.item with
    u.genre's names for its genre flags."""
    data = root / "u.data"
    raw = read_table(data, ReadOptions(format="tsv", columns=list(DATA_100K),
                                       encoding=_encoding(data, encoding)))
    events = _ratings_events(raw, str(data), DATA_100K)
    users = root / "u.user"
    if users.is_file():
        events = _with_users(events, users, encoding)
    meta = _meta("100k", ReadOptions(format="tsv", columns=list(EVENT_COLUMNS)))
    movies = root / "u.item"
    items = None
    if movies.is_file():
        genres = _genre_names(root / "u.genre", encoding)
        raw = read_table(movies, ReadOptions(format="csv", sep="|", columns=[
            *ITEM_100K, *genres], encoding=_encoding(movies, encoding)))
        raw = schema.flags_to_genres(raw, list(genres), str(movies))
        raw = raw.with_columns(pl.col("genres").list.join("|"))
        items = _movie_items(raw, str(movies), (*ITEM_100K[:2], "genres"), None)
        from_date = raw["release date"].str.extract(r"(\d{4})$", 1).cast(pl.Int64)
        items = items.with_columns(pl.col("release_year").fill_null(from_date))
    return MovieLensDataset(events, items, str(data), str(movies) if items is not None
                            else None, meta)


def _encoding(path: Path, encoding: str) -> str:
    """``encoding``, or for ``auto`` UTF-8 when the file is, else latin-1."""
    if encoding != "auto":
        return encoding
    try:
        path.read_bytes().decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _genre_names(path: Path, encoding: str) -> tuple[str, ...]:
    """The genre of each flag column, in order, from u.genre (``name|index`` lines)."""
    if not path.is_file():
        return GENRES_100K
    raw = read_table(path, ReadOptions(format="csv", sep="|", columns=["genre", "index"],
                                       encoding=_encoding(path, encoding)))
    raw = raw.filter(pl.col("genre").str.strip_chars().fill_null("") != "")
    return tuple(raw.sort(pl.col("index").cast(pl.Int64, strict=False))["genre"].to_list())


def _with_users(events: pl.DataFrame, path: Path, encoding: str) -> pl.DataFrame:
    """``events`` with each user's ``age_group``, ``gender`` and ``occupation`` (u.user)."""
    raw = read_table(path, ReadOptions(format="csv", sep="|", columns=list(USER_100K),
                                       encoding=_encoding(path, encoding)))
    age = pl.col("age").cast(pl.Int64, strict=False)
    bad = raw.select(age.is_null())["age"]
    if bad.any():
        line, idx = schema.first_bad(raw, bad)
        raise InputError(str(path), line, "age", "an age in years", repr(raw["age"][idx]))
    group = pl.lit("56+")
    for limit, name in reversed(AGE_GROUPS):
        group = pl.when(age < limit).then(pl.lit(name)).otherwise(group)
    users = raw.select(pl.col("user id").alias("user_id"), group.alias("age_group"),
                       pl.col("gender").str.strip_chars(), pl.col("occupation").str.strip_chars())
    return events.join(users, on="user_id", how="left", maintain_order="left") \
        .select(*[c for c in events.columns if c != LINE], "age_group", "gender", "occupation",
                LINE)


# --------------------------------------------------------------------------- shared steps

EVENT_COLUMNS = ("user_id", "item_id", "value", "timestamp")  # a ratings file's, in order

def _events(raw: pl.DataFrame, file: str, names: dict[str, str], *extra: pl.Expr
            ) -> pl.DataFrame:
    """``raw`` as validated events: canonical ← source columns (``names``) plus ``extra``;
    errors name the source columns."""
    df = raw.select(*(pl.col(src).alias(canon) for canon, src in names.items()), *extra,
                    pl.col(LINE))
    with schema.source_columns(names):
        return schema.normalize_events(df, file)


def _ratings_events(raw: pl.DataFrame, file: str, names: tuple[str, ...]) -> pl.DataFrame:
    user, item, rating, ts = names
    events = _events(raw, file, {"user_id": user, "item_id": item, "timestamp": ts,
                                 "value": rating}, pl.lit("rate").alias("action"))
    schema.check_star_ratings(events, file, rating, raw[rating])
    return events


def _tag_table(raw: pl.DataFrame, file: str, names: tuple[str, ...]) -> pl.DataFrame | None:
    user, item, tag, ts = names
    if raw.height == 0:
        return None
    out = _events(raw, file, {"user_id": user, "item_id": item, "timestamp": ts, "tag": tag})
    return out.select("user_id", "item_id", "tag", "timestamp")


def _movie_items(raw: pl.DataFrame, file: str, names: tuple[str, ...],
                 tag_table: pl.DataFrame | None) -> pl.DataFrame:
    item, title, genres = names
    text = pl.col(title).str.strip_chars()
    clean = text.str.replace(_YEAR_RE, "").str.strip_chars()
    df = raw.select(
        pl.col(item).alias("item_id"),
        pl.when(clean == "").then(text).otherwise(clean).alias("title"),
        pl.col(genres).fill_null("").str.split("|")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter((pl.element() != "") & (pl.element() != NO_GENRES)))
        .alias("genres"),
        text.str.extract(_YEAR_RE, 1).cast(pl.Int64).alias("release_year"),
        pl.col(LINE),
    )
    with schema.source_columns({"item_id": item, "title": title, "genres": genres}):
        items = schema.normalize_items(df, file)
    if tag_table is not None:
        per_item = (
            tag_table.select("item_id", pl.col("tag").str.strip_chars().str.to_lowercase())
            .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
            .unique()
            .group_by("item_id")
            .agg(pl.col("tag").sort().alias("tags"))
        )
        items = (
            items.join(per_item, on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))))
        )
        items = items.select([c for c in items.columns if c != LINE] + [LINE])
    return items


# --------------------------------------------------------------------------- CSV layout

def _read_csv(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    df = read_csv(path)
    for col in columns:
        if col not in df.columns:
            found = ", ".join(c for c in df.columns if c != LINE) or "no columns"
            raise InputError(str(path), 1, col, f"a header {','.join(columns)}",
                             f"columns {found}")
    return df


# --------------------------------------------------------------------------- :: layout

def _decode(path: Path, data: bytes, encoding: str) -> str:
    data = data.removeprefix(b"\xef\xbb\xbf")
    if encoding == "auto":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        check_utf8(path, data, sep=None)
        return data.decode("utf-8")
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        raise InputError(str(path), None, None, f"text in {encoding}",
                         f"undecodable data ({type(e).__name__})") from None


def _read_dat_fast(data: bytes, fields: tuple[str, ...]) -> pl.DataFrame | None:
    """The common case — every line complete, no blank lines — read by polars' CSV reader
    (``::`` becomes a unit separator). None when anything is off: the exact reader then
    finds and reports it."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data:
        return None
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    try:
        df = pl.read_csv(data.replace(b"::", b"\x1f"), has_header=False, separator="\x1f",
                         quote_char=None, schema={f: pl.Utf8 for f in fields})
    except pl.exceptions.PolarsError:
        return None
    if df.height != n_lines or any(df[c].has_nulls() for c in fields):
        return None
    last = fields[-1]
    return df.with_columns(
        pl.col(last).str.strip_suffix("\r"),
        pl.int_range(1, df.height + 1, dtype=pl.Int64).alias(LINE),
    )


def read_dat(path: Path, fields: tuple[str, ...], free: int | None = None,
             encoding: str = "auto") -> pl.DataFrame:
    """Read a ``::``-separated file into string columns ``fields`` plus ``_line``, blank lines
    skipped; field ``free`` (a title, a tag) may itself contain ``::``."""
    data = path.read_bytes()
    text = _decode(path, data, encoding)
    if free is None and b"\x1f" not in data:
        fast = _read_dat_fast(data if text.isascii() else text.encode("utf-8"), fields)
        if fast is not None:
            return fast
    k = len(fields)
    df = (
        pl.DataFrame({"raw": pl.Series("raw", [text]).str.split("\n").explode()})
        .with_row_index(LINE, offset=1)
        .with_columns(pl.col(LINE).cast(pl.Int64), pl.col("raw").str.strip_suffix("\r"))
        .filter(pl.col("raw").str.strip_chars() != "")
        .with_columns(pl.col("raw").str.split("::").alias("parts"))
        .with_columns(pl.col("parts").list.len().alias("n"))
    )
    short = df["n"] < k
    long = (df["n"] > k) if free is None else pl.Series([False] * df.height)
    bad = short | long
    if bad.any():
        idx = int(bad.arg_true()[0])
        n = int(df["n"][idx])
        column = fields[n] if n < k else f"field {k + 1} (past {fields[-1]!r})"
        raise InputError(str(path), int(df[LINE][idx]), column,
                         f"{k} '::'-separated fields ({'::'.join(fields)})", str(n))
    parts = pl.col("parts")
    exprs = []
    for i, name in enumerate(fields):
        if free is None or i < free:
            exprs.append(parts.list.get(i).alias(name))
        elif i > free:
            exprs.append(parts.list.get(i - k).alias(name))
        else:
            exprs.append(parts.list.slice(free, pl.col("n") - (k - 1)).list.join("::")
                         .alias(name))
    return df.select(*exprs, pl.col(LINE))
