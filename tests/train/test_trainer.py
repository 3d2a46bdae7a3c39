"""The one Trainer on a toy regression: exact resume, stop reasons, frozen groups, budget."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from recfm.train import run as run_files
from recfm.train.config import TrainConfig
from recfm.train.run import SAVE_STEPS
from recfm.train.trainer import (HOLD_KEY, Budget, RunFiles, Trainer, Validation,
                                 decay_groups)


class Toy(nn.Module):
    """y = w·x through dropout (the torch RNG must be restored on resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.body(x))))[:, 0]


class ToyData:
    """5 batches per epoch, each a function of (epoch, i) only."""

    def start(self, epoch: int, fraction: float) -> int:
        return 5

    def batch(self, epoch: int, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(100 * epoch + i)
        x = torch.randn(8, 4, generator=g)
        return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0])}


VALID = ToyData().batch(99, 0)


def make(tmp, name="run", validate=None, every=0, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = Toy()
    tcfg = TrainConfig(**{"epochs": 3, "lr": 1e-2, "warmup_steps": 2, "patience": 10,
                          "tensorboard": False, **cfg})
    groups = decay_groups(list(model.named_parameters()), tcfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas))

    def loss(batch):
        return nn.functional.mse_loss(model(batch["x"]), batch["y"]), len(batch["x"])

    def score() -> dict[str, float]:
        with torch.no_grad():
            return {"score": -float(nn.functional.mse_loss(model(VALID["x"]), VALID["y"]))}

    run = tmp / name
    files = RunFiles(run, lambda: torch.save(model.state_dict(), run / "best.pt"))
    return Trainer(model, opt, tcfg, ToyData(), loss, 5 * tcfg.epochs,
                   Validation(validate or score, key="score", logged=("score",), every=every),
                   files)


def ckpt(tmp, name):
    return load_file(str(tmp / name / "checkpoint" / "model.safetensors"))


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [4, 6, 11])  # mid-epoch, after a checkpoint, epoch 2
def test_resume_equals_uninterrupted(tmp_path, crash_at):
    straight = make(tmp_path, "straight", checkpoint_every=2)
    straight.resume(False)
    assert straight.fit() == "epochs"

    crashed = make(tmp_path, "crashed", checkpoint_every=2)

    def crash(p):
        if "epoch_end" not in p and p["step"] == crash_at:
            raise Crash

    crashed.on_progress = crash
    crashed.resume(False)
    with pytest.raises(Crash):
        crashed.fit()
    again = make(tmp_path, "crashed", checkpoint_every=2)
    assert again.resume(True)
    again.fit()
    a, b = ckpt(tmp_path, "straight"), ckpt(tmp_path, "crashed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "crashed" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert again.state["step"] == straight.state["step"] == 15


@pytest.mark.parametrize("point", SAVE_STEPS)
@pytest.mark.parametrize("save", [1, 3])  # the first checkpoint (nothing to replace), a later one
def test_a_kill_at_each_step_of_the_checkpoint_save_resumes_exactly(tmp_path, monkeypatch,
                                                                    point, save):
    straight = make(tmp_path, "straight", checkpoint_every=2)
    straight.resume(False)
    straight.fit()

    seen = []

    def stop_at(name: str) -> None:
        seen.append(name)
        if name == point and seen.count(name) == save:
            raise Crash(name)  # nothing of save runs past here: a kill leaves the same files

    monkeypatch.setattr(run_files, "checkpoint_step", stop_at)
    crashed = make(tmp_path, "crashed", checkpoint_every=2)
    crashed.resume(False)
    if point == "old checkpoint moved aside" or point == "old checkpoint partly removed":
        save += 1  # the first save has no old checkpoint
    with pytest.raises(Crash):
        crashed.fit()
    monkeypatch.setattr(run_files, "checkpoint_step", lambda name: None)
    for _ in range(2):  # a resume, and a resume of that resume, both end where one run ends
        again = make(tmp_path, "crashed", checkpoint_every=2)
        again.resume(True)
        again.fit()
        a, b = ckpt(tmp_path, "straight"), ckpt(tmp_path, "crashed")
        assert all(torch.equal(a[k], b[k]) for k in a)
    leftovers = {p.name for p in (tmp_path / "crashed").iterdir()} & {".checkpoint.old",
                                                                        ".checkpoint.tmp"}
    assert not leftovers


def test_a_new_run_over_an_old_one_is_refused(tmp_path):
    from recfm.errors import RecfmError

    t = make(tmp_path)
    t.resume(False)
    t.fit()
    with pytest.raises(RecfmError, match="--resume"):
        make(tmp_path).resume(False)


def test_early_stop_reason_is_recorded(tmp_path):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    t = make(tmp_path, validate=lambda: {"score": next(scores)}, epochs=10, patience=2)
    t.resume(False)
    assert t.fit() == "patience"
    assert t.state["epoch"] == 3 and t.state["best_epoch"] == 0 and t.state["bad_epochs"] == 2


def test_step_validation_stops_early_and_counts_validations(tmp_path):
    scores = iter([0.5, 0.4, 0.3, 0.2])
    t = make(tmp_path, validate=lambda: {"score": next(scores)}, every=2, patience=2)
    t.max_steps = 100
    t.resume(False)
    assert t.fit() == "patience"
    assert t.state["step"] == 6 and t.state["best_step"] == 2 and t.state["bad_evals"] == 2
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]


def test_held_and_zero_scaled_groups_do_not_move(tmp_path):
    t = make(tmp_path, epochs=1)
    body = [p for n, p in t.model.named_parameters() if n.startswith("body")]
    head = [p for n, p in t.model.named_parameters() if n.startswith("head")]
    t.opt = torch.optim.AdamW([{"params": body, HOLD_KEY: True},
                               {"params": head[:1], "lr_scale": 0.0},
                               {"params": head[1:]}], lr=1e-2)
    t.hold_steps = 100
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.resume(False)
    t.fit()
    after = dict(t.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in ("body.weight", "body.bias",
                                                           "head.weight"))
    assert not torch.equal(before["head.bias"], after["head.bias"])


def test_time_budget_stops(tmp_path):
    strict = make(tmp_path, "strict")
    strict.budget = Budget(1e-9, strict=True)
    strict.resume(False)
    assert strict.fit() == "time budget" and strict.state["step"] == 0
    loose = make(tmp_path, "loose", epochs=5)
    loose.budget = Budget(1e-9)
    loose.resume(False)
    assert loose.fit() == "time budget"
    # one epoch ran, and the schedule was fitted to the one epoch that fits
    assert loose.state["step"] == 5 and loose.state["total_steps"] == 5
    assert loose.state["planned_epochs"] == 1


def test_skipped_batches_take_no_step(tmp_path):
    t = make(tmp_path, epochs=2)
    real = t.loss
    t.loss = lambda batch: None if float(batch["x"][0, 0]) > 0 else real(batch)
    t.resume(False)
    t.fit()
    assert 0 < t.state["step"] < 10


@pytest.mark.parametrize("name", ["state.pt", "model.safetensors"])
def test_a_truncated_checkpoint_is_one_clear_error(tmp_path, name):
    from recfm.errors import InputError

    t = make(tmp_path, checkpoint_every=2)
    t.resume(False)
    t.fit()
    path = tmp_path / "run" / "checkpoint" / name
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="start over") as e:
        make(tmp_path, checkpoint_every=2).resume(True)
    assert e.value.file == str(path)
