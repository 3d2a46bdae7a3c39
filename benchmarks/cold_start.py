"""Cold start and new titles: never-trained items, add-items, incremental training.

    python -m benchmarks.cold_start [--datasets ml-latest-small,synthetic,beauty]
                                    [--minutes 2] [--seed 0] [--threads 2]

Protocol (v2: a per-user time split, so that many test events land on held-out items),
per dataset:

1. Hold out 10% of the items that have events (seeded, uniformly at random).
2. Time split per user: the last 20% of each user's events (by timestamp; at least one)
   are the *test period*, the rest the *training period*. Nothing of the test period is
   ever trained on.
3. Warm models train on the training period with every event on a held-out item removed
   (their catalog lacks them too); the last training-period token of each user validates
   (early stopping only). Same time budget for every method: ``id-only`` (id embeddings
   only), ``id+attributes`` (ids + genre / attribute bag: recfm without content),
   ``content`` (ids + projected MiniLM text — or attribute-bag — vectors, summed: the
   default) and ``content-gate`` (the same, combined by a learned gate).
4. ``add-items`` the held-out items into each run (id init: random / zero / ridge from
   content / nearest content neighbours). Method names: ``content`` is the content run
   with add-items' default (``zero``: content alone); ``id-only`` gets random new ids (what
   an id model does without content); ``id+attributes`` zero ids (attribute bag alone);
   ``<model>/<init>-init`` are the other combinations.
5. Evaluation, every event of the test period ranked from the user's whole history
   before it (the model is not updated during the test period): *cold* = every
   test-period event whose target is a held-out item (all of them, not only each user's
   last: ~20x more events than leave-one-out), *warm* = a seeded sample of at most 5,000
   of the others. Full ranking over every item, the items of the history excluded,
   pessimistic ties (the protocol of ``recfm evaluate``).
   Baselines on the same events: random; ``popularity`` = each item's number of
   training-period events, **the held-out items' events included** — what a live system
   has counted when the test period starts, information the never-trained models are not
   given (the honest strong baseline; it is what the 3x target is measured against);
   ``popularity-day-one`` = the warm training counts only (a never-trained item has no
   count, so it can never be ranked: NDCG 0 on cold events, shown for completeness).
   ``newrow_*``: the cold events ranked *among the new items only* (a "new titles" row).
6. A day of new titles (ML and synthetic): the recent events are the training-period
   tokens on held-out items plus each user's last 10% of training-period tokens.
   Incremental: fine-tune the content run after add-items on them (older tokens as
   context) with the incremental recipe of ``recfm train --incremental``, everything
   (building the recent data, loading, training, final validation) within 10% of a
   full retrain's wall time, enforced. Full retrain: from scratch on the whole training
   period (held-out items included). Both are scored on the same cold test events.
7. add-items speed: 1,000 new titles (a second synthetic catalog, new ids) added to the
   synthetic content run by the ``recfm add-items`` command in a subprocess with an empty
   embedding cache — process start, model load, MiniLM load and text embedding included.

Writes ``benchmarks/results/cold_start.json`` (keys of issue 5 in ``metrics``: runs,
incremental, add_items_1000_s) and its RESULTS.md row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from benchmarks.common import RESULTS, ROOT, SHARED_DATA, peak_rss_mb, write_result
from recfm.data.splits import event_rows, last_token_split
from recfm.evaluate.evaluator import VectorScorer, model_scorer, random_scorer
from recfm.evaluate.metrics import rank_summary
from recfm.evaluate.ranks import target_ranks
from recfm.model.config import ModelConfig
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from recfm.train.config import TrainConfig

log = logging.getLogger("cold_start")

DATASETS = {
    "ml-latest-small": ("ml-latest-small", "movielens", "minilm"),
    "synthetic": (None, "synthetic", "minilm"),
    "beauty": ("s3rec/Beauty.txt", "s3rec", "attributes:256"),
}
SYNTH = dict(n_users=3000, n_items=1500, events_per_user=60.0)
MODEL = {
    "ml-latest-small": dict(d_model=64, n_layers=2, n_heads=2, max_len=100, dropout=0.2),
    "synthetic": dict(d_model=64, n_layers=2, n_heads=2, max_len=50, dropout=0.2),
    "beauty": dict(d_model=64, n_layers=2, n_heads=2, max_len=50, dropout=0.3),
}
TRAIN = dict(epochs=200, batch_size=128, lr=1e-3, warmup_steps=50, patience=10,
             tensorboard=False)
HOLDOUT = 0.10
DEFAULT_CONTENT_INIT = "scaled"  # `recfm add-items` default
RECENT_TAIL = 0.10
TEST_FRACTION = 0.20
INCREMENTAL_VARIANTS = ("init=scaled,replay=1,x:item_encoder.ids=10;init=scaled;init=zero;"
                        "init=scaled,replay=0.3,x:item_encoder.ids=3")
"""Fine-tuning settings compared; the first is the declared recipe: new titles added with
``scaled`` rows, every older training-period token replayed, item id rows at 10x the rate."""
WARM_EVENTS = 5000
K = 10


SEEN: set[str] = set()


def other_benchmarks() -> list[str]:
    """Other benchmark processes on this machine (they share its 2 cores with this one)."""
    out = subprocess.run(["pgrep", "-fa", "[b]enchmarks[.]"], capture_output=True,
                         text=True).stdout.splitlines()
    mine = str(os.getpid())
    found = [line.split(" ", 1)[1] for line in out if line.split(" ", 1)[0] != mine]
    SEEN.update(found)
    return found


# ----------------------------------------------------------------------------- metrics


def summarize(ranks: np.ndarray, prefix: str, seed: int = 0) -> dict[str, float]:
    """HR@10, NDCG@10 (+ a 95% bootstrap interval of NDCG@10) from per-event ranks, keyed
    ``<prefix>_<metric>``."""
    return {f"{prefix}_{k}": v for k, v in rank_summary(ranks, K, seed=seed).items()}


# ----------------------------------------------------------------------------- data


def load_dataset(name: str, data_dir: Path, work: Path, seed: int, smoke: bool = False):
    from recfm.data import synthetic
    from recfm.tokens.prepare import load_raw

    rel, fmt, spec = DATASETS[name]
    if name == "synthetic":
        size = dict(n_users=300, n_items=200, events_per_user=30.0) if smoke else SYNTH
        cfg = synthetic.SynthConfig(seed=seed, **size)
        world = work / "world"
        if not (world / "events.parquet").is_file():
            synthetic.write_world(synthetic.generate(cfg), world, cfg)
        return synthetic.load_world(world), spec
    return load_raw(data_dir / rel, fmt=fmt), spec


def split_items(raw, seed: int) -> list[str]:
    """10% of the items that have events, uniformly at random (seeded)."""
    ids = sorted(raw.events["item_id"].unique().to_list())
    rng = np.random.default_rng([seed, 5])
    n = max(1, int(round(HOLDOUT * len(ids))))
    return sorted(rng.choice(ids, n, replace=False).tolist())


def user_cuts(raw) -> pl.DataFrame:
    """Per user, the time the test period starts: the timestamp of the event at position
    n − ceil(TEST_FRACTION · n) of the user's n events in time order (ties at that
    timestamp fall in the test period)."""
    ev = raw.events.select("user_id", "timestamp").with_row_index("_o") \
        .sort(["user_id", "timestamp", "_o"])
    ev = ev.with_columns(pl.int_range(pl.len()).over("user_id").alias("_r"),
                         pl.len().over("user_id").alias("_n"))
    m = pl.col("_n") - (pl.col("_n").cast(pl.Float64) * TEST_FRACTION).ceil().cast(pl.UInt32)
    return ev.filter(pl.col("_r") == m).select("user_id", pl.col("timestamp").alias("cut"))


def subset_raw(raw, keep_events: pl.Series | None = None, drop_items: list[str] | None = None):
    """A RawDataset of some events (mask) without some items (their events and catalog rows)."""
    from recfm.data.readers import RawDataset

    ev = raw.events if keep_events is None else raw.events.filter(keep_events)
    items = raw.items
    if drop_items:
        ev = ev.filter(~pl.col("item_id").is_in(drop_items))
        items = items.filter(~pl.col("item_id").is_in(drop_items)) if items is not None else None
    return RawDataset(ev, items, raw.events_file, raw.items_file, dict(raw.meta))


def training_period_mask(raw, cuts: pl.DataFrame) -> pl.Series:
    ts = raw.events.select("user_id", "timestamp").join(cuts, on="user_id", how="left",
                                                        maintain_order="left")
    return (ts["timestamp"] < ts["cut"]).fill_null(False)


def new_items_frame(raw, held: list[str]) -> pl.DataFrame:
    """The held-out items' catalog rows (just ids when the dataset has no catalog)."""
    if raw.items is None:
        return pl.DataFrame({"item_id": held})
    return raw.items.filter(pl.col("item_id").is_in(held)).drop("_line")


def sequences_for(raw, run: Path) -> pl.DataFrame:
    """All events tokenized with a run's tokenizer (which must know every item)."""
    from recfm.model.foundation import FoundationModel
    from recfm.tokens.tokenizer import tokenize

    tok = FoundationModel.from_pretrained(run).tokenizer
    return tokenize(raw.events, tok.config, fitted=tok, has_time=tok.has_time).tokens


def test_period_rows(seqs: pl.DataFrame, cuts: pl.DataFrame) -> pl.DataFrame:
    """One row per test-period token with a non-empty history: the whole history before
    it (list columns) and its ``target``; ``pos`` is the token's position."""
    s = seqs.join(cuts, on="user_id", how="inner").with_row_index("_row")
    before = (s.select("_row", "ts", "cut").explode("ts")
              .group_by("_row").agg((pl.col("ts") < pl.col("cut")).sum().alias("_p")))
    s = s.join(before, on="_row", how="left")  # _p: the user's first test-period position
    return event_rows(s, pl.col("_p"))


def eval_events(raw, run: Path, cuts: pl.DataFrame, new_ids: set[str], seed: int
                ) -> tuple[pl.DataFrame, np.ndarray, torch.Tensor]:
    """Test events in a run's vocabulary: cold ones (every one) then a warm sample; the
    cold mask; the new items' indices."""
    from recfm.model.foundation import FoundationModel

    fm = FoundationModel.from_pretrained(run)
    ids = fm.tokenizer.item_ids
    new_idx = torch.tensor(sorted(i + N_RESERVED_ITEMS for i, x in enumerate(ids)
                                  if x in new_ids))
    rows = test_period_rows(sequences_for(raw, run), cuts)
    is_cold = rows["target"].is_in(new_idx.tolist())
    cold, warm = rows.filter(is_cold), rows.filter(~is_cold)
    if warm.height > WARM_EVENTS:
        warm = warm.sample(WARM_EVENTS, seed=seed)
    frame = pl.concat([cold, warm])
    mask = np.zeros(frame.height, dtype=bool)
    mask[:cold.height] = True
    return frame, mask, new_idx


# ----------------------------------------------------------------------------- one dataset


def train_run(prepared: Path, run: Path, model_kw: dict, minutes: float, seed: int,
              threads: int | None, init_from: Path | None = None,
              train_kw: dict | None = None) -> tuple[float, dict]:
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.loop import train

    other_benchmarks()
    shutil.rmtree(run, ignore_errors=True)
    tcfg = TrainConfig(**{**TRAIN, **(train_kw or {}), "seed": seed, "max_minutes": minutes,
                          "threads": threads})
    t0 = time.perf_counter()
    split = None
    if init_from is None:
        split = last_token_split(PreparedDataset.load(prepared).sequences)
    res = train(prepared, run, ModelConfig(**model_kw), tcfg, evaluate_test=False,
                init_from=init_from, split=split)
    wall = time.perf_counter() - t0
    summary = json.loads((run / "summary.json").read_text())
    return wall, {"wall_s": round(wall, 2), "train_s": summary["train_s"],
                  "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                  "valid_ndcg@10": res.best_valid["ndcg@10"]}


def method_label(model: str, init: str) -> str:
    """``content`` = the content model with add-items' default init (content alone)."""
    default = DEFAULT_CONTENT_INIT
    return {("id-only", "random"): "id-only", ("id+attributes", "zero"): "id+attributes",
            ("content", default): "content"}.get((model, init), f"{model}/{init}-init")


def reusable(run: Path, model_kw: dict, prepared: Path) -> dict | None:
    """With --reuse: the training info of an earlier run of the same config on the same
    data (fingerprint of the prepared dataset), if finished."""
    from recfm.train.run import data_fingerprint

    summary, config = run / "summary.json", run / "config.json"
    if not summary.is_file():
        return None
    meta = json.loads(config.read_text())
    if meta.get("data", {}).get("fingerprint") != data_fingerprint(prepared):
        return None
    cfg = meta["model"]
    defaults = ModelConfig()
    keys = ["use_content", "use_item_attributes", "d_model", "max_len", "dropout"]
    if model_kw.get("use_content", True):
        keys += ["content_combine", "id_dropout"]
    for key in keys:
        if cfg.get(key) != model_kw.get(key, getattr(defaults, key)):
            return None
    s = json.loads(summary.read_text())
    log.info("reusing %s (trained earlier, same config)", run)
    return {"wall_s": s["wall_s"], "train_s": s["train_s"], "epochs": s["epochs_run"],
            "best_epoch": s["best_epoch"], "valid_ndcg@10": s["valid"]["ndcg@10"],
            "reused": True}


def evaluate_model(run: Path, test: pl.DataFrame, cold_mask: np.ndarray, new_idx: torch.Tensor,
                   seed: int) -> dict:
    from recfm.model.foundation import FoundationModel

    fm = FoundationModel.from_pretrained(run).eval()
    n, L, cols = fm.cfg.n_items, fm.cfg.max_len, fm.input_columns
    ranks = target_ranks(model_scorer(fm), test, L, cols)
    cand = torch.zeros(n, dtype=torch.bool)
    cand[new_idx] = True
    cold = test.filter(pl.Series(cold_mask))
    row_ranks = target_ranks(model_scorer(fm), cold, L, cols, candidates=cand)
    return {**summarize(ranks[cold_mask], "cold", seed),
            **summarize(ranks[~cold_mask], "warm", seed), **summarize(row_ranks, "newrow", seed)}


def run_dataset(name: str, args, work: Path) -> dict:
    from recfm.adapt.new_items import add_items
    from recfm.content.store import embed_dataset
    from recfm.tokens.prepare import prepare

    t_ds = time.perf_counter()
    raw, spec = load_dataset(name, args.data_dir, work, args.seed, args.smoke)
    if args.embedder:
        spec = args.embedder
    held = split_items(raw, args.seed)
    cuts = user_cuts(raw)
    in_train = training_period_mask(raw, cuts)
    log.info("%s: %d events (%d in the training period), %d held-out items", name,
             raw.events.height, int(in_train.sum()), len(held))
    warm_dir, full_dir = work / "warm", work / "full-train-period"
    prepare(subset_raw(raw, in_train, held), warm_dir, overwrite=True)
    prepare(subset_raw(raw, in_train), full_dir, overwrite=True)
    cache = work.parent / "embedding-cache"
    emb_warm = embed_dataset(warm_dir, spec, cache)
    emb_full = embed_dataset(full_dir, spec, cache)  # the held-out items' texts are new
    new_frame = new_items_frame(raw, held)
    new_file = work / "new_items.parquet"
    new_frame.write_parquet(new_file)

    model_kw = MODEL[name]
    methods = {  # name → (model overrides, add-items inits)
        "id-only": (dict(use_content=False, use_item_attributes=False),
                    ["random", "content", "neighbours"]),
        "id+attributes": (dict(use_content=False), ["zero", "neighbours"]),
        "content": (dict(content_combine="sum"), ["neighbours", "zero", "scaled", "content"]),
        "content-gate": (dict(content_combine="gate"), ["neighbours", "zero"]),
    }
    for m in args.skip_methods.split(","):
        methods.pop(m.strip(), None)
    trains, adds, runs2 = {}, {}, {}
    for method, (over, inits) in methods.items():
        run = work / f"run-{method}"
        info = reusable(run, {**model_kw, **over}, warm_dir) if args.reuse else None
        if info is None:
            wall, info = train_run(warm_dir, run, {**model_kw, **over}, args.minutes, args.seed,
                                   args.threads)
        trains[method] = info
        log.info("%s %s: %s", name, method, info)
        for init in inits:
            out = work / f"run-{method}-add-{init}"
            emb = None if over.get("use_content", True) else spec
            rep = add_items(run, new_file, out, init=init, embedder=emb, cache_dir=cache,
                            overwrite=True)
            adds[f"{method}/{init}"] = {k: rep[k] for k in ("added", "wall_s", "embed_s",
                                                            "attribute_values_unknown")}
            runs2[(method, init)] = out

    # evaluation events in the new runs' vocabulary (every run2 shares it: warm items, then
    # the held-out ones appended in the same order)
    some_run2 = runs2[("content", DEFAULT_CONTENT_INIT)]
    test, cold_mask, new_idx = eval_events(raw, some_run2, cuts, set(held), args.seed)
    from recfm.model.foundation import FoundationModel
    n_items = FoundationModel.from_pretrained(some_run2).cfg.n_items
    n_warm_items = n_items - len(held)
    assert int(new_idx.min()) == n_warm_items

    results = []
    # baselines: training-period counts in the run2 vocabulary (day one: warm events only)
    train_seqs = sequences_for(subset_raw(raw, in_train), some_run2)
    counts = np.bincount(train_seqs["item"].explode().to_numpy(), minlength=n_items)[:n_items]
    day_one = counts.copy()
    day_one[n_warm_items:] = 0
    cand = torch.zeros(n_items, dtype=torch.bool)
    cand[new_idx] = True
    cold_frame = test.filter(pl.Series(cold_mask))
    baselines = (
        ("random", random_scorer(n_items, args.seed), random_scorer(n_items, args.seed + 1),
         None),
        ("popularity", VectorScorer(torch.from_numpy(counts.astype(np.float32))), None,
         "training-period event counts of every item, the held-out items' included (what a "
         "live system has counted when the test period starts; the never-trained models "
         "are not given them)"),
        ("popularity-day-one", VectorScorer(torch.from_numpy(day_one.astype(np.float32))),
         None,
         "warm training counts only: a never-trained item has none, so it is never ranked"),
    )
    for method, fn, row_fn, note in baselines:
        ranks = target_ranks(fn, test, 200, ["item"])
        row = target_ranks(row_fn or fn, cold_frame, 200, ["item"], candidates=cand)
        m = {**summarize(ranks[cold_mask], "cold", args.seed),
             **summarize(ranks[~cold_mask], "warm", args.seed),
             **summarize(row, "newrow", args.seed)}
        results.append({"dataset": name, "method": method, "seed": args.seed, "metrics": m,
                        **({"note": note} if note else {})})
    for (method, init), run2 in runs2.items():
        m = evaluate_model(run2, test, cold_mask, new_idx, args.seed)
        label = method_label(method, init)
        results.append({"dataset": name, "method": label, "seed": args.seed, "metrics": m,
                        "train": trains[method], "add_items": adds[f"{method}/{init}"],
                        "model": method, "init": init})
        log.info("%s %s: cold ndcg %.4f warm ndcg %.4f newrow %.4f", name, label,
                 m["cold_ndcg@10"], m["warm_ndcg@10"], m["newrow_ndcg@10"])

    # sanity: the per-event ranks agree with recfm's evaluator on the warm events
    from recfm.evaluate.evaluator import evaluate_scorer, model_scorer
    fm_c = FoundationModel.from_pretrained(some_run2)
    ref = evaluate_scorer(model_scorer(fm_c), test.filter(pl.Series(~cold_mask)), n_items,
                          fm_c.cfg.max_len, fm_c.input_columns)
    ours = next(r for r in results if r["method"] == "content")["metrics"]["warm_ndcg@10"]
    check = {"evaluator_warm_ndcg@10": ref["ndcg@10"], "benchmark_warm_ndcg@10": ours}

    out = {"runs": results, "trains": trains, "check_against_evaluator": check,
           "held_out_items": len(held), "items": int(raw.events["item_id"].n_unique()),
           "events": raw.events.height, "training_period_events": int(in_train.sum()),
           "test_events_cold": int(cold_mask.sum()), "test_events_warm_sampled":
           int((~cold_mask).sum()), "embedder": spec, "protocol": "v2-time-split",
           "embedding": {"warm": emb_warm, "full": emb_full}, "model_config": model_kw,
           "minutes_per_model": args.minutes}

    # a day of new titles: incremental vs full retrain
    if not args.no_incremental and name != "beauty":
        out["incremental"] = incremental(name, args, work, raw, in_train, cuts, held,
                                         some_run2, runs2, full_dir, model_kw, test, cold_mask,
                                         new_idx, n_warm_items)
    out["wall_s"] = round(time.perf_counter() - t_ds, 1)
    return out


def recent_dataset(run2: Path, train_seqs: pl.DataFrame, n_warm_items: int, out: Path,
                   replay: float = 0.0, seed: int = 0) -> int:
    """The recent events as an incremental dataset of ``run2``: training-period tokens on new
    items, plus each user's last RECENT_TAIL of tokens, are ``fresh``; the rest is context,
    except a ``replay`` fraction of it drawn at random, also trained on (replay of older
    events: the recent window over-represents the new items, and a model fine-tuned on it
    alone learns to recommend them far more often than they are chosen)."""
    from recfm.io import atomic_dir
    from recfm.model.foundation import FoundationModel

    rng = np.random.default_rng([seed, 11])
    n = pl.col("length")
    tail = (n.cast(pl.Float64) * RECENT_TAIL).ceil().cast(pl.Int64)

    def flags(r: dict) -> list[int]:
        draw = rng.random(len(r["new"])) < replay
        return [int(a or j >= r["t"] or bool(draw[j])) for j, a in enumerate(r["new"])]

    seqs = train_seqs.with_columns(
        pl.struct(new=pl.col("item").list.eval(pl.element() >= n_warm_items), t=n - tail)
        .map_elements(flags, return_dtype=pl.List(pl.Int8)).alias("fresh"))
    seqs = seqs.filter(pl.col("fresh").list.sum() > 0)
    fm2 = FoundationModel.from_pretrained(run2)
    with atomic_dir(out, "prepared", overwrite=True) as tmp:
        seqs.write_parquet(tmp / "tokens.parquet")
        fm2.items.write_parquet(tmp / "items.parquet")
        fm2.tokenizer.save(tmp / "tokenizer.json")
    return int(seqs["fresh"].list.sum().sum())


def incremental(name, args, work, raw, in_train, cuts, held, some_run2, runs2, full_dir,
                model_kw, test, cold_mask, new_idx, n_warm_items) -> dict:
    """Fine-tune an add-items run on the recent events within 10% of a full retrain's time
    (everything counted) vs a full retrain from scratch; both on the same cold events."""
    from recfm.adapt.incremental import INCREMENTAL_TRAIN

    full_run = work / "run-full-retrain"
    full_info = reusable(full_run, {**model_kw}, full_dir) if args.reuse else None
    if full_info is None:
        _, full_info = train_run(full_dir, full_run, {**model_kw}, args.minutes, args.seed,
                                 args.threads)
    full_wall = full_info["wall_s"]
    full_test, full_cold, full_new = eval_events(raw, full_run, cuts, set(held), args.seed)
    full_m = evaluate_model(full_run, full_test, full_cold, full_new, args.seed)
    budget_s = args.incremental_fraction * full_wall
    train_seqs = sequences_for(subset_raw(raw, in_train), some_run2)

    # an untimed one-step fine-tune first: one-time process costs (imports, kernel set-up)
    # are then charged to no variant, as none were to the full retrain (timed after other
    # trainings in the same process); with --reuse nothing else has trained before this
    warm_dir = work / "incremental-warmup-data"
    shutil.rmtree(warm_dir, ignore_errors=True)
    recent_dataset(some_run2, train_seqs, n_warm_items, warm_dir, 0.0, args.seed)
    train_run(warm_dir, work / "run-incremental-warmup", {}, 0.001, args.seed, args.threads,
              init_from=some_run2, train_kw={**INCREMENTAL_TRAIN, "epochs": 1})

    results = []
    for variant in args.incremental_variants.split(";"):
        kw = dict(x.split("=", 1) for x in variant.split(",") if x)
        init = kw.pop("init", DEFAULT_CONTENT_INIT)
        replay = float(kw.pop("replay", 0.0))
        run2 = runs2[("content", init)]
        before = evaluate_model(run2, test, cold_mask, new_idx, args.seed)
        scales = {k[2:]: float(v) for k, v in kw.items() if k.startswith("x:")}
        train_kw = {**INCREMENTAL_TRAIN, **{k: float(v) if k != "epochs" else int(v)
                                            for k, v in kw.items() if not k.startswith("x:")}}
        if scales:
            train_kw["lr_scales"] = {**train_kw.get("lr_scales", {}), **scales}
        t0 = time.perf_counter()
        inc_dir = work / "incremental-data"
        shutil.rmtree(inc_dir, ignore_errors=True)
        n_fresh = recent_dataset(run2, train_seqs, n_warm_items, inc_dir, replay,
                                 args.seed)
        build_s = time.perf_counter() - t0
        # what is left of the budget after building the data, less the fixed cost of a
        # train() call (loading, the final validation), estimated from a first call that
        # is not timed against the budget would be cheating: take it from the full run
        # (its wall minus its training time) and keep a 15% margin
        overhead = full_wall - full_info["train_s"]
        train_budget = max((budget_s - build_s - overhead) * 0.85, 0.5)
        inc_run = work / f"run-incremental-{variant.replace(',', '_').replace('=', '')}"
        inc_wall, inc_info = train_run(inc_dir, inc_run, {}, train_budget / 60.0, args.seed,
                                       args.threads, init_from=run2, train_kw=train_kw)
        inc_s = build_s + inc_wall
        inc_m = evaluate_model(inc_run, test, cold_mask, new_idx, args.seed)
        results.append({
            "dataset": name, "variant": variant or "default",
            "new_item_ndcg@10": inc_m["cold_ndcg@10"],
            "full_retrain_new_item_ndcg@10": full_m["cold_ndcg@10"],
            "before_incremental_new_item_ndcg@10": before["cold_ndcg@10"],
            "ratio_vs_full_retrain": inc_m["cold_ndcg@10"] / max(full_m["cold_ndcg@10"], 1e-12),
            "incremental_s": round(inc_s, 2), "full_retrain_s": round(full_wall, 2),
            "time_fraction": round(inc_s / full_wall, 4),
            "within_time_limit": bool(inc_s <= budget_s),
            "warm_ndcg@10": inc_m["warm_ndcg@10"],
            "full_retrain_warm_ndcg@10": full_m["warm_ndcg@10"],
            "before_incremental_warm_ndcg@10": before["warm_ndcg@10"],
            "new_item_hr@10": inc_m["cold_hr@10"],
            "full_retrain_new_item_hr@10": full_m["cold_hr@10"],
            "new_item_ndcg@10_ci95": inc_m["cold_ndcg@10_ci95"],
            "full_retrain_new_item_ndcg@10_ci95": full_m["cold_ndcg@10_ci95"],
            "new_item_newrow_ndcg@10": inc_m["newrow_ndcg@10"],
            "full_retrain_newrow_ndcg@10": full_m["newrow_ndcg@10"],
            "full_retrain_cold_events": full_m["cold_events"],
            "incremental_cold_events": inc_m["cold_events"],
            "recent_tokens": n_fresh, "build_s": round(build_s, 2), "init": init,
            "replay": replay,
            "incremental_train_config": train_kw,
            "incremental_train": inc_info, "full_retrain_train": full_info,
            "budget_s": round(budget_s, 2),
        })
        log.info("%s incremental %s: new-item ndcg %.4f vs full %.4f (%.0f%%) in %.1fs = %.1f%%",
                 name, variant or "default", inc_m["cold_ndcg@10"], full_m["cold_ndcg@10"],
                 100 * results[-1]["ratio_vs_full_retrain"], inc_s, 100 * inc_s / full_wall)
    # the first variant listed is the declared setting; the others are variants
    return {**results[0], "variants": results[1:]}


# ----------------------------------------------------------------------------- add-items speed


def add_items_speed(work: Path, seed: int, content_run: Path) -> dict:
    """``recfm add-items`` of 1,000 new titles in a subprocess, with an empty cache."""
    from recfm.data import synthetic

    cfg = synthetic.SynthConfig(seed=seed + 1000, n_users=200, n_items=1000,
                                events_per_user=5.0)
    items = synthetic.generate(cfg).items.with_columns(
        ("new-" + pl.col("item_id")).alias("item_id"))
    path = work / "new_1000.parquet"
    items.write_parquet(path)
    cache = work / "empty-cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = work / "run-add-1000"
    recfm = Path(sys.executable).parent / "recfm"
    cmd = [str(recfm), "add-items", str(content_run), "--items", str(path), "--out", str(out),
           "--cache", str(cache)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"add-items failed: {proc.stderr}")
    rep = json.loads((out / "config.json").read_text())["added_items"][-1]
    # a second run of the same command hits the cache
    out2 = work / "run-add-1000-again"
    t1 = time.perf_counter()
    subprocess.run(cmd[:-3] + [str(out2), "--cache", str(cache)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    again = time.perf_counter() - t1
    return {"add_items_1000_s": round(wall, 2), "in_process_s": rep["wall_s"],
            "embed_s": rep["embed_s"], "added": rep["added"],
            "second_run_cached_s": round(again, 2), "command": " ".join(
                ["recfm", "add-items", "RUN", "--items", "new_1000.parquet", "--out", "RUN2",
                 "--cache", "EMPTY_DIR"])}


# ----------------------------------------------------------------------------- main


def results_table(per_all: dict, speed: dict | None) -> str:
    """Markdown: cold / new-titles-row / warm NDCG@10 per dataset and method; incremental."""
    lines = ["| dataset (protocol) | method | cold NDCG@10 [95% CI] | cold HR@10 | cold events "
             "| new-titles row NDCG@10 | warm NDCG@10 |", "|---|---|---|---|---|---|---|"]
    for name, d in per_all.items():
        for r in d["runs"]:
            m = r["metrics"]
            ci = m.get("cold_ndcg@10_ci95") or [float("nan")] * 2
            lines.append(f"| {name} ({d['protocol'][:2]}) | {r['method']} | "
                         f"{m['cold_ndcg@10']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | "
                         f"{m['cold_hr@10']:.4f} | {m['cold_events']} | "
                         f"{m.get('newrow_ndcg@10', float('nan')):.4f} | "
                         f"{m['warm_ndcg@10']:.4f} |")
    lines += ["", "| dataset | incremental setting | new-item NDCG@10 | full retrain | ratio "
              "| time (s) | full retrain (s) | time fraction | warm NDCG@10 (inc / full) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, d in per_all.items():
        inc = d.get("incremental")
        for v in ([inc] + inc.get("variants", [])) if inc else []:
            lines.append(
                f"| {name} | {v.get('variant', v.get('incremental_lr'))} | "
                f"{v['new_item_ndcg@10']:.4f} | {v['full_retrain_new_item_ndcg@10']:.4f} | "
                f"{v['ratio_vs_full_retrain']:.2f} | {v['incremental_s']:.1f} | "
                f"{v['full_retrain_s']:.1f} | {v['time_fraction']:.3f} | "
                f"{v['warm_ndcg@10']:.4f} / {v['full_retrain_warm_ndcg@10']:.4f} |")
    if speed:
        lines += ["", f"add-items of 1,000 new titles (subprocess, empty cache): "
                      f"{speed['add_items_1000_s']} s; again with the cache: "
                      f"{speed['second_run_cached_s']} s."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,synthetic,beauty")
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--incremental-fraction", type=float, default=0.10)
    ap.add_argument("--incremental-variants", default=INCREMENTAL_VARIANTS,
                    help="';'-separated fine-tuning settings, each 'key=value,...' over "
                         "recfm.adapt.incremental.INCREMENTAL_TRAIN (+ init=<add-items init>, "
                         "x:<param prefix>=<lr scale>); "
                         "the first is the headline, '' = the defaults")
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--skip-methods", default="", help="comma list of warm models not to train")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished warm-data runs of the same config from --work")
    ap.add_argument("--smoke", action="store_true", help="a tiny synthetic world (a test run)")
    ap.add_argument("--embedder", default=None, help="override every dataset's embedder")
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "cold_start")
    ap.add_argument("--note", default="", help="recorded in extra (e.g. machine contention)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    per = {}
    for name in names:
        per[name] = run_dataset(name, args, args.work / name)
    speed = None
    if "synthetic" in per:
        speed = add_items_speed(args.work / "synthetic", args.seed,
                                args.work / "synthetic" / "run-content")

    if args.smoke:  # a test run: nothing is recorded
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("runs", "embedding")}
                          for k, v in per.items()}, indent=1, default=str))
        print(json.dumps({r["method"]: round(r["metrics"]["cold_ndcg@10"], 4)
                          for d in per.values() for r in d["runs"]}))
        return
    # merge with an earlier result for datasets not re-run now
    path = RESULTS / "cold_start.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old_per = old.get("extra", {}).get("per_dataset", {})
    per_all = {**{k: v for k, v in old_per.items() if k not in per}, **per}
    for d in per_all.values():  # results of the first protocol kept from an earlier run
        d.setdefault("protocol", "v1-leave-one-out (an earlier invocation, not re-run)")
    runs = [r for d in per_all.values() for r in d["runs"]]
    for d in per_all.values():  # v2 labels follow the current add-items default; v1 results
        if d["protocol"].startswith("v2"):  # keep theirs (then: ``content`` = zero init)
            for r in d["runs"]:
                if "model" in r:
                    r["method"] = method_label(r["model"], r["init"])
    incs = [d["incremental"] for d in per_all.values() if "incremental" in d]
    if speed is None:
        speed = old.get("extra", {}).get("add_items_speed")
    metrics: dict = {"runs": runs, "incremental": incs[0] if incs else None,
                     "incremental_all": incs,
                     "add_items_1000_s": speed["add_items_1000_s"] if speed else None}
    for name, d in per_all.items():  # headline numbers for the RESULTS.md table
        by = {r["method"]: r["metrics"] for r in d["runs"]}
        short = {"ml-latest-small": "ml", "synthetic": "synth", "beauty": "beauty"}[name]
        metrics[f"{short}_cold_ndcg@10_content"] = by["content"]["cold_ndcg@10"]
        metrics[f"{short}_cold_ndcg@10_popularity"] = by["popularity"]["cold_ndcg@10"]
        if d["protocol"].startswith("v2"):
            metrics[f"{short}_cold_events"] = by["content"]["cold_events"]
            metrics[f"{short}_cold_content_over_popularity"] = (
                by["content"]["cold_ndcg@10"] / max(by["popularity"]["cold_ndcg@10"], 1e-12))
        metrics[f"{short}_warm_ndcg@10_content"] = by["content"]["warm_ndcg@10"]
        metrics[f"{short}_warm_ndcg@10_id+attributes"] = by["id+attributes"]["warm_ndcg@10"]
    extra = {"per_dataset": per_all, "add_items_speed": speed,
             "protocol": __doc__.split("Writes")[0].strip(),
             "train_config": TRAIN, "minutes_per_model": args.minutes,
             "note": args.note, "peak_rss_mb": peak_rss_mb(),
             "contention_at_end": other_benchmarks(), "contention_seen": sorted(SEEN)}
    p = write_result("cold_start", ",".join(per_all), args.seed, time.perf_counter() - t0,
                     metrics, extra, table_md=results_table(per_all, speed))
    print(json.dumps({k: v for k, v in json.loads(p.read_text())["metrics"].items()
                      if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
