"""Prepare speed and memory: a 1,000,000-event synthetic log, ml-latest-small and Beauty.

    python -m benchmarks.prepare [--events 1000000] [--data-dir ../shared/data]

Each dataset is prepared in a fresh subprocess so that its peak RSS is its own; the
wall time covers reading, validation, tokenization and writing (not generating the log).
Must show: 1M events in < 30 s with < 2 GiB peak; the real datasets in < 15 s each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED_DATA, write_result

CHILD = """
import json, sys, time
from recfm.tokens.prepare import load_raw, prepare
t = time.perf_counter()
raw = load_raw(sys.argv[1], fmt=sys.argv[3])
report = prepare(raw, sys.argv[2])
wall = time.perf_counter() - t
# VmHWM is this process's own peak (ru_maxrss would include the parent's at fork time).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"wall_s": wall, "peak_rss_mb": int(hwm.split()[1]) / 1024,
                  "events_in": report["events_in"], "tokens_out": report["tokens_out"],
                  "users": report["users"], "items_with_events": report["items_with_events"],
                  "dropped": report["dropped"]}))
"""


def prepare_in_child(src: Path, out: Path, fmt: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), fmt],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from recfm.data import synthetic

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_users = 10_000
        cfg = synthetic.SynthConfig(seed=args.seed, n_users=n_users, n_items=4000,
                                    events_per_user=args.events / n_users)
        t = time.perf_counter()
        world = synthetic.generate(cfg)
        synthetic.write_world(world, tmp / "world", cfg)
        synth_s = time.perf_counter() - t
        del world
        synth = prepare_in_child(tmp / "world", tmp / "prep-synth", "synthetic")
        metrics = {"wall_s_prepare": synth["wall_s"], "peak_rss_mb": synth["peak_rss_mb"],
                   "events_per_s": synth["events_in"] / synth["wall_s"]}
        extra = {"synthetic": {**synth, "generate_s": synth_s}}
        for name, src, fmt in (("ml-latest-small", args.data_dir / "ml-latest-small", "movielens"),
                               ("beauty", args.data_dir / "s3rec" / "Beauty.txt", "s3rec")):
            if src.exists():
                extra[name] = prepare_in_child(src, tmp / f"prep-{name}", fmt)
    wall = time.perf_counter() - t0
    path = write_result("prepare", f"synthetic ({synth['events_in']:,} events)", args.seed, wall,
                        metrics, extra)
    print(json.dumps(json.loads(path.read_text()), indent=2))


if __name__ == "__main__":
    main()
