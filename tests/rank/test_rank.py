"""The unified ranker: request data, lexical retrieval, training, the knob, errors, save/load."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recfm.errors import InputError
from recfm.rank.data import TASKS, RankDataConfig, build_requests, holdout_dataset, make_query
from recfm.rank.lexical import BM25Index, normalize
from recfm.rank.model import RankerConfig, UnifiedRanker
from recfm.rank.train import evaluate, fit, prepare_features, score_all

EMBEDDER = "hash:32"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny world, its FM trained on the holdout copy, requests and features."""
    from recfm.content.embedders import make_embedder
    from recfm.data import synthetic
    from recfm.model.config import ModelConfig
    from recfm.model.foundation import FoundationModel
    from recfm.pipeline import Recommender
    from recfm.tokens.prepare import prepare
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rank")
    cfg = synthetic.SynthConfig(seed=3, n_users=250, n_items=100, events_per_user=120)
    synthetic.write_world(synthetic.generate(cfg), root / "world", cfg)
    prepare(synthetic.load_world(root / "world"), root / "prepared")
    holdout_dataset(root / "prepared", root / "prepared-fm", 5)
    train(root / "prepared-fm", root / "fm", ModelConfig(d_model=16, n_layers=1, n_heads=1,
                                                         max_len=40),
          TrainConfig(epochs=2, tensorboard=False, warmup_steps=5), evaluate_test=False)
    fm = FoundationModel.from_pretrained(root / "fm")
    data = build_requests(root / "prepared", Recommender.from_pretrained(root / "fm"),
                          RankDataConfig(holdout=5, seed=1))
    embedder = make_embedder(EMBEDDER)
    feats, vocab, tables, _ = prepare_features(data, EMBEDDER, embedder)
    return {"root": root, "fm": fm, "data": data, "feats": feats, "vocab": vocab,
            "tables": tables, "embedder": embedder}


def _cfg(**kw) -> RankerConfig:
    base = dict(embedder=EMBEDDER, epochs=3, patience=5, d_deep=32, n_deep=1, d_text=8,
                d_fm=8, cross_rank=8, batch_size=64)
    return RankerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def rankers(world):
    f = world["feats"]
    uni, hist_u = fit(f["train"], f["valid"], world["vocab"], world["tables"],
                      _cfg(use_fm=False))
    fm, hist_f = fit(f["train"], f["valid"], world["vocab"], world["tables"], _cfg(),
                     base_from=uni)
    return uni, fm, hist_u, hist_f


# ----------------------------------------------------------------------------- data


def test_holdout_removes_the_request_tokens(world):
    full = pl.read_parquet(world["root"] / "prepared" / "tokens.parquet")
    cut = pl.read_parquet(world["root"] / "prepared-fm" / "tokens.parquet")
    joined = cut.join(full, on="user_id", suffix="_full")
    assert (joined["length_full"] - joined["length"] == 5).all()
    for a, b in zip(joined["item"].to_list()[:20], joined["item_full"].to_list()[:20]):
        assert a == b[:len(a)]


def test_requests_are_held_out_positions_with_splits(world):
    req = world["data"].requests
    full = pl.read_parquet(world["root"] / "prepared" / "tokens.parquet")
    lengths = dict(zip(full["user_id"].to_list(), full["length"].to_list()))
    for row in req.head(200).iter_rows(named=True):
        assert row["position"] >= lengths[row["user_id"]] - 5  # never an FM training target
    last = req.group_by("user_id").agg(pl.col("position").max().alias("last"))
    tests = req.filter(pl.col("split") == "test").join(last, on="user_id")
    assert (tests["position"] == tests["last"]).all()
    assert set(req["task"].unique().to_list()) <= set(TASKS)
    assert req.filter(pl.col("task") == "search")["query"].null_count() == 0
    assert req.filter(pl.col("task") != "search")["query"].null_count() == \
        req.filter(pl.col("task") != "search").height


def test_navigational_queries_are_exact_titles(world):
    data = world["data"]
    titles = dict(zip(data.items["idx"].to_list(), data.items["title"].to_list()))
    nav = data.requests.filter(pl.col("query_kind") == "navigational")
    assert nav.height > 5
    for q, label in zip(nav["query"].to_list(), nav["label"].to_list()):
        assert q.lower() == titles[label].lower()
    # the lexical first pass finds them (almost) always
    assert (nav["label_pos"] >= 0).mean() >= 0.95


def test_candidates_hold_the_label_exactly_when_retrieved(world):
    req = world["data"].requests
    n_in = 0
    for cands, label, pos in zip(req["candidates"].to_list(), req["label"].to_list(),
                                 req["label_pos"].to_list()):
        assert len(set(cands)) == len(cands)
        if pos >= 0:
            assert cands[pos] == label
            n_in += 1
        else:
            assert label not in cands
    assert n_in > 0.3 * req.height


def test_query_kinds_and_lexical_match():
    rng = np.random.default_rng(0)
    title = "The Iron Strike: Season 2"
    assert make_query(title, ["action"], "series", "navigational", rng).lower() == title.lower()
    assert normalize(title).startswith(make_query(title, ["action"], "series", "partial", rng))
    assert make_query(title, ["action"], None, "genre", rng) == "action"
    index = BM25Index(["The Iron Strike", "Quiet Letters", "Iron Garden"],
                      [["action"], ["drama"], ["drama"]])
    assert index.scores("the irn strike").argmax() == 0      # misspelt
    assert index.scores("quiet let").argmax() == 1           # partial
    top, scores = index.top("drama", 5)
    assert set(top.tolist()) == {1, 2} and (scores > 0).all()
    with pytest.raises(ValueError, match="unknown query kind"):
        make_query(title, [], None, "shouting", rng)


# ----------------------------------------------------------------------------- ranker


def test_tiny_ranker_trains_and_its_loss_falls(world, rankers):
    uni, fm, hist_u, hist_f = rankers
    base = [h["loss"] for h in hist_u if h["stage"] == "base"]
    pers = [h["loss"] for h in hist_f if h["stage"] == "personal"]
    assert base[-1] < base[0]
    assert pers[-1] < pers[0]
    # better than an untrained ranker on validation
    f = world["feats"]
    untrained = UnifiedRanker(_cfg(use_fm=False), world["vocab"], world["tables"].content.shape[1],
                              world["tables"].fm.shape[1], world["tables"].content.shape[0])
    untrained.set_tables(world["tables"].cat, world["tables"].dense, world["tables"].content,
                         world["tables"].fm)
    untrained.fit_normalization(f["train"])
    assert evaluate(uni, f["valid"])["all"]["ndcg@10"] > \
        evaluate(untrained, f["valid"])["all"]["ndcg@10"]


def test_knob_zero_reproduces_the_no_personalization_ranking(world, rankers):
    uni, fm, _, _ = rankers
    b = world["feats"]["test"]
    no_fm = score_all(uni, b)
    at_zero = score_all(fm, b, 0.0)
    assert torch.equal(no_fm, at_zero)
    # the FM features have no effect at 0 …
    scrambled = b.take(np.arange(len(b)))
    scrambled.fm_user = torch.randn_like(b.fm_user)
    scrambled.fm_cross = torch.randn_like(b.fm_cross)
    assert torch.equal(score_all(fm, scrambled, 0.0), at_zero)
    # … and do at the default knob
    assert not torch.equal(score_all(fm, b), at_zero)
    per_task = torch.zeros(len(b))
    assert torch.equal(score_all(fm, b, per_task), at_zero)


def test_unknown_task_type_is_a_clear_error(world, rankers):
    from recfm.rank.features import featurize

    data = world["data"]
    bad = data.subset(np.arange(data.requests.height) < 3)
    bad.requests = bad.requests.with_columns(pl.lit("shopping").alias("task"))
    with pytest.raises(InputError) as e:
        featurize(bad, world["tables"], world["vocab"], world["embedder"])
    msg = str(e.value)
    assert "'shopping'" in msg and all(t in msg for t in TASKS)
    with pytest.raises(InputError, match="shopping"):
        RankerConfig.from_dict({"knob": {"shopping": 0.5}})


def test_save_load_round_trip_and_serve_hook(world, rankers, tmp_path):
    from recfm.rank.serve import RankerHook

    _, fm, _, _ = rankers
    fm.save(tmp_path / "ranker")
    world["data"].items.write_parquet(tmp_path / "ranker" / "items.parquet")
    loaded = UnifiedRanker.load(tmp_path / "ranker")
    b = world["feats"]["test"]
    assert torch.equal(score_all(fm, b), score_all(loaded, b))
    hook = RankerHook(tmp_path / "ranker", embedder=world["embedder"])
    req = world["data"].requests.filter(pl.col("split") == "test")
    i = int(np.nonzero((req["task"] == "search").to_numpy())[0][0])
    row = req.row(i, named=True)
    user = world["data"].subset((world["data"].requests["split"] == "test").to_numpy()).user_vec
    order, scores = hook.rerank(user[i:i + 1], [row["candidates"]], ["search"], [row["query"]],
                                [row["country"]], [row["device"]])[0]
    assert sorted(order.tolist()) == sorted(row["candidates"])
    assert (np.diff(scores) <= 0).all()
    # the same request through the features path gives the same order
    s = score_all(fm, b.take([i]))[0, :len(row["candidates"])].numpy()
    expected = np.asarray(row["candidates"])[np.argsort(-s, kind="stable")]
    assert order.tolist() == expected.tolist()
    with pytest.raises(InputError, match="shopping"):
        hook.rerank(user[:1], [row["candidates"]], ["shopping"])


def test_serving_engine_reranks_with_a_configured_ranker(world, rankers, tmp_path):
    from recfm.rank.serve import RankerHook
    from recfm.serve.config import ServeConfig
    from recfm.serve.engine import Engine

    _, fm, _, _ = rankers
    fm.save(tmp_path / "ranker")
    world["data"].items.write_parquet(tmp_path / "ranker" / "items.parquet")
    plain = Engine(world["root"] / "fm", ServeConfig(cache_mb=0))
    ranked = Engine(world["root"] / "fm", ServeConfig(cache_mb=0, ranker=str(tmp_path / "ranker")))
    assert plain.ranker is None and isinstance(ranked.ranker, RankerHook)
    events = [{"item_id": i} for i in world["data"].items["item_id"].to_list()[:4]]
    n = ranked.ranker.n_candidates
    first = plain.recommend([plain.query(events=events, k=n)])[0]["items"]
    out = ranked.recommend([ranked.query(events=events, k=5)])[0]["items"]
    assert len(out) == 5 and {r["item_id"] for r in out} <= {r["item_id"] for r in first}
    # the engine's answer is the hook's order of the first pass's top n
    users = ranked.encode([ranked.query(events=events, k=5)]).numpy()
    cands = [ranked.index_of[r["item_id"]] for r in first]
    order, scores = ranked.ranker.rerank(users, [cands], ["home"])[0]
    assert [r["item_id"] for r in out] == [ranked.item_ids[i] for i in order[:5]]
    np.testing.assert_allclose([r["score"] for r in out], scores[:5], rtol=1e-5)


def test_cli_train_evaluate_serve_hook_and_one_line_errors(world, tmp_path):
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from recfm.cli import app

    root = world["root"]
    runner = CliRunner()
    out = tmp_path / "rank-run"
    r = runner.invoke(app, ["rank", "train", str(root / "prepared"), "--fm", str(root / "fm"),
                            "--out", str(out), "--embedder", EMBEDDER, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert {"config.json", "model.safetensors", "items.parquet", "data"} <= \
        {p.name for p in out.iterdir()}
    r = runner.invoke(app, ["rank", "evaluate", str(out), "--json", "--knob", "search=0.5"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["knob"]["search"] == 0.5 and 0.0 <= res["ranker"]["all"]["ndcg@10"] <= 1.0
    user = pl.read_parquet(root / "prepared-fm" / "tokens.parquet")["user_id"][0]
    r = runner.invoke(app, ["rank", "serve-hook", str(out), "--fm", str(root / "fm"), "--user",
                            user, "--task", "search", "--query", "the", "--k", "3"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["items"]) <= 3
    bad = subprocess.run([sys.executable, "-m", "recfm", "rank", "evaluate", str(out), "--knob",
                          "shopping=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "'shopping'" in lines[0] and "more-like-this" in lines[0]


def test_knobs_tuned_on_validation_keep_navigational_titles_first(world):
    from recfm.rank.train import KNOB_GRID, exact_at_1, tune_knobs

    f = world["feats"]
    uni, _ = fit(f["train"], f["valid"], world["vocab"], world["tables"], _cfg(use_fm=False))
    model, _ = fit(f["train"], f["valid"], world["vocab"], world["tables"], _cfg(),
                   base_from=uni)
    valid = world["data"].requests.filter(pl.col("split") == "valid")
    nav = (valid["query_kind"] == "navigational").fill_null(False).to_numpy()
    knobs = tune_knobs(model, f["valid"], nav, min_exact_at_1=0.9)
    assert set(knobs) == set(TASKS) and all(k in KNOB_GRID for k in knobs.values())
    assert model.cfg.knob == knobs
    assert exact_at_1(model, f["valid"], nav) >= 0.9
