"""Local + global attention: the blocked SDPA path equals the dense-mask reference (values
and gradients), is causal, serves incrementally, and reads histories longer than training's."""

from __future__ import annotations

import pytest
import torch

from recfm.data.splits import leave_one_out
from recfm.model.attention import attention_mask
from recfm.model.backbone import Backbone
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.model.sparse import (
    local_attention,
    local_attention_mask,
    reference_local_attention,
)
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset


def tiny_model(prepared, **overrides) -> tuple[FoundationModel, None]:
    ds = PreparedDataset.load(prepared)
    base = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=16, dropout=0.0, **overrides)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items,
                                          leave_one_out(ds.sequences).train)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    return model, None

SHAPES = [  # (B, H, T, Dh, window, n_global)
    (2, 2, 13, 4, 4, 2),
    (1, 1, 5, 3, 8, 0),   # window longer than the sequence
    (3, 2, 16, 4, 4, 0),  # T a multiple of the window
    (2, 1, 9, 2, 1, 3),   # window 1: self + globals only
    (2, 2, 11, 4, 3, 5),  # more globals than the window
]


@pytest.mark.parametrize("shape", SHAPES)
def test_blocked_path_matches_reference_values_and_gradients(shape):
    B, H, T, Dh, window, n_global = shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, Dh, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, T // 2:] = False  # a right-padded row
    fast = local_attention(q, k, v, valid, window, n_global)
    slow = reference_local_attention(q, k, v, valid, window, n_global)
    torch.testing.assert_close(fast, slow)
    g = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, (q, k, v), g),
                    torch.autograd.grad(slow, (q, k, v), g)):
        torch.testing.assert_close(a, b)


def test_mask_pattern_and_dense_limit():
    valid = torch.ones(1, 8, dtype=torch.bool)
    m = local_attention_mask(valid, window=3, n_global=1)[0, 0]
    # query 6 sees itself, 5, 4 (window 3) and the global position 0
    assert m[6].nonzero().squeeze(1).tolist() == [0, 4, 5, 6]
    assert not m.triu(1).any()  # causal
    # a window as long as the sequence is plain causal attention
    assert torch.equal(local_attention_mask(valid, 8), attention_mask(valid))


def test_future_tokens_do_not_change_past_outputs():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 20, 4) for _ in range(3))
    valid = torch.ones(1, 20, dtype=torch.bool)
    before = local_attention(q, k, v, valid, 4, 2)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 12:] += 5.0
    v2[:, :, 12:] -= 3.0
    after = local_attention(q, k2, v2, valid, 4, 2)
    torch.testing.assert_close(after[:, :, :12], before[:, :, :12])
    assert not torch.allclose(after[:, :, 12:], before[:, :, 12:])


def local_cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_layers=2, n_heads=2, max_len=32, dropout=0.0, positions="rope",
                attention_pattern="local", local_window=4, n_global=1)
    base.update(kw)
    return ModelConfig(**base)


def test_backbone_sdpa_and_reference_agree_with_padding():
    torch.manual_seed(0)
    bb = Backbone(local_cfg()).eval()
    x = torch.randn(3, 19, 16)
    valid = torch.ones(3, 19, dtype=torch.bool)
    valid[1, 11:] = False
    fast = bb(x, valid)
    for block in bb.blocks:
        block.attn.impl = "reference"
    torch.testing.assert_close(bb(x, valid), fast, atol=1e-5, rtol=1e-5)


def test_incremental_encoding_matches_full_forward():
    torch.manual_seed(0)
    bb = Backbone(local_cfg()).eval()
    x = torch.randn(2, 15, 16)
    with torch.no_grad():
        full = bb(x, torch.ones(2, 15, dtype=torch.bool))
        h1, cache = bb.extend(x[:, :9])
        h2, cache = bb.extend(x[:, 9:14], past=cache)
        h3, _ = bb.extend(x[:, 14:], past=cache)
    torch.testing.assert_close(torch.cat([h1, h2, h3], 1), full, atol=1e-5, rtol=1e-5)


def test_long_history_reads_only_its_receptive_field():
    """2 layers × window 4 and no globals: the last output depends on the last 7 tokens,
    and rotary positions are relative, so a 128-token history (4× max_len) gives the same
    last state as its last 7 tokens — sparse attention over a history of any length."""
    torch.manual_seed(0)
    bb = Backbone(local_cfg(n_global=0)).eval()
    x = torch.randn(1, 128, 16)
    with torch.no_grad():
        whole = bb(x, torch.ones(1, 128, dtype=torch.bool))[:, -1]
        tail = bb(x[:, -7:], torch.ones(1, 7, dtype=torch.bool))[:, -1]
    torch.testing.assert_close(whole, tail, atol=1e-4, rtol=1e-4)


def test_model_encodes_histories_longer_than_its_context(tiny_prepared):
    # learned positions: the last max_len tokens are read (the documented fallback)
    ds = PreparedDataset.load(tiny_prepared)
    model, store = tiny_model(tiny_prepared)
    model = Recommender(model.eval(), ds.tokenizer, ds.items)
    long = [[f"i{(3 * j) % 20}" for j in range(50)]]  # 50 tokens, max_len 16
    u_long = model.encode_users(long)
    u_last = model.encode_users([long[0][-16:]])
    torch.testing.assert_close(u_long, u_last)
    # rope + local attention: inference_len reads the whole history with linear memory
    model, _ = tiny_model(tiny_prepared, positions="rope", attention_pattern="local",
                          local_window=8, inference_len=64)
    assert model.context_len == 64
    model = Recommender(model.eval(), ds.tokenizer, ds.items)
    u = model.encode_users(long)
    assert u.shape == (1, 32) and torch.isfinite(u).all()
    recs = model.recommend(long[0], k=5)
    assert recs.height == 5


def test_longer_inference_needs_relative_positions(tiny_prepared):
    with pytest.raises(ValueError, match="inference_len"):
        tiny_model(tiny_prepared, positions="learned", inference_len=64)
