"""Semantic ids: unique code tuples saved in the run, frozen codebooks for new items, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from recfm.adapt.new_items import add_items
from recfm.adapt.semantic_ids import (SemanticIdConfig, build_semantic_ids, encode,
                                      load_semantic_ids, residual_kmeans)
from recfm.content.store import embed_dataset
from recfm.errors import InputError
from recfm.model.config import ModelConfig
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from recfm.train.config import TrainConfig
from recfm.train.loop import train
from tests.adapt.test_new_items import HELD, catalog, prepare_without_held

SMALL = SemanticIdConfig(levels=2, codes=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny content run (hash:32 title vectors + genres) trained without the HELD items."""
    root = tmp_path_factory.mktemp("semantic")
    prepare_without_held(root / "prepared")
    embed_dataset(root / "prepared", "hash:32", cache_dir=root / "cache")
    train(root / "prepared", root / "run", ModelConfig(d_model=16, n_layers=1, n_heads=2,
          max_len=16, dropout=0.0), TrainConfig(epochs=2, batch_size=32, tensorboard=False))
    build_semantic_ids(root / "run", SMALL)
    return root


def test_every_item_gets_a_unique_tuple_saved_beside_the_untouched_run(run):
    folder = run / "run" / "semantic_ids"
    assert {p.name for p in folder.iterdir()} >= {"codes.parquet", "codebooks.safetensors",
                                                  "meta.json"}
    sem = load_semantic_ids(run / "run")  # no training data needed
    n_items = json.loads((run / "run" / "config.json").read_text())["model"]["n_items"]
    assert sem.codes.shape == (n_items, 3)
    assert (sem.codes[:N_RESERVED_ITEMS] == -1).all()
    real = sem.codes[N_RESERVED_ITEMS:]
    assert (real >= 0).all()
    assert len({tuple(r) for r in real.tolist()}) == len(real)  # unique tuples
    assert sem.sizes[:2] == [8, 8] and sem.sizes[2] == int(real[:, 2].max()) + 1
    for level, size in enumerate(sem.sizes):
        assert int(real[:, level].max()) < size
    rep = sem.meta["report"]
    assert rep["items"] == len(real) and rep["source"] == "both"
    assert rep["utilisation"][0] == 1.0 and 0 < rep["utilisation"][1] <= 1
    assert 0 <= rep["collision_rate"] <= 1 and 0 < rep["reconstruction_error"] < 1
    assert [p["length"] for p in rep["prefixes"]] == [1, 2, 3]
    assert rep["prefixes"][-1]["items_sharing"] == 0.0
    genre = rep["clusters"]["genre"]  # two genres, 8 codes: the codes follow the genres
    assert genre["purity"] > genre["shuffled"] and genre["purity"] >= genre["majority_share"]


def test_same_seed_same_codes_and_an_earlier_output_replaced_only_when_asked(run, tmp_path):
    before = load_semantic_ids(run / "run").codes
    with pytest.raises(InputError, match="--overwrite"):
        build_semantic_ids(run / "run", SMALL)
    build_semantic_ids(run / "run", SMALL, overwrite=True)
    assert torch.equal(load_semantic_ids(run / "run").codes, before)
    other = build_semantic_ids(run / "run", SemanticIdConfig(levels=1, codes=4,
                                                             source="content"), overwrite=True)
    assert other["sizes"][0] == 4 and other["source"] == "content"
    build_semantic_ids(run / "run", SMALL, overwrite=True)  # as the other tests expect


def test_new_items_are_coded_with_the_frozen_codebooks(run, tmp_path):
    build_semantic_ids(run / "run", SemanticIdConfig(levels=2, codes=8, source="content"),
                       overwrite=True)
    try:
        old = load_semantic_ids(run / "run")
        twin = catalog().filter(pl.col("item_id") == "i1").with_columns(
            pl.lit("twin1").alias("item_id"))  # i1's title and genres under a new id
        new = pl.concat([catalog().filter(pl.col("item_id").is_in(HELD)), twin])
        new.write_parquet(tmp_path / "new.parquet")
        rep = add_items(run / "run", tmp_path / "new.parquet", tmp_path / "run2")
        assert rep["semantic_ids"]["items"] == 3
        grown = load_semantic_ids(tmp_path / "run2")
        n_old = old.codes.size(0)
        assert torch.equal(grown.codes[:n_old], old.codes)  # earlier items keep their codes
        real = grown.codes[N_RESERVED_ITEMS:]
        assert (real >= 0).all() and len({tuple(r) for r in real.tolist()}) == len(real)
        index = {i: k for k, i in enumerate(pl.read_parquet(tmp_path / "run2" / "items.parquet")
                                            .sort("idx")["item_id"].to_list())}
        i1, t1 = (grown.codes[N_RESERVED_ITEMS + index[i]] for i in ("i1", "twin1"))
        assert torch.equal(i1[:2], t1[:2]) and i1[2] != t1[2]  # same content, same prefix
        assert (tmp_path / "run2" / "semantic_ids" / "codebooks.safetensors").read_bytes() == \
            (run / "run" / "semantic_ids" / "codebooks.safetensors").read_bytes()
    finally:
        build_semantic_ids(run / "run", SMALL, overwrite=True)


def test_residual_kmeans_finds_clusters_and_each_level_lowers_the_error():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 20  # far apart: one k-means optimum
    labels = rng.integers(0, 4, 400)
    x = (centres[labels] + rng.normal(size=(400, 8))).astype(np.float32)
    books = residual_kmeans(x, levels=3, codes=4, seed=0)
    codes, recon = encode(x, books)
    pairs = pl.DataFrame({"code": codes[:, 0], "label": labels})
    assert pairs.n_unique() == 4  # level 1 is the 4 clusters, one code each
    errors = [float(((x - encode(x, books[:j])[1]) ** 2).sum()) for j in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    assert np.allclose(recon, sum(b[codes[:, j]] for j, b in enumerate(books)), atol=1e-5)


def test_the_command_prints_json_and_refuses_a_bad_source_in_one_line(run, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "recfm", "semantic-ids", *args],
                              capture_output=True, text=True, timeout=120)
    out = cli(str(run / "run"), "--levels", "2", "--codes", "8", "--overwrite", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["sizes"][:2] == [8, 8] and "semantic_ids" in out.stderr
    bad = cli(str(run / "run"), "--source", "colour", "--overwrite")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "--source" in bad.stderr


def test_a_generative_head_trains_on_the_codes_and_retrieves_by_beam_search(run, tmp_path):
    from recfm.adapt.semantic_ids import generative_model
    from recfm.data.splits import leave_one_out
    from recfm.evaluate.evaluator import GenerativeScorer, evaluate_scorer
    from recfm.pipeline import Recommender
    from recfm.tokens.prepare import PreparedDataset

    start = generative_model(run / "run")
    base = Recommender.from_pretrained(run / "run").model.state_dict()
    kept = start.model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in base.items())  # every old weight kept
    assert (start.model.item_codes[N_RESERVED_ITEMS:] >= 0).all()
    res = train(run / "prepared", tmp_path / "gen", None,
                TrainConfig(epochs=3, batch_size=32, tensorboard=False), init_from=start)
    assert res.epochs_run >= 1
    rec = Recommender.from_pretrained(tmp_path / "gen")  # head and codes saved in the run
    assert rec.cfg.semantic_sizes == load_semantic_ids(run / "run").sizes
    torch.testing.assert_close(rec.model.item_codes, start.model.item_codes)
    out = rec.recommend(["i1", "i2", "i3"], k=5, retrieval="generative")
    assert out.height == 5 and not set(out["item_id"]) & {"i1", "i2", "i3"}
    assert (out["score"] <= 0).all() and out["score"].is_sorted(descending=True)
    ds = PreparedDataset.load(run / "prepared")
    test = leave_one_out(ds.sequences).test
    m = evaluate_scorer(GenerativeScorer(rec.model, k=10), test, rec.cfg.n_items,
                        rec.cfg.max_len, rec.model.input_columns)
    pop = json.loads((tmp_path / "gen" / "summary.json").read_text())["popularity_test"]
    assert m["ndcg@10"] > 2 * pop["ndcg@10"]  # the ring's next codes are learnt
    with pytest.raises(Exception, match="generative"):
        Recommender.from_pretrained(run / "run").recommend(["i1"], retrieval="generative")
