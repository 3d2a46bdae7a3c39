"""Which windows of a long history to train on: the last one only (``truncate``, the
default) or windows redrawn each epoch so every target trains once per epoch (``random``).

    python -m benchmarks.window_ablation [--datasets ml-latest-small lastfm]
        [--seeds 0 1 2] [--max-minutes 4]

Each (dataset, window, seed) trains the sequential benchmark's configuration for the
dataset under the same time budget, in one invocation; the choice is judged on validation
NDCG@10 (test shown beside it). Writes ``benchmarks/results/window-ablation.json`` with
each run and the seeds' mean ± std per dataset and window.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, SHARED_DATA, write_result
from benchmarks.sequential import DATASETS, MODEL, TRAIN

WINDOWS = ("truncate", "random")


def one(prepared: Path, run: Path, dataset: str, window: str, seed: int,
        minutes: float) -> dict:
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    shutil.rmtree(run, ignore_errors=True)  # this benchmark's own run folder
    model = ModelConfig(**{**MODEL["default"], **MODEL.get(dataset, {})})
    tcfg = TrainConfig(**{**TRAIN["default"], "seed": seed, "max_minutes": minutes,
                          "window": window, "threads": 2, "tensorboard": False})
    res = train(prepared, run, model, tcfg)
    summary = json.loads((run / "summary.json").read_text())
    return {"dataset": dataset, "window": window, "seed": seed,
            "valid_ndcg@10": res.best_valid["ndcg@10"], "valid_hr@10": res.best_valid["hr@10"],
            "ndcg@10": res.test["ndcg@10"], "hr@10": res.test["hr@10"],
            "epochs": res.epochs_run, "best_epoch": res.best_epoch,
            "train_s": summary["train_s"], "stop_reason": res.stop_reason}


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "lastfm"],
                    choices=sorted(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-minutes", type=float, default=4.0)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "window-ablation")
    args = ap.parse_args()
    from recfm.tokens.prepare import load_raw, prepare

    t0 = time.perf_counter()
    runs = []
    for dataset in args.datasets:
        rel, fmt = DATASETS[dataset]
        prepared = args.work / dataset / "prepared"
        prepare(load_raw(args.data_dir / rel, fmt=fmt), prepared, overwrite=True)
        for seed in args.seeds:
            for window in WINDOWS:  # alternating, so drift on the machine hits both
                runs.append(one(prepared, args.work / dataset / f"{window}-{seed}", dataset,
                                window, seed, args.max_minutes))
                print(json.dumps(runs[-1]), flush=True)
    rows, metrics = [], {}
    keys = ("valid_ndcg@10", "valid_hr@10", "ndcg@10", "hr@10")
    for dataset in args.datasets:
        for window in WINDOWS:
            mine = [r for r in runs if r["dataset"] == dataset and r["window"] == window]
            metrics[f"{dataset}_{window}_valid_ndcg@10"] = statistics.mean(
                r["valid_ndcg@10"] for r in mine)
            rows.append(f"| {dataset} | {window} | " + " | ".join(
                mean_std([r[k] for r in mine]) for k in keys)
                + f" | {statistics.mean(r['epochs'] for r in mine):.0f} | "
                f"{', '.join(str(r['best_epoch']) for r in mine)} |")
    table = ("| data | window | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | "
             "epochs (mean) | best epoch per seed |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join(rows) + f"\n\nEach run: {args.max_minutes:g} min of training on 2 "
             f"threads, seeds {', '.join(map(str, args.seeds))}; mean ± std over seeds.")
    write_result("window-ablation", " + ".join(args.datasets),
                 ", ".join(map(str, args.seeds)), time.perf_counter() - t0,
                 metrics, extra={"runs": runs, "max_minutes": args.max_minutes,
                                 "model": MODEL, "train": TRAIN["default"]}, table_md=table)


if __name__ == "__main__":
    main()
