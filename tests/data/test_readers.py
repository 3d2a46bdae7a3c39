"""Event files that used to crash a reader or be silently coerced: each is now one InputError
naming file:line:column (issue 18.6)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfm.data.readers import read_events, read_items
from recfm.errors import InputError

CSV = "user_id,item_id,timestamp\nu1,a,100\n"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "damaged"


def parquet(**columns: pa.Array):
    base = {"user_id": pa.array(["u1", "u1"]), "item_id": pa.array(["a", "b"]),
            "timestamp": pa.array([100, 200])}
    return lambda path: pq.write_table(pa.table({**base, **columns}), path)


def text(content: str | bytes):
    data = content.encode() if isinstance(content, str) else content
    return lambda path: path.write_bytes(data)


def jsonl(*records: dict):
    return text("".join(json.dumps(r) + "\n" for r in records))


def event(**fields) -> dict:
    return {"user_id": "u1", "item_id": "a", "timestamp": 100, **fields}


# (name, file name, writer, "line:column" the message names, a phrase of it)
CASES = [
    ("ms_overflow", "e.csv", text(CSV + "u1,b,9000000000000000\n"), "3:timestamp", "9999-12-31"),
    ("int64_2_62", "e.parquet", parquet(timestamp=pa.array([100, 2**62], pa.int64())),
     "2:timestamp", "4611686018427387904"),
    ("datetime_far", "e.parquet", parquet(timestamp=pa.array([100, 2**62], pa.timestamp("us"))),
     "2:timestamp", "seconds from 1970"),
    ("list_user", "e.parquet", parquet(user_id=pa.array([["u1"], ["u2"]])), "1:user_id", "List"),
    ("binary_item", "e.parquet", parquet(item_id=pa.array([b"a", b"b"], pa.binary())),
     "1:item_id", "Binary"),
    ("struct_item", "e.parquet", parquet(item_id=pa.array([{"x": 1}, {"x": 2}])), "1:item_id",
     "Struct"),
    ("map_item", "e.parquet",
     parquet(item_id=pa.array([[("k", 1)], [("k", 2)]], pa.map_(pa.string(), pa.int64()))),
     "1:item_id", "Map"),
    ("duration_ts", "e.parquet", parquet(timestamp=pa.array([100, 200], pa.duration("s"))),
     "1:timestamp", "Duration"),
    ("time64_ts", "e.parquet", parquet(timestamp=pa.array([100, 200], pa.time64("us"))),
     "1:timestamp", "Time"),
    ("jsonl_list_item", "e.jsonl", jsonl(event(item_id=["a"]), event(item_id=["b"])),
     "1:item_id", "List"),
    ("jsonl_list_after_string", "e.jsonl", jsonl(event(), event(item_id=["b"])), "2:item_id",
     "an array"),
    ("jsonl_object_user", "e.jsonl", jsonl(event(user_id={"a": 1}), event(user_id={"a": 2})),
     "1:user_id", "Struct"),
    ("jsonl_true_timestamp", "e.jsonl", jsonl(event(timestamp=True), event(timestamp=200)),
     "1:timestamp", "'True'"),
    ("jsonl_deep", "e.jsonl",
     text('{"user_id": "u1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n"), "1:",
     "nested too deeply"),
    ("zip_as_csv", "e.csv", text(b"PK\x03\x04" + b"\x00" * 40), "", "looks like zip"),
    ("bad_newline_in_header", "e.csv", text(b"user_id,item\rx\xff_id\n"), "1:item\\r",
     "not UTF-8"),
    ("empty_header_line", "e.csv", text("\n\n" + CSV), "1:", "header row"),
    # found by tests/data/test_fuzz_readers.py
    ("line_column", "e.parquet", parquet(_line=pa.array([5, 6])), "1:_line", "recfm's own"),
    ("duration_facet", "e.parquet", parquet(device=pa.array([1, 2], pa.duration("s"))),
     "1:device", "Duration"),
    ("list_value", "e.parquet", parquet(value=pa.array([[1.5], [2.0]])), "1:value", "List"),
    ("far_date_facet", "e.parquet", parquet(device=pa.array([2**30, 0], pa.date32())),
     "1:device", "1073741824 (a Date column)"),
    ("far_date_id", "e.parquet", parquet(item_id=pa.array([-2**30, 0], pa.date32())),
     "1:item_id", "-1073741824 (a Date column)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_event_file_is_one_located_error(tmp_path, case):
    _, name, write, where, phrase = case
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        read_events(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{where}"), message
    assert phrase in message and "\n" not in message, message
    assert path.read_bytes() == before


ITEM_CASES = [  # (column, values, phrase)
    ("title", pa.array([["x"], ["y"]]), "expected text"),
    ("title", pa.array([{"x": 1}, {"x": 2}]), "expected text"),
    ("genres", pa.array([[["a"]], [["b"]]]), "expected a list of names"),
    ("genres", pa.array([[2**30], [3]], pa.list_(pa.date32())), "expected a list of names"),
]


@pytest.mark.parametrize("case", ITEM_CASES, ids=[f"{c[0]}-{c[1].type}" for c in ITEM_CASES])
def test_bad_item_column_is_one_located_error(tmp_path, case):
    column, values, phrase = case
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], column: values}), path)
    with pytest.raises(InputError, match=f"items.parquet:1:{column}: {phrase}"):
        read_items(path)


def test_dictionary_encoded_ids_are_strings(tmp_path):
    path = tmp_path / "e.parquet"
    parquet(item_id=pa.array(["a", "b"]).dictionary_encode())(path)
    assert read_events(path)["item_id"].to_list() == ["a", "b"]


def test_control_characters_stay_on_one_line():
    message = str(InputError("f.csv", 1, "a\nb", "x", "y\rz\x00" + "w" * 500))
    assert "\n" not in message and "\r" not in message and "\\n" in message
    assert len(message) < 220


@pytest.mark.parametrize("name", ["panics-polars.parquet", "aborts-polars.parquet"])
def test_damaged_parquet_is_one_line_not_a_panic_or_an_abort(tmp_path, name):
    # Found by tests/data/test_fuzz_readers.py: pl.read_parquet panics on the first and
    # aborts the process ("memory allocation of 2305843009213693952 bytes failed") on the
    # second. A subprocess, so that an abort fails this test instead of ending pytest.
    events = FIXTURES / name
    res = subprocess.run([sys.executable, "-m", "recfm", "prepare", "--events", str(events),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {events}: expected a Parquet file, found ")
    assert res.stderr.count("\n") == 1, res.stderr
    assert not list(tmp_path.iterdir())


def test_gzip_data_is_read_whatever_the_name(tmp_path):
    path = tmp_path / "e.csv"  # gzip bytes under a plain name (issue 19: read, not refused)
    path.write_bytes(gzip.compress(CSV.encode()))
    assert read_events(path)["item_id"].to_list() == ["a"]
