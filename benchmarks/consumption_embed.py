"""Embedding store on the synthetic world: users/s, publish time, readers during a publish.

    python -m benchmarks.consumption_embed [--threads 2] [--work benchmarks/.work/consumption]

Part ``embed`` of ``benchmarks/consumption.py`` (which calls :func:`run_embed` and writes
the result); run alone, it prints the result dict. The run is the consumption benchmark's
shared base run (``WORK/base-run``) when it is there; otherwise a small run of the demo
model is trained on the default synthetic world (``recfm data synth``: seed 0, 5,000
users, 2,000 items) with a 2-minute budget into ``WORK/embed-run`` and reused after.

Measured, end to end through :func:`recfm.store.embed`: two publishes of every user and
item into a fresh LanceDB store (load the model, read the tokens, encode all users, write
both tables, swap the manifest). During the second publish a reader thread loops over
whole-table reads and checks every answer is one version with the row count its metadata
gives (``reads_during_embed``, ``bad_reads`` — must be 0). Then the stability report of
the two versions (the same model twice: cosine 1, top-10 overlap 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT

log = logging.getLogger("benchmarks.consumption_embed")

DEFAULT_WORK = ROOT / ".work" / "consumption"
SEED = 0
TRAIN_MINUTES = 2.0


def embed_run(work_dir: Path, threads: int) -> tuple[Path, Path]:
    """(run, prepared dataset): the shared base run if present, else a small one of our own."""
    from recfm.data import synthetic
    from recfm.cli.demo import DEMO_MODEL
    from recfm.tokens.prepare import prepare
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    prepared = work_dir / "prepared"
    shared = work_dir / "base-run"
    if (shared / "summary.json").is_file() and (prepared / "tokens.parquet").is_file():
        return shared, prepared
    if not (prepared / "tokens.parquet").is_file():
        cfg = synthetic.SynthConfig(seed=SEED)
        synthetic.write_world(synthetic.generate(cfg), work_dir / "world", cfg)
        prepare(synthetic.load_world(work_dir / "world"), prepared)
    run = work_dir / "embed-run"
    if not (run / "summary.json").is_file():
        partial = work_dir / ".embed-run.partial"
        shutil.rmtree(partial, ignore_errors=True)
        tcfg = TrainConfig(epochs=30, batch_size=128, lr=2e-3, warmup_steps=50, patience=4,
                           max_minutes=TRAIN_MINUTES, seed=SEED, threads=threads,
                           tensorboard=False)
        train(prepared, partial, DEMO_MODEL, tcfg, evaluate_test=False,
              command="benchmarks.consumption_embed")
        shutil.rmtree(run, ignore_errors=True)
        os.replace(partial, run)
    return run, prepared


def _reader_loop(path: Path, stop: threading.Event, counts: dict[str, int]) -> None:
    """Whole-table reads until ``stop``; a read is bad if it mixes versions or is partial."""
    from recfm.store import open_store

    reader = open_store(path)
    while not stop.is_set():
        try:
            users = reader.table("users")
            v = int(users["version"][0])
            meta = {m.version: m for m in reader.versions()}
            ok = bool((users["version"] == v).all()) and (v not in meta
                                                          or meta[v].users == users.height)
            counts["versions_seen"] |= 1 << v
        except Exception as e:  # noqa: BLE001 - a failed read is a bad read, reported
            log.error("read failed: %s", e)
            ok = False
        counts["reads"] += 1
        if not ok:
            counts["bad"] += 1


def run_embed(work_dir: Path, threads: int) -> dict[str, Any]:
    """Time ``embed`` end to end twice into a fresh store; see the module docstring."""
    from recfm.store import embed, open_store

    torch.set_num_threads(threads)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    run, prepared = embed_run(work_dir, threads)
    path = work_dir / "embed-store"
    shutil.rmtree(path, ignore_errors=True)
    store = open_store(path, keep=3)

    t = time.perf_counter()
    first = embed(run, prepared, store)
    first_s = time.perf_counter() - t

    stop = threading.Event()
    counts = {"reads": 0, "bad": 0, "versions_seen": 0}
    reader = threading.Thread(target=_reader_loop, args=(path, stop, counts))
    reader.start()
    t = time.perf_counter()
    second = embed(run, prepared, store)
    second_s = time.perf_counter() - t
    stop.set()
    reader.join()

    t = time.perf_counter()
    diff = store.diff()
    diff_s = time.perf_counter() - t
    seen = [v for v in range(1, 3) if counts["versions_seen"] >> v & 1]
    return {
        "users_per_s": first.extra["users_per_s"],
        "users_per_s_second": second.extra["users_per_s"],
        "users": first.users,
        "items": first.items,
        "dim": first.dim,
        "publish_s": first.extra["publish_s"],  # includes importing LanceDB, creating the store
        "publish_s_second": second.extra["publish_s"],
        "end_to_end_s": round(first_s, 3),
        "end_to_end_s_second": round(second_s, 3),
        "versions": len(store.versions()),
        "reads_during_embed": counts["reads"],
        "versions_seen_by_reader": seen,
        "bad_reads": counts["bad"],
        "diff_s": round(diff_s, 3),
        "diff_cosine_median": diff["cosine"]["median"],
        "diff_top10_overlap_mean": diff["top_overlap"]["mean"],
        "threads": threads,
        "run": str(run),
        "model_version": first.model_version,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run_embed(args.work, args.threads), indent=2))


if __name__ == "__main__":
    main()
