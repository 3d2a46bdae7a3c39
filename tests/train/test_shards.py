"""Streamed training batches: each rank reads only its row groups, every target once."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.model.config import ModelConfig
from recfm.train.config import TrainConfig
from recfm.train.loop import train
from recfm.train.shards import ParquetTokens, StreamingBatches


@pytest.fixture(scope="module")
def grouped(tiny_prepared, tmp_path_factory) -> Path:
    """The tiny dataset with tokens.parquet in row groups of 7 users (9 groups)."""
    out = tmp_path_factory.mktemp("grouped") / "prepared"
    shutil.copytree(tiny_prepared, out)
    table = pq.read_table(tiny_prepared / "tokens.parquet")
    pq.write_table(table, out / "tokens.parquet", row_group_size=7)
    return out


def _pairs(batches) -> Counter:
    """(first item of the sequence, target) of every target token: identifies each token."""
    out = Counter()
    for b in batches:
        for row_items, row_targets in zip(b["item"].tolist(), b["target"].tolist()):
            out.update((row_items[0], i, t) for i, t in enumerate(row_targets) if t > 0)
    return out


def test_ranks_read_only_their_groups_and_cover_every_target_once(grouped, monkeypatch):
    src = ParquetTokens(grouped / "tokens.parquet")
    assert src.n_groups == 9
    reads: list[list[int]] = []
    real = ParquetTokens.read

    def spy(self, groups, columns=None):
        reads.append(list(groups))
        return real(self, groups, columns)

    monkeypatch.setattr(ParquetTokens, "read", spy)
    streams = [StreamingBatches(src, ["item"], max_len=8, batch_size=8, seed=1, rank=r,
                                world=2, window_groups=2) for r in range(2)]
    got = Counter()
    for r, s in enumerate(streams):
        reads.clear()
        batches = list(s.epoch(0))
        assert all(b["item"].shape[0] <= 4 for b in batches)  # batch 8 split over 2 ranks
        assert {g for gs in reads for g in gs} == set(src.rank_groups(r, 2))
        got += _pairs(batches)
    # the same targets as one process holding the whole training split
    split = leave_one_out(pl.read_parquet(grouped / "tokens.parquet"))
    store = SequenceStore(split.train, ["item"])
    spans = store.spans(9, "truncate", min_len=2)
    from recfm.train.batches import make_batch
    assert got == _pairs([make_batch(store, spans)])
    # deterministic per (seed, epoch); another epoch is another order
    first = [b["item"].tolist() for b in streams[0].epoch(0)]
    assert first == [b["item"].tolist() for b in streams[0].epoch(0)]
    assert first != [b["item"].tolist() for b in streams[0].epoch(1)]


def test_steps_agree_across_ranks_and_resume_mid_epoch(grouped):
    src = ParquetTokens(grouped / "tokens.parquet")
    own = [StreamingBatches(src, ["item"], 8, 8, 1, r, 2, window_groups=2).own_batches(0)
           for r in range(2)]
    s = StreamingBatches(src, ["item"], 8, 8, 1, 1, 2, window_groups=2, agree=lambda n: max(own))
    assert s.n_batches(0) == max(own) >= own[1]
    late = s.batch(0, max(own) - 1)  # past its own batches: starts its plan over
    assert late["item"].shape[0] > 0
    fresh = StreamingBatches(src, ["item"], 8, 8, 1, 1, 2, window_groups=2)
    assert fresh.batch(0, 3)["item"].tolist() == s.batch(0, 3)["item"].tolist()


def test_streamed_training_runs_without_loading_the_dataset(grouped, tmp_path, monkeypatch):
    import polars

    read = polars.read_parquet

    def no_whole_load(path, *a, **k):
        if str(path).endswith("tokens.parquet"):
            raise AssertionError("streamed training loaded the whole dataset")
        return read(path, *a, **k)

    monkeypatch.setattr(polars, "read_parquet", no_whole_load)
    res = train(grouped, tmp_path / "run", ModelConfig(d_model=16, n_layers=1, max_len=8),
                TrainConfig(epochs=2, batch_size=8, stream=True, stream_eval_groups=2,
                            tensorboard=False))
    assert res.epochs_run == 2 and res.best_valid["users"] == 14  # 2 groups of 7 users
    assert (tmp_path / "run" / "model.safetensors").is_file()
