"""Incremental (KV-cache) encoding equals a full forward, for every attention path."""

from __future__ import annotations

import pytest
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.tokens.prepare import PreparedDataset


def tiny_model(prepared, **overrides) -> tuple[FoundationModel, SequenceStore]:
    ds = PreparedDataset.load(prepared)
    base = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=16, dropout=0.0, **overrides)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items, ds.sequences)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    model.eval()
    return model, SequenceStore(leave_one_out(ds.sequences).train, model.input_columns)


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_prefill_and_extension_match_full_forward(tiny_prepared, positions, attention):
    model, store = tiny_model(tiny_prepared, positions=positions, attention=attention)
    spans = store.spans(10)[:6]  # (row, start, end), lengths ≤ 10
    batch = store.gather(spans)
    full = model.last_hidden(batch)  # (B, d)
    table = model.input_item_table()
    users, cache = model.encode_incremental(batch, item_vectors=table)
    torch.testing.assert_close(users, full, atol=1e-5, rtol=1e-5)

    # one user, grown token by token from 3 tokens, and by 2 tokens at once
    row = store.gather(spans[:1])
    n = int((row["item"] > 0).sum())
    _, past = model.encode_incremental({k: v[:, :3] for k, v in row.items()})
    for t in range(4, n + 1):
        step = {k: v[:, :t] for k, v in row.items()}
        u, past = model.encode_incremental(step, past, table)
        torch.testing.assert_close(u, model.last_hidden(step), atol=1e-5, rtol=1e-5)
    _, past = model.encode_incremental({k: v[:, :n - 2] for k, v in row.items()})
    u, past = model.encode_incremental({k: v[:, :n] for k, v in row.items()}, past)
    torch.testing.assert_close(u, full[:1], atol=1e-5, rtol=1e-5)
    assert past.length == n


def test_batched_prefill_rows_are_reusable_caches(tiny_prepared):
    model, store = tiny_model(tiny_prepared)
    spans = store.spans(10)[:4]
    spans[:, 2] = spans[:, 2] - 1  # leave each window's last token out of the prefill
    _, cache = model.encode_incremental(store.gather(spans))
    for b, (row, start, end) in enumerate(spans):
        past = cache.row(b, int(end - start))
        grown = store.gather(spans[b:b + 1] + [0, 0, 1])
        u, _ = model.encode_incremental(grown, past)
        torch.testing.assert_close(u, model.last_hidden(grown), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_in_place_growth_matches_and_divergent_extensions_stay_exact(tiny_prepared, positions):
    model, store = tiny_model(tiny_prepared, positions=positions)
    spans = store.spans(10)[:2]
    rows = store.gather(spans)
    n = int((rows["item"][0] > 0).sum())
    _, cache = model.encode_incremental({k: v[:1, :n - 3] for k, v in rows.items()})
    past = cache.row(0, n - 3, capacity=16)  # room for 13 more tokens
    assert past.room is not None and past.nbytes > cache.row(0, n - 3).nbytes
    # token by token, in place: the buffers are written, never copied
    grown = past
    for t in range(n - 2, n + 1):
        step = {k: v[:1, :t] for k, v in rows.items()}
        u, grown = model.encode_incremental(step, grown)
        assert grown.room is past.room
        torch.testing.assert_close(u, model.last_hidden(step), atol=1e-5, rtol=1e-5)
    # the shorter cache is still exact, and a second, different continuation of it copies
    # instead of overwriting what the first one wrote
    other = {k: v[:1, :n].clone() for k, v in rows.items()}
    other["item"][0, n - 3:] = rows["item"][1, :3]
    u2, branch = model.encode_incremental(other, past)
    assert branch.room is None
    torch.testing.assert_close(u2, model.last_hidden(other), atol=1e-5, rtol=1e-5)
    u, _ = model.encode_incremental({k: v[:1, :n] for k, v in rows.items()}, grown.prefix(n - 1))
    torch.testing.assert_close(u, model.last_hidden({k: v[:1, :n] for k, v in rows.items()}),
                               atol=1e-5, rtol=1e-5)


def test_too_long_or_padded_extension_is_refused(tiny_prepared):
    model, store = tiny_model(tiny_prepared)
    batch = store.gather(store.spans(10)[:2])
    with pytest.raises(ValueError, match="longer than the context"):
        model.encode_incremental({k: v.repeat(1, 3) for k, v in batch.items()})
    _, past = model.encode_incremental({k: v[:1, :2] for k, v in batch.items()})
    with pytest.raises(ValueError, match="unpadded"):
        model.encode_incremental({k: v[:1, :1] for k, v in batch.items()}, past)
