"""Malformed input: exit status 2, one line naming file:line:column, no traceback, no output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

GOOD_ITEMS = "item_id,title,genres,release_year\na,Alpha,drama|comedy,1999\nb,Beta,,2001\n"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfm", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


HEADER = "user_id,item_id,timestamp,action,value,row\n"
OK_ROW = "u1,a,100,play,30,1\n"

# (name, events file name, events content, items content or None, extra args,
#  expected line, expected column)
CASES = [
    ("missing_column", "e.csv", "user,item_id,timestamp\nu1,a,100\n", None, [], 1, "user_id"),
    ("null_user", "e.csv", HEADER + OK_ROW + ",a,100,play,30,1\n", None, [], 3, "user_id"),
    ("null_item", "e.csv", HEADER + OK_ROW + OK_ROW + "u2,,100,play,30,1\n", None, [], 4,
     "item_id"),
    ("bad_timestamp", "e.csv", HEADER + OK_ROW + "u1,b,yesterday,play,30,1\n", None, [], 3,
     "timestamp"),
    ("negative_timestamp", "e.csv", HEADER + "u1,b,-100,play,30,1\n", None, [], 2, "timestamp"),
    ("bad_value", "e.csv", HEADER + OK_ROW + "u1,b,100,play,long,1\n", None, [], 3, "value"),
    ("bad_row", "e.csv", HEADER + "u1,b,100,play,3,top\n", None, [], 2, "row"),
    ("unknown_item", "e.csv", HEADER + OK_ROW + "u1,zzz,200,play,30,1\n", GOOD_ITEMS, [], 3,
     "item_id"),
    ("bad_encoding", "e.csv", (HEADER + OK_ROW).encode() + b"u1,b\xe9,100,play,30,1\n", None, [],
     3, "item_id"),
    ("ragged_row", "e.csv", HEADER + OK_ROW + "u1,b,100,play,30,1,extra\n", None, [], 3,
     "field 7"),
    ("bad_json", "e.jsonl", '{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": \n',
     None, [], 2, "char"),
    ("mapped_column_missing", "e.csv", "uid,item_id,timestamp\nu1,a,100\n", None,
     ["--map", "user_id=userId"], 1, "userId"),
    ("duplicate_item", "e.csv", HEADER + OK_ROW, GOOD_ITEMS + "a,Again,,2002\n", [], 4,
     "item_id"),
    ("bad_release_year", "e.csv", HEADER + OK_ROW, "item_id,release_year\na,1999\nb,soon\n", [],
     3, "release_year"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gives_one_located_line(tmp_path, case):
    name, fname, content, items, extra, line, column = case
    events = write(tmp_path / fname, content)
    args = ["prepare", "--events", str(events), "--out", str(tmp_path / "out")]
    if items is not None:
        args += ["--items", str(write(tmp_path / "items.csv", items))]
    res = run_cli(*args, *extra, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert len(err.splitlines()) == 1, err
    bad_file = "items.csv" if name in ("duplicate_item", "bad_release_year") else fname
    assert re.search(rf"{re.escape(bad_file)}:{line}:{re.escape(column)}", err), err
    assert "expected" in err and "found" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_malformed_parquet_names_the_row(tmp_path):
    path = tmp_path / "e.parquet"
    pl.DataFrame({"user_id": ["u1", None], "item_id": ["a", "b"],
                  "timestamp": [1, 2]}).write_parquet(path)
    res = run_cli("prepare", "--events", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2
    assert "e.parquet:2:user_id" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_tokenizer_key_is_refused(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + OK_ROW)
    cfg = write(tmp_path / "tok.toml", "merge_windw_s = 10\n")
    res = run_cli("prepare", "--events", str(events), "--out", str(tmp_path / "out"),
                  "--tokenizer", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "tok.toml" in res.stderr and "merge_windw_s" in res.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_items_can_be_dropped_and_counted(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + OK_ROW + "u1,zzz,200,play,30,1\n"
                   + "u1,b,300,play,30,1\n")
    items = write(tmp_path / "items.csv", GOOD_ITEMS)
    cfg = write(tmp_path / "tok.toml", 'unknown_items = "drop"\n')
    res = run_cli("prepare", "--events", str(events), "--items", str(items), "--out",
                  str(tmp_path / "out"), "--tokenizer", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import json
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dropped"] == {"item_not_in_catalog": 1}
    assert report["tokens_out"] == 2


def test_out_of_range_world_setting_is_one_line(tmp_path):
    res = run_cli("data", "synth", "--out", str(tmp_path / "w"), "--users", "50", "--items", "40",
                  "--habit-fraction", "1.5", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "habit_fraction" in res.stderr and "1.5" in res.stderr
    assert not (tmp_path / "w").exists()


def test_prepare_refuses_an_out_holding_its_input_and_leaves_it_untouched(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    events = write(d / "e.csv", HEADER + OK_ROW + "u1,b,200,play,30,1\n")
    before = events.read_bytes()
    for out in (d, tmp_path):  # the input's folder, and a folder above it
        res = run_cli("prepare", "--events", str(events), "--out", str(out), "--overwrite",
                      cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert "found the input" in res.stderr
    assert events.read_bytes() == before
    assert [p.name for p in d.iterdir()] == ["e.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_an_out_with_other_files_or_naming_a_file_is_refused(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + OK_ROW + "u1,b,200,play,30,1\n")
    (tmp_path / "w").mkdir()
    mine = write(tmp_path / "w" / "notes.txt", "mine")
    for args in (["data", "synth", "--out", str(tmp_path / "w"), "--users", "50", "--items",
                  "40", "--events-per-user", "5"],
                 ["prepare", "--events", str(events), "--out", str(tmp_path / "w")],
                 ["prepare", "--events", str(events), "--out", str(mine), "--overwrite"]):
        res = run_cli(*args, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert mine.read_text() == "mine" and [p.name for p in (tmp_path / "w").iterdir()] == [
        "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "w"]


def test_an_earlier_output_is_replaced_only_with_overwrite(tmp_path):
    events = write(tmp_path / "e.csv", HEADER + OK_ROW + "u1,b,200,play,30,1\n")
    args = ["prepare", "--events", str(events), "--out", str(tmp_path / "out")]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert run_cli(*args, "--overwrite", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out" / "tokens.parquet").is_file()


def test_help_keeps_bracketed_words():
    from typer.testing import CliRunner

    from recfm.cli import app

    out = CliRunner().invoke(app, ["train", "--help"]).output
    assert "TOML with [model] and [train] tables." in " ".join(out.split())
    assert "Override [train] epochs." in " ".join(out.split())
