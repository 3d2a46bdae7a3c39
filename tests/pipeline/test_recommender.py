"""Recommender: the pipeline around the network — old runs load, ids in, ids out, prompts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import polars as pl
import pytest
import torch

from recfm.errors import RecfmError
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender

OLD_RUN = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


def test_a_run_saved_before_the_redesign_answers_the_same():
    expected = json.loads((OLD_RUN / "expected.json").read_text())
    rec = Recommender.from_pretrained(OLD_RUN)
    for horizon in ("next", "window"):
        got = rec.recommend(expected["history"], k=5, horizon=horizon)
        want = expected["recommend" if horizon == "next" else "window"]
        assert got["item_id"].to_list() == [r["item_id"] for r in want]
        assert got["score"].to_list() == pytest.approx([r["score"] for r in want], abs=1e-6)
        assert got["title"].to_list() == [f"Title {r['item_id'][1:]}" for r in want]
    users = rec.encode_users([expected["history"], ["i7", "i8"]])
    assert torch.allclose(users, torch.tensor(expected["users"]), atol=1e-6)


def test_the_network_alone_loads_and_scores_like_the_pipeline():
    rec = Recommender.from_pretrained(OLD_RUN)
    fm = FoundationModel.from_pretrained(OLD_RUN)
    index = rec.tokenizer.item_index()
    batch = {"item": torch.tensor([[index["i1"], index["i2"], index["i3"]]])}
    with torch.no_grad():
        assert torch.equal(fm.last_hidden(batch), rec.model.last_hidden(batch))
        assert torch.equal(rec.encode_users([["i1", "i2", "i3"]]), fm.last_hidden(batch))


def test_save_then_load_round_trips(tmp_path):
    rec = Recommender.from_pretrained(OLD_RUN)
    rec.save_pretrained(tmp_path / "copy")
    assert {p.name for p in (tmp_path / "copy").iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "items.parquet"}
    modes = {stat.S_IMODE((tmp_path / "copy" / name).stat().st_mode)
             for name in ("config.json", "model.safetensors", "tokenizer.json")}
    assert len(modes) == 1  # the weights follow the umask like every other run file
    again = Recommender.from_pretrained(tmp_path / "copy")
    h = ["i3", "i4"]
    assert rec.recommend(h, k=3).equals(again.recommend(h, k=3))


def test_raw_events_and_id_lists_give_the_same_user():
    rec = Recommender.from_pretrained(OLD_RUN)
    events = pl.DataFrame({"user_id": ["new"] * 3, "item_id": ["i1", "i2", "i3"],
                           "timestamp": [1_600_000_000 + 3600 * t for t in range(3)]})
    tokens = rec.tokenize_events(events)
    assert len(tokens) == 1 and tokens["item"].to_list()[0][-3:] == [
        rec.tokenizer.item_index()[i] for i in ("i1", "i2", "i3")]


def test_prompts_are_added_read_and_refused_by_name(tmp_path):
    rec = Recommender.from_pretrained(OLD_RUN)
    with pytest.raises(RecfmError, match="no prompt 'kids'"):
        rec.recommend(["i1"], k=3, prompt="kids")
    rec.add_prompt("kids", torch.zeros(2, rec.cfg.d_model))
    assert len(rec.recommend(["i1"], k=3, prompt="kids")) == 3
    with pytest.raises(RecfmError, match="expected a"):
        rec.add_prompt("bad", torch.zeros(3))


@pytest.mark.parametrize("k", [0, -5])
def test_a_list_of_fewer_than_one_item_is_refused(k):
    with pytest.raises(RecfmError, match=f"k: expected at least 1 item, found {k}"):
        Recommender.from_pretrained(OLD_RUN).recommend(["i1"], k=k)


def test_a_new_member_with_no_events_gets_the_models_first_items_for_their_context():
    rec = Recommender.from_pretrained(OLD_RUN)
    plain = rec.recommend([], k=5)
    assert plain.height == 5 and plain["item_id"].n_unique() == 5
    on_tv = rec.recommend([], k=5, context={"device": "tv", "timestamp": 1_700_000_000})
    on_web = rec.recommend([], k=5, context={"device": "web", "timestamp": 1_700_000_000})
    assert on_tv["score"].to_list() != on_web["score"].to_list()  # the context is read
    assert rec.recommend(pl.DataFrame(), k=3).height == 3  # an empty event frame too
    with pytest.raises(RecfmError, match="device: expected one of tv, web"):
        rec.recommend([], context={"device": "fridge"})
    with pytest.raises(RecfmError, match="planet: expected a facet of this run"):
        rec.recommend([], context={"planet": "mars"})


def test_unknown_ids_and_a_horizon_the_model_cannot_rank_are_errors_not_silence():
    rec = Recommender.from_pretrained(OLD_RUN)
    with pytest.raises(RecfmError, match="1 unknown, e.g. 'nope'"):
        rec.recommend(["i1", "nope"])
    assert rec.recommend(["i1", "nope"], k=3, ignore_unknown=True).height == 3
    plain = Recommender(FoundationModel(rec.model.cfg.__class__(n_items=10, d_model=8,
                                                                n_heads=1, n_layers=1)))
    with pytest.raises(RecfmError, match="trained without a future-window"):
        plain.recommend([4, 5], horizon="window")
