"""Peer comparison: RecTools' SASRec and recfm at the eSASRec paper's configuration, S3-Rec Beauty.

    /work/shared/tools/exclusive .venv-peers/bin/python -m benchmarks.peers \\
        [--rounds 3] [--rectools-batches 20] [--threads 2] [--seed 0]

Both train in ONE invocation, on the same machine and the same leave-one-out training
sequences, with the same thread count, in alternating rounds (recfm, RecTools, recfm, …) so
that load from outside this process, which swings epoch times several-fold on these shared
cores, falls on both alike; each round records the CPU time other processes took meanwhile.
Each is timed per epoch of training (validation excluded) and evaluated on the test split by
recfm's evaluator (full ranking, seen items filtered). Writes ``benchmarks/results/peers.json``
and its RESULTS.md row.

Installation. RecTools 0.13 pins numpy<2 and scipy<1.13, which would downgrade the test venv's
numpy 2, so it lives in its own venv; the ``peers`` extra keeps torch at constraints.txt's pin::

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install -c constraints.txt -e '.[peers]'

This module imports RecTools only inside functions: it imports without it.

Configuration ("the paper configuration"). The eSASRec paper's SASRec + sampled softmax row
("SASRec+SS", Beauty NDCG@10 0.0531) on the S3-Rec data is run from
``configs/paper/loo/s3_vanilla.yaml`` in github.com/blondered/transformer_benchmark (which
pins ``rectools[torch]==0.13.0``): ``SASRecModel`` with n_factors 256, session_max_len 50,
n_blocks 1, n_heads 1, dropout_rate 0.2, loss sampled_softmax, n_negatives 256. It leaves
batch_size and lr at RecTools 0.13's ``SASRecModel`` defaults (batch_size 128, lr 0.001,
Adam betas (0.9, 0.98); ``rectools/models/nn/transformers/sasrec.py``), and that README says
"constant learning_rate 0.001 for all datasets". (The README's hyperparameter table lists
emb_dim 64 for Beauty; the runnable config file says 256, and we follow the file.)
RecTools' feed-forward width is n_factors (``PointWiseFeedForward(n_factors, n_factors)``),
so recfm gets ``d_ff = n_factors``. recfm with the same sizes: ``ModelConfig(d_model=256,
n_layers=1, n_heads=1, d_ff=256, max_len=50, dropout=0.2, loss="sampled", n_negatives=256,
negatives="uniform")``, ``TrainConfig(batch_size=128, lr=1e-3)``. Differences that remain are
each library's own way of doing the same thing: RecTools draws 256 negatives per position
(a (B, 50, 256) logit tensor, every sequence left-padded to 50), recfm shares 256 negatives
across the batch and groups sequences by length instead of padding (its log-Q correction
of uniform negatives shifts every logit alike: none, as in RecTools); recfm keeps its own
AdamW, warm-up and cosine schedule. The paper trains up to 200 epochs; here each trains a
fraction of that, for timing.

What is timed, each round: recfm trains one full epoch from scratch through
``recfm.train.loop.train`` (its ``epoch_train_s``: training batches only, validation excluded);
RecTools' ``SASRecModel.fit`` runs from scratch with a Lightning trainer limited to the first
``--rectools-batches`` batches of its epoch, a callback stamping the end of every batch (data
loading, negative sampling, forward, backward and Adam step included; ``deterministic=True``
as in the paper's config file, which is also the faster setting on these CPUs). recfm_s_per_epoch = mean of
the measured recfm epochs; rectools_s_per_epoch = mean batch time (each fit's first batch left
out as warm-up) × the batches in its epoch: extrapolated from a fraction of an epoch, not a
measured epoch. speedup = rectools_s_per_epoch / recfm_s_per_epoch.

Quality, a sanity check only: the last round's models, recfm after its one epoch, RecTools
after its fraction of an epoch, both on the test split. RecTools is scored through its public
``recommend`` (k = 100, viewed items filtered), mapped to recfm's item indices; an item
outside its top 100 scores -inf, so HR/NDCG@10 are exact and MRR is cut at rank 100.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from benchmarks.common import ROOT, SHARED_DATA, peak_rss_mb, write_result

# configs/paper/loo/s3_vanilla.yaml (blondered/transformer_benchmark) + RecTools 0.13 defaults;
# the keys are SASRecModel's arguments.
PAPER: dict[str, Any] = {"n_factors": 256, "n_blocks": 1, "n_heads": 1, "session_max_len": 50,
                         "dropout_rate": 0.2, "loss": "sampled_softmax", "n_negatives": 256,
                         "batch_size": 128, "lr": 1e-3}
TOP_K = 100  # RecTools recommendations kept per user for its scorer


class OtherLoad:
    """CPU seconds that other processes used on this machine since ``start``: the machine's
    busy time (/proc/stat) less this process's own (/proc/self/stat, all its threads)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0, self.busy0, self.own0 = time.perf_counter(), *self._ticks()

    def _ticks(self) -> tuple[int, int]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0, 0
        busy = sum(cpu) - cpu[3] - cpu[4]  # all but idle and iowait (steal counted as busy)
        return busy, int(own[11]) + int(own[12])  # utime + stime

    def result(self) -> dict[str, float]:
        busy, own = self._ticks()
        wall = time.perf_counter() - self.t0
        other = max(0, (busy - self.busy0) - (own - self.own0)) / self.hz
        return {"wall_s": wall, "other_cpu_s": other,
                "other_cores": other / max(wall, 1e-9)}  # mean cores busy with others' work


def recfm_configs(epochs: int, threads: int, seed: int):
    """recfm's ModelConfig and TrainConfig with the paper configuration's sizes."""
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig

    model = ModelConfig(d_model=PAPER["n_factors"], n_layers=PAPER["n_blocks"],
                        n_heads=PAPER["n_heads"], d_ff=PAPER["n_factors"],
                        max_len=PAPER["session_max_len"], dropout=PAPER["dropout_rate"],
                        loss="sampled", n_negatives=PAPER["n_negatives"], negatives="uniform")
    train = TrainConfig(epochs=epochs, batch_size=PAPER["batch_size"], lr=PAPER["lr"],
                        threads=threads, seed=seed, tensorboard=False)
    return model, train


def run_recfm(prepared: Path, run: Path, threads: int, seed: int, evaluate_test: bool
              ) -> dict[str, Any]:
    """Train recfm for one epoch from scratch; its training seconds (and test metrics)."""
    from recfm.train.loop import train

    shutil.rmtree(run, ignore_errors=True)  # this benchmark's own run folder
    model_cfg, train_cfg = recfm_configs(1, threads, seed)
    load = OtherLoad()
    result = train(prepared, run, model_cfg, train_cfg, evaluate_test=evaluate_test)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return {"epoch_train_s": [float(r["epoch_train_s"]) for r in rows],
            "eval_s": [float(r["eval_s"]) for r in rows], "test": result.test,
            "valid": result.best_valid, "n_params": result.n_params,
            "threads": torch.get_num_threads(), "load": load.result(),
            "model_config": asdict(model_cfg), "train_config": asdict(train_cfg)}


def rectools_interactions(frame: pl.DataFrame):
    """RecTools interactions (pandas) of the ``item`` lists of ``frame``: user = user_idx,
    item = recfm item index, datetime = position in the sequence (keeps the order)."""
    import pandas as pd
    from rectools import Columns

    long = (frame.select("user_idx", "item").explode("item").drop_nulls("item")
            .with_columns(pl.int_range(pl.len()).over("user_idx").alias("pos")))
    return pd.DataFrame({
        Columns.User: long["user_idx"].to_numpy(),
        Columns.Item: long["item"].to_numpy(),
        Columns.Weight: 1.0,
        Columns.Datetime: pd.Timestamp("2000-01-01")
        + pd.to_timedelta(long["pos"].to_numpy(), unit="s"),
    })


class TopKScorer:
    """recfm scorer over precomputed top-k lists: (B, n_items) scores, -inf outside the top k.

    items, scores: (n_rows, k) per row of the evaluated frame (unused slots: item 0, -inf).
    """

    def __init__(self, items: torch.Tensor, scores: torch.Tensor, n_items: int) -> None:
        self.items, self.scores, self.n_items = items, scores, n_items

    def __call__(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.full((len(rows), self.n_items), float("-inf"))  # (B, n_items)
        idx = torch.from_numpy(np.asarray(rows))
        return out.scatter_(1, self.items[idx], self.scores[idx])


def rectools_scorer(model, frame: pl.DataFrame, n_items: int) -> TopKScorer:
    """RecTools' top-``TOP_K`` recommendations for every row of ``frame`` (histories: its
    ``item`` lists, viewed items filtered), as a recfm scorer over recfm item indices."""
    from rectools.dataset import Dataset

    dataset = Dataset.construct(rectools_interactions(frame))
    users = frame["user_idx"].to_numpy()
    reco = model.recommend(users=users, dataset=dataset, k=TOP_K, filter_viewed=True,
                           on_unsupported_targets="warn")
    row_of = {int(u): i for i, u in enumerate(users)}
    items = torch.zeros(len(users), TOP_K, dtype=torch.long)
    scores = torch.full((len(users), TOP_K), float("-inf"))
    r = torch.from_numpy(reco["user_id"].map(row_of).to_numpy().astype(np.int64))
    c = torch.from_numpy(reco["rank"].to_numpy().astype(np.int64) - 1)
    items[r, c] = torch.from_numpy(reco["item_id"].to_numpy().astype(np.int64))
    scores[r, c] = torch.from_numpy(reco["score"].to_numpy().astype(np.float32))
    return TopKScorer(items, scores, n_items)


def fit_rectools(dataset, n_batches: int, threads: int, seed: int) -> tuple[Any, dict]:
    """RecTools' SASRec fitted from scratch on the first ``n_batches`` batches of one epoch
    of ``dataset``; the model and its per-batch seconds and batches per epoch."""
    import pytorch_lightning as lightning
    from pytorch_lightning import Callback, Trainer
    from rectools.models import SASRecModel

    class BatchClock(Callback):
        """perf_counter at the start of the epoch and at the end of every training batch."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.stamps = [time.perf_counter()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.stamps.append(time.perf_counter())

    def trainer() -> Trainer:
        return Trainer(max_epochs=1, limit_train_batches=n_batches, accelerator="cpu",
                       devices=1, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False,
                       deterministic=True, callbacks=[BatchClock()])

    torch.set_num_threads(threads)
    lightning.seed_everything(seed, verbose=False)
    load = OtherLoad()
    model = SASRecModel(**PAPER, deterministic=True, get_trainer_func=trainer)
    model.fit(dataset)
    clock = next(c for c in model.fit_trainer.callbacks if isinstance(c, BatchClock))
    # fit() deep-copies the trainer, so the stamps are in fit_trainer's copy of the callback
    return model, {"batch_s": np.diff(clock.stamps).tolist(),
                   "batches_per_epoch": len(model.data_preparator.get_dataloader_train()),
                   "threads": torch.get_num_threads(), "load": load.result(),
                   "n_params": sum(p.numel() for p in model.torch_model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds: one recfm epoch, then RecTools' batches")
    ap.add_argument("--rectools-batches", type=int, default=20,
                    help="RecTools batches per round (the first left out as warm-up), ≥ 2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    args = ap.parse_args()
    if args.rectools_batches < 2 or args.rounds < 1:
        ap.error("--rectools-batches must be at least 2 (the first is warm-up), --rounds ≥ 1")

    import pytorch_lightning
    import rectools
    from rectools.dataset import Dataset

    import recfm
    from recfm.data.splits import leave_one_out
    from recfm.evaluate.evaluator import evaluate_scorer
    from recfm.tokens.prepare import PreparedDataset, load_raw, prepare

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = args.work / "peers"
    prepare(load_raw(args.data_dir / "s3rec/Beauty.txt", fmt="s3rec"), work / "prepared",
            overwrite=True)
    ds = PreparedDataset.load(work / "prepared")
    split = leave_one_out(ds.sequences)
    n_items = ds.tokenizer.n_items
    dataset = Dataset.construct(rectools_interactions(split.train))

    ours: list[dict[str, Any]] = []
    peer: list[dict[str, Any]] = []
    for i in range(args.rounds):
        last = i == args.rounds - 1
        ours.append(run_recfm(work / "prepared", work / "recfm-run", args.threads, args.seed,
                              evaluate_test=last))
        print(f"round {i} recfm epoch_train_s {ours[-1]['epoch_train_s']} "
              f"other cores {ours[-1]['load']['other_cores']:.2f}", flush=True)
        model, timing = fit_rectools(dataset, args.rectools_batches, args.threads, args.seed)
        peer.append(timing)
        print(f"round {i} rectools batch_s {[round(s, 2) for s in timing['batch_s']]} "
              f"other cores {timing['load']['other_cores']:.2f}", flush=True)
    t_eval = time.perf_counter()
    scorer = rectools_scorer(model, split.test, n_items)
    peer_test = evaluate_scorer(scorer, split.test, n_items, PAPER["session_max_len"], ["item"],
                                batch_size=512)
    # the mapping's check: HR@10 read straight off RecTools' own top 10 must be the same
    targets = torch.from_numpy(split.test["target"].to_numpy().astype(np.int64))
    peer_test["hr@10_from_recommend"] = float(
        (scorer.items[:, :10] == targets[:, None]).any(1).double().mean())
    peer_eval_s = time.perf_counter() - t_eval
    ours_test = ours[-1]["test"]

    epochs = [s for r in ours for s in r["epoch_train_s"]]
    batches = [s for r in peer for s in r["batch_s"][1:]]  # each fit's first batch: warm-up
    per_epoch = peer[-1]["batches_per_epoch"]
    recfm_s, rectools_s = statistics.mean(epochs), statistics.mean(batches) * per_epoch
    metrics = {
        "recfm_s_per_epoch": recfm_s,
        "rectools_s_per_epoch": rectools_s,
        "speedup": rectools_s / recfm_s,
        "speedup_median": statistics.median(batches) * per_epoch / statistics.median(epochs),
        "recfm_ndcg@10": ours_test["ndcg@10"], "recfm_hr@10": ours_test["hr@10"],
        "rectools_ndcg@10": peer_test["ndcg@10"], "rectools_hr@10": peer_test["hr@10"],
        "recfm_epochs_timed": len(epochs), "rectools_batches_timed": len(batches),
        "rectools_batches_per_epoch": per_epoch,
        "rectools_epoch_fraction_trained": args.rectools_batches / per_epoch,
        "threads": args.threads,
        "recfm_other_cores": statistics.mean(r["load"]["other_cores"] for r in ours),
        "rectools_other_cores": statistics.mean(r["load"]["other_cores"] for r in peer),
        "peak_rss_mb": peak_rss_mb(),
    }
    extra = {
        "paper_config": PAPER,
        "paper_config_source": "github.com/blondered/transformer_benchmark "
                               "configs/paper/loo/s3_vanilla.yaml (rectools[torch]==0.13.0); "
                               "batch_size and lr: RecTools 0.13 SASRecModel defaults",
        "versions": {"rectools": rectools.__version__, "torch": torch.__version__,
                     "pytorch_lightning": pytorch_lightning.__version__,
                     "recfm": recfm.__version__, "numpy": np.__version__},
        "timed": "rounds alternate recfm and RecTools. recfm: mean epoch_train_s of one full "
                 "epoch per round (validation excluded); RecTools: mean seconds per training "
                 "batch (each fit's first left out) x its batches per epoch (extrapolated)",
        "other_cores": "mean cores busy with other processes' work during each part "
                       "(/proc/stat less this process)",
        "recfm_rounds": ours, "rectools_rounds": peer,
        "rectools_test": peer_test, "rectools_eval_s": peer_eval_s,
        "rectools_mrr_note": f"RecTools scored from its top {TOP_K}: MRR is cut at rank {TOP_K}",
        "users_evaluated": ours_test["users"],
    }
    table = (
        "Paper configuration (eSASRec's SASRec + sampled softmax on S3-Rec Beauty): d 256, "
        "1 block, 1 head, length 50, dropout 0.2, 256 uniform negatives, batch 128, lr 1e-3; "
        f"{args.threads} threads, {args.rounds} alternating rounds. Speedup (RecTools s/epoch "
        f"÷ recfm s/epoch): **{metrics['speedup']:.1f}×** (medians: "
        f"{metrics['speedup_median']:.1f}×).\n\n"
        "| implementation | s per epoch | timed | other processes (cores) | trained before "
        "test | test NDCG@10 | test HR@10 |\n|---|---:|---|---:|---|---:|---:|\n"
        f"| recfm {recfm.__version__} | {recfm_s:,.1f} | {len(epochs)} full epochs "
        f"({', '.join(f'{s:.1f}' for s in epochs)} s) | {metrics['recfm_other_cores']:.2f} | "
        f"1 epoch | {ours_test['ndcg@10']:.4f} | {ours_test['hr@10']:.4f} |\n"
        f"| RecTools {rectools.__version__} SASRecModel | {rectools_s:,.1f} | {len(batches)} "
        f"batches × {per_epoch} per epoch (extrapolated) | "
        f"{metrics['rectools_other_cores']:.2f} | {args.rectools_batches} of {per_epoch} "
        f"batches | {peer_test['ndcg@10']:.4f} | {peer_test['hr@10']:.4f} |")
    path = write_result("peers", "s3rec/Beauty.txt", args.seed, time.perf_counter() - t0,
                        metrics, extra, table_md=table)
    print(table, "\n", path, flush=True)


if __name__ == "__main__":
    main()
