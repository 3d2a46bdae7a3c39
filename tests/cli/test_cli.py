"""The CLI end to end on a tiny world: synth → prepare → train → evaluate → recommend."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "recfm", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run("data", "synth", "--out", "world", "--users", "150", "--items", "80",
        "--events-per-user", "40", cwd=root)
    run("prepare", "--events", "world", "--out", "prepared", cwd=root)
    (root / "cfg.toml").write_text(
        "[model]\nd_model = 16\nn_layers = 1\nmax_len = 16\n\n"
        "[train]\nepochs = 2\nbatch_size = 32\ntensorboard = false\n")
    res = run("train", "prepared", "--out", "run", "--config", "cfg.toml", cwd=root)
    (root / "train-output.txt").write_text(res.stdout)
    return root


def test_train_writes_a_loadable_run(trained):
    summary = json.loads((trained / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    printed = (trained / "train-output.txt").read_text()
    assert "popularity (test)" in printed  # the baseline beside the model
    assert "stopped by the epoch cap" in printed  # and why training ended
    config = json.loads((trained / "run" / "config.json").read_text())
    assert config["model"]["d_model"] == 16 and config["train"]["epochs"] == 2


def test_evaluate_reports_model_and_baselines(trained):
    res = run("evaluate", "run", "--data", "prepared", "--json", cwd=trained)
    out = json.loads(res.stdout)
    assert set(out) == {"model", "popularity", "recent"}
    for k in (1, 5, 10, 20, 50, 100):
        assert 0 <= out["model"][f"ndcg@{k}"] <= out["model"][f"hr@{k}"] <= 1
    assert (trained / "run" / "eval-test.json").exists()


def test_recommend_for_a_known_user_and_for_raw_events(trained):
    res = run("recommend", "run", "--user", "u00001", "--k", "5", cwd=trained)
    assert "top 5 for u00001" in res.stdout
    events = trained / "new_user.csv"
    events.write_text("user_id,item_id,timestamp,action\nnew,i0001,100,play\nnew,i0002,200,"
                      "complete\n")
    res = run("recommend", "run", "--events", str(events), "--k", "3", cwd=trained)
    assert "i0001" not in res.stdout.split("top 3")[1].split("\n", 1)[1]


def test_resume_of_a_finished_run_and_refusal_without_resume(trained):
    res = subprocess.run([sys.executable, "-m", "recfm", "train", "prepared", "--out", "run",
                          "--config", "cfg.toml"], cwd=trained, capture_output=True, text=True)
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
    run("train", "prepared", "--out", "run", "--config", "cfg.toml", "--resume", cwd=trained)


def test_unknown_user_is_a_clear_error(trained):
    res = subprocess.run([sys.executable, "-m", "recfm", "recommend", "run", "--user", "nobody"],
                         cwd=trained, capture_output=True, text=True)
    assert res.returncode == 2 and "nobody" in res.stderr and "Traceback" not in res.stderr


def test_recommend_for_a_known_user_from_another_folder(trained, tmp_path):
    """The run records its data's absolute path; an older run's relative one is found too."""
    config = json.loads((trained / "run" / "config.json").read_text())
    assert Path(config["data"]["path"]) == (trained / "prepared").resolve()
    old = trained / "old-run"
    shutil.copytree(trained / "run", old, dirs_exist_ok=True)
    config["data"]["path"] = "prepared"  # as earlier runs recorded it: relative to the cwd
    (old / "config.json").write_text(json.dumps(config))
    (old / "manifest.json").unlink()  # such runs had no manifest either
    for run_dir in (trained / "run", old):
        res = run("recommend", str(run_dir), "--user", "u00001", "--k", "3", cwd=tmp_path)
        assert "top 3 for u00001" in res.stdout


@pytest.mark.parametrize("args", [["recommend", "run", "--user", "u00001", "--k", "0"],
                                  ["recommend", "run", "--user", "u00001", "--k", "-5"],
                                  ["data", "describe", "prepared", "--top", "0"]])
def test_a_count_below_one_is_a_one_line_usage_error(trained, args):
    res = subprocess.run([sys.executable, "-m", "recfm", *args], cwd=trained,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().count("\n") == 0 and "expected at least 1" in res.stderr


def test_a_damaged_run_is_refused_unless_no_verify(trained, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "run", damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0x01  # loads without a word: only the manifest sees it
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    res = subprocess.run([sys.executable, "-m", "recfm", "recommend", str(damaged), "--user",
                          "u00001"], capture_output=True, text=True, cwd=trained)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "model.safetensors" in res.stderr and "--no-verify" in res.stderr
    res = run("--no-verify", "recommend", str(damaged), "--user", "u00001", cwd=trained)
    assert "top 10 for u00001" in res.stdout
    res = subprocess.run([sys.executable, "-m", "recfm", "evaluate", str(damaged), "--data",
                          "prepared"], capture_output=True, text=True, cwd=trained)
    assert res.returncode == 2 and "model.safetensors" in res.stderr


def test_recommend_for_several_users_in_one_call(trained):
    """issue 19.7: ``--user A --user B`` kept only the last."""
    res = run("recommend", "run", "--user", "u00001", "--user", "u00002", "--k", "3",
              cwd=trained)
    assert "top 3 for u00001" in res.stdout and "top 3 for u00002" in res.stdout
    res = run("recommend", "run", "--user", "u00001", "--user", "u00002", "--k", "3",
              "--json", cwd=trained)
    out = json.loads(res.stdout)
    assert [u["user_id"] for u in out] == ["u00001", "u00002"]
    assert [len(u["items"]) for u in out] == [3, 3]
    assert set(out[0]["items"][0]) >= {"rank", "item_id", "score"}


def test_recommend_every_user_to_a_file(trained):
    """issue 19.7: batch scoring of all users (or a file of ids) to Parquet / JSON lines."""
    import polars as pl

    run("recommend", "run", "--users", "all", "--k", "7", "--out", "recs.parquet",
        cwd=trained)
    recs = pl.read_parquet(trained / "recs.parquet")
    users = pl.read_parquet(trained / "prepared" / "tokens.parquet")
    assert recs["user_id"].n_unique() == users.height and recs.height == 7 * users.height
    assert recs.group_by("user_id").agg(pl.col("rank").max())["rank"].max() == 7
    # the same ranking as one user at a time
    one = json.loads(run("recommend", "run", "--user", "u00003", "--k", "7", "--json",
                         cwd=trained).stdout)[0]["items"]
    assert recs.filter(pl.col("user_id") == "u00003")["item_id"].to_list() == \
        [r["item_id"] for r in one]
    res = subprocess.run([sys.executable, "-m", "recfm", "recommend", "run", "--users", "all",
                          "--out", "recs.parquet"], cwd=trained, capture_output=True, text=True)
    assert res.returncode == 2 and "--overwrite" in res.stderr  # never replaced unasked
    (trained / "ids.txt").write_text("u00002\nu00004\n")
    run("recommend", "run", "--users", "ids.txt", "--k", "2", "--out", "some.jsonl",
        cwd=trained)
    lines = [json.loads(x) for x in (trained / "some.jsonl").read_text().splitlines()]
    assert [x["user_id"] for x in lines] == ["u00002", "u00004"]
    res = subprocess.run([sys.executable, "-m", "recfm", "recommend", "run", "--users", "all"],
                         cwd=trained, capture_output=True, text=True)
    assert res.returncode == 2 and "--out" in res.stderr  # 150 tables would scroll away


def test_json_on_every_command_that_prints_results(trained, tmp_path):
    """issue 19.7: ``--json`` puts the result alone on stdout (what people read: stderr)."""
    def parsed(*args: str) -> dict:
        return json.loads(run(*args, "--json", cwd=trained).stdout)

    assert parsed("data", "synth", "--out", str(tmp_path / "w"), "--users", "30", "--items",
                  "25")["users"] == 30
    report = parsed("prepare", "--events", str(tmp_path / "w"), "--out", str(tmp_path / "p"))
    assert report["users"] == 30 and "items_with_tokens" in report
    result = parsed("train", str(tmp_path / "p"), "--out", str(tmp_path / "r"), "--config",
                    "cfg.toml", "--epochs", "1")
    assert result["stop_reason"] and set(result["best_valid"]) >= {"ndcg@10", "hr@10"}
