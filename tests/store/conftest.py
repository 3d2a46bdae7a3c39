"""Two tiny runs (different seeds) on the shared 60-user ring dataset, trained in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from recfm.model.config import ModelConfig
from recfm.train.config import TrainConfig


@dataclass
class Runs:
    data: Path
    run: Path
    run2: Path


@pytest.fixture(scope="session")
def runs(tiny_prepared, tmp_path_factory) -> Runs:
    from recfm.train.loop import train

    root = tmp_path_factory.mktemp("store_runs")
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
    tcfg = TrainConfig(epochs=1, batch_size=64, warmup_steps=1, tensorboard=False, seed=0)
    train(tiny_prepared, root / "run", model, tcfg, evaluate_test=False)
    train(tiny_prepared, root / "run2", model, TrainConfig(**{**tcfg.__dict__, "seed": 1}),
          evaluate_test=False)
    return Runs(tiny_prepared, root / "run", root / "run2")
