"""`embed` from a trained run, the stability report, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recfm.cli.store import register
from recfm.errors import RecfmError
from recfm.pipeline import Recommender
from recfm.store import embed, open_store


def test_two_embeds_publish_two_versions_of_the_models_vectors(runs, tmp_path):
    path = tmp_path / "emb"
    progress: list[tuple[int, int]] = []
    v1 = embed(runs.run, runs.data, path, chunk_users=25,
               on_progress=lambda d, n: progress.append((d, n)))
    v2 = embed(runs.run, None, path)  # data: the run's own training data
    assert progress == [(25, 60), (50, 60), (60, 60)]
    st = open_store(path)
    versions = st.versions()
    assert [v.version for v in versions] == [1, 2] == [v1.version, v2.version]
    for v in versions:
        assert (v.users, v.items, v.dim, v.pooling) == (60, 40, 16, "last")
        assert v.run == str(runs.run.resolve()) and v.model_version.startswith("run@")
        assert len(v.tokenizer_sha256) == 12 and v.created_at.endswith("+00:00")
        assert v.extra["users_per_s"] > 0 and v.item_titles
    assert versions[0].model_version == versions[1].model_version

    fm = Recommender.from_pretrained(runs.run)
    seqs = pl.read_parquet(runs.data / "tokens.parquet")
    ask = ["u7", "u0", "u31"]  # each encoded alone: batching and order must not matter
    want = [fm.encode_users(seqs.filter(pl.col("user_id") == u), pooling=None).numpy()
            for u in ask]
    np.testing.assert_allclose(st.user_vectors(ask), np.concatenate(want), atol=1e-5)
    idx = fm.tokenizer.item_index()
    table = fm.model.item_table().detach().numpy()
    np.testing.assert_allclose(st.item_vectors(["i3", "i0"]),
                               table[[idx["i3"], idx["i0"]]], atol=1e-6)
    assert st.similar_items("i3", k=3)["title"].null_count() == 0


def test_diff_identical_models_are_stable_and_other_seeds_are_not(runs, tmp_path):
    path = tmp_path / "emb"
    embed(runs.run, runs.data, path)
    embed(runs.run, runs.data, path)
    same = open_store(path).diff()
    assert (same["a"], same["b"]) == (1, 2)
    assert same["cosine"]["median"] == pytest.approx(1.0, abs=1e-6)
    assert same["cosine"]["p10"] == pytest.approx(1.0, abs=1e-6)
    assert same["top_overlap"]["mean"] == 1.0 and same["top_overlap"]["sampled_users"] == 60
    assert same["users"]["added"] == same["users"]["removed"] == 0

    embed(runs.run2, runs.data, path)
    other = open_store(path).diff(sample_users=20, k=5)
    assert (other["a"], other["b"]) == (2, 3)
    assert other["cosine"]["median"] < 0.99 and other["top_overlap"]["mean"] < 1.0
    assert other["top_overlap"]["n"] == 20 and other["top_overlap"]["k"] == 5
    assert open_store(path).diff(a=1, b=3)["top_overlap"] == \
        open_store(path).diff(a=2, b=3)["top_overlap"]


def test_pooling_choices(runs, tmp_path):
    mean = embed(runs.run, runs.data, tmp_path / "emb", pooling="mean")
    assert mean.pooling == "mean"
    st = open_store(tmp_path / "emb")
    last = embed(runs.run, runs.data, st)
    assert st.diff(mean.version, last.version)["cosine"]["median"] < 0.999
    with pytest.raises(RecfmError, match="pooling 'attention'"):
        embed(runs.run, runs.data, st, pooling="attention")
    with pytest.raises(RecfmError, match="expected one of last"):
        embed(runs.run, runs.data, st, pooling="max")


def test_cli_embed_versions_and_diff(runs, tmp_path):
    app = typer.Typer()
    register(app)
    cli = CliRunner()
    store = str(tmp_path / "emb")
    for _ in range(2):
        res = cli.invoke(app, ["embed", str(runs.run), "--data", str(runs.data),
                               "--store", store, "--keep", "2"])
        assert res.exit_code == 0, res.output
    assert "published version 2" in res.output and "60 users" in res.output
    res = cli.invoke(app, ["store", "versions", store, "--json"])
    out = json.loads(res.output)
    assert out["current"] == 2 and [v["users"] for v in out["versions"]] == [60, 60]
    res = cli.invoke(app, ["store", "versions", store])
    assert res.exit_code == 0 and "current: version 2" in res.output
    res = cli.invoke(app, ["store", "diff", store])
    assert res.exit_code == 0 and "version 1 → 2" in res.output
    assert "top-10 overlap" in res.output and "1.0000" in res.output
    res = cli.invoke(app, ["store", "diff", store, "--a", "2", "--b", "1", "--json"])
    assert json.loads(res.output)["cosine"]["median"] == pytest.approx(1.0, abs=1e-6)


def test_cli_errors_are_one_line(runs, tmp_path):
    store = tmp_path / "emb"
    embed(runs.run, runs.data, store)
    res = subprocess.run([sys.executable, "-m", "recfm", "store", "versions",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "nothing at that path" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["store", "diff", str(store), "--a", "7"])
    assert isinstance(res.exception, RecfmError)  # recfm.cli.main prints it as one line
    assert "found version 7" in str(res.exception) and "\n" not in str(res.exception)
    with pytest.raises(RecfmError, match="needs a version before 1"):
        open_store(store).diff()


def test_stale_staging_of_a_killed_job_is_removed_and_a_fresh_one_kept(tmp_path):
    import os
    import time

    from recfm.store.embed import STALE_STAGING_S, remove_stale_staging

    stale, fresh = tmp_path / ".embed-staging-aaaa", tmp_path / ".embed-staging-bbbb"
    for d in (stale, fresh):
        d.mkdir()
        (d / "users-rank00000.parquet").write_bytes(b"x")
    old = time.time() - STALE_STAGING_S - 60
    for p in (stale / "users-rank00000.parquet", stale):
        os.utime(p, (old, old))
    (tmp_path / "users_v000001.lance").mkdir()  # not staging: never touched

    assert remove_stale_staging(tmp_path) == [stale]
    assert not stale.exists() and fresh.is_dir()
    assert (tmp_path / "users_v000001.lance").is_dir()
