"""The synthetic streaming world: determinism, schema, plausibility, files, signal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recfm.data import schema, synthetic
from recfm.data.schema import LINE
from recfm.data.synthetic import SynthConfig, SynthWorld

SMALL = SynthConfig(seed=3, n_users=200, n_items=100, events_per_user=60.0)


@pytest.fixture(scope="module")
def world() -> SynthWorld:
    return synthetic.generate(SMALL)


@pytest.fixture(scope="module")
def medium() -> SynthWorld:
    return synthetic.generate(SynthConfig(seed=7, n_users=1000, n_items=300))


def _tokens(events: pl.DataFrame, window: int) -> pl.DataFrame:
    """What the tokenizer's default steps do: drop impressions, merge adjacent repeats."""
    ev = events.filter(pl.col("action") != "impression")
    new = ((pl.col("user_id") != pl.col("user_id").shift(1))
           | (pl.col("item_id") != pl.col("item_id").shift(1))
           | ((pl.col("timestamp") - pl.col("timestamp").shift(1)) > window)).fill_null(True)
    return ev.filter(new).select("user_id", "item_id", "timestamp")


def _frames(w: SynthWorld) -> list[pl.DataFrame]:
    return [w.events, w.items, w.truth_users, w.truth_items, w.choices]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames(world: SynthWorld) -> None:
    again = synthetic.generate(SynthConfig(**vars(SMALL)))
    for a, b in zip(_frames(world), _frames(again), strict=True):
        assert a.equals(b)


def test_different_seeds_differ(world: SynthWorld) -> None:
    other = synthetic.generate(SynthConfig(**{**vars(SMALL), "seed": 4}))
    assert not world.events.equals(other.events)
    assert not world.items.equals(other.items)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="n_items"):
        synthetic.generate(SynthConfig(n_items=5))
    with pytest.raises(ValueError, match="kids_fraction"):
        synthetic.generate(SynthConfig(kids_fraction=1.5))


# ----------------------------------------------------------------------------- schema


def test_frames_are_canonical(world: SynthWorld) -> None:
    ev = schema.normalize_events(world.events, "events")
    assert ev.drop(LINE).equals(world.events)
    assert dict(world.events.schema) == {
        "user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "action": pl.Utf8,
        "device": pl.Utf8, "country": pl.Utf8, "surface": pl.Utf8, "value": pl.Float64,
        "row": pl.Int64,
    }
    it = schema.normalize_items(world.items, "items")
    assert it.drop(LINE).equals(world.items)
    assert world.items.schema["genres"] == pl.List(pl.Utf8)
    assert world.items["item_id"].to_list()[:2] == ["i0001", "i0002"]
    assert world.truth_users["user_id"].to_list()[:2] == ["u00001", "u00002"]
    # Every event's item is in the catalog; truth covers every user and item.
    assert world.events["item_id"].is_in(world.items["item_id"].implode()).all()
    assert world.truth_users.height == SMALL.n_users
    assert world.truth_items["item_id"].equals(world.items["item_id"])


def test_catalog_is_varied(medium: SynthWorld) -> None:
    items = medium.items
    assert set(items["entity_type"].unique()) == set(synthetic.ENTITY_TYPES)
    assert items["genres"].explode().n_unique() == len(synthetic.GENRES)
    assert items["language"].n_unique() >= 6
    assert items["release_year"].n_unique() >= 15
    assert items["title"].n_unique() == items.height
    # Titles share words with their genre's vocabulary.
    for title, genres in items.select("title", "genres").head(50).iter_rows():
        words = set(title.replace(":", " ").split())
        vocab = {w for g in genres for part in synthetic.GENRE_WORDS[g] for w in part}
        assert words & vocab, title
    # Kids titles are a subset carried by kids genres.
    kids = items.filter(pl.col("kids") == "true")
    assert 0.05 < kids.height / items.height < 0.4
    kids_genre = pl.element().is_in(list(synthetic.KIDS_GENRES))
    assert kids["genres"].list.eval(kids_genre).list.any().all()
    # Franchises: successors are later installments of the same franchise.
    truth = medium.truth_items
    pairs = truth.filter(pl.col("successor").is_not_null()).join(
        truth.select(pl.col("item_id").alias("successor"),
                     pl.col("franchise_id").alias("f2"), pl.col("franchise_pos").alias("p2")),
        on="successor")
    assert pairs.height > 0.15 * truth.height
    assert (pairs["franchise_id"] == pairs["f2"]).all()
    assert (pairs["p2"] == pairs["franchise_pos"] + 1).all()


# ----------------------------------------------------------------------------- plausibility


def test_actions_and_durations_are_plausible(medium: SynthWorld) -> None:
    ev = medium.events.join(medium.truth_items.select("item_id", "runtime_s"), on="item_id")
    assert set(ev["action"].unique()) == set(synthetic.ACTIONS)
    by = {a: ev.filter(pl.col("action") == a) for a in synthetic.ACTIONS}
    for a in ("impression", "search", "add_to_list", "thumbs_up"):
        assert by[a]["value"].null_count() == by[a].height, a
    trailer = by["trailer"]["value"]
    assert trailer.min() >= 30 and trailer.max() <= 150
    complete = by["complete"]
    ratio = complete["value"] / complete["runtime_s"]
    assert ratio.min() >= 0.95 and ratio.max() <= 1.0
    assert trailer.mean() < 0.2 * complete["value"].mean()
    play = by["play"]
    assert (play["value"] > 0).all()
    assert (play["value"] <= play["runtime_s"]).all()
    # Impressions are the most common action, completes rarer than plays.
    counts = dict(ev.group_by("action").len().iter_rows())
    assert counts["impression"] > counts["complete"] and counts["play"] > counts["complete"]
    assert set(ev["surface"].unique()) == set(synthetic.SURFACES)
    assert set(ev["device"].unique()) == set(synthetic.DEVICES)


def test_no_event_before_its_title_launches(medium: SynthWorld) -> None:
    truth = medium.truth_items
    new = truth.filter(pl.col("launch_ts") > medium.config.start_ts)
    assert 0.03 < new.height / truth.height < 0.2
    ev = medium.events.join(truth.select("item_id", "launch_ts"), on="item_id")
    assert (ev["timestamp"] >= ev["launch_ts"]).all()
    # New titles do get watched once they are out.
    assert ev.filter(pl.col("item_id").is_in(new["item_id"].implode())
                     & (pl.col("action") == "play")).height > 0


def test_timestamps_increase_within_each_user(world: SynthWorld) -> None:
    ev = world.events
    bad = ev.select(
        ((pl.col("timestamp").diff() < 0) & (pl.col("user_id") == pl.col("user_id").shift(1)))
        .sum()).item()
    assert bad == 0
    assert ev["user_id"].is_sorted()
    start, end = SMALL.start_ts, SMALL.start_ts + SMALL.days * 86400
    assert ev["timestamp"].min() >= start
    span = ev.group_by("user_id").agg((pl.col("timestamp").max() - pl.col("timestamp").min())
                                      .alias("span"))
    assert span["span"].median() > 30 * 86400        # sessions spread over months
    assert (ev["timestamp"] < end + 30 * 86400).mean() > 0.99


def test_users_have_home_country_and_few_devices(world: SynthWorld) -> None:
    ev = world.events.join(world.truth_users.select("user_id", pl.col("country").alias("home")),
                           on="user_id")
    assert (ev["country"] == ev["home"]).mean() > 0.9
    assert ev.group_by("user_id").agg(pl.col("device").n_unique())["device"].max() <= 2


def test_kids_profiles_watch_kids_titles(medium: SynthWorld) -> None:
    kids_users = medium.truth_users.filter("is_kids")["user_id"]
    assert 0.04 < kids_users.len() / medium.truth_users.height < 0.12
    ev = medium.events.join(medium.truth_items.select("item_id", "kids"), on="item_id")
    kid = ev.filter(pl.col("user_id").is_in(kids_users.implode()))
    watched = kid.filter(pl.col("action").is_in(["play", "complete"]))
    assert watched["kids"].mean() > 0.95
    assert (kid["surface"] == "kids").mean() > 0.5
    adult = ev.filter(~pl.col("user_id").is_in(kids_users.implode()))
    assert (adult["surface"] == "kids").mean() < 0.1


def test_bursts_merge_into_one_token_and_sessions_do_not(medium: SynthWorld) -> None:
    ev = medium.events
    kept = ev.filter(pl.col("action") != "impression").height
    tokens = _tokens(ev, 1800).height
    # Bursts (trailer → play segments → complete) roll up: far fewer tokens than events…
    assert tokens < 0.5 * kept
    # …no gap inside a burst is near the 30-minute window, and sessions are ≥ 1 h apart.
    assert _tokens(ev, 1800).height == _tokens(ev, 3500).height
    # Every choice is at most one token (inside a session, binges merge too).
    assert tokens <= medium.choices.height


def test_default_size() -> None:
    t0 = time.perf_counter()
    w = synthetic.generate()
    took = time.perf_counter() - t0
    assert w.truth_users.height == 5000 and w.items.height == 2000
    assert 450_000 <= w.events.height <= 550_000
    assert w.events["user_id"].n_unique() == 5000
    assert took < 20, f"default world took {took:.1f} s"


def test_size_scales_with_config(world: SynthWorld) -> None:
    expected = SMALL.n_users * SMALL.events_per_user
    assert 0.8 * expected <= world.events.height <= 1.2 * expected


# ----------------------------------------------------------------------------- signal


def _loo_ndcg(w: SynthWorld, k: int = 10) -> dict[str, float]:
    """Leave-one-out NDCG@k, full ranking, seen items filtered: popularity vs transitions."""
    tok = _tokens(w.events, 1800)
    ids = {s: i for i, s in enumerate(w.items["item_id"].to_list())}
    n = len(ids)
    seqs = [[ids[x] for x in s] for s in
            tok.group_by("user_id", maintain_order=True).agg("item_id")["item_id"].to_list()]
    seqs = [s for s in seqs if len(s) >= 3]
    pop = np.zeros(n)
    trans = np.zeros((n, n))
    for s in seqs:
        train = s[:-1]
        np.add.at(pop, train, 1.0)
        np.add.at(trans, (train[:-1], train[1:]), 1.0)
    scores: dict[str, list[float]] = {"pop": [], "trans": []}
    for s in seqs:
        hist, target = s[:-1], s[-1]
        seen = np.zeros(n, dtype=bool)
        seen[hist] = True
        for name, sc in (("pop", pop), ("trans", trans[hist[-1]] + 1e-3 * pop / pop.max())):
            if seen[target]:
                scores[name].append(0.0)
                continue
            sc = np.where(seen, -np.inf, sc)
            rank = int((sc > sc[target]).sum())
            scores[name].append(1.0 / np.log2(rank + 2) if rank < k else 0.0)
    return {name: float(np.mean(v)) for name, v in scores.items()}


def test_sequences_carry_learnable_transitions(medium: SynthWorld) -> None:
    ndcg = _loo_ndcg(medium)
    assert ndcg["pop"] > 0.005                       # popularity matters…
    assert ndcg["trans"] > 3 * ndcg["pop"], ndcg     # …but what came before matters more


def test_reasons_and_popularity_in_truth(medium: SynthWorld) -> None:
    reasons = dict(medium.choices.group_by("reason").len().iter_rows())
    assert set(reasons) == set(synthetic.REASONS)
    assert reasons["taste"] > 0.3 * medium.choices.height
    # Popular titles (by the hidden popularity) are chosen more often.
    counts = medium.choices.group_by("item_id").len().join(medium.truth_items, on="item_id")
    corr = np.corrcoef(np.log(counts["len"].to_numpy()),
                       counts["log_popularity"].to_numpy())[0, 1]
    assert corr > 0.3


def _modal_gap_share(w: SynthWorld) -> float:
    """Median over users (5+ returns) of the share of their gaps between sessions (> 6 h)
    that fall in their own most frequent log2 bucket: 1.0 is a perfectly regular user."""
    gaps = (w.choices.with_columns((pl.col("timestamp") - pl.col("timestamp").shift(1)
                                    .over("user_id")).alias("gap"))
            .filter(pl.col("gap") > 6 * 3600)
            .with_columns(pl.col("gap").log(2).floor().alias("bucket")))
    per = (gaps.group_by("user_id").agg(pl.col("bucket")).filter(pl.col("bucket").list.len() >= 5)
           .with_columns(pl.col("bucket").list.eval(pl.element() == pl.element().mode().first())
                         .list.mean().alias("share")))
    return float(per["share"].median())


def _completion_spread(w: SynthWorld) -> float:
    """Std over users of their completions per choice."""
    done = w.events.group_by("user_id").agg((pl.col("action") == "complete").sum().alias("c"))
    rate = done.join(w.choices.group_by("user_id").len(), on="user_id")
    return float((rate["c"] / rate["len"]).std())


def test_user_habits_are_opt_in_and_show_in_the_history(medium: SynthWorld) -> None:
    cfg = vars(medium.config)
    habits = synthetic.generate(SynthConfig(**{**cfg, "habit_fraction": 1.0}))
    finishers = synthetic.generate(SynthConfig(**{**cfg, "completion_sigma": 1.0}))
    # Off by default: sessions on uniform days, every user equally likely to finish.
    assert _modal_gap_share(medium) < 0.5
    # Habitual users come back on their cadence: nearly every return in one log2 bucket.
    assert _modal_gap_share(habits) > 0.9
    # Finishers and samplers: completion rates spread further apart across users.
    assert _completion_spread(finishers) > 1.2 * _completion_spread(medium)
    # Each knob draws from its own stream: the catalog and users' numbers of choices stay.
    for other in (habits, finishers):
        assert other.items.equals(medium.items)
        assert other.choices.group_by("user_id").len().sort("user_id").equals(
            medium.choices.group_by("user_id").len().sort("user_id"))
    with pytest.raises(ValueError, match="habit_fraction"):
        synthetic.generate(SynthConfig(habit_fraction=1.5))


def test_tastes_drift(medium: SynthWorld) -> None:
    """Late taste-driven choices move, relative to early ones, towards the final genre mix."""
    cfg = medium.config
    span = cfg.days * 86400
    genre_idx = {g: i for i, g in enumerate(synthetic.GENRES)}
    primary = {i: genre_idx[g] for i, g in
               medium.truth_items.select("item_id", "primary_genre").iter_rows()}
    taste = medium.choices.filter(pl.col("reason") == "taste").with_columns(
        ((pl.col("timestamp") - cfg.start_ts) / span).alias("tau"))
    by_user = dict(taste.group_by("user_id").agg("item_id", "tau").select(
        "user_id", pl.struct("item_id", "tau")).iter_rows())
    moves = []
    for uid, start, end in medium.truth_users.filter(pl.col("drift") > 0.3).select(
            "user_id", "genre_pref_start", "genre_pref_end").iter_rows():
        if uid not in by_user:
            continue
        items, tau = by_user[uid]["item_id"], np.array(by_user[uid]["tau"])
        early = [primary[i] for i, t in zip(items, tau, strict=True) if t < 0.4]
        late = [primary[i] for i, t in zip(items, tau, strict=True) if t > 0.6]
        if len(early) < 2 or len(late) < 2:
            continue
        n_g = len(synthetic.GENRES)
        shift = (np.bincount(late, minlength=n_g) / len(late)
                 - np.bincount(early, minlength=n_g) / len(early))
        moves.append(shift @ (np.array(end) - np.array(start)))
    assert len(moves) > 100
    assert np.mean(np.array(moves) > 0) > 0.55
    assert np.mean(moves) > 0


# ----------------------------------------------------------------------------- files


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_write_load_round_trip_and_identical_bytes(world: SynthWorld, tmp_path: Path) -> None:
    synthetic.write_world(world, tmp_path / "a", SMALL)
    synthetic.write_world(synthetic.generate(SynthConfig(**vars(SMALL))), tmp_path / "b")
    a, b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert set(a) == {"events.parquet", "items.parquet", "world.json", "truth/users.parquet",
                      "truth/items.parquet", "truth/choices.parquet", ".recfm-output.json"}
    assert a == b
    # Re-writing over an existing world replaces it atomically with the same bytes.
    synthetic.write_world(world, tmp_path / "a", SMALL, overwrite=True)
    assert _file_bytes(tmp_path / "a") == a

    assert synthetic.detect(tmp_path / "a")
    assert synthetic.detect(tmp_path / "a" / "world.json")
    assert not synthetic.detect(tmp_path)
    raw = synthetic.load_world(tmp_path / "a")
    assert raw.meta == {"name": "synthetic", "has_time": True, "value_kind": "duration"}
    assert raw.events.drop(LINE).equals(world.events)
    assert raw.items is not None and raw.items.drop(LINE).equals(world.items)
    truth = synthetic.load_truth(tmp_path / "a")
    assert truth["users"].equals(world.truth_users)
    assert truth["items"].equals(world.truth_items)
    meta = json.loads((tmp_path / "a" / "world.json").read_text())
    assert meta["config"]["seed"] == SMALL.seed
    assert meta["counts"]["n_events"] == world.events.height
    assert sum(meta["counts"]["events_by_action"].values()) == world.events.height


def test_different_seed_gives_different_files(world: SynthWorld, tmp_path: Path) -> None:
    cfg = SynthConfig(**{**vars(SMALL), "seed": 99})
    synthetic.write_world(world, tmp_path / "a", SMALL)
    synthetic.write_world(synthetic.generate(cfg), tmp_path / "b", cfg)
    assert (tmp_path / "a" / "events.parquet").read_bytes() != \
        (tmp_path / "b" / "events.parquet").read_bytes()
