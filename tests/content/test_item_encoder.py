"""The content path of the item encoder: gate / sum, id dropout, save → load round trip."""

from __future__ import annotations

import shutil

import pytest
import torch

from recfm.content.store import embed_dataset
from recfm.model.config import ModelConfig
from recfm.model.embeddings import ItemEncoder
from recfm.pipeline import Recommender
from recfm.train.config import TrainConfig
from recfm.train.loop import train


@pytest.mark.parametrize("combine", ["gate", "sum"])
def test_zero_id_row_is_represented_by_content_alone(combine):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_items=6, content_dim=4, content_combine=combine,
                      use_item_attributes=False)
    enc = ItemEncoder(cfg).eval()
    content = torch.randn(6, 4)
    enc.set_content(content)
    with torch.no_grad():
        enc.ids.weight[5].zero_()
        table = enc.table()  # (6, 8)
        alone = enc.combine_content(torch.zeros(1, 8), content[5:6])
    torch.testing.assert_close(table[5:6], alone)
    if combine == "sum":
        torch.testing.assert_close(alone, enc.content_proj(content[5:6]))
    with pytest.raises(ValueError, match="shape"):
        enc.set_content(torch.zeros(5, 4))


def test_id_dropout_acts_in_training_only():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_items=200, content_dim=4, id_dropout=0.5,
                      content_combine="sum", use_item_attributes=False)
    enc = ItemEncoder(cfg)
    enc.set_content(torch.randn(200, 4))
    proj = enc.content_proj(enc.content)
    enc.train()
    dropped = torch.isclose(enc.table(), proj).all(1).float().mean()
    assert 0.35 < float(dropped) < 0.65  # about half the rows are content alone
    enc.eval()
    torch.testing.assert_close(enc.table(), enc.ids.weight + proj)


def test_a_content_run_round_trips_exactly_and_old_runs_have_no_content_keys(tiny_prepared,
                                                                             tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    embed_dataset(data, "hash:16", cache_dir=False)
    mcfg = ModelConfig(d_model=16, n_layers=1, max_len=16, dropout=0.0)
    tcfg = TrainConfig(epochs=1, batch_size=32, tensorboard=False)
    train(data, tmp_path / "run", mcfg, tcfg)
    fm = Recommender.from_pretrained(tmp_path / "run")
    assert fm.cfg.content_dim == 16
    fm.save_pretrained(tmp_path / "copy")
    again = Recommender.from_pretrained(tmp_path / "copy")
    h = [["i1", "i2", "i3"], ["i7"]]
    assert torch.equal(fm.model.score(fm.encode_users(h)),
                       again.model.score(again.encode_users(h)))
    # content off: the state dict is exactly the pre-content one (old runs still load)
    train(data, tmp_path / "plain", ModelConfig(**{**mcfg.__dict__, "use_content": False}), tcfg)
    plain = Recommender.from_pretrained(tmp_path / "plain")
    assert plain.cfg.content_dim == 0
    assert not any("content" in k or "gate" in k for k in plain.model.state_dict())
