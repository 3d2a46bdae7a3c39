"""Ablation of the objectives: next-item vs multi-token, future window, facet heads,
engagement weighting and user representations, on the synthetic world, ml-latest-small and
Beauty.

    python -m benchmarks.objectives [--seeds 0 1 2] [--datasets synthetic ml-latest-small beauty]

Split: each user's last 10 tokens are held out of training entirely (future holdout);
early stopping uses a leave-one-out validation inside the rest. Reported on the held-out
future: next-item NDCG@10 (its first token), window NDCG@10 (all 10), completed share@10
(top-10 items the user goes on to complete), facet-head accuracy vs the majority class,
and stability (cosine / top-10 overlap after appending 1, 5, 20 real events).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, SHARED_DATA, write_result
from recfm.model.config import ModelConfig, ObjectiveConfig
from recfm.train.loop import TrainConfig

WINDOW = 10
ENGAGEMENT = {"complete": 1.0, "thumbs_up": 1.0, "add_to_list": 0.5, "play": 0.5,
              "trailer": 0.1, "search": 0.1}


def variants(dataset: str, facets: list[str], actions: list[str]) -> dict[str, dict]:
    """Variant name → ModelConfig overrides, restricted to what the dataset has."""
    out = {
        "next-item": {},
        "multi-token": {"objectives": ObjectiveConfig(multi_token_k=3, multi_token_weight=0.5)},
        "future-window": {"objectives": ObjectiveConfig(window_events=WINDOW, window_weight=0.5)},
        "layer-mix": {"user_repr": "layer_mix"},
        "mean-last": {"user_repr": "mean_last"},
    }
    heads = {f: 0.2 for f in ("action", "value_bucket", "device", "gap_bucket") if f in facets}
    if dataset == "synthetic":
        heads.update(entity_type=0.2, genres=0.2)
    if heads:
        out["facets"] = {"objectives": ObjectiveConfig(facet_heads=heads)}
    weights = {a: w for a, w in ENGAGEMENT.items() if a in actions}
    if weights:
        out["engagement"] = {"objectives": ObjectiveConfig(action_weights=weights)}
    out["all"] = {"objectives": ObjectiveConfig(
        multi_token_k=3, window_events=WINDOW, facet_heads=heads, action_weights=weights)}
    return out


DATASETS = {
    "synthetic": None,
    "ml-latest-small": ("ml-latest-small", "movielens"),
    "beauty": ("s3rec/Beauty.txt", "s3rec"),
}
MODEL = {"synthetic": dict(d_model=64, n_layers=2, max_len=50, dropout=0.2),
         "ml-latest-small": dict(d_model=64, n_layers=2, max_len=100, dropout=0.2),
         "beauty": dict(d_model=64, n_layers=2, max_len=50, dropout=0.3)}
# Fixed epoch budgets (no time limit), so that a busy machine changes the wall time of
# the ablation but never its results.
TRAIN = {"synthetic": dict(epochs=12, batch_size=128, lr=2e-3, warmup_steps=50, patience=3),
         "ml-latest-small": dict(epochs=20, batch_size=32, lr=2e-3, warmup_steps=30,
                                 patience=4),
         "beauty": dict(epochs=6, batch_size=256, lr=2e-3, warmup_steps=50, patience=3)}
# Beauty has neither actions nor facets; its rows are the objectives that apply.
ONLY = {"beauty": ("next-item", "multi-token", "future-window", "layer-mix"),
        "synthetic": ("next-item", "future-window", "multi-token", "facets", "engagement",
                      "layer-mix", "all")}
SEEDED = ("next-item", "future-window")  # variants run with every seed


def prepare_dataset(name: str, data_dir: Path, work: Path, seed: int) -> Path:
    from recfm.data import synthetic
    from recfm.prepare import load_raw, prepare

    out = work / f"{name}-prepared"
    if name == "synthetic":
        cfg = synthetic.SynthConfig(seed=seed)
        synthetic.write_world(synthetic.generate(cfg), work / "world", cfg)
        prepare(synthetic.load_world(work / "world"), out)
    else:
        rel, fmt = DATASETS[name]
        prepare(load_raw(data_dir / rel, fmt=fmt), out)
    return out


def run_variant(prepared: Path, work: Path, dataset: str, variant: str, overrides: dict,
                seed: int) -> dict:
    from recfm.evaluate.objectives import facet_accuracy, future_holdout, holdout_metrics, stability
    from recfm.model.foundation import FoundationModel
    from recfm.prepare import PreparedDataset
    from recfm.train.loop import train

    ds = PreparedDataset.load(prepared)
    split, holdout = future_holdout(ds.sequences, window=WINDOW)
    run = work / f"{dataset}-{variant}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    mcfg = ModelConfig(**{**MODEL[dataset], **overrides})
    train(prepared, run, mcfg, TrainConfig(**TRAIN[dataset], seed=seed, tensorboard=False),
          split=split, evaluate_test=False)
    fm = FoundationModel.from_pretrained(run)
    actions = ds.tokenizer.facets.get("action", [])
    complete = actions.index("complete") + 2 if "complete" in actions else None
    metrics = holdout_metrics(fm, holdout, complete)
    metrics.update(facet_accuracy(fm, holdout, split.train))
    # stability on the histories the model trained on plus their real continuation
    metrics.update(stability(fm, ds.sequences, (1, 5, 20)))
    if variant == "next-item":  # the same model, pooled at inference only
        for pool in ("layer_mean", "mean_last"):
            m2 = holdout_metrics(fm, holdout, complete, pooling=pool)
            st = stability(fm, ds.sequences, (1, 5, 20), pooling=pool)
            metrics[f"{pool}_inference_ndcg@10"] = m2["ndcg@10"]
            metrics[f"{pool}_inference_stability_cos@5"] = st.get("stability_cos@5")
    summary = json.loads((run / "summary.json").read_text())
    metrics.update(train_s=summary["train_s"], epochs=summary["epochs_run"],
                   wall_s=round(time.perf_counter() - t, 1))
    return {"dataset": dataset, "variant": variant, "seed": seed, "metrics": metrics}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarize(runs: list[dict]) -> tuple[dict, str]:
    """Headline comparisons (relative to next-item, mean over seeds) and a Markdown table."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["dataset"], r["variant"]), []).append(r["metrics"])
    keys = ("ndcg@10", "window_ndcg@10", "completed_share@10", "stability_cos@5",
            "stability_overlap@5")
    lines = ["| dataset | variant | seeds | " + " | ".join(keys) + " | facet acc (majority) |",
             "|---|---|---|" + "---|" * len(keys) + "---|"]
    headline = {}
    for (ds, var), ms in by.items():
        cells = [mean_std([m[k] for m in ms]) if all(k in m for m in ms) else "-" for k in keys]
        facets = ", ".join(f"{k[:-4]} {ms[0][k]:.3f} ({ms[0][k[:-4] + '_majority_acc']:.3f})"
                           for k in ms[0] if k.endswith("_acc") and "majority" not in k)
        lines.append(f"| {ds} | {var} | {len(ms)} | " + " | ".join(cells) + f" | {facets} |")
        base = by.get((ds, "next-item"))
        if base and var != "next-item":
            for k in ("ndcg@10", "window_ndcg@10", "completed_share@10", "stability_cos@5"):
                b = statistics.mean(m[k] for m in base)
                v = statistics.mean(m[k] for m in ms)
                if b:
                    headline[f"{ds}/{var}/{k}_change_pct"] = round(100 * (v - b) / abs(b), 2)
    return headline, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "objectives")
    ap.add_argument("--from-log", type=Path, default=None,
                    help="summarize the runs an interrupted ablation printed (one JSON a line)")
    ap.add_argument("--log-command", default=None, help="the command that printed --from-log")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.from_log is not None:
        runs = [json.loads(line) for line in args.from_log.read_text().splitlines()
                if line.startswith('{"dataset"')]
        headline, table = summarize(runs)
        done = sorted({r["dataset"] for r in runs})
        wall = sum(r["metrics"]["wall_s"] for r in runs)
        write_result("objectives", ", ".join(done), args.seeds[0], wall,
                     {"runs": len(runs), **headline},
                     {"window": WINDOW, "train": TRAIN, "interrupted": True,
                      "summarized_from": "the JSON lines the interrupted run printed",
                      "runs_command": args.log_command},
                     top={"runs": runs}, table_md=table)
        print(table)
        return

    t0 = time.perf_counter()
    runs = []
    for dataset in args.datasets:
        prepared = prepare_dataset(dataset, args.data_dir, args.work, seed=0)
        from recfm.prepare import PreparedDataset
        tok = PreparedDataset.load(prepared).tokenizer
        facets = list(tok.facets) + ["value_bucket"] + (["gap_bucket"] if tok.has_time else [])
        for variant, overrides in variants(dataset, facets, tok.facets.get("action", [])).items():
            if variant not in ONLY.get(dataset, (variant,)):
                continue
            seeds = args.seeds if dataset == "synthetic" and variant in SEEDED else args.seeds[:1]
            for seed in seeds:
                r = run_variant(prepared, args.work, dataset, variant, overrides, seed)
                print(json.dumps(r), flush=True)
                runs.append(r)
        # written after every dataset, so a long ablation leaves its finished part behind
        headline, table = summarize(runs)
        done = sorted({r["dataset"] for r in runs}, key=args.datasets.index)
        write_result("objectives", ", ".join(done), args.seeds[0], time.perf_counter() - t0,
                     {"runs": len(runs), **headline}, {"window": WINDOW, "train": TRAIN},
                     top={"runs": runs}, table_md=table)
    print(table)


if __name__ == "__main__":
    main()
