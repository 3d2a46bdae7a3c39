"""The model: attention paths agree, training lowers the loss, save → load is exact."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.model.attention import attention_mask, reference_attention
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.train.batches import make_batch


def tiny_model(prepared, **overrides) -> tuple[FoundationModel, SequenceStore]:
    ds = PreparedDataset.load(prepared)
    train = leave_one_out(ds.sequences).train
    base = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=16, dropout=0.0, **overrides)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items, train)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    return model, SequenceStore(train, model.input_columns)


def test_sdpa_matches_reference_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))
    valid = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 1 + [0] * 6], dtype=torch.bool)
    mask = attention_mask(valid)
    fast = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    slow = reference_attention(q, k, v, mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_model_attention_switch_gives_same_hidden_states(tiny_prepared, positions):
    model, store = tiny_model(tiny_prepared, positions=positions)
    model.eval()
    batch = store.gather(store.spans(16)[:8])
    fast = model(batch)
    for block in model.backbone.blocks:
        block.attn.impl = "reference"
    torch.testing.assert_close(model(batch), fast, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions(tiny_prepared):
    model, store = tiny_model(tiny_prepared)
    model.eval()
    spans = store.spans(16)[:4]
    alone = model(store.gather(spans[:1]))
    with_longer = model(store.gather(spans))
    n = int((store.gather(spans[:1])["item"] > 0).sum())
    torch.testing.assert_close(with_longer[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_training_steps_lower_the_loss(tiny_prepared, loss):
    model, store = tiny_model(tiny_prepared, loss=loss, n_negatives=16, negatives="mixed")
    batch = make_batch(store, store.spans(17, min_len=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = float(model.loss(batch, generator=gen).detach())
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch, generator=gen).backward()
        opt.step()
    assert float(model.loss(batch, generator=gen).detach()) < first * 0.7


def test_label_smoothing_and_temperature_are_config_values(tiny_prepared):
    model, store = tiny_model(tiny_prepared, label_smoothing=0.1, temperature=0.5)
    batch = make_batch(store, store.spans(17, min_len=2))
    assert torch.isfinite(model.loss(batch))
    model.cfg.loss = "sampled"
    assert torch.isfinite(model.loss(batch))


def test_save_load_gives_identical_scores(tiny_prepared, tmp_path):
    model, store = tiny_model(tiny_prepared, tied_embeddings=False)
    model.save_pretrained(tmp_path / "run")
    again = FoundationModel.from_pretrained(tmp_path / "run")
    model.eval()
    batch = store.gather(store.spans(16)[:8])
    torch.testing.assert_close(again.score(again.last_hidden(batch)),
                               model.score(model.last_hidden(batch)), rtol=0, atol=0)
    # no pickle anywhere in the run directory
    assert {p.suffix for p in (tmp_path / "run").iterdir()} <= {".json", ".safetensors",
                                                                ".parquet"}


def test_recommend_known_history_and_raw_events(tiny_prepared):
    model, _ = tiny_model(tiny_prepared)
    ds = PreparedDataset.load(tiny_prepared)
    model = Recommender(model, ds.tokenizer, ds.items)
    recs = model.recommend(["i1", "i2", "i3"], k=5)
    assert recs.height == 5 and not set(recs["item_id"]) & {"i1", "i2", "i3"}
    assert "title" in recs.columns
    assert recs["score"].is_sorted(descending=True)
    events = pl.DataFrame({"user_id": ["new"] * 3, "item_id": ["i1", "i2", "unseen-item"],
                           "timestamp": [1, 2, 3], "device": ["tv", "tv", "phone"]})
    recs2 = model.recommend(events, k=5)
    assert recs2.height == 5 and "i1" not in recs2["item_id"].to_list()
    users = model.encode_users([["i1", "i2"], ["i5"]])
    assert users.shape == (2, 32)
