"""prepare: the dataset directory, its report, determinism and atomicity."""

from __future__ import annotations

import hashlib
import json
import tempfile

import numpy as np
import polars as pl
import pytest

from recfm.data.readers import read_generic
from recfm.errors import InputError
from recfm.io import MARKER
from recfm.tokens.prepare import PreparedDataset, describe, prepare
from recfm.tokens.tokenizer import TokenizerConfig


@pytest.fixture()
def event_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    df = pl.DataFrame({
        "uid": [f"u{u}" for u in rng.integers(0, 60, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 80, n)],
        "timestamp": rng.integers(1_600_000_000, 1_600_000_000 + 86400 * 30, n),
        "action": rng.choice(["impression", "play", "complete", "trailer"], n),
        "value": rng.uniform(0, 3000, n).round(1),
        "device": rng.choice(["tv", "mobile", "web"], n),
    })
    path = tmp_path / "events.parquet"
    df.write_parquet(path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_dataset_and_report(tmp_path, event_file):
    raw = read_generic(event_file, event_map={"user_id": "uid"})
    report = prepare(raw, tmp_path / "prep")
    out = tmp_path / "prep"
    assert {p.name for p in out.iterdir()} == {"tokens.parquet", "items.parquet",
                                               "tokenizer.json", "report.json", MARKER}
    assert report["events_in"] == 3000
    assert report["dropped"]["action:impression"] > 0
    assert report["events_kept"] == 3000 - report["dropped_total"]
    assert report["tokens_out"] <= report["events_kept"]
    assert report["users"] == 60
    assert json.loads((out / "report.json").read_text())["tokens_out"] == report["tokens_out"]
    ds = PreparedDataset.load(out)
    assert ds.sequences["length"].sum() == report["tokens_out"]
    assert ds.tokenizer.n_items == ds.items.height + 3
    assert ds.items["idx"].to_list() == list(range(3, ds.tokenizer.n_items))
    assert set(ds.tokenizer.facets) == {"action", "device"}
    d = describe(out, top=3)
    assert d["users"] == 60 and len(d["top_items"]) == 3
    assert d["top_items"][0]["n"] >= d["top_items"][1]["n"]


def test_prepare_is_byte_identical_on_rerun(tmp_path, event_file):
    raw = read_generic(event_file, event_map={"user_id": "uid"})
    prepare(raw, tmp_path / "a")
    prepare(read_generic(event_file, event_map={"user_id": "uid"}), tmp_path / "b")
    for name in ("tokens.parquet", "items.parquet", "tokenizer.json"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name


def test_prepare_replaces_output_atomically(tmp_path, event_file):
    raw = read_generic(event_file, event_map={"user_id": "uid"})
    prepare(raw, tmp_path / "prep")
    first = digest(tmp_path / "prep" / "tokens.parquet")

    class Boom(Exception):
        pass

    def explode(step):
        if step == "writing":
            raise Boom

    with pytest.raises(Boom):
        prepare(raw, tmp_path / "prep", on_step=explode, overwrite=True)
    # the earlier result is untouched and no temporary directory is left behind
    assert digest(tmp_path / "prep" / "tokens.parquet") == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet", "prep"]


def test_times_outside_the_plausible_range_are_refused(tmp_path):
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu1,a,1600000000\nu1,b,32503680000\n")
    with pytest.raises(InputError, match=r"e\.csv:3:timestamp: expected a time from "
                       r"1970-01-01 to before 2100-01-01, found 3000-01-01T00:00:00Z"):
        prepare(read_generic(events), tmp_path / "out")
    with pytest.raises(InputError, match="e.csv:2:timestamp"):
        prepare(read_generic(events), tmp_path / "out", TokenizerConfig(min_time="2021-01-01"))
    assert not (tmp_path / "out").exists()
    report = prepare(read_generic(events), tmp_path / "out",
                     TokenizerConfig(max_time="3000-01-01T00:00:01+00:00"))
    assert report["time_range"][1] == "3000-01-01T00:00:00Z"
    with pytest.raises(InputError, match="max_time: expected an ISO-8601 date"):
        TokenizerConfig.from_dict({"max_time": "soon"})


def test_an_output_folder_that_cannot_be_created_is_one_error(tmp_path, event_file, monkeypatch):
    # chmod does not stop root: inject the error the operating system would give.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    before = digest(event_file)
    with pytest.raises(InputError, match="prep: expected a folder recfm can create for the "
                       "prepared output, found Permission denied"):
        prepare(read_generic(event_file, event_map={"user_id": "uid"}), tmp_path / "prep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]
    assert digest(event_file) == before


def test_events_that_all_drop_are_refused(tmp_path):
    # Found by tests/data/test_fuzz_readers.py: an empty dataset was written, then the CLI
    # failed printing its report (KeyError 'p50').
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp,action\nu1,a,1600000000,impression\n")
    with pytest.raises(InputError, match="e.csv: expected at least one event that becomes a "
                       r"token, found none of 1 \(dropped: action:impression 1\)"):
        prepare(read_generic(events), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_event_column_named_like_a_token_column_is_refused(tmp_path):
    # Found by tests/data/test_fuzz_readers.py: a facet named ts crashed the tokenizer
    # (DuplicateError); one named _order silently became the order of same-time events.
    for name in ("ts", "_order"):
        events = tmp_path / "e.csv"
        events.write_text(f"user_id,item_id,timestamp,{name}\nu1,a,1600000000,1\n")
        with pytest.raises(InputError, match=f"e.csv:1:{name}: expected an event column named "
                           "otherwise"):
            prepare(read_generic(events), tmp_path / "out")


def test_an_item_column_named_like_an_items_parquet_column_is_refused(tmp_path):
    # Found while fuzzing: it came out renamed idx_right.
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu1,a,1600000000\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,idx\na,7\n")
    with pytest.raises(InputError, match="items.csv:1:idx: expected an item column named"):
        prepare(read_generic(events, items), tmp_path / "out")
    assert not (tmp_path / "out").exists()
