"""Random training windows train every target exactly once per epoch; the sequence-length
schedule switches the context; training runs with both."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from recfm.tokens.batching import SequenceStore
from recfm.model.config import ModelConfig
from recfm.train.batches import make_batch
from recfm.train.config import TrainConfig
from recfm.train.loop import train
from recfm.tokens.windows import (
    check_schedule,
    epoch_spans,
    planned_steps,
    random_window_spans,
    seq_len_at,
)


def targets_trained(spans: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for row, start, end, first in spans:
        out += [(int(row), t) for t in range(start + 1, end) if t >= first]
    return out


@pytest.mark.parametrize("window", [2, 3, 6, 11])
def test_every_target_exactly_once_per_epoch(window):
    lengths = np.array([0, 1, 2, 5, 6, 7, 20, 33, 100])
    want = sorted((r, t) for r, n in enumerate(lengths) if n >= 2 for t in range(1, n))
    starts = set()
    for epoch in range(6):
        spans = random_window_spans(lengths, window, np.random.default_rng([0, epoch]))
        assert (spans[:, 2] - spans[:, 1] <= window).all()
        assert (spans[:, 2] <= lengths[spans[:, 0]]).all() and (spans[:, 1] >= 0).all()
        # a long history's windows are full, but for the one at its very start
        long = (lengths[spans[:, 0]] >= window) & (spans[:, 1] > 0)
        assert (spans[long, 2] - spans[long, 1] == window).all()
        assert sorted(targets_trained(spans)) == want
        starts.add(tuple(spans[spans[:, 0] == 8, 1]))
    assert len(starts) > 1 or window == 2  # the grid moves (one target per window: fixed)


def test_make_batch_masks_targets_trained_by_another_window():
    seqs = pl.DataFrame({"item": [list(range(3, 23))]}, schema={"item": pl.List(pl.Int64)})
    store = SequenceStore(seqs, ["item"])
    spans = np.array([[0, 10, 16, 14]])  # window tokens 10..15, targets 11..15, first 14
    batch = make_batch(store, spans)
    assert batch["target"].tolist() == [[0, 0, 0, 17, 18]]  # tokens 14, 15 (item = idx + 3)
    assert batch["item"].tolist() == [[13, 14, 15, 16, 17]]


def test_schedule_and_its_checks():
    sched = [[0, 4], [0.5, 8]]
    assert [seq_len_at(sched, f, 16) for f in (0.0, 0.49, 0.5, 0.9)] == [4, 4, 8, 8]
    assert seq_len_at([], 0.3, 16) == 16
    with pytest.raises(ValueError, match="max_len"):
        check_schedule([[0, 32]], 16)
    with pytest.raises(ValueError, match="fraction"):
        check_schedule([[1.5, 8]], 16)
    seqs = pl.DataFrame({"item": [list(range(3, 40))] * 4}, schema={"item": pl.List(pl.Int64)})
    store = SequenceStore(seqs, ["item"])
    short = epoch_spans(store, "truncate", sched, 16, 0, 0, 0.0)
    late = epoch_spans(store, "truncate", sched, 16, 0, 3, 0.75)
    assert (short[:, 2] - short[:, 1]).max() == 5 and (late[:, 2] - late[:, 1]).max() == 9
    # random windows at length 4 then 8: 36 targets per history → 9 or 10, then 5 windows
    steps = planned_steps(store, "random", sched, 16, 0, epochs=2, batch_size=1)
    assert 4 * (9 + 5) <= steps <= 4 * (10 + 6)


def test_train_with_random_windows_and_schedule(tiny_prepared, tmp_path):
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=6, dropout=0.0,
                        positions="rope", attention_pattern="local", local_window=3,
                        n_global=1)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_steps=1, seed=0,
                      tensorboard=False, window="random", seq_len_schedule=[[0, 3], [0.5, 6]])
    res = train(tiny_prepared, tmp_path / "run", model, cfg, evaluate_test=False)
    assert res.epochs_run == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["window"] == "random"
    assert saved["train"]["seq_len_schedule"] == [[0, 3], [0.5, 6]]
    assert saved["model"]["attention_pattern"] == "local"
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    # every training target once per epoch: 60 users × (12 - 2 - 1) targets × 2 epochs
    assert state["tokens"] == 2 * 60 * 9
