"""The lean one-token step and the one-user exact search equal their reference paths."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recfm.model.attention import KVCache
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.tokens.prepare import PreparedDataset
from recfm.serve.config import ServeConfig, SurfaceConfig
from recfm.serve.engine import Engine
from recfm.serve.index import _exact_one, _exact_rows
from recfm.serve.step import OneTokenStep
from tests.serve.conftest import MAX_LEN

OPEN = {"home": SurfaceConfig(available_only=False)}


def tiny_model(prepared, positions: str) -> FoundationModel:
    ds = PreparedDataset.load(prepared)
    base = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=16, dropout=0.0,
                       positions=positions)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items, ds.sequences)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    return model.eval()


@pytest.mark.parametrize("positions", ["learned", "rope"])
@torch.inference_mode()
def test_step_equals_encode_incremental(tiny_prepared, positions):
    fm = tiny_model(tiny_prepared, positions)
    assert len(fm.input_columns) > 1  # time facets are summed in too
    table = fm.input_item_table()
    step = OneTokenStep(fm, table)
    g = torch.Generator().manual_seed(1)
    n = 12
    batch = {c: torch.randint(1, e.num_embeddings, (1, n), generator=g)
             for c, e in fm.embed.facets.items()}
    batch["item"] = torch.randint(3, fm.cfg.n_items, (1, n), generator=g)
    window = torch.stack([batch[c][0] for c in fm.input_columns], 1).numpy()  # (n, C)
    _, cache = fm.encode_incremental({k: v[:, :4] for k, v in batch.items()}, None, table)
    past = cache.row(0, 4, capacity=16)
    for t in range(5, n + 1):  # grown token by token in the same buffers
        step_in = {k: v[:, :t] for k, v in batch.items()}
        copy = KVCache([k.clone() for k in past.keys], [v.clone() for v in past.values])
        ref, _ = fm.encode_incremental(step_in, copy, table)  # the reference path
        assert step.supports(past, t)
        user, past = step(window[t - 1], past)
        torch.testing.assert_close(user, ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(user, fm.last_hidden(step_in)[0], atol=1e-5, rtol=1e-5)
        assert past.length == t and past.room.filled == t
    # the room is taken: a second continuation of an older state is not this step's
    assert not step.supports(past.prefix(n - 1), n)
    assert not step.supports(past, n + 2)


def test_engine_fast_step_equals_reference_path(served):
    fast = Engine(served.run, ServeConfig(surfaces=dict(OPEN), cache_mb=16))
    ref = Engine(served.run, ServeConfig(surfaces=dict(OPEN), cache_mb=16, fast_step=False))
    ref.index.fast = False  # the reference search too
    items = pl.read_parquet(served.world / "items.parquet")["item_id"].to_list()
    rng = np.random.default_rng(0)
    for _ in range(3):
        h = [{"item_id": items[i]} for i in rng.integers(len(items), size=MAX_LEN - 4)]
        for n in range(MAX_LEN - 7, MAX_LEN - 3):
            answers = []
            for e in (fast, ref):
                e.recommend([e.query(events=h[:n - 1])])
                answers.append(e.recommend([e.query(events=h[:n], k=20)])[0])
            a, b = answers
            assert a["cache"] == b["cache"]
            assert [r["item_id"] for r in a["items"]] == [r["item_id"] for r in b["items"]]
            np.testing.assert_allclose([r["score"] for r in a["items"]],
                                       [r["score"] for r in b["items"]], atol=1e-5, rtol=1e-5)
    assert any(v for k, v in fast.cache.stats.items() if k == "extend")


def test_exact_one_equals_exact_rows():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 16, generator=g)
    user = torch.randn(1, 16, generator=g)
    rng = np.random.default_rng(0)
    for share in (1.0, 0.5, 0.01):
        allowed = rng.random(500) < share
        for k in (1, 10, 300):
            idx, vals = _exact_one(table.numpy(), user[0], k, allowed)
            [(ridx, rvals)] = _exact_rows(table, user, k, [allowed])
            np.testing.assert_allclose(vals, rvals, atol=1e-5, rtol=1e-5)
            assert set(idx.tolist()) == set(ridx.tolist()) or np.allclose(
                np.sort(vals), np.sort(rvals), atol=1e-5)
            assert allowed[idx].all() and len(idx) == min(k, int(allowed.sum()))
