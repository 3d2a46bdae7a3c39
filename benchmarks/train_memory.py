"""CPU training speed and peak memory of the default recipe against the steps before it.

    python -m benchmarks.train_memory [--dataset beauty] [--epochs 1] [--repeats 2]

Each training runs in its own process (peak RSS is per process) with the sequential
benchmark's configuration for the dataset; the variants alternate, ``--repeats`` times
each, in one invocation:

- ``plain``: the plain full-softmax loss holding tokens × items logits (``loss_chunk = 0``),
  torch's Bernoulli dropout, whole batches;
- ``chunked``: the chunked loss (:class:`recfm.model.heads.ChunkedSoftmaxLoss`) with 4M
  logits per chunk, torch's dropout, whole batches: the default before micro-batches and
  the CPU dropout masks, validating 512 users at a time;
- ``default``: today's defaults (chunked loss, :mod:`recfm.model.dropout`, micro-batches of
  ``TrainConfig.micro_batch_tokens`` positions, half the logits per loss chunk, 128 users
  per validation batch).

All use fused AdamW. Writes ``benchmarks/results/train-memory-<dataset>.json``: tokens/s,
peak RSS and validation NDCG@10 of each, the default's ratios to ``chunked``, and its
training FLOP/s as a share of the fp32 matmul peak measured in the same invocation.
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

from benchmarks.common import ROOT, SHARED_DATA, matmul_peak_gflops, peak_rss_mb, write_result
from benchmarks.sequential import DATASETS, MODEL, TRAIN, training_flops_per_token

VARIANTS: dict[str, tuple[dict, dict]] = {  # name: (model overrides, train overrides)
    "plain": ({"loss_chunk": 0, "fast_dropout": False}, {"micro_batch_tokens": 0}),
    "chunked": ({"loss_chunk": 1 << 22, "fast_dropout": False},
                {"micro_batch_tokens": 0, "eval_batch_size": 512}),
    "default": ({}, {}),
}


def child(prepared: Path, run: Path, variant: str, epochs: int, threads: int) -> None:
    """One training run; prints its tokens/s, peak RSS and validation NDCG@10 as JSON."""
    from recfm.model.config import ModelConfig
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    model_kw, train_kw = VARIANTS[variant]
    model = ModelConfig(**{**MODEL["default"], **model_kw})
    tcfg = TrainConfig(**{**TRAIN["default"], **train_kw, "epochs": epochs, "threads": threads,
                          "tensorboard": False})
    res = train(prepared, run, model, tcfg, evaluate_test=False)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    tokens_per_s = statistics.mean(float(r["tokens_per_s"]) for r in rows)
    from recfm.model.foundation import FoundationModel
    cfg = FoundationModel.from_pretrained(run).cfg
    mean_len = float(PreparedDataset.load(prepared).sequences["length"].mean())
    flops = training_flops_per_token(cfg, min(mean_len, cfg.max_len)) * tokens_per_s
    print(json.dumps({"tokens_per_s": tokens_per_s, "peak_rss_mb": peak_rss_mb(),
                      "train_gflops_per_s": flops / 1e9,
                      "valid_ndcg@10": res.best_valid["ndcg@10"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    ap.add_argument("--child", nargs=3, metavar=("PREPARED", "RUN", "VARIANT"))
    args = ap.parse_args()
    if args.child:
        prepared, run, variant = args.child
        return child(Path(prepared), Path(run), variant, args.epochs, args.threads)

    import torch

    from recfm.tokens.prepare import load_raw, prepare
    from recfm.train.config import TrainConfig

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()  # the MFU denominator, on the threads the runs use
    rel, fmt = DATASETS[args.dataset]
    work = args.work / f"train-memory-{args.dataset}"
    prepare(load_raw(args.data_dir / rel, fmt=fmt), work / "prepared", overwrite=True)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for i in range(args.repeats):
        for name in VARIANTS:
            run = work / f"{name}-{i}"
            subprocess.run(["rm", "-rf", str(run)], check=True)  # this benchmark's own folder
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.train_memory", "--epochs", str(args.epochs),
                 "--threads", str(args.threads), "--child", str(work / "prepared"), str(run),
                 name], check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(name, i, runs[name][-1], flush=True)

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[name])

    metrics = {f"{name}_{key}": mean(name, key) for name in runs
               for key in ("tokens_per_s", "peak_rss_mb", "valid_ndcg@10")}
    metrics.update({
        "tokens_per_s_ratio": metrics["default_tokens_per_s"] / metrics["chunked_tokens_per_s"],
        "peak_rss_ratio": metrics["default_peak_rss_mb"] / metrics["chunked_peak_rss_mb"],
        "peak_rss_mb": metrics["default_peak_rss_mb"],
        "tokens_per_s": metrics["default_tokens_per_s"],
        "train_gflops_per_s": mean("default", "train_gflops_per_s"),
        "matmul_peak_gflops": peak,
        "mfu_pct": 100 * mean("default", "train_gflops_per_s") / peak,
    })

    def each(name: str, key: str) -> str:
        return ", ".join(f"{r[key]:,.0f}" for r in runs[name])

    table = ("| variant | tokens/s (each run) | peak RSS MB (each run) | valid NDCG@10 |\n"
             "|---|---|---|---|\n" + "\n".join(
                 f"| {name} | {each(name, 'tokens_per_s')} | {each(name, 'peak_rss_mb')} | "
                 f"{mean(name, 'valid_ndcg@10'):.4f} |" for name in runs))
    write_result(f"train-memory-{args.dataset}", args.dataset, TrainConfig().seed,
                 time.perf_counter() - t0, metrics,
                 extra={"runs": runs, "variants": VARIANTS, "epochs": args.epochs,
                        "threads": args.threads, "model": MODEL["default"],
                        "train": TRAIN["default"],
                        "micro_batch_tokens": TrainConfig().micro_batch_tokens},
                 table_md=table)


if __name__ == "__main__":
    main()
