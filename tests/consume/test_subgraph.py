"""The foundation model as a frozen (or partly trainable) subgraph of a downstream model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from recfm.consume.subgraph import (FoundationEncoder, load_downstream, save_downstream,
                                    trainable_modules)
from recfm.errors import RecfmError
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel
from recfm.train.config import TrainConfig
from recfm.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_len=8, dropout=0.1)


def _example():
    spec = importlib.util.spec_from_file_location("downstream_head",
                                                  ROOT / "examples" / "downstream_head.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tiny_prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("subgraph") / "run"
    train(tiny_prepared, run, MODEL, TrainConfig(epochs=4, batch_size=16, lr=5e-3,
          warmup_steps=2, seed=1, tensorboard=False), evaluate_test=False)
    return run


def test_example_head_trains_on_a_frozen_foundation(run, tiny_prepared, tmp_path):
    ex = _example()
    cfg = ex.HeadConfig(epochs=12, batch_size=8, hidden=16, lr=1e-2)
    res = ex.train_head(run, tiny_prepared, cfg, out=tmp_path / "head")
    assert res["epoch_loss"][-1] < 0.85 * res["epoch_loss"][0]
    assert res["trained_foundation_tensors"] == 0
    # the frozen weights on disk and in the saved downstream model are untouched
    model = ex.load_head(tmp_path / "head")
    saved = FoundationModel.from_pretrained(run).state_dict()
    for k, v in model.encoder.fm.state_dict().items():
        assert torch.equal(v, saved[k]), k
    saved_names = json.loads((tmp_path / "head" / "downstream.json").read_text())["weights"]
    assert saved_names and not any(k.startswith("encoder.fm.") for k in saved_names)


class Head(nn.Module):
    def __init__(self, enc: FoundationEncoder) -> None:
        super().__init__()
        self.enc, self.out = enc, nn.Linear(enc.dim, 1)

    def forward(self, batch):
        return self.out(self.enc(batch))[:, 0]  # (B,)


def _fit(model: nn.Module, batch, steps: int = 20) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.arange(len(batch["item"])).float() % 2
    model.train()
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_top_layer_trains_and_round_trips(run, tmp_path):
    enc = FoundationEncoder.from_pretrained(run, trainable_layers=1)
    assert enc.fm.backbone.blocks[1] in trainable_modules(enc.fm, 1)
    model = Head(enc)
    model.train()
    assert not enc.fm.embed.training and enc.fm.backbone.blocks[1].training  # frozen → eval
    batch = enc.batch([["i1", "i2", "i3"], ["i5", "i6"], ["i7"], ["i9", "i10"]])
    before = {k: v.clone() for k, v in enc.fm.state_dict().items()}
    _fit(model, batch)
    after = enc.fm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("backbone.blocks.1.") for k in changed)
    assert all(not k.startswith(("backbone.blocks.0.", "item_encoder.", "embed."))
               for k in changed)
    model.eval()
    expected = model(batch)

    save_downstream(model, tmp_path / "ds", config={"note": "top1"}, copy_foundation=True)
    assert (tmp_path / "ds" / "foundation" / "model.safetensors").is_file()
    again = Head(FoundationEncoder.from_downstream(tmp_path / "ds"))
    load_downstream(again, tmp_path / "ds")
    assert torch.allclose(again(batch), expected, atol=1e-6)
    assert again.enc.trainable_layers == 1


def test_changed_foundation_is_refused(run, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(run, ref, ignore=shutil.ignore_patterns("checkpoint", "tb"))
    model = Head(FoundationEncoder.from_pretrained(ref))
    save_downstream(model, tmp_path / "ds")
    fm = FoundationModel.from_pretrained(ref)
    with torch.no_grad():
        fm.backbone.ln_f.weight.add_(1.0)
    fm.save_pretrained(ref)
    with pytest.raises(RecfmError, match="changed"):
        FoundationEncoder.from_downstream(tmp_path / "ds")


def test_trainable_layers_out_of_range(run):
    with pytest.raises(ValueError, match="0..2"):
        FoundationEncoder.from_pretrained(run, trainable_layers=3)
