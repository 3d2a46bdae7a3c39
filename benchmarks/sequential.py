"""Next-item quality and training speed on public sequential-recommendation datasets.

    python -m benchmarks.sequential --dataset beauty [--max-minutes 60] [--seed 0]

Protocol (../shared/docs/BENCHMARKS.md): leave-one-out, validation target for early
stopping and model selection only, full ranking over every item, seen items excluded.
Writes ``benchmarks/results/sequential-<dataset>.json`` and its RESULTS.md row: test
metrics of the model and of the popularity / most-recent baselines, epochs, wall time,
s/epoch, tokens/s, training FLOP/s as a percentage of this machine's fp32 matmul peak
(measured in the same run), peak RSS, parameter count, exact command and seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.common import ROOT, SHARED_DATA, matmul_peak_gflops, peak_rss_mb, write_result
from recfm.model.config import ModelConfig
from recfm.train.config import TrainConfig

DATASETS = {
    "beauty": ("s3rec/Beauty.txt", "s3rec"),
    "sports": ("s3rec/Sports_and_Outdoors.txt", "s3rec"),
    "yelp": ("s3rec/Yelp.txt", "s3rec"),
    "lastfm": ("s3rec/LastFM.txt", "s3rec"),
    "games": ("amazon-games-sasrec/Video.txt", "s3rec"),
    "ml-latest-small": ("ml-latest-small", "movielens"),
}

# The configuration each dataset is benchmarked with (chosen on validation NDCG@10).
MODEL = {
    "default": dict(d_model=128, n_layers=2, n_heads=2, max_len=50, dropout=0.3),
    "ml-latest-small": dict(d_model=128, n_layers=2, n_heads=2, max_len=200, dropout=0.2),
}
TRAIN = {
    "default": dict(epochs=400, batch_size=256, lr=1e-3, warmup_steps=100, patience=20),
}


def training_flops_per_token(cfg: ModelConfig, mean_len: float) -> float:
    """≈ 3 × forward FLOPs per token: block matmuls, attention scores, full-softmax logits."""
    d, ff, L = cfg.d_model, cfg.ff_dim, cfg.n_layers
    per_layer = 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * mean_len * d
    logits = 2 * d * (cfg.n_items if cfg.loss == "full" else cfg.n_negatives + 1)
    return 3 * (L * per_layer + logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[],
                    help="override a model/train value, e.g. --set model.d_model=64")
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    args = ap.parse_args()

    from recfm.evaluate.evaluator import evaluate_run
    from recfm.tokens.prepare import load_raw, prepare
    from recfm.train.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    rel, fmt = DATASETS[args.dataset]
    src = args.data_dir / rel
    t0 = time.perf_counter()
    peak = matmul_peak_gflops()
    work = args.work / args.dataset
    prepare(load_raw(src, fmt=fmt), work / "prepared", overwrite=True)

    model_kw = {**MODEL["default"], **MODEL.get(args.dataset, {})}
    train_kw = {**TRAIN["default"], **TRAIN.get(args.dataset, {}), "seed": args.seed,
                "max_minutes": args.max_minutes, "threads": args.threads}
    for item in args.set:
        key, value = item.split("=", 1)
        scope, name = key.split(".", 1)
        target = model_kw if scope == "model" else train_kw
        target[name] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    run = work / f"run-seed{args.seed}"
    shutil.rmtree(run, ignore_errors=True)
    result = train(work / "prepared", run, ModelConfig(**model_kw), TrainConfig(**train_kw),
                   command=None)
    evals = evaluate_run(run, work / "prepared", "test")
    wall = time.perf_counter() - t0

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    s_per_epoch = sum(float(r["epoch_train_s"]) for r in rows) / len(rows)
    tokens_per_s = sum(float(r["tokens_per_s"]) for r in rows) / len(rows)
    from recfm.model.foundation import FoundationModel
    cfg = FoundationModel.from_pretrained(run).cfg
    from recfm.tokens.prepare import PreparedDataset
    mean_len = float(PreparedDataset.load(work / "prepared").sequences["length"].mean())
    flops = training_flops_per_token(cfg, min(mean_len, cfg.max_len)) * tokens_per_s
    m = evals["model"]
    metrics = {k: m[k] for k in m if "@" in k or k == "mrr"}
    metrics.update({
        "popularity_ndcg@10": evals["popularity"]["ndcg@10"],
        "popularity_hr@10": evals["popularity"]["hr@10"],
        "recent_ndcg@10": evals["recent"]["ndcg@10"],
        "valid_ndcg@10": result.best_valid["ndcg@10"],
        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "s_per_epoch": s_per_epoch, "tokens_per_s": tokens_per_s,
        "train_gflops_per_s": flops / 1e9, "matmul_peak_gflops": peak,
        "mfu_pct": 100 * flops / 1e9 / peak, "peak_rss_mb": peak_rss_mb(),
        "n_params": result.n_params,
    })
    extra = {"model_config": asdict(cfg), "train_config": train_kw,
             "baselines": {k: evals[k] for k in ("popularity", "recent")},
             "users_evaluated": m["users"], "targets_seen_before": m["targets_seen_before"],
             "train_s": json.loads((run / "summary.json").read_text())["train_s"]}
    path = write_result(f"sequential-{args.dataset}", str(rel), args.seed, wall, metrics, extra)
    print(json.dumps(json.loads(path.read_text())["metrics"], indent=2))


if __name__ == "__main__":
    main()
