"""The chunked full-softmax loss against the plain one: training speed and peak memory.

    python -m benchmarks.softmax_loss [--dataset beauty] [--epochs 1] [--repeats 2]

Each training runs in its own process (peak RSS is per process) with the sequential
benchmark's configuration for the dataset; the plain loss (``model.loss_chunk = 0``) and
the default chunked one alternate, ``--repeats`` times each, in one invocation. Writes
``benchmarks/results/softmax-loss-<dataset>.json``: tokens/s and peak RSS of each, their
ratios, and the validation NDCG@10 of each (the losses are equal to rounding).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, SHARED_DATA, peak_rss_mb, write_result
from benchmarks.sequential import DATASETS, MODEL, TRAIN


def child(prepared: Path, run: Path, chunk: int, epochs: int, threads: int) -> None:
    """One training run; prints its tokens/s, peak RSS and validation NDCG@10 as JSON."""
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    model = ModelConfig(**{**MODEL["default"], "loss_chunk": chunk})
    tcfg = TrainConfig(**{**TRAIN["default"], "epochs": epochs, "threads": threads,
                          "tensorboard": False})
    res = train(prepared, run, model, tcfg, evaluate_test=False)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    print(json.dumps({"tokens_per_s": statistics.mean(float(r["tokens_per_s"]) for r in rows),
                      "peak_rss_mb": peak_rss_mb(),
                      "valid_ndcg@10": res.best_valid["ndcg@10"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    ap.add_argument("--child", nargs=3, metavar=("PREPARED", "RUN", "CHUNK"))
    args = ap.parse_args()
    if args.child:
        prepared, run, chunk = args.child
        return child(Path(prepared), Path(run), int(chunk), args.epochs, args.threads)

    from recfm.model.config import ModelConfig
    from recfm.tokens.prepare import load_raw, prepare

    t0 = time.perf_counter()
    rel, fmt = DATASETS[args.dataset]
    work = args.work / f"softmax-{args.dataset}"
    prepare(load_raw(args.data_dir / rel, fmt=fmt), work / "prepared", overwrite=True)
    default_chunk = ModelConfig().loss_chunk
    runs: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for i in range(args.repeats):
        for name, chunk in (("plain", 0), ("chunked", default_chunk)):
            run = work / f"{name}-{i}"
            subprocess.run(["rm", "-rf", str(run)], check=True)  # this benchmark's own folder
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.softmax_loss", "--epochs", str(args.epochs),
                 "--threads", str(args.threads), "--child", str(work / "prepared"), str(run),
                 str(chunk)], check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(name, i, runs[name][-1], flush=True)

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[name])

    metrics = {f"{name}_{key}": mean(name, key) for name in runs
               for key in ("tokens_per_s", "peak_rss_mb", "valid_ndcg@10")}
    metrics["tokens_per_s_ratio"] = metrics["chunked_tokens_per_s"] / metrics["plain_tokens_per_s"]
    metrics["peak_rss_ratio"] = metrics["chunked_peak_rss_mb"] / metrics["plain_peak_rss_mb"]
    metrics["peak_rss_mb"] = metrics["chunked_peak_rss_mb"]
    metrics["tokens_per_s"] = metrics["chunked_tokens_per_s"]
    def each(name: str, key: str) -> str:
        return ", ".join(f"{r[key]:,.0f}" for r in runs[name])

    table = ("| loss | tokens/s (each run) | peak RSS MB (each run) | valid NDCG@10 |\n"
             "|---|---|---|---|\n" + "\n".join(
                 f"| {name} | {each(name, 'tokens_per_s')} | {each(name, 'peak_rss_mb')} | "
                 f"{mean(name, 'valid_ndcg@10'):.4f} |" for name in runs))
    write_result(f"softmax-loss-{args.dataset}", args.dataset, 0, time.perf_counter() - t0,
                 metrics, extra={"runs": runs, "loss_chunk": default_chunk,
                                 "epochs": args.epochs, "threads": args.threads,
                                 "model": MODEL["default"], "train": TRAIN["default"]},
                 table_md=table)


if __name__ == "__main__":
    main()
