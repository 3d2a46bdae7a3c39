"""A tiny synthetic streaming world (titles, genres, kids titles, availability) and a run
trained on it in seconds, shared by the serving tests; the app serving it and a client."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recfm.model.config import ModelConfig
from recfm.serve.app import create_app
from recfm.serve.config import ServeConfig
from recfm.train.config import TrainConfig

MAX_LEN = 16


@dataclass
class Served:
    world: Path
    data: Path
    run: Path
    run2: Path


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    from recfm.data import synthetic
    from recfm.tokens.prepare import load_raw, prepare
    from recfm.train.loop import train

    root = tmp_path_factory.mktemp("serve")
    cfg = synthetic.SynthConfig(seed=3, n_users=300, n_items=150, events_per_user=60)
    synthetic.write_world(synthetic.generate(cfg), root / "world", cfg)
    prepare(load_raw(root / "world"), root / "prepared")
    model = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_len=MAX_LEN, dropout=0.0)
    tcfg = TrainConfig(epochs=1, batch_size=64, warmup_steps=2, tensorboard=False, seed=0)
    train(root / "prepared", root / "run", model, tcfg)
    train(root / "prepared", root / "run2", model, TrainConfig(**{**tcfg.__dict__, "seed": 1}))
    return Served(root / "world", root / "prepared", root / "run", root / "run2")


@pytest.fixture(scope="module")
def app(served):
    return create_app(served.run, ServeConfig(cache_mb=8))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c
