"""Training runs: the run directory, early stopping, and exact resume after a crash."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel
from recfm.train.config import TrainConfig, lr_at
from recfm.train.loop import train

MODEL = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1)


def tcfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, seed=1, patience=10,
                tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def test_run_directory_is_complete(tiny_prepared, tmp_path):
    res = train(tiny_prepared, tmp_path / "run", MODEL, tcfg(tensorboard=True))
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "items.parquet",
                 "metrics.csv", "summary.json", "checkpoint/state.pt",
                 "checkpoint/model.safetensors"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == res.best_epoch and summary["stop_reason"] == "epochs"
    assert 0 <= res.test["ndcg@10"] <= 1
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["data"]["fingerprint"]
    FoundationModel.from_pretrained(run)  # loads with no training data


def test_model_learns_the_ring_better_than_popularity(tiny_prepared, tmp_path):
    res = train(tiny_prepared, tmp_path / "run", ModelConfig(d_model=32, n_layers=1,
                n_heads=2, max_len=8, dropout=0.0), tcfg(epochs=15, lr=5e-3))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert res.test["ndcg@10"] > 2 * summary["popularity_test"]["ndcg@10"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [5, 9])  # mid-epoch and just after a checkpoint
def test_resume_after_crash_matches_uninterrupted_run(tiny_prepared, tmp_path, crash_at):
    cfg = tcfg(checkpoint_every=3)
    train(tiny_prepared, tmp_path / "straight", MODEL, cfg)

    seen = {"steps": 0}

    def crash(p):
        if "epoch_end" not in p:
            seen["steps"] += 1
            if seen["steps"] == crash_at:
                raise Crash

    with pytest.raises(Crash):
        train(tiny_prepared, tmp_path / "crashed", MODEL, cfg, on_progress=crash)
    train(tiny_prepared, tmp_path / "crashed", MODEL, cfg, resume=True)
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "checkpoint" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows = list(csv.DictReader((tmp_path / "crashed" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]


def test_existing_run_needs_resume(tiny_prepared, tmp_path):
    from recfm.errors import RecfmError

    train(tiny_prepared, tmp_path / "run", MODEL, tcfg(epochs=1))
    with pytest.raises(RecfmError, match="--resume"):
        train(tiny_prepared, tmp_path / "run", MODEL, tcfg(epochs=1))


def test_early_stopping_is_recorded(tiny_prepared, tmp_path):
    res = train(tiny_prepared, tmp_path / "run", MODEL, tcfg(epochs=20, patience=1, lr=0.5),
                evaluate_test=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "patience" and res.epochs_run < 20


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)


def test_a_full_disk_is_one_line_and_leaves_no_untrained_model(tiny_prepared, tmp_path,
                                                              monkeypatch):
    import errno

    from recfm.errors import RecfmError
    from recfm.train import run as run_files

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_files, "save_file", full)  # the first checkpoint's weights
    with pytest.raises(RecfmError, match="no space left on the device while writing"):
        train(tiny_prepared, tmp_path / "run", MODEL, tcfg(checkpoint_every=2))
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert "model.safetensors" not in left and ".checkpoint.tmp" not in left


def test_a_real_kill_inside_a_checkpoint_save_resumes_to_the_same_weights(tiny_prepared,
                                                                         tmp_path):
    """SIGKILL (RECFM_KILL_AT) with the old checkpoint moved aside and the new one not yet in
    place; the resumed run ends with the weights of one that never stopped."""
    import os
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from recfm.model.config import "
              "ModelConfig; from recfm.train.config import TrainConfig; from recfm.train.loop "
              "import train; train(Path(sys.argv[1]), Path(sys.argv[2]), ModelConfig(d_model=16,"
              " n_layers=1, n_heads=2, max_len=8), TrainConfig(epochs=3, batch_size=16, lr=1e-2,"
              " warmup_steps=2, tensorboard=False, threads=1, checkpoint_every=3), "
              "resume=len(sys.argv) > 3, evaluate_test=False)")

    def run(out, *extra, kill=None):
        env = {**os.environ, **({"RECFM_KILL_AT": kill} if kill else {})}
        return subprocess.run([sys.executable, "-c", script, str(tiny_prepared), str(out),
                               *extra], env=env, capture_output=True, text=True).returncode

    assert run(tmp_path / "straight") == 0
    assert run(tmp_path / "killed", kill="old checkpoint moved aside@2") == -9
    assert run(tmp_path / "killed", "resume") == 0
    a = (tmp_path / "straight" / "checkpoint" / "model.safetensors").read_bytes()
    assert (tmp_path / "killed" / "checkpoint" / "model.safetensors").read_bytes() == a



def test_micro_batches_give_the_whole_batchs_gradient(tiny_prepared):
    """A batch run a few rows at a time (gradients added up) gives the whole batch's."""
    from recfm.data.splits import leave_one_out
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.loop import data_source, new_model
    from recfm.train.trainer import backward, tokens_loss

    ds = PreparedDataset.load(tiny_prepared)
    split = leave_one_out(ds.sequences)
    torch.manual_seed(0)
    model = new_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0),
                      ds, split, tiny_prepared).model
    src, _ = data_source(tiny_prepared, split, model, tcfg(), [], False, None)
    src.start(0, 0.0)
    batch = src.batch(0, 0)
    assert batch["target"].numel() > 40
    grads = []
    for micro in (0, 20):
        model.zero_grad(set_to_none=True)
        value, weight = backward(tokens_loss(model.loss), batch, micro, model.parameters())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
        assert weight == int((batch["target"] > 0).sum())
        if micro == 0:
            whole = value
    assert value == pytest.approx(whole, rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7,
                                   msg=name)
