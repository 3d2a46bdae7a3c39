"""A run's facts from its files: where its data is, from any working directory."""

from __future__ import annotations

import json

from recfm.runinfo import run_data_dir


def test_a_relative_data_path_of_an_older_run_is_found_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "work" / "prepared").mkdir(parents=True)
    (tmp_path / "work" / "prepared" / "tokens.parquet").write_bytes(b"")
    run, inc = tmp_path / "work" / "runs" / "r1", tmp_path / "work" / "runs" / "r2"
    run.mkdir(parents=True)
    inc.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"path": "prepared"}}))
    (inc / "config.json").write_text(json.dumps({"data": {"path": "nowhere"},
                                                 "incremental": True, "init_from": "runs/r1"}))
    monkeypatch.chdir(tmp_path)  # not where the runs were trained
    assert run_data_dir(run) == tmp_path / "work" / "prepared"
    assert run_data_dir(inc) == tmp_path / "work" / "prepared"
    assert run_data_dir(inc, own=True) is None
