"""`embed` across 2 gloo processes on 127.0.0.1: each rank writes its shard of the users,
rank 0 checks and publishes one version equal to a one-process embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recfm.errors import RecfmError
from recfm.store import embed, open_store
from recfm.store.embed import _gather_shards, _write_shard
from recfm.train.distributed import free_port


def _worker(rank: int, world: int, port: int, run: str, data: str, store: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        done: list[tuple[int, int]] = []
        info = embed(run, data, store, chunk_users=16,
                     on_progress=lambda d, n: done.append((d, n)))
        Path(store, f"rank{rank}.json").write_text(json.dumps(
            {"version": info.version, "users": info.users, "progress": done}))
    finally:
        dist.destroy_process_group()


def _user_vectors(store: Path, version: int, ids: list[str]) -> np.ndarray:
    return open_store(store, version=version).user_vectors(ids)


def test_two_gloo_ranks_publish_one_version_equal_to_one_process(runs, tmp_path):
    store = tmp_path / "emb"
    single = embed(runs.run, runs.data, store)  # version 1, one process
    mp.start_processes(_worker, args=(2, free_port(), str(runs.run), str(runs.data),
                                      str(store)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (json.loads((store / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["version"] == r1["version"] == 2 and r0["users"] == r1["users"] == 60
    assert r0["progress"][-1] == [30, 30] and r1["progress"][-1] == [30, 30]  # 60 users / 2
    st = open_store(store)
    assert [v.version for v in st.versions()] == [1, 2]
    v2 = st.versions()[1]
    assert (v2.users, v2.items, v2.dim) == (single.users, single.items, single.dim) == \
        (60, 40, 16)
    assert v2.extra["world"] == 2 and v2.extra["users_per_s"] > 0
    ids = pl.read_parquet(runs.data / "tokens.parquet")["user_id"].cast(pl.Utf8).to_list()
    assert len(ids) == 60
    np.testing.assert_allclose(_user_vectors(store, 2, ids), _user_vectors(store, 1, ids),
                               atol=1e-5)
    np.testing.assert_array_equal(st.item_vectors(["i0", "i39"]),
                                  open_store(store, version=1).item_vectors(["i0", "i39"]))
    assert not list(store.glob(".embed-staging-*"))  # shards cleaned up


def test_gather_rejects_shards_that_miss_or_repeat_a_user(tmp_path):
    ids = [f"u{i}" for i in range(5)]
    vec = np.arange(10, dtype=np.float32).reshape(5, 2)
    even, odd = np.array([0, 2, 4]), np.array([1, 3])
    _write_shard(tmp_path / "users-rank00000.parquet", even, [ids[i] for i in even], vec[even])
    _write_shard(tmp_path / "users-rank00001.parquet", odd, [ids[i] for i in odd], vec[odd])
    np.testing.assert_array_equal(_gather_shards(tmp_path, 2, ids, 2), vec)
    with pytest.raises(RecfmError, match="rank 2's shard"):
        _gather_shards(tmp_path, 3, ids, 2)
    _write_shard(tmp_path / "users-rank00001.parquet", np.array([1, 2]), ["u1", "u2"],
                 vec[[1, 2]])
    with pytest.raises(RecfmError, match="exactly once, found user 'u2' 2 times"):
        _gather_shards(tmp_path, 2, ids, 2)
    _write_shard(tmp_path / "users-rank00001.parquet", odd, ["u1", "u9"], vec[odd])
    with pytest.raises(RecfmError, match="row 1, column id: expected 'u3', found 'u9'"):
        _gather_shards(tmp_path, 2, ids, 2)


def test_recfm_embed_nproc_2_runs_through_torchrun(runs, tmp_path):
    store = tmp_path / "emb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "recfm", "embed", str(runs.run), "--data",
                          str(runs.data), "--store", str(store), "--backend", "parquet",
                          "--nproc", "2"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("published version 1") == 1  # rank 0 alone prints
    assert "over 2 processes" in res.stdout
    info = open_store(store).versions()
    assert len(info) == 1 and info[0].users == 60 and info[0].extra["world"] == 2
    assert not list(store.glob(".embed-staging-*"))
