"""New titles: content-only scores, add-items invariants, incremental training, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recfm.adapt.incremental import build_incremental_dataset
from recfm.adapt.new_items import add_items, neighbour_mean, ridge_map
from recfm.tokens.batching import SequenceStore
from recfm.content.store import embed_dataset
from recfm.data.readers import RawDataset
from recfm.data.schema import normalize_events, normalize_items
from recfm.errors import RecfmError
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender
from recfm.tokens.prepare import prepare
from recfm.train.fresh import fresh_spans, fresh_split, mask_context_targets
from recfm.train.config import TrainConfig
from recfm.train.loop import train

HELD = ["i5", "i22"]


def chain_events(n_users: int = 60, n_items: int = 40, length: int = 12) -> pl.DataFrame:
    """Users walk a ring of items (i → i+1 mostly), as in tests/conftest.py."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        item = int(rng.integers(0, n_items))
        for t in range(length):
            rows.append((f"u{u}", f"i{item}", 1_600_000_000 + 3600 * t,
                         str(rng.choice(["play", "complete"])), float(rng.uniform(10, 3000))))
            item = (item + 1) % n_items if rng.random() < 0.9 else int(rng.integers(0, n_items))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "action", "value"],
                        orient="row")


def catalog() -> pl.DataFrame:
    words = ["space robots", "kitchen cooking", "ocean sailing", "jungle animals"]
    return pl.DataFrame({
        "item_id": [f"i{i}" for i in range(40)],
        "title": [f"Story {i}: {words[i % 4]}" for i in range(40)],
        "genres": [["drama"] if i % 2 else ["comedy", "kids"] for i in range(40)],
    })


def prepare_without_held(out: Path) -> pl.DataFrame:
    """The ring world without the HELD items, prepared at ``out``; all its events."""
    ev = chain_events()
    events = normalize_events(ev.filter(~pl.col("item_id").is_in(HELD)), "events")
    items = normalize_items(catalog().filter(~pl.col("item_id").is_in(HELD)), "items")
    prepare(RawDataset(events, items, "events", "items", {"name": "tiny", "has_time": True}),
            out)
    return ev


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A content run and an id-only run trained without the HELD items (tiny, 2 epochs)."""
    root = tmp_path_factory.mktemp("adapt")
    ev = prepare_without_held(root / "prepared")
    tcfg = TrainConfig(epochs=2, batch_size=32, tensorboard=False)
    mcfg = dict(d_model=16, n_layers=1, n_heads=2, max_len=16, dropout=0.0)
    train(root / "prepared", root / "id-run", ModelConfig(**mcfg), tcfg)
    embed_dataset(root / "prepared", "hash:32", cache_dir=root / "cache")
    train(root / "prepared", root / "run", ModelConfig(**mcfg), tcfg)
    catalog().filter(pl.col("item_id").is_in(HELD)).write_parquet(root / "new.parquet")
    held_events = normalize_events(ev.filter(pl.col("item_id").is_in(HELD)), "ev")
    return {"root": root, "run": root / "run", "id_run": root / "id-run",
            "new": root / "new.parquet", "recent": held_events.drop("_line"),
            "prepared": root / "prepared"}


def test_content_run_records_its_embedder(runs):
    fm = Recommender.from_pretrained(runs["run"])
    assert fm.cfg.content_dim == 32 and fm.cfg.content_embedder == "hash:32"
    assert Recommender.from_pretrained(runs["id_run"]).cfg.content_dim == 0


def test_unseen_item_gets_a_finite_non_default_score_from_content_alone(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "run2", init="zero")
    fm = Recommender.from_pretrained(tmp_path / "run2")
    new = [fm.tokenizer.item_index()[i] for i in HELD]
    assert fm.model.item_encoder.ids.weight[new].abs().sum() == 0  # no id: content alone
    user = fm.encode_users([["i1", "i2", "i3"]])
    scores = fm.model.score(user)[0, new]
    assert torch.isfinite(scores).all()
    # "default" = what an item without content gets: the projection of a zero vector
    blank = fm.model.item_encoder.combine_content(torch.zeros(1, 16), torch.zeros(1, 32))
    default = (user @ blank.T)[0, 0]
    assert (scores - default).abs().min() > 1e-4
    assert (scores[0] - scores[1]).abs() > 1e-6  # different texts, different scores
    # the id-only model has nothing to go on: a new item scores exactly the default 0
    add_items(runs["id_run"], runs["new"], tmp_path / "id2", init="zero")
    fm_id = Recommender.from_pretrained(tmp_path / "id2")
    ids_only = fm_id.model.score(fm_id.encode_users([["i1", "i2", "i3"]]))[0]
    new_id = [fm_id.tokenizer.item_index()[i] for i in HELD]
    assert torch.isfinite(ids_only[new_id]).all()


@pytest.mark.parametrize("init", ["zero", "scaled", "random", "content", "neighbours"])
def test_add_items_keeps_existing_items_bit_identical(runs, tmp_path, init):
    old = Recommender.from_pretrained(runs["run"])
    rep = add_items(runs["run"], runs["new"], tmp_path / "run2", init=init)
    new = Recommender.from_pretrained(tmp_path / "run2")
    n = old.cfg.n_items
    assert rep["added"] == 2 and new.cfg.n_items == n + 2
    assert new.tokenizer.item_ids[:n - 3] == old.tokenizer.item_ids  # nothing renumbered
    assert new.tokenizer.item_ids[n - 3:] == HELD
    a, b = old.model.state_dict(), new.model.state_dict()
    assert a.keys() == b.keys()
    for name, t in a.items():
        if name == "item_encoder.attr_offsets":
            assert torch.equal(b[name][:n + 1], t)
        elif t.dim() >= 1 and t.shape[0] == n:
            assert torch.equal(b[name][:n], t), name
        elif name == "item_encoder.attr_values":
            assert torch.equal(b[name][:len(t)], t)
        else:
            assert torch.equal(b[name], t), name
    assert torch.equal(new.model.item_table()[:n], old.model.item_table())  # every existing vector
    old_items = pl.read_parquet(runs["run"] / "items.parquet")
    new_items = pl.read_parquet(tmp_path / "run2" / "items.parquet")
    assert new_items.head(old_items.height).select(old_items.columns).equals(old_items)
    # the same user gets the same scores on every existing item
    h = [["i1", "i2", "i3"]]
    assert torch.allclose(new.model.score(new.encode_users(h))[0, :n], old.model.score(old.encode_users(h))[0])


def test_scaled_init_gives_new_items_a_trained_items_length(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "zero", init="zero")
    rep = add_items(runs["run"], runs["new"], tmp_path / "scaled", init="scaled")
    zero = Recommender.from_pretrained(tmp_path / "zero")
    scaled = Recommender.from_pretrained(tmp_path / "scaled")
    n = zero.cfg.n_items - len(HELD)
    with torch.no_grad():
        t0, t1 = zero.model.item_table(), scaled.model.item_table()
        ids = zero.model.item_encoder.ids.weight.detach()
    # the content-only vector, lengthened by the trained items' mean norm ratio
    trained = t0[3:n]
    s = float(trained.norm(dim=1).mean() / (trained - ids[3:n]).norm(dim=1).mean())
    assert rep["scale"] == pytest.approx(s, rel=1e-3)
    assert torch.allclose(t1[n:], s * t0[n:], atol=1e-6)
    assert torch.equal(t1[:n], t0[:n])
    # a run without content: scaling an attribute bag does not apply; zero rows instead
    assert add_items(runs["id_run"], runs["new"], tmp_path / "id2")["init"] == "zero"


def test_new_items_are_served_at_once_and_a_second_add_skips_known_ids(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "run2", init="neighbours")
    fm = Recommender.from_pretrained(tmp_path / "run2")
    recs = fm.recommend(["i1", "i2"], k=50)
    assert set(HELD) <= set(recs["item_id"].to_list())
    both = pl.concat([catalog().filter(pl.col("item_id").is_in(HELD)),
                      pl.DataFrame({"item_id": ["brand-new"], "title": ["Space robots 2"],
                                    "genres": [["drama", "unheard-of"]]})])
    rep = add_items(tmp_path / "run2", both, tmp_path / "run3")
    assert rep["added"] == 1 and rep["skipped_existing"] == 2
    assert rep["attribute_values_unknown"] == 1  # "genres:unheard-of" is not in the vocabulary
    meta = json.loads((tmp_path / "run3" / "config.json").read_text())
    assert [r["added"] for r in meta["added_items"]] == [2, 1]
    with pytest.raises(RecfmError, match="apart from the inputs"):
        add_items(tmp_path / "run2", both, tmp_path / "run2")


def test_ridge_map_and_neighbour_mean():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((200, 8))
    w = rng.standard_normal((8, 3))
    f = ridge_map(c, c @ w + 1.0, lam=1e-6)
    np.testing.assert_allclose(f(c[:5]), c[:5] @ w + 1.0, atol=1e-4)
    known = np.eye(3, dtype=np.float32)
    rows = np.array([[1.0, 0], [0, 1.0], [5.0, 5.0]], dtype=np.float32)
    got = neighbour_mean(np.array([[1.0, 0.1, 0]], dtype=np.float32), known, rows, k=2)
    sims = np.array([1.0, 0.1]) / np.linalg.norm([1, 0.1, 0])
    np.testing.assert_allclose(got[0], (sims[0] * rows[0] + sims[1] * rows[1]) / sims.sum(),
                               rtol=1e-5)
    kept = neighbour_mean(np.array([[1.0, 1.0, 0]], dtype=np.float32), known, rows, k=2,
                          keep_norm=True)  # mean of (1, 0) and (0, 1), back to norm 1
    np.testing.assert_allclose(kept[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-5)


def test_fresh_spans_cover_every_fresh_target_and_context_is_masked():
    seqs = pl.DataFrame({"user_idx": [0, 1], "user_id": ["a", "b"], "length": [10, 3],
                         "item": [list(range(3, 13)), [3, 4, 5]],
                         "fresh": [[0, 1, 0, 0, 0, 0, 1, 0, 1, 1], [0, 0, 0]]},
                        schema_overrides={"fresh": pl.List(pl.Int8)})
    store = SequenceStore(seqs, ["item", "fresh"])
    spans = fresh_spans(store, 4)
    covered = {(int(r), p) for r, s, e in spans for p in range(s + 1, e)}
    assert {(0, 1), (0, 6), (0, 8), (0, 9)} <= covered and all(r == 0 for r, _, _ in spans)
    batch = store.gather(spans)
    full = {f"future_{k}": v for k, v in batch.items()}
    batch = {k: v[:, :-1] for k, v in batch.items()}
    batch["target"] = full["future_item"][:, 1:].clone()
    batch.update(full)
    mask_context_targets(batch)
    kept = batch["target"][batch["target"] > 0].tolist()
    assert sorted(kept) == sorted([4, 9, 11, 12])  # exactly the fresh tokens
    split = fresh_split(seqs, valid_fraction=1.0)
    assert split.valid["target"].to_list() == [12]


def test_incremental_training_moves_new_items_and_nothing_needs_a_retrain(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "run2")
    rep = build_incremental_dataset(tmp_path / "run2", runs["recent"], tmp_path / "inc",
                                    history=runs["prepared"])
    assert rep["fresh_tokens"] > 0 and rep["context_tokens"] > 0
    assert rep["unknown_item_tokens_dropped"] == 0
    res = train(tmp_path / "inc", tmp_path / "run3",
                train_cfg=TrainConfig(epochs=2, batch_size=16, lr=1e-3, tensorboard=False),
                init_from=tmp_path / "run2")
    assert res.test is None and res.epochs_run == 2
    before = Recommender.from_pretrained(tmp_path / "run2")
    after = Recommender.from_pretrained(tmp_path / "run3")
    new = [before.tokenizer.item_index()[i] for i in HELD]
    assert not torch.equal(after.model.item_encoder.ids.weight[new], before.model.item_encoder.ids.weight[new])
    meta = json.loads((tmp_path / "run3" / "config.json").read_text())
    assert meta["init_from"] == str(tmp_path / "run2") and meta["incremental"] is True
    with pytest.raises(RecfmError, match="item vocabulary differs"):
        train(tmp_path / "inc", tmp_path / "bad", train_cfg=TrainConfig(epochs=1),
              init_from=runs["run"])


def test_replay_trains_on_a_fraction_of_the_older_tokens(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "run2")
    fresh = {}
    for replay in (0.0, 0.5, 1.0):
        rep = build_incremental_dataset(tmp_path / "run2", runs["recent"], tmp_path / f"i{replay}",
                                        history=runs["prepared"], replay=replay)
        seqs = pl.read_parquet(tmp_path / f"i{replay}" / "tokens.parquet")
        fresh[replay] = int(seqs["fresh"].list.sum().sum())
        assert rep["replay"] == replay
    n_recent, n_context = fresh[0.0], rep["context_tokens"]
    assert n_recent == rep["fresh_tokens"] - n_context  # replay 1: every token is a target
    assert n_recent < fresh[0.5] < n_recent + n_context
    assert abs(fresh[0.5] - n_recent - n_context / 2) < 0.1 * n_context


def test_lr_scales_freeze_the_backbone_and_move_the_new_id_rows(runs, tmp_path):
    add_items(runs["run"], runs["new"], tmp_path / "run2")
    build_incremental_dataset(tmp_path / "run2", runs["recent"], tmp_path / "inc",
                              history=runs["prepared"])
    scales = {"backbone": 0.0, "item_encoder.ids": 10.0}
    train(tmp_path / "inc", tmp_path / "run3",
          train_cfg=TrainConfig(epochs=1, batch_size=16, tensorboard=False, lr_scales=scales),
          init_from=tmp_path / "run2")
    before = FoundationModel.from_pretrained(tmp_path / "run2").state_dict()
    after = FoundationModel.from_pretrained(tmp_path / "run3").state_dict()
    frozen = [k for k in before if k.startswith("backbone.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["item_encoder.ids.weight"], after["item_encoder.ids.weight"])
    assert not torch.equal(before["embed.norm.weight"], after["embed.norm.weight"])  # scale 1


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfm", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_add_items_then_incremental_train(runs, tmp_path):
    res = cli("add-items", str(runs["run"]), "--items", str(runs["new"]), "--out", "run2",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 new items" in res.stdout
    runs["recent"].write_parquet(tmp_path / "recent.parquet")
    res = cli("train", "--init-from", "run2", "--events", "recent.parquet", "--incremental",
              "--out", "run3", "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run3" / "model.safetensors").is_file()


@pytest.mark.parametrize("content, line, column", [
    ("item_id,title\nx1,Alpha\nx1,Beta\n", 3, "item_id"),         # duplicate id
    ("item_id,title\nx1,Alpha\n,Beta\n", 3, "item_id"),           # missing id
    ("item_id,title\nx1,Alpha\nx2,Beta,extra\n", 3, None),        # ragged row
])
def test_malformed_items_file_is_one_line_with_file_and_line(runs, tmp_path, content, line,
                                                             column):
    (tmp_path / "new.csv").write_text(content)
    res = cli("add-items", str(runs["run"]), "--items", "new.csv", "--out", "run2",
              cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith(f"error: new.csv:{line}:" + (column or ""))
    assert not (tmp_path / "run2").exists()
