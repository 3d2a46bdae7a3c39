"""The command line as a user meets it: start-up time, and batch recommendations for every
user of Beauty.

    python -m benchmarks.cli [--repeats 10] [--k 100] [--train-minutes 3] [--run RUN]

(a) ``recfm --help`` and an argument error (``recfm recommend`` with no run), each timed
``--repeats`` times in a fresh process: the median wall time. (b) ``recfm recommend RUN
--users all --k 100 --out recs.parquet`` on S3-Rec Beauty: all users, the users/s that the
command reports measured around the whole command (model loading included) and the
command's own figure. RUN: a run trained on Beauty (by default one is trained here with
``recfm train``'s default recipe for ``--train-minutes``). Writes
``benchmarks/results/cli.json``; result keys ``help_s`` and ``recommend_all_users_per_s``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, SHARED_DATA, write_result

RECFM = [sys.executable, "-m", "recfm"]


def timed(args: list[str], cwd: Path, ok: bool = True) -> tuple[float, str]:
    """Wall seconds of one ``recfm`` command in a fresh process, and its output."""
    t0 = time.perf_counter()
    res = subprocess.run(RECFM + args, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if ok and res.returncode != 0:
        raise SystemExit(f"recfm {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
    if not ok and res.returncode != 2:
        raise SystemExit(f"recfm {' '.join(args)}: expected exit status 2, found "
                         f"{res.returncode}")
    return wall, res.stdout + res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--train-minutes", type=float, default=3.0)
    ap.add_argument("--run", type=Path, help="A run trained on Beauty (default: train one).")
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "cli")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)

    help_s = [timed(["--help"], args.work)[0] for _ in range(args.repeats)]
    error_s = [timed(["recommend"], args.work, ok=False)[0] for _ in range(args.repeats)]
    print(f"--help {statistics.median(help_s):.3f} s, argument error "
          f"{statistics.median(error_s):.3f} s", flush=True)

    run = args.run.resolve() if args.run else None
    train_s = None
    if run is None:
        prepared, run = args.work / "beauty", args.work / "run"
        for path in (prepared, run):  # this benchmark's own folders
            shutil.rmtree(path, ignore_errors=True)
        timed(["prepare", "--events", str(args.data_dir / "s3rec" / "Beauty.txt"), "--out",
               str(prepared)], args.work)
        train_s, _ = timed(["train", str(prepared), "--out", str(run), "--max-minutes",
                            str(args.train_minutes)], args.work)
    out = args.work / "recs.parquet"
    out.unlink(missing_ok=True)  # this benchmark's own output
    wall, printed = timed(["recommend", str(run), "--users", "all", "--k", str(args.k),
                           "--out", str(out)], args.work)
    m = re.search(r"([\d,]+)\s+recommendations\s+for\s+([\d,]+)\s+users\s+in\s+([\d.]+)"
                  r"\s+s\s+\(([\d,]+)\s+users/s\)", printed)
    if m is None:
        raise SystemExit(f"recommend printed no summary:\n{printed}")
    rows, users = (int(m.group(i).replace(",", "")) for i in (1, 2))
    metrics = {
        "help_s": statistics.median(help_s),
        "argument_error_s": statistics.median(error_s),
        "recommend_all_users_per_s": users / wall,
        "recommend_users": users,
        "recommend_rows": rows,
        "recommend_wall_s": wall,
        "recommend_scoring_users_per_s": int(m.group(4).replace(",", "")),
    }
    print(metrics, flush=True)
    summary = json.loads((run / "summary.json").read_text())
    # seed: recfm train's default (the run this script trains; a --run brings its own)
    write_result("cli", "beauty", 0 if train_s is not None else None, time.perf_counter() - t0,
                 metrics, extra={
        "help_s_each": help_s, "argument_error_s_each": error_s, "k": args.k,
        "run": str(run), "train_s": train_s, "train_minutes": args.train_minutes,
        "run_train_s": summary.get("train_s"), "run_epochs": summary.get("epochs_run"),
        "run_stop_reason": summary.get("stop_reason"),
        "run_test": {k: summary["test"][k] for k in ("ndcg@10", "hr@10")}})


if __name__ == "__main__":
    main()
