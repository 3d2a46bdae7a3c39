"""Shared by every benchmark: the result JSON and its row in RESULTS.md.

Each benchmark writes ``benchmarks/results/<name>.json`` (format in
../shared/docs/BENCHMARKS.md); RESULTS.md is regenerated from all result files, so a
re-run replaces its own row and never edits another's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from recfm.io import atomic_write_bytes, atomic_write_json
from recfm.train.run import machine_info

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED_DATA = ROOT.parent.parent / "shared" / "data"

# Headline metrics shown in RESULTS.md, in this order, when a result has them.
SHOWN = ("ndcg@10", "hr@10", "mrr", "popularity_ndcg@10", "wall_s_prepare", "events_per_s",
         "peak_rss_mb", "s_per_epoch", "tokens_per_s", "mfu_pct", "cache_speedup",
         "add_items_1000_s", "help_s", "recommend_all_users_per_s", "speedup")
# Nested metric groups shown as ``group.key`` (the serving benchmark's result keys).
SHOWN_GROUPS = ("recommend_12k", "hnsw_1m", "reload")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would include a parent's at fork time)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def command_line() -> str:
    return "python -m benchmarks." + Path(sys.argv[0]).stem + " " + " ".join(sys.argv[1:])


def matmul_peak_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's measured fp32 matmul throughput (GFLOP/s), the MFU denominator."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def write_result(name: str, dataset: str, seed: int | None, wall_s: float,
                 metrics: dict[str, Any], extra: dict[str, Any] | None = None,
                 top: dict[str, Any] | None = None, table_md: str | None = None) -> Path:
    """Write ``results/<name>.json`` and regenerate RESULTS.md.

    ``top``: more top-level keys a benchmark's result format asks for (e.g. ``runs``);
    ``table_md``: a Markdown table shown under the benchmark's own heading in RESULTS.md.
    """
    result = {
        "name": name,
        "dataset": dataset,
        "command": command_line(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "seed": seed,
        "wall_s": round(wall_s, 2),
        "metrics": metrics,
        "extra": extra or {},
        **(top or {}),
    }
    if table_md:
        result["table_md"] = table_md
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, result)
    render_results_md()
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_results_md() -> None:
    rows = []
    for p in sorted(RESULTS.glob("*.json")):
        r = json.loads(p.read_text())
        m = r.get("metrics", {})
        shown = ", ".join([f"{k} {_fmt(m[k])}" for k in SHOWN if k in m]
                          + [f"{g}.{k} {_fmt(v)}" for g in SHOWN_GROUPS
                             if isinstance(m.get(g), dict) for k, v in m[g].items()])
        mach = r.get("machine", {})
        machine = f"{mach.get('cores')} cores, {mach.get('gpu') or 'CPU'} ({mach.get('cpu')})"
        rows.append(f"| {r['name']} | {r['dataset']} | {shown} | {r['wall_s']:,.1f} | {machine} "
                    f"| {r['date'][:10]} | {r.get('seed')} | `{r['command']}` |")
    text = ("# Benchmark results\n\n"
            "Generated from `benchmarks/results/*.json` by `benchmarks/common.py`; every number "
            "was measured by the command in its row. Protocol: leave-one-out, full ranking over "
            "all items, seen items excluded (../shared/docs/BENCHMARKS.md).\n\n"
            "| name | dataset | metrics | wall s | machine | date | seed | command |\n"
            "|---|---|---|---:|---|---|---|---|\n" + "\n".join(rows) + "\n")
    for p in sorted(RESULTS.glob("*.json")):
        r = json.loads(p.read_text())
        if r.get("table_md"):
            text += f"\n## {r['name']}\n\n`{r['command']}` — {r['date'][:10]}\n\n{r['table_md']}\n"
    notes = ROOT / "NOTES.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    atomic_write_bytes(ROOT / "RESULTS.md", text.encode())
