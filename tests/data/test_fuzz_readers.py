"""Fuzz the event readers through `prepare` (issue 18): random bytes, and CSV / TSV / JSON
lines / Parquet files with random column names, types and values, truncated or with flipped
bytes. Every file must give a prepared dataset or one RecfmError of one line; never another
exception, a partial output or a changed input.

A longer campaign: ``RECFM_FUZZ_EXAMPLES=20000 python -m pytest tests/data/test_fuzz_readers.py``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recfm.cli import main
from recfm.errors import RecfmError
from recfm.tokens.prepare import PreparedDataset, load_raw, prepare
from recfm.tokens.tokenizer import TokenizerConfig

EXAMPLES = int(os.environ.get("RECFM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

REQUIRED = ["user_id", "item_id", "timestamp"]
OTHER = ["action", "value", "row", "device", "genres", "title", "release_year", "userId",
         "movieId", "rating", "asin", "reviewerID", "unixReviewTime", "overall",
         "ts", "count", "idx", "n_events", "length"]  # recfm's own names elsewhere
NAMES = st.sampled_from(REQUIRED * 3 + OTHER * 2 + ["_line"]) | st.text(max_size=6)
WITH_REQUIRED = st.lists(NAMES, max_size=4).map(
    lambda extra: REQUIRED + [c for c in dict.fromkeys(extra) if c not in REQUIRED])
COLUMNS = st.lists(NAMES, max_size=6, unique=True) | WITH_REQUIRED | WITH_REQUIRED

PLAUSIBLE = st.sampled_from([1_600_000_000, 1_600_000_000_000, "2024-02-29T12:00:00Z", "u1",
                             "u2", "a", "b", "play", "impression", "12.0", "", " ", "NaN"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | PLAUSIBLE | PLAUSIBLE)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)
# Good values of a column, one kind each: most files get far enough to be tokenized.
SECONDS = st.integers(1_500_000_000, 1_500_100_000)
GOOD = {
    "user_id": [st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 3)],
    "item_id": [st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 5)],
    "timestamp": [SECONDS, SECONDS.map(lambda t: t * 1000),
                  SECONDS.map(lambda t: f"2017-07-{t % 28 + 1:02d}T{t % 24:02d}:00:00Z")],
    "action": [st.sampled_from(["play", "complete", "impression", "trailer", "rate"])],
    "value": [st.floats(0, 5000, allow_nan=False), st.integers(0, 5)],
    "row": [st.integers(0, 100)],
    "device": [st.sampled_from(["tv", "web"])],
}


ARROW = {  # Arrow type → its values
    pa.int64(): st.integers(-2**63, 2**63 - 1) | st.integers(0, 2_000_000_000),
    pa.uint64(): st.integers(0, 2**64 - 1),
    pa.float64(): st.floats(),
    pa.string(): st.text(max_size=8) | PLAUSIBLE.map(str),
    pa.bool_(): st.booleans(),
    pa.binary(): st.binary(max_size=6),
    pa.list_(pa.string()): st.lists(st.text(max_size=3), max_size=3),
    pa.struct([("x", pa.int64())]): st.fixed_dictionaries({"x": st.integers(-9, 9)}),
    pa.timestamp("us"): st.integers(-2**62, 2**62),
    pa.timestamp("s"): st.integers(-2**40, 2**40),
    pa.timestamp("ns", "UTC"): st.integers(-2**63 + 1, 2**63 - 1),
    pa.date32(): st.integers(-2**30, 2**30),
    pa.duration("s"): st.integers(-2**40, 2**40),
    pa.time64("us"): st.integers(0, 86_399_999_999),
    pa.dictionary(pa.int32(), pa.string()): st.sampled_from(["u1", "a", "play"]),
    pa.null(): st.none(),
}


def column_values(draw, column: str, garbage):
    """The strategy for one column's values: good ones (mostly), or ``garbage``."""
    if column in GOOD and draw(st.integers(0, 3)):
        return draw(st.sampled_from(GOOD[column]))
    return garbage


@st.composite
def table(draw, values) -> tuple[list[str], list[list]]:
    """Column names and rows (short, so a few users share items and merges happen)."""
    columns = draw(COLUMNS)
    kinds = [column_values(draw, c, values) for c in columns]
    rows = draw(st.lists(st.tuples(*kinds), max_size=8))
    return columns, rows


def cell(value) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


@st.composite
def text_table(draw, sep: str) -> bytes:
    columns, rows = draw(table(SCALARS))
    if draw(st.booleans()):  # quoted as the csv module writes it
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=sep, lineterminator=draw(st.sampled_from(["\n",
                                                                                     "\r\n"])))
        writer.writerows([columns, *([cell(v) for v in row] for row in rows)])
        return buf.getvalue().encode()
    lines = [sep.join(columns), *(sep.join(cell(v) for v in row) for row in rows)]
    return "\n".join(lines).encode()


@st.composite
def jsonl(draw) -> bytes:
    columns, rows = draw(table(JSON_VALUES))
    records = [{c: v for c, v in zip(columns, row) if v is not None or draw(st.booleans())}
               for row in rows]
    text = "".join(json.dumps(r) + "\n" for r in records)
    return (draw(st.sampled_from(["", "[1]\n", "\n", "{}\n"])) + text).encode()


@st.composite
def parquet(draw) -> bytes:
    columns = draw(COLUMNS)
    n = draw(st.integers(0, 6))
    arrays = {}
    for c in columns:
        kind = draw(st.sampled_from(list(ARROW)))
        good = column_values(draw, c, None)
        values = draw(st.lists(good if good is not None else st.none() | ARROW[kind], min_size=n,
                               max_size=n))
        if good is not None:
            arrays[c] = pa.array(values)
        elif pa.types.is_dictionary(kind):
            arrays[c] = pa.array(values, pa.string()).dictionary_encode()
        else:
            arrays[c] = pa.array(values, kind)
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays) if arrays else pa.table({}), buf)
    return buf.getvalue()


def sequences():
    """S3-Rec / SASRec text: lines of (mostly) integers."""
    token = st.integers(0, 30).map(str) | st.integers(0, 30).map(str) | st.integers().map(str) \
        | st.text("0123456789x-", max_size=4)
    line = st.lists(token, max_size=5).map(" ".join)
    return st.lists(line, max_size=8).map(lambda lines: "\n".join(lines).encode()) \
        | st.binary(max_size=100)


@st.composite
def damaged(draw, content: bytes) -> bytes:
    """``content`` as it is, cut short, or with a few bytes overwritten."""
    how = draw(st.sampled_from(["keep", "keep", "keep", "cut", "flip"]))
    if how == "cut" and content:
        return content[:draw(st.integers(0, len(content) - 1))]
    if how == "flip" and content:
        data = bytearray(content)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return content


@st.composite
def event_file(draw) -> tuple[str, bytes]:
    """(suffix, content): mostly a file of its suffix's format, sometimes another's."""
    makers = {".csv": text_table(","), ".tsv": text_table("\t"), ".jsonl": jsonl(),
              ".parquet": parquet(), ".txt": sequences()}
    kind = draw(st.sampled_from(list(makers)))
    content = draw(makers[kind])
    if draw(st.integers(0, 9)) == 0:  # the bytes of one format under another's name
        kind = draw(st.sampled_from([".csv", ".jsonl", ".parquet", ".json"]))
    if draw(st.integers(0, 9)) == 0:
        content = draw(st.sampled_from([b"", b"\x1f\x8b", b"PAR1", b"user_id,item_id,"
                                        b"timestamp\n"])) + draw(st.binary(max_size=200))
    return kind, draw(damaged(content))


CONFIGS = st.sampled_from([None, TokenizerConfig(merge_window_s=0, drop_actions=[]),
                           TokenizerConfig(unknown_items="drop", max_history=2,
                                           min_time="2000-01-01")])


def write_inputs(folder: Path, events: tuple[str, bytes],
                 items: tuple[str, bytes] | None) -> dict[Path, bytes]:
    # ratings.csv: what the MovieLens adapter looks for
    name = "ratings" if events[1].startswith(b"userId,movieId,rating") else "events"
    files = {folder / f"{name}{events[0]}": events[1]}
    if items is not None:
        files[folder / f"items{items[0]}"] = items[1]
    for path, content in files.items():
        path.write_bytes(content)
    return files


def check_outcome(folder: Path, files: dict[Path, bytes], out: Path, ok: bool) -> None:
    """The inputs unchanged; the output whole (on success) or absent; nothing else there."""
    for path, content in files.items():
        assert path.read_bytes() == content, f"{path.name} changed"
    assert sorted(folder.iterdir()) == sorted([*files, *([out] if ok else [])])
    if ok:
        PreparedDataset.load(out)


@FUZZ
@given(events=event_file(), items=st.none() | st.none() | event_file(), cfg=CONFIGS)
def test_prepare_gives_a_dataset_or_one_line(events, items, cfg):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_inputs(folder, events, items)
        paths = list(files)
        out = folder / "out"
        try:
            prepare(load_raw(paths[0], paths[1] if items else None), out, cfg)
        except RecfmError as e:
            assert str(e) and "\n" not in str(e), repr(str(e))
            ok = False
            event(f"refused: expected {getattr(e, 'expected', type(e).__name__)}"[:60])
        else:
            ok = True
            event("prepared")
        check_outcome(folder, files, out, ok)


def run_cli(*args: str) -> tuple[int, str]:
    """``recfm ARGS`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["recfm", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
    return code, err.getvalue()


@settings(FUZZ, max_examples=max(8, EXAMPLES // 8))
@given(events=event_file())
def test_cli_prepare_exits_0_or_2_with_one_line(events):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_inputs(folder, events, None)
        out = folder / "out"
        code, err = run_cli("prepare", "--events", str(next(iter(files))), "--out", str(out))
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, err
        check_outcome(folder, files, out, code == 0)
