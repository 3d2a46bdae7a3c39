"""Distillation: a tiny student learns from a tiny teacher and is a normal run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from recfm.consume.distill import DistillConfig, distill, distill_loss, load_student_config
from recfm.errors import InputError, RecfmError
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender
from recfm.train.batches import make_batch
from recfm.train.config import TrainConfig
from recfm.train.loop import train

TEACHER = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=8, dropout=0.0)
STUDENT = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)


def tcfg(**kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=16, lr=5e-3, warmup_steps=2, seed=1, patience=10,
                tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher_run(tiny_prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("distill") / "teacher"
    train(tiny_prepared, run, TEACHER, tcfg(epochs=8), evaluate_test=False)
    return run


def test_distilled_student_trains_and_loads(teacher_run, tmp_path):
    out = tmp_path / "student"
    res = distill(teacher_run, out, STUDENT, tcfg(), DistillConfig(temperature=2.0, alpha=0.7))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0]  # the distillation loss falls
    student = Recommender.from_pretrained(out)  # a normal run directory
    teacher = Recommender.from_pretrained(teacher_run)
    assert student.cfg.d_model == 16 and student.tokenizer.item_ids == teacher.tokenizer.item_ids
    assert res.n_params < sum(p.numel() for p in teacher.model.parameters())
    meta = json.loads((out / "config.json").read_text())
    assert meta["distill"]["teacher"] == str(teacher_run) and meta["distill"]["alpha"] == 0.7
    recs = student.recommend(["i1", "i2", "i3"], k=5)
    assert recs.height == 5
    assert res.test["ndcg@10"] > 0


def test_loss_is_kl_plus_ce(teacher_run, tiny_prepared):
    """alpha = 0 is plain cross-entropy; a student equal to the teacher has zero KL."""
    from recfm.tokens.batching import SequenceStore
    from recfm.data.splits import leave_one_out
    from recfm.tokens.prepare import PreparedDataset

    teacher = FoundationModel.from_pretrained(teacher_run)
    split = leave_one_out(PreparedDataset.load(tiny_prepared).sequences)
    store = SequenceStore(split.train, teacher.train_columns)
    batch = make_batch(store, store.spans(9, min_len=2)[:8])
    with torch.no_grad():
        self_kl = distill_loss(teacher, teacher, batch, DistillConfig(alpha=1.0))
        ce = distill_loss(teacher, teacher, batch, DistillConfig(alpha=0.0))
    assert abs(float(self_kl)) < 1e-5
    assert torch.allclose(ce, teacher.loss(batch), atol=1e-5)


def test_config_errors(tmp_path, teacher_run):
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill]\nalpha = 1.5\n")
    with pytest.raises(InputError, match="alpha"):
        load_student_config(bad)
    bad.write_text("[student]\nd_model = 8\n")
    with pytest.raises(InputError, match="student"):
        load_student_config(bad)
    good = tmp_path / "small.toml"
    good.write_text("[model]\nd_model = 16\nn_layers = 1\n[train]\nepochs = 2\n"
                    "[distill]\ntemperature = 3.0\n")
    m, t, d = load_student_config(good)
    assert (m.d_model, t.epochs, d.temperature, d.alpha) == (16, 2, 3.0, 0.7)
    with pytest.raises(RecfmError, match="max_len"):
        distill(teacher_run, tmp_path / "s", ModelConfig(d_model=16, max_len=64), tcfg())


def test_cli_distill(teacher_run, tmp_path):
    from typer.testing import CliRunner

    from recfm.cli import app

    cfg = tmp_path / "small.toml"
    cfg.write_text("[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\nmax_len = 8\n"
                   "[train]\nepochs = 1\nbatch_size = 16\ntensorboard = false\n"
                   "[distill]\ntemperature = 1.5\nalpha = 0.5\n")
    out = tmp_path / "student"
    r = CliRunner().invoke(app, ["distill", str(teacher_run), "--student-config", str(cfg),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Recommender.from_pretrained(out).cfg.d_model == 16
    assert json.loads((out / "config.json").read_text())["distill"]["temperature"] == 1.5
