"""Consumption of the foundation model: embeddings, fine-tuning, distillation, prompt tuning.

    python -m benchmarks.consumption [--parts embed,finetune,distill,prompt] [--threads 2]
                                     [--work benchmarks/.work/consumption]

One base run on the synthetic world (default size, seed 0) is trained once, with a 3-minute
budget, and shared by every part through the work folder (:func:`base_run`). Each part
writes its own top-level key of ``benchmarks/results/consumption.json``; a part run later,
in another invocation, replaces its key and keeps the others (so long benchmarks can be
split into invocations of at most 15 minutes each):

* ``embed``    — :func:`benchmarks.consumption_embed.run_embed` (the embedding store).
* ``finetune`` — per task (kids surface; will-complete binary head; will-choose-shown, the
  same head on chosen vs shown-and-not-chosen titles from the impressions): the task model
  fine-tuned from the base run vs the same task model trained from random init, for the
  same number of steps; test metrics of each (``recfm.consume.finetune``). The head tasks
  run three training seeds per variant and a learning-rate sweep at the smallest budget
  (``BINARY_LR_SWEEP``); will-complete adds LP-FT and frozen-backbone variants at the
  largest budget, a ceiling analysis from the world's truth (:func:`completion_ceiling`)
  and a run with labels for 10% of the users (:func:`_scarce_row`).
* ``distill``, ``prompt`` — :mod:`benchmarks.consumption_distill_prompt`.

A part whose module is not there is skipped with a logged message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, ROOT, command_line, write_result

log = logging.getLogger("benchmarks.consumption")

NAME = "consumption"
PARTS = ("embed", "finetune", "distill", "prompt")
DEFAULT_WORK = ROOT / ".work" / "consumption"
SEED = 0
BASE_MINUTES = 3.0


def prepared_dir(work_dir: Path) -> Path:
    """The prepared synthetic world every part uses (made by :func:`base_run`)."""
    return Path(work_dir) / "prepared"


def base_run(work_dir: Path, threads: int) -> Path:
    """The shared base run (``work_dir/base-run``), trained once and then reused.

    Layout under ``work_dir``: ``world/`` (the synthetic world, seed 0), ``prepared/`` (its
    tokens; :func:`prepared_dir`), ``base-run/`` (a normal run directory: load it with
    ``FoundationModel.from_pretrained``). A complete base run has ``summary.json``; it is
    trained into ``.base-run.partial`` and renamed, so a killed benchmark never leaves a
    half-trained base run behind.
    """
    from recfm.data import synthetic
    from recfm.cli.demo import DEMO_MODEL
    from recfm.tokens.prepare import prepare
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    work_dir = Path(work_dir)
    run = work_dir / "base-run"
    if (run / "summary.json").is_file():
        return run
    torch.set_num_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepared_dir(work_dir)
    if not (prepared / "tokens.parquet").is_file():
        cfg = synthetic.SynthConfig(seed=SEED)
        t = time.perf_counter()
        synthetic.write_world(synthetic.generate(cfg), work_dir / "world", cfg)
        prepare(synthetic.load_world(work_dir / "world"), prepared)
        log.info("synthetic world prepared in %.1f s", time.perf_counter() - t)
    partial = work_dir / ".base-run.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tcfg = TrainConfig(epochs=30, batch_size=128, lr=2e-3, warmup_steps=50, patience=4,
                       max_minutes=BASE_MINUTES, seed=SEED, threads=threads, tensorboard=False)
    t = time.perf_counter()
    train(prepared, partial, DEMO_MODEL, tcfg, command="benchmarks.consumption base_run")
    log.info("base run trained in %.1f s", time.perf_counter() - t)
    shutil.rmtree(run, ignore_errors=True)
    os.replace(partial, run)
    return run


# ----------------------------------------------------------------------------- finetune

STEP_BUDGETS = (100, 300)
"""Both models get the same number of optimizer steps (batches of 128 windows); the base
run itself took about 600. Each budget is one row per task."""


def finetune_tasks(steps: int, work_dir: Path = DEFAULT_WORK) -> dict[str, dict[str, Any]]:
    """Task name → TaskConfig fields (the same task.toml keys ``recfm finetune`` reads);
    the shown task reads the impressions of the world in ``work_dir``."""
    train = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 20, "patience": 3, "seed": SEED,
             "weight_decay": 0.01, "tensorboard": False}
    every = max(steps // 6, 10)
    return {
        "kids-surface": {"kind": "surface", "name": "kids", "items": {"kids": "true"},
                         "max_steps": steps, "eval_every": every, "train": train},
        "will-complete": {"kind": "binary", "name": "will-complete",
                          "label_action": "complete", "max_steps": steps,
                          "eval_every": every, "train": train},
        "will-choose-shown": {"kind": "shown", "name": "will-choose-shown",
                              "impressions": str(Path(work_dir) / "world" / "events.parquet"),
                              "max_steps": steps, "eval_every": every, "train": train},
    }


def run_finetune(work_dir: Path, threads: int) -> list[dict[str, Any]]:
    """Per task and step budget: fine-tuned from the base run vs from scratch, test metrics."""
    torch.set_num_threads(threads)
    base = base_run(work_dir, threads)
    out = []
    for steps in STEP_BUDGETS:
        out += _finetune_rows(base, work_dir, steps)
    out.append(_scarce_row(base, work_dir))
    return out


SEEDS = {"surface": (0,), "binary": (0, 1, 2), "shown": (0, 1, 2)}
"""Training seeds per task kind: the binary task's AUC differences are small next to the
seed-to-seed spread, so it is trained with three seeds (each variant, same seeds); so is
the shown task."""
BINARY_EXTRA = {"finetuned_lp_ft": {"head_only_steps": 100},
                "frozen_backbone": {"trainable_layers": 0}}
"""Diagnostic variants of the binary task (seed 0, the 300-step budget): LP-FT (the head
alone for 100 steps, then everything) and the pretrained backbone frozen (what its
features alone give the head)."""
BINARY_LR_SWEEP = (2e-3, 5e-3)
"""Diagnostic of the binary task at the smallest budget: both variants again at these
learning rates (the rows use 1e-3), three seeds each — does either variant only win
because the other's learning rate suits it less? Test and validation AUC, mean over
seeds."""
SHOWN_TASK = ("the binary task's head on pairs of the chosen title (label 1) and the last "
              "title shown to the user before it and not chosen (label 0), from the "
              "world's impression events (recfm.consume.finetune."
              "with_shown); test: AUC over the pairs of each user's held-out last event, "
              "for users shown another title before it")
BINARY_HEAD = ("the user state h_t (last layer) after the events before the candidate "
               "event, the candidate title's item vector e (id + attributes), each "
               "layer-normalised, h_t*e, and the "
               "foundation's log p(candidate | history) over the full catalog; label: the "
               "candidate event's strongest action is complete; trained on every position of "
               "the training windows; test: each user's held-out last event")


def paired_bootstrap(a: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
                     b: dict[str, np.ndarray] | list[dict[str, np.ndarray]], n: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """95 % interval of metric(a) − metric(b) over users resampled with replacement (the
    same users for both): mean NDCG@10, or AUC when the dicts hold logits and labels. Lists
    (one dict per training seed) compare the seed-averaged metrics."""
    from recfm.consume.finetune import auc_score

    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]

    def metric(runs: list[dict[str, np.ndarray]], idx: np.ndarray) -> float:
        if "logit" in runs[0]:
            return float(np.mean([auc_score(r["logit"][idx], r["label"][idx]) for r in runs]))
        return float(np.mean([r["ndcg@10"][idx].mean() for r in runs]))

    rng = np.random.default_rng(seed)
    n_users = len(next(iter(a[0].values())))
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, n_users, n_users)
        diffs.append(metric(a, idx) - metric(b, idx))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def completion_ceiling(work_dir: Path, test: Any, fm_run: Path) -> dict[str, Any]:
    """How much of "will complete" a history can tell, from the synthetic world's truth.

    The world completes a chosen title with probability p = base[entity type] × 2σ(a)
    (``recfm/data/synthetic.py``), a = the user's taste at that time · the title's factor
    (standardised). AUC on the test events of: p itself (the oracle), the entity type
    alone, a alone, p with the taste estimated as the mean true factor of the history's
    titles (what a history can reveal at best, given the true item factors), and the
    foundation's own log p(candidate | history). Also the share of the true taste a
    linear map of the foundation's user state recovers (held-out R²).
    """
    import polars as pl

    from recfm.consume.finetune import auc_score
    from recfm.evaluate.ranks import target_log_probs
    from recfm.model.foundation import FoundationModel
    from recfm.tokens.tokenizer import N_RESERVED_ITEMS

    w = Path(work_dir) / "world"
    cfg = json.loads((w / "world.json").read_text())["config"]
    span = cfg["days"] * 86400.0
    items = pl.read_parquet(w / "items.parquet")
    truth_items = pl.read_parquet(w / "truth" / "items.parquet")
    users = pl.read_parquet(w / "truth" / "users.parquet")
    base_p = {"movie": 0.65, "series": 0.75, "game": 0.05, "live": 0.45}  # as synthetic.py
    fm = FoundationModel.from_pretrained(fm_run).eval()
    ids = fm.tokenizer.item_ids
    frame = test.filter(pl.col("target_action").is_not_null() & pl.col("target").is_not_null())
    label = frame["target_action"].to_numpy() == (
        fm.tokenizer.facets["action"].index("complete") + 2)
    factor = dict(zip(truth_items["item_id"], (np.asarray(f) for f in truth_items["factor"])))
    entity = dict(zip(items["item_id"], items["entity_type"]))
    t0 = dict(zip(users["user_id"], (np.asarray(t) for t in users["taste_start"])))
    t1 = dict(zip(users["user_id"], (np.asarray(t) for t in users["taste_end"])))
    taste, cand, hist = [], [], []
    for u, it, ts, h in zip(frame["user_id"], frame["target"], frame["target_ts"],
                            frame["item"]):
        tau = min(max((ts - cfg["start_ts"]) / span, 0.0), 1.0)
        taste.append(t0[u] + tau * (t1[u] - t0[u]))
        cand.append(factor[ids[it - N_RESERVED_ITEMS]])
        hist.append(np.mean([factor[ids[i - N_RESERVED_ITEMS]] for i in h[-fm.cfg.max_len:]],
                            axis=0))
    taste, cand, hist = np.array(taste), np.array(cand), np.array(hist)
    ent = np.array([base_p[entity[ids[i - N_RESERVED_ITEMS]]] for i in frame["target"]])

    def p_of(a: np.ndarray) -> np.ndarray:
        z = (a - a.mean()) / a.std()
        return np.minimum(ent * 2.0 / (1.0 + np.exp(-z)), 0.97)

    aff = (taste * cand).sum(1)
    users_h = np.zeros((len(frame), fm.cfg.d_model))

    def scorer(rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = fm.last_hidden(batch)
        users_h[rows] = h.numpy()  # the user states too, from the same pass
        return fm.score(h)

    logp = target_log_probs(scorer, frame, fm.cfg.max_len, fm.input_columns, batch_size=512)
    order = np.random.default_rng(0).permutation(len(frame))
    tr, te = order[: len(order) * 4 // 5], order[len(order) * 4 // 5:]
    x = np.c_[users_h, np.ones(len(frame))]
    coef = np.linalg.solve(x[tr].T @ x[tr] + np.eye(x.shape[1]), x[tr].T @ taste[tr])
    resid = ((x[te] @ coef - taste[te]) ** 2).sum()
    r2 = 1.0 - resid / ((taste[te] - taste[te].mean(0)) ** 2).sum()
    return {"test_events": int(len(frame)),
            "oracle_auc": round(auc_score(p_of(aff), label), 4),
            "entity_type_only_auc": round(auc_score(ent, label), 4),
            "true_affinity_only_auc": round(auc_score(aff, label), 4),
            "taste_from_history_true_factors_auc": round(
                auc_score(p_of((hist * cand).sum(1)), label), 4),
            "foundation_logp_auc": round(auc_score(logp, label), 4),
            "foundation_logp_corr_true_affinity": round(float(np.corrcoef(logp, aff)[0, 1]), 4),
            "taste_r2_from_foundation_user_state": round(float(r2), 4)}


def _finetune_rows(base: Path, work_dir: Path, steps: int) -> list[dict[str, Any]]:
    from recfm.consume.finetune import TaskConfig, TaskModel, finetune, with_shown
    from recfm.data.splits import leave_one_out
    from recfm.tokens.prepare import PreparedDataset

    ds = PreparedDataset.load(prepared_dir(work_dir))
    out = []
    for name, fields in finetune_tasks(steps, work_dir).items():
        task = TaskConfig.from_dict(fields)
        seqs = (with_shown(ds.sequences, ds.tokenizer.item_index(), task.impressions)
                if task.kind == "shown" else ds.sequences)
        test = leave_one_out(seqs).test
        row: dict[str, Any] = {"task": name, "steps": task.max_steps}
        key = "auc" if task.has_head else "ndcg@10"
        seeds = SEEDS[task.kind]
        per_user: dict[str, list[dict[str, np.ndarray]]] = {}
        by_seed: dict[str, list[float]] = {}
        variants = [("finetuned", False, {}), ("from_scratch", True, {})]
        if task.kind == "binary" and steps == max(STEP_BUDGETS):
            variants += [(v, False, over) for v, over in BINARY_EXTRA.items()]
        for seed in seeds:
            for variant, scratch, over in variants:
                if seed != seeds[0] and variant in BINARY_EXTRA:
                    continue
                t_fields = {**fields, **over, "train": {**fields["train"], "seed": seed}}
                dest = Path(work_dir) / f"finetune-{name}-{steps}-{variant}-seed{seed}"
                shutil.rmtree(dest, ignore_errors=True)
                t = time.perf_counter()
                res = finetune(base, TaskConfig.from_dict(t_fields), dest,
                               data_dir=prepared_dir(work_dir), from_scratch=scratch)
                by_seed.setdefault(variant, []).append(round(res.test[key], 4))
                if seed == seeds[0]:  # the per-variant metrics shown are seed 0's
                    row[variant] = {**res.test, f"valid_{key}": res.best_valid[key],
                                    "best_step": res.best_step, "steps_run": res.steps,
                                    "wall_s": round(time.perf_counter() - t, 1)}
                if variant in ("finetuned", "from_scratch"):
                    per_user.setdefault(variant, []).append(
                        TaskModel.from_pretrained(dest).per_user(test))
                log.info("%s %s seed %d: %s", name, variant, seed, res.test)
        for variant, values in by_seed.items():
            row[variant][f"{key}_by_seed"] = values
            row[variant][f"{key}_mean_over_seeds"] = round(float(np.mean(values)), 4)
        row["seeds"] = list(seeds)
        lo, hi = paired_bootstrap(per_user["finetuned"], per_user["from_scratch"])
        row["finetuned"][f"minus_scratch_{key}_ci95"] = [round(lo, 4), round(hi, 4)]
        row["ci95_of"] = (f"{key} of fine-tuned minus from scratch, averaged over the "
                          f"{len(seeds)} seed(s); test users resampled (1000 paired draws)")
        if task.has_head and steps == min(STEP_BUDGETS):
            row["lr_sweep"] = _summary(_lr_sweep(base, work_dir, name, fields, seeds)[0])
        if task.kind == "shown":
            row["task_is"] = SHOWN_TASK
        if task.kind == "binary":
            row["head_sees"] = BINARY_HEAD
            if steps == max(STEP_BUDGETS):
                row["ceiling"] = completion_ceiling(work_dir, test, base)
        out.append(row)
    return out


def _lr_sweep(base: Path, work_dir: Path, name: str, fields: dict[str, Any],
              seeds: tuple[int, ...], lrs: tuple[float, ...] = BINARY_LR_SWEEP,
              test: Any = None) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Any]]:
    """A task with a head at each learning rate: ``{lr: {variant: {auc_by_seed, auc_mean,
    valid_auc_mean, seed0}}}`` (seed0: seed 0's test metrics), and, with a ``test`` frame,
    the per-user logits of every (lr, variant) for paired intervals."""
    from recfm.consume.finetune import TaskConfig, TaskModel, finetune

    out: dict[str, dict[str, Any]] = {}
    per_user: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
    for lr in lrs:
        for variant, scratch in (("finetuned", False), ("from_scratch", True)):
            tests, valid, first = [], [], {}
            for seed in seeds:
                t_fields = {**fields, "train": {**fields["train"], "seed": seed, "lr": lr}}
                dest = Path(work_dir) / f"finetune-{name}-lr{lr:g}-{variant}-seed{seed}"
                shutil.rmtree(dest, ignore_errors=True)
                t = time.perf_counter()
                res = finetune(base, TaskConfig.from_dict(t_fields), dest,
                               data_dir=prepared_dir(work_dir), from_scratch=scratch)
                tests.append(round(res.test["auc"], 4))
                valid.append(round(res.best_valid["auc"], 4))
                if not first:
                    first = {**res.test, "valid_auc": res.best_valid["auc"],
                             "best_step": res.best_step, "steps_run": res.steps,
                             "wall_s": round(time.perf_counter() - t, 1)}
                if test is not None:
                    per_user.setdefault((f"{lr:g}", variant), []).append(
                        TaskModel.from_pretrained(dest).per_user(test))
                shutil.rmtree(dest, ignore_errors=True)
            out.setdefault(f"{lr:g}", {})[variant] = {
                "auc_by_seed": tests, "auc_mean": round(float(np.mean(tests)), 4),
                "valid_auc_mean": round(float(np.mean(valid)), 4), "seed0": first}
            log.info("%s lr %g %s: test auc %s", name, lr, variant, tests)
    return out, per_user


SCARCE_USERS = 0.1
SCARCE_LRS = (2.5e-4, 5e-4, 1e-3)
"""The binary task with labels for few users: it trains and validates on 10% of the users
(``TaskConfig.train_users``; tested on all), the largest step budget, three seeds. With
so few labels the best learning rate differs by variant (from scratch at 1e-3 is 0.018
below its 5e-4 on validation, fine-tuned level), so each variant gets the rate of
``SCARCE_LRS`` with the best mean validation AUC."""


def _scarce_row(base: Path, work_dir: Path) -> dict[str, Any]:
    """The will-complete task trained on ``SCARCE_USERS`` of the users, fine-tuned vs from
    scratch, each at its learning rate chosen on validation."""
    from recfm.data.splits import leave_one_out
    from recfm.tokens.prepare import PreparedDataset

    test = leave_one_out(PreparedDataset.load(prepared_dir(work_dir)).sequences).test
    steps = max(STEP_BUDGETS)
    fields = {**finetune_tasks(steps, work_dir)["will-complete"], "train_users": SCARCE_USERS}
    name = f"will-complete-{round(SCARCE_USERS * 100)}pct-users"
    seeds = SEEDS["binary"]
    grid, per_user = _lr_sweep(base, work_dir, name, fields, seeds, SCARCE_LRS, test)
    row: dict[str, Any] = {"task": name, "steps": steps, "seeds": list(seeds),
                           "train_users": SCARCE_USERS, "head_sees": BINARY_HEAD}
    chosen = {}
    for variant in ("finetuned", "from_scratch"):
        lr = max(grid, key=lambda k: grid[k][variant]["valid_auc_mean"])
        chosen[variant] = lr
        g = grid[lr][variant]
        row[variant] = {**g["seed0"], "lr": float(lr), "auc_by_seed": g["auc_by_seed"],
                        "auc_mean_over_seeds": g["auc_mean"]}
    lo, hi = paired_bootstrap(per_user[(chosen["finetuned"], "finetuned")],
                              per_user[(chosen["from_scratch"], "from_scratch")])
    row["finetuned"]["minus_scratch_auc_ci95"] = [round(lo, 4), round(hi, 4)]
    row["ci95_of"] = ("auc of fine-tuned minus from scratch, each at its learning rate chosen "
                      f"on validation, averaged over the {len(seeds)} seeds; test users "
                      "resampled (1000 paired draws)")
    row["lr_sweep"] = _summary(grid)
    return row


def _summary(grid: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A learning-rate sweep without its per-seed test metrics (``seed0``)."""
    return {lr: {v: {k: x for k, x in d.items() if k != "seed0"} for v, d in by.items()}
            for lr, by in grid.items()}


# ----------------------------------------------------------------------------- parts


def _guarded(module: str, function: str) -> Callable[[Path, int], Any] | None:
    """``module.function``, or None (logged) when the module is not there."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        log.warning("%s is not there: skipping its part", module)
        return None
    return getattr(mod, function)


def part_runner(part: str) -> Callable[[Path, int], Any] | None:
    if part == "finetune":
        return run_finetune
    if part == "embed":
        return _guarded("benchmarks.consumption_embed", "run_embed")
    return _guarded("benchmarks.consumption_distill_prompt", f"run_{part}")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Flat headline metrics from whichever parts the result holds."""
    m: dict[str, Any] = {}
    if isinstance(result.get("embed"), dict) and "users_per_s" in result["embed"]:
        m["embed_users_per_s"] = result["embed"]["users_per_s"]
    for row in result.get("finetune") or []:
        key = "auc" if "auc" in row.get("finetuned", {}) else "ndcg@10"
        for variant in ("finetuned", "from_scratch"):
            if key in row.get(variant, {}):
                m[f"{row['task']}@{row['steps']}_{variant}_{key}"] = row[variant][key]
    distill = result.get("distill") or {}
    for who in ("teacher", "student_distilled", "student_alone"):
        if isinstance(distill.get(who), dict) and "ndcg@10" in distill[who]:
            m[f"distill_{who}_ndcg@10"] = distill[who]["ndcg@10"]
    prompt = result.get("prompt") or {}
    if "kids_share@10" in prompt:
        m["prompt_kids_share@10"] = prompt["kids_share@10"]
    return m


def _f(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return "–" if v is None else str(v)


def table(result: dict[str, Any]) -> str:
    """The RESULTS.md section: one table per part present."""
    parts = []
    embed = result.get("embed")
    if isinstance(embed, dict):
        parts.append("**Embedding store**\n\n| key | value |\n|---|---:|\n" + "\n".join(
            f"| {k} | {_f(v)} |" for k, v in embed.items() if not isinstance(v, (dict, list))))
    rows = result.get("finetune")
    if rows:
        lines = ["**Fine-tuning vs from scratch (same steps; test split, checkpoint chosen on "
                 "validation)**", "",
                 "| task | steps | metric | fine-tuned | from scratch | 95% CI of the difference "
                 "| valid (ft / scratch) | best step (ft / scratch) | test users |",
                 "|---|---:|---|---:|---:|---|---|---|---:|"]
        notes = []
        for r in rows:
            ft, sc = r["finetuned"], r["from_scratch"]
            keys = ("auc", "logloss") if "auc" in ft else ("ndcg@10", "hr@10")
            k0 = keys[0]
            if len(r.get("seeds", [])) > 1:
                notes.append(f"- {r['task']} @ {r['steps']} steps, {k0} over seeds "
                             f"{r['seeds']}: fine-tuned {ft.get(f'{k0}_by_seed')} (mean "
                             f"{_f(ft.get(f'{k0}_mean_over_seeds'))}), from scratch "
                             f"{sc.get(f'{k0}_by_seed')} (mean "
                             f"{_f(sc.get(f'{k0}_mean_over_seeds'))}); the CI is of the "
                             "seed-averaged difference")
            for extra in BINARY_EXTRA:
                if extra in r:
                    notes.append(f"- {r['task']} @ {r['steps']} steps, {extra} (seed 0): "
                                 f"{k0} {_f(r[extra].get(k0))}")
            if "lr" in ft:
                notes.append(f"- {r['task']}: trained and validated on {r['train_users']:.0%} "
                             f"of the users, tested on all; learning rate chosen on validation "
                             f"from {list(r['lr_sweep'])}: fine-tuned {ft['lr']:g}, from scratch "
                             f"{sc['lr']:g}")
            for lr, by in r.get("lr_sweep", {}).items():
                notes.append(f"- {r['task']} @ {r['steps']} steps, learning rate {lr}, auc over "
                             f"seeds {r['seeds']} (test mean / valid mean): fine-tuned "
                             f"{_f(by['finetuned']['auc_mean'])} / "
                             f"{_f(by['finetuned']['valid_auc_mean'])}, from scratch "
                             f"{_f(by['from_scratch']['auc_mean'])} / "
                             f"{_f(by['from_scratch']['valid_auc_mean'])}")
            if "ceiling" in r:
                notes.append(f"- {r['task']}: what a history can tell (world truth): "
                             + ", ".join(f"{k} {_f(v)}" for k, v in r["ceiling"].items()))
            if "task_is" in r and f"- {r['task']}: {r['task_is']}" not in notes:
                notes.append(f"- {r['task']}: {r['task_is']}")
            if "head_sees" in r and not any(n.startswith("- head") for n in notes):
                notes.append(f"- head of the binary task: {r['head_sees']}")
            for k in keys:
                valid = f"valid_{k}"
                v = f"{_f(ft.get(valid))} / {_f(sc.get(valid))}" if valid in ft else ""
                ci = ft.get(f"minus_scratch_{k}_ci95")
                ci = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
                lines.append(f"| {r['task']} | {r['steps']} | {k} | {_f(ft.get(k))} | "
                             f"{_f(sc.get(k))} | {ci} | {v} | {ft.get('best_step')} / "
                             f"{sc.get('best_step')} | {ft.get('users')} |")
        parts.append("\n".join(lines + ([""] + notes if notes else [])))
    distill = result.get("distill")
    if isinstance(distill, dict):
        lines = ["**Distillation**", "", "| model | params | p50 ms | NDCG@10 |",
                 "|---|---:|---:|---:|"]
        for who in ("teacher", "student_distilled", "student_alone"):
            d = distill.get(who) or {}
            lines.append(f"| {who} | {_f(d.get('params'))} | {_f(d.get('p50_ms'))} | "
                         f"{_f(d.get('ndcg@10'))} |")
        parts.append("\n".join(lines))
    prompt = result.get("prompt")
    if isinstance(prompt, dict):
        parts.append("**Prompt tuning**\n\n| key | value |\n|---|---:|\n" + "\n".join(
            f"| {k} | {_f(v)} |" for k, v in prompt.items() if not isinstance(v, (dict, list))))
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown part {bad[0]!r} (choose from {', '.join(PARTS)})")
    torch.set_num_threads(args.threads)

    path = RESULTS / f"{NAME}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    result = {p: previous[p] for p in PARTS if p in previous}
    walls = dict(previous.get("extra", {}).get("parts_wall_s", {}))
    commands = dict(previous.get("extra", {}).get("parts_command", {}))
    t_all = time.perf_counter()
    t_base = time.perf_counter()
    base_run(args.work, args.threads)
    base_s = time.perf_counter() - t_base
    ran = []
    for part in parts:
        runner = part_runner(part)
        if runner is None:
            continue
        t = time.perf_counter()
        result[part] = runner(args.work, args.threads)
        walls[part] = round(time.perf_counter() - t, 1)
        commands[part] = command_line()  # the invocation this part was measured in
        ran.append(part)
        log.info("part %s done in %.1f s", part, walls[part])
    if not ran:
        log.warning("no part ran; nothing written")
        return
    summary = json.loads((args.work / "base-run" / "summary.json").read_text())
    extra = {"parts_wall_s": walls, "parts_command": commands, "parts_this_invocation": ran,
             "base_run": {"test_ndcg@10": (summary.get("test") or {}).get("ndcg@10"),
                          "epochs_run": summary.get("epochs_run"),
                          "steps": summary.get("steps"), "budget_minutes": BASE_MINUTES,
                          "prepared_s_this_invocation": round(base_s, 1)},
             "threads": args.threads}
    wall = sum(walls.values())
    write_result(NAME, "synthetic world (seed 0, 5000 users, 2000 items)", SEED, wall,
                 headline(result), extra=extra, top=result, table_md=table(result))
    log.info("wrote %s (this invocation %.1f s)", path, time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
