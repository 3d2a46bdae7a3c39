"""Cold start and new titles: never-trained items, add-items, incremental training.

    python -m benchmarks.cold_start [--datasets ml-latest-small,synthetic,beauty]
                                    [--minutes 3] [--seed 0] [--threads 2]

Protocol, per dataset:

1. Hold out 10% of the items that have events (seeded, uniformly at random): every event
   on them is removed; the catalog used for training lacks them too.
2. Train on the rest ("warm" data; leave-one-out validation for early stopping), with
   the same time budget for every method: ``id-only`` (id embeddings only),
   ``id+attributes`` (ids + genre / attribute bag: recfm's model without content),
   ``content`` (ids + projected MiniLM text — or attribute-bag — vectors, summed: the
   default), and ``content-gate`` (the same, combined by a learned gate).
3. ``add-items`` the held-out items into each run (id init: random / zero / ridge from
   content / nearest content neighbours). Method names: ``content`` is the content run
   with add-items' default (``zero``: content alone); ``id-only`` gets random new ids (what
   an id model does without content); ``id+attributes`` zero ids (attribute bag alone);
   ``<model>/<init>-init`` are the other combinations.
4. Evaluate on the **full** data's leave-one-out test events (tokenized with the new
   run's tokenizer): *cold* = test events whose target is a held-out item, *warm* = the
   others. Full ranking over every item, seen items excluded, pessimistic ties (the
   protocol of ``recfm evaluate``). Baselines on the same events: random and popularity
   (training counts — zero for never-trained items). Because popularity cannot rank a
   never-trained item at all, the cold events are also ranked *among the new items only*
   ("new-titles row", ``newrow_*``) against popularity with **oracle** counts of the new
   items (their real number of training-period events: information no system has on
   day one).
5. A day of new titles (ML and synthetic): the recent events are the full data's
   training tokens on held-out items plus each user's last 10% of training tokens.
   Incremental: fine-tune the content run after add-items on them (older tokens as
   context) for at most 10% of a full retrain's wall time. Full retrain: train from
   scratch on all training tokens (held-out items included). Both are scored on the same
   cold test events.
6. add-items speed: 1,000 new titles (a second synthetic catalog, new ids) added to the
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
from recfm.batching import SequenceStore, history_batches
from recfm.evaluate.metrics import ranks_of
from recfm.model.config import ModelConfig
from recfm.tokenizer import N_RESERVED_ITEMS
from recfm.train.loop import TrainConfig

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
DEFAULT_CONTENT_INIT = "zero"  # `recfm add-items` default
RECENT_TAIL = 0.10
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


def event_ranks(score_fn, frame: pl.DataFrame, n_items: int, max_len: int, columns: list[str],
                candidates: torch.Tensor | None = None, batch_size: int = 256) -> np.ndarray:
    """0-based pessimistic rank of each row's target (the evaluator's protocol), per event.

    ``candidates``: (n_items,) bool — rank among these items only (None: every item).
    """
    store = SequenceStore(frame, columns)
    targets = torch.from_numpy(frame["target"].to_numpy().astype(np.int64))
    out = np.zeros(len(store), dtype=np.int64)
    with torch.no_grad():
        for rows, batch in history_batches(store, max_len, batch_size, by_length=True):
            scores = score_fn(rows, batch).float().clone()  # (B, V)
            scores[:, :N_RESERVED_ITEMS] = float("-inf")
            b, items = store.history_items(rows)
            scores[torch.from_numpy(b), torch.from_numpy(items)] = float("-inf")
            if candidates is not None:
                scores[:, ~candidates] = float("-inf")
            out[rows] = ranks_of(scores, targets[rows]).numpy()
    return out


def summarize(ranks: np.ndarray, prefix: str, seed: int = 0) -> dict[str, float]:
    """HR@10, NDCG@10 (+ a 95% bootstrap interval of NDCG@10) from per-event ranks."""
    if len(ranks) == 0:
        return {f"{prefix}_events": 0}
    ndcg = np.where(ranks < K, 1.0 / np.log2(ranks + 2.0), 0.0)
    rng = np.random.default_rng(seed)
    boot = ndcg[rng.integers(0, len(ndcg), (1000, len(ndcg)))].mean(1)
    return {f"{prefix}_ndcg@10": float(ndcg.mean()), f"{prefix}_hr@10": float((ranks < K).mean()),
            f"{prefix}_ndcg@10_ci95": [float(np.quantile(boot, 0.025)),
                                       float(np.quantile(boot, 0.975))],
            f"{prefix}_events": int(len(ranks))}


def model_fn(model):
    model.eval()
    return lambda rows, batch: model.score(model.last_hidden(batch))


def constant_fn(vec: torch.Tensor):
    return lambda rows, batch: vec.expand(len(rows), -1)


def random_fn(n_items: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda rows, batch: torch.rand(len(rows), n_items, generator=g)


# ----------------------------------------------------------------------------- data


def load_dataset(name: str, data_dir: Path, work: Path, seed: int, smoke: bool = False):
    from recfm.data import synthetic
    from recfm.prepare import load_raw

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


def warm_raw(raw, held: list[str]):
    from recfm.data.readers import RawDataset

    keep_ev = ~raw.events["item_id"].is_in(held)
    items = raw.items.filter(~pl.col("item_id").is_in(held)) if raw.items is not None else None
    return RawDataset(raw.events.filter(keep_ev), items, raw.events_file, raw.items_file,
                      dict(raw.meta))


def new_items_frame(raw, held: list[str]) -> pl.DataFrame:
    """The held-out items' catalog rows (just ids when the dataset has no catalog)."""
    if raw.items is None:
        return pl.DataFrame({"item_id": held})
    return raw.items.filter(pl.col("item_id").is_in(held)).drop("_line")


def full_sequences(raw, run: Path) -> pl.DataFrame:
    """All events tokenized with a run's tokenizer (which knows the held-out items)."""
    from recfm.tokenizer import tokenize

    from recfm.model.foundation import FoundationModel

    fm = FoundationModel.from_pretrained(run)
    tok = fm.tokenizer
    return tokenize(raw.events, tok.config, fitted=tok, has_time=tok.has_time).tokens


# ----------------------------------------------------------------------------- one dataset


def train_run(prepared: Path, run: Path, model_kw: dict, minutes: float, seed: int,
              threads: int | None, init_from: Path | None = None,
              train_kw: dict | None = None) -> tuple[float, dict]:
    from recfm.train.loop import train

    other_benchmarks()
    shutil.rmtree(run, ignore_errors=True)
    tcfg = TrainConfig(**{**TRAIN, **(train_kw or {}), "seed": seed, "max_minutes": minutes,
                          "threads": threads})
    t0 = time.perf_counter()
    res = train(prepared, run, ModelConfig(**model_kw), tcfg, evaluate_test=False,
                init_from=init_from)
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


def reusable(run: Path, model_kw: dict) -> dict | None:
    """With --reuse: the training info of an earlier run of the same config, if finished."""
    summary, config = run / "summary.json", run / "config.json"
    if not summary.is_file():
        return None
    cfg = json.loads(config.read_text())["model"]
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

    fm = FoundationModel.from_pretrained(run)
    n, L, cols = fm.cfg.n_items, fm.cfg.max_len, fm.input_columns
    ranks = event_ranks(model_fn(fm), test, n, L, cols)
    cand = torch.zeros(n, dtype=torch.bool)
    cand[new_idx] = True
    cold = test.filter(pl.Series(cold_mask))
    row_ranks = event_ranks(model_fn(fm), cold, n, L, cols, candidates=cand)
    return {**summarize(ranks[cold_mask], "cold", seed), **summarize(ranks[~cold_mask], "warm", seed),
            **summarize(row_ranks, "newrow", seed)}


def run_dataset(name: str, args, work: Path) -> dict:
    from recfm.adapt.new_items import add_items
    from recfm.content.store import embed_dataset
    from recfm.data.splits import leave_one_out
    from recfm.prepare import PreparedDataset, prepare

    t_ds = time.perf_counter()
    raw, spec = load_dataset(name, args.data_dir, work, args.seed, args.smoke)
    if args.embedder:
        spec = args.embedder
    held = split_items(raw, args.seed)
    log.info("%s: %d events, %d held-out items", name, raw.events.height, len(held))
    warm_dir, full_dir = work / "warm", work / "full"
    prepare(warm_raw(raw, held), warm_dir)
    prepare(raw, full_dir)
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
        "content": (dict(content_combine="sum"), ["neighbours", "zero", "content"]),
        "content-gate": (dict(content_combine="gate"), ["neighbours", "zero"]),
    }
    if args.quick:
        methods.pop("content-gate")
    trains, adds, runs2 = {}, {}, {}
    for method, (over, inits) in methods.items():
        run = work / f"run-{method}"
        info = reusable(run, {**model_kw, **over}) if args.reuse else None
        if info is None:
            wall, info = train_run(warm_dir, run, {**model_kw, **over}, args.minutes, args.seed,
                                   args.threads)
        trains[method] = info
        log.info("%s %s: %s", name, method, info)
        for init in inits:
            out = work / f"run-{method}-add-{init}"
            emb = None if over.get("use_content", True) else spec
            rep = add_items(run, new_file, out, init=init, embedder=emb, cache_dir=cache)
            adds[f"{method}/{init}"] = {k: rep[k] for k in ("added", "wall_s", "embed_s",
                                                            "attribute_values_unknown")}
            runs2[(method, init)] = out

    # evaluation events: the full data's leave-one-out test, in the new runs' vocabulary
    some_run2 = next(iter(runs2.values()))
    seqs = full_sequences(raw, some_run2)
    split = leave_one_out(seqs)
    test = split.test
    from recfm.model.foundation import FoundationModel
    fm2 = FoundationModel.from_pretrained(some_run2)
    n_items = fm2.cfg.n_items
    n_warm_items = n_items - len(held)
    cold_mask = (test["target"].to_numpy() >= n_warm_items)
    new_idx = torch.arange(n_warm_items, n_items)

    results = []
    # baselines
    warm_train = leave_one_out(PreparedDataset.load(warm_dir).sequences).train
    counts = np.bincount(warm_train["item"].explode().to_numpy(), minlength=n_items)[:n_items]
    pop = torch.from_numpy(counts.astype(np.float32))
    oracle = np.bincount(split.train["item"].explode().to_numpy(), minlength=n_items)[:n_items]
    oracle_pop = torch.from_numpy(oracle.astype(np.float32))
    cols = ["item"]
    for method, fn, row_fn in (("random", random_fn(n_items, args.seed),
                                random_fn(n_items, args.seed + 1)),
                               ("popularity", constant_fn(pop), constant_fn(oracle_pop))):
        ranks = event_ranks(fn, test, n_items, 200, cols)
        cand = torch.zeros(n_items, dtype=torch.bool)
        cand[new_idx] = True
        row = event_ranks(row_fn, test.filter(pl.Series(cold_mask)), n_items, 200, cols,
                          candidates=cand)
        m = {**summarize(ranks[cold_mask], "cold", args.seed),
             **summarize(ranks[~cold_mask], "warm", args.seed),
             **summarize(row, "newrow", args.seed)}
        note = "newrow uses oracle counts of the new items" if method == "popularity" else None
        results.append({"dataset": name, "method": method, "seed": args.seed, "metrics": m,
                        **({"note": note} if note else {})})
    for (method, init), run2 in runs2.items():
        m = evaluate_model(run2, test, cold_mask, new_idx, args.seed)
        label = method_label(method, init)
        results.append({"dataset": name, "method": label, "seed": args.seed, "metrics": m,
                        "train": trains[method], "add_items": adds[f"{method}/{init}"],
                        "model": method, "init": init})
        log.info("%s %s: cold ndcg %.4f warm ndcg %.4f", name, label, m["cold_ndcg@10"],
                 m["warm_ndcg@10"])

    # sanity: the per-event ranks agree with recfm's evaluator on the warm events
    from recfm.evaluate.evaluator import evaluate_scorer, model_scorer
    fm_c = FoundationModel.from_pretrained(runs2[("content", DEFAULT_CONTENT_INIT)])
    ref = evaluate_scorer(model_scorer(fm_c), test.filter(pl.Series(~cold_mask)), n_items,
                          fm_c.cfg.max_len, fm_c.input_columns)
    ours = next(r for r in results if r["method"] == "content")["metrics"]["warm_ndcg@10"]
    check = {"evaluator_warm_ndcg@10": ref["ndcg@10"], "benchmark_warm_ndcg@10": ours}

    out = {"runs": results, "trains": trains, "check_against_evaluator": check,
           "held_out_items": len(held), "items": int(raw.events["item_id"].n_unique()),
           "events": raw.events.height, "test_events": test.height,
           "cold_test_events": int(cold_mask.sum()), "embedder": spec,
           "embedding": {"warm": emb_warm, "full": emb_full}, "model_config": model_kw}

    # a day of new titles: incremental vs full retrain
    if not args.no_incremental and name != "beauty":
        out["incremental"] = incremental(name, args, work, raw, seqs, split, runs2[
            ("content", args.incremental_init)], full_dir, model_kw, cold_mask, new_idx,
            n_warm_items)
    out["wall_s"] = round(time.perf_counter() - t_ds, 1)
    return out


def incremental(name, args, work, raw, seqs, split, run2, full_dir, model_kw, cold_mask,
                new_idx, n_warm_items) -> dict:
    """Fine-tune run2 on the recent events (≤ 10% of a full retrain's time) vs full retrain."""
    from recfm.data.splits import leave_one_out
    from recfm.prepare import PreparedDataset

    # full retrain from scratch on every training token (held-out items included)
    full_run = work / "run-full-retrain"
    full_info = reusable(full_run, {**model_kw}) if args.reuse else None
    if full_info is None:
        full_wall, full_info = train_run(full_dir, full_run, {**model_kw}, args.minutes,
                                         args.seed, args.threads)
    full_wall = full_info["wall_s"]
    full_ds = PreparedDataset.load(full_dir)
    full_split = leave_one_out(full_ds.sequences)
    held_ids = set(pl.read_parquet(work / "new_items.parquet")["item_id"].to_list())
    idx_of = dict(zip(full_ds.items["item_id"].to_list(), full_ds.items["idx"].to_list()))
    full_new = torch.tensor(sorted(idx_of[i] for i in held_ids if i in idx_of))
    full_test = full_split.test
    full_cold = np.isin(full_test["target"].to_numpy(), full_new.numpy())
    full_m = evaluate_model(full_run, full_test, full_cold, full_new, args.seed)

    # recent events: training tokens on new items + each user's last 10% of training tokens
    t0 = time.perf_counter()
    train = split.train
    lengths = train["length"]
    tail = (lengths.cast(pl.Float64) * RECENT_TAIL).ceil().cast(pl.Int32)
    fresh = train.select(
        ((pl.col("item").list.eval(pl.element() >= n_warm_items))
         .alias("new"))).with_columns(pl.Series("tail", tail), pl.Series("len", lengths))
    fresh_lists = [
        [1 if (is_new or j >= n - t) else 0 for j, is_new in enumerate(flags)]
        for flags, t, n in zip(fresh["new"].to_list(), fresh["tail"].to_list(),
                               fresh["len"].to_list())]
    inc_seqs = train.with_columns(pl.Series("fresh", fresh_lists, dtype=pl.List(pl.Int8)))
    inc_seqs = inc_seqs.filter(pl.col("fresh").list.sum() > 0)
    inc_dir = work / "incremental-data"
    from recfm.io import atomic_dir
    from recfm.model.foundation import FoundationModel
    fm2 = FoundationModel.from_pretrained(run2)
    with atomic_dir(inc_dir) as tmp:
        inc_seqs.write_parquet(tmp / "tokens.parquet")
        fm2.items.write_parquet(tmp / "items.parquet")
        fm2.tokenizer.save(tmp / "tokenizer.json")
    build_s = time.perf_counter() - t0
    # the budget: 10% of the full retrain's wall time, less building the recent data and
    # the fixed cost of a train() call (loading, final validation: the full run's wall
    # time minus its training time), with a 10% margin
    budget_s = args.incremental_fraction * full_wall
    overhead = full_wall - full_info["train_s"]
    test = split.test
    before = evaluate_model(run2, test, cold_mask, new_idx, args.seed)
    n_fresh = int(inc_seqs["fresh"].list.sum().sum())
    n_fresh_new = int(inc_seqs.select(pl.col("item").list.eval(pl.element() >= n_warm_items)
                                      .list.sum()).to_series().sum())
    results = []
    for lr in [float(x) for x in str(args.incremental_lr).split(",")]:
        inc_run = work / f"run-incremental-lr{lr:g}"
        inc_wall, inc_info = train_run(
            inc_dir, inc_run, {}, max((budget_s - build_s - overhead) * 0.9, 1.0) / 60.0,
            args.seed, args.threads, init_from=run2,
            train_kw=dict(lr=lr, warmup_steps=10, patience=3))
        inc_s = build_s + inc_wall
        inc_m = evaluate_model(inc_run, test, cold_mask, new_idx, args.seed)
        results.append({
            "dataset": name,
            "new_item_ndcg@10": inc_m["cold_ndcg@10"],
            "full_retrain_new_item_ndcg@10": full_m["cold_ndcg@10"],
            "before_incremental_new_item_ndcg@10": before["cold_ndcg@10"],
            "ratio_vs_full_retrain": inc_m["cold_ndcg@10"] / max(full_m["cold_ndcg@10"], 1e-12),
            "incremental_s": round(inc_s, 2), "full_retrain_s": round(full_wall, 2),
            "time_fraction": round(inc_s / full_wall, 4),
            "warm_ndcg@10": inc_m["warm_ndcg@10"],
            "full_retrain_warm_ndcg@10": full_m["warm_ndcg@10"],
            "before_incremental_warm_ndcg@10": before["warm_ndcg@10"],
            "new_item_hr@10": inc_m["cold_hr@10"],
            "full_retrain_new_item_hr@10": full_m["cold_hr@10"],
            "new_item_ndcg@10_ci95": inc_m["cold_ndcg@10_ci95"],
            "full_retrain_new_item_ndcg@10_ci95": full_m["cold_ndcg@10_ci95"],
            "full_retrain_cold_events": full_m["cold_events"],
            "incremental_cold_events": inc_m["cold_events"],
            "recent_tokens": n_fresh, "recent_tokens_on_new_items": n_fresh_new,
            "recent_users": inc_seqs.height, "init": args.incremental_init,
            "incremental_train": inc_info, "full_retrain_train": full_info,
            "incremental_lr": lr, "budget_s": round(budget_s, 2),
        })
    # the first learning rate listed is the declared setting; the others are variants
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,synthetic,beauty")
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--incremental-fraction", type=float, default=0.10)
    ap.add_argument("--incremental-init", default=DEFAULT_CONTENT_INIT)
    ap.add_argument("--incremental-lr", default="1e-3",
                    help="fine-tuning learning rate; a comma list runs variants (first: headline)")
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer methods")
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

    # merge with an earlier result for datasets not re-run now
    path = RESULTS / "cold_start.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old_per = old.get("extra", {}).get("per_dataset", {})
    per_all = {**{k: v for k, v in old_per.items() if k not in per}, **per}
    runs = [r for d in per_all.values() for r in d["runs"]]
    for r in runs:  # labels follow the current add-items default (results of earlier runs too)
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
        metrics[f"{short}_warm_ndcg@10_content"] = by["content"]["warm_ndcg@10"]
        metrics[f"{short}_warm_ndcg@10_id+attributes"] = by["id+attributes"]["warm_ndcg@10"]
    extra = {"per_dataset": per_all, "add_items_speed": speed,
             "protocol": __doc__.split("Writes")[0].strip(),
             "train_config": TRAIN, "minutes_per_model": args.minutes,
             "note": args.note, "peak_rss_mb": peak_rss_mb(),
             "contention_at_end": other_benchmarks(), "contention_seen": sorted(SEEN)}
    p = write_result("cold_start", ",".join(per_all), args.seed, time.perf_counter() - t0,
                     metrics, extra)
    print(json.dumps({k: v for k, v in json.loads(p.read_text())["metrics"].items()
                      if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
