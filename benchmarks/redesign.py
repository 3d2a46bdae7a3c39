"""Behaviour and speed of the working tree against an earlier commit, in one invocation.

    python -m benchmarks.redesign [--ref 38f5a9c] [--epochs 3] [--threads 2]

Issue 17 (one core) must change no result and cost no speed. For the commit ``--ref`` (a git
worktree under ``.work/redesign/``) and for this tree, each in its own processes on the
same machine: the Beauty benchmark (``benchmarks.sequential``, ``--epochs`` epochs, seed 0)
— test metrics and training tokens/s; ``recfm demo`` without its time budget, on one
thread (see ``UNTIMED_DEMO``) — its ``report.json`` and the sha256 of its weights; a fixed
set of requests to the HTTP app in process (``/v1/recommend`` for known users and
raw-event histories, ``/v1/users/embed``, ``/v1/collections``, ``/v1/items/{id}/similar``),
both trees serving the earlier commit's demo run — the answers, and the p50 of 900
raw-event recommend requests (twice per tree, the order reversed the second time). Writes
``benchmarks/results/redesign.json`` and its RESULTS.md row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "redesign"
VOLATILE = {"took_ms", "latency_ms", "version", "cached", "wall_s", "model_version",
            "previous_version", "load_s"}


def serve_answers(run: str, data: str, out: str, repeats: int = 3) -> None:
    """The fixed request set against ``run`` (imports the recfm on ``PYTHONPATH``)."""
    import numpy as np
    import polars as pl
    from fastapi.testclient import TestClient

    from recfm.serve.app import create_app
    from recfm.serve.config import ServeConfig

    app = create_app(run, ServeConfig(), data)
    users = pl.read_parquet(f"{data}/tokens.parquet")["user_id"].head(30).to_list()
    items = pl.read_parquet(f"{run}/items.parquet")["item_id"].to_list()
    rng = np.random.default_rng(0)
    reqs: list[tuple[str, str, Any]] = [("POST", "/v1/recommend", {"user_id": str(u), "k": 10})
                                        for u in users[:20]]
    for _ in range(20):
        hist = [{"item_id": items[i]} for i in rng.integers(0, len(items), rng.integers(1, 60))]
        reqs += [("POST", "/v1/recommend", {"events": hist, "k": 10}),
                 ("POST", "/v1/users/embed", {"events": hist})]
    for u in users[20:30]:
        reqs += [("POST", "/v1/recommend", {"user_id": str(u), "k": 20,
                                            "events": [{"item_id": items[7]}]}),
                 ("POST", "/v1/collections", {"user_id": str(u), "k": 10})]
    reqs += [("GET", f"/v1/items/{i}/similar?k=10", None) for i in items[:10]]
    times = []
    answers = []
    with TestClient(app) as client:
        for method, path, body in reqs:
            r = client.request(method, path, json=body)
            answers.append({"request": [method, path, body], "status": r.status_code,
                            "body": r.json()})
        for _ in range(repeats):
            for n in range(300):
                body = {"events": [{"item_id": items[(n * 7 + i) % len(items)]}
                                   for i in range(50)], "k": 10}
                t = time.perf_counter()
                client.post("/v1/recommend", json=body)
                times.append(time.perf_counter() - t)
    Path(out).write_text(json.dumps({"answers": answers,
                                     "p50_ms": 1000 * float(np.median(times[300:]))}))


def _stable(x: Any) -> Any:
    """Answers without timings and version tags, floats to 6 significant digits."""
    if isinstance(x, dict):
        return {k: _stable(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_stable(v) for v in x]
    return float(f"{x:.6g}") if isinstance(x, float) else x


def _run(tree: Path, args: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with log.open("w") as f:
        subprocess.run([sys.executable, *args], cwd=tree, env=env, stdout=f,
                       stderr=subprocess.STDOUT, check=True)


def beauty(tree: Path, tag: str, epochs: int, threads: int) -> dict[str, Any]:
    """Test metrics and tokens/s of a short Beauty run (the tree's own benchmark script)."""
    _run(tree, ["-m", "benchmarks.sequential", "--dataset", "beauty", "--seed", "0",
                "--data-dir", str(ROOT.parent / "shared" / "data"),
                "--threads", str(threads), "--set", f"train.epochs={epochs}",
                "--work", str(WORK / tag)], WORK / f"{tag}-beauty.log")
    result = json.loads((tree / "benchmarks/results/sequential-beauty.json").read_text())
    subprocess.run(["git", "checkout", "--", "benchmarks/results/sequential-beauty.json",
                    "benchmarks/RESULTS.md"], cwd=tree, check=True)
    return result["metrics"]


# recfm demo without its 3-minute budget (the budget fits the learning-rate schedule to the
# first epoch's wall time, so two runs of the real command may differ by machine load) and on
# one thread (two threads' reductions are not bit-reproducible from run to run on CPU).
UNTIMED_DEMO = """
import dataclasses, importlib, sys, torch
torch.set_num_threads(1)
try:
    demo = importlib.import_module("recfm.cli.demo")
except ImportError:  # before the redesign
    demo = importlib.import_module("recfm.demo")
demo.DEMO_TRAIN = dataclasses.replace(demo.DEMO_TRAIN, max_minutes=None)
demo.run_demo(sys.argv[1])
"""


def demo(tree: Path, tag: str) -> dict[str, Any]:
    """The demo's report and the sha256 of the weights it trained."""
    _run(tree, ["-c", UNTIMED_DEMO, str(WORK / f"{tag}-demo")], WORK / f"{tag}-demo.log")
    run = WORK / f"{tag}-demo"
    report = json.loads((run / "report.json").read_text())
    weights = hashlib.sha256((run / "run" / "model.safetensors").read_bytes()).hexdigest()
    return {**report, "weights_sha256": weights}


def serve(tree: Path, tag: str, run_tag: str) -> dict[str, Any]:
    out = WORK / f"{tag}-serve.json"
    d = WORK / f"{run_tag}-demo"
    _run(tree, [str(Path(__file__).resolve()), "--serve", str(d / "run"), str(d / "prepared"),
                str(out)], WORK / f"{tag}-serve.log")
    return json.loads(out.read_text())


def compare(trees: dict[str, Path], epochs: int, threads: int) -> dict[str, Any]:
    b = {tag: beauty(tree, tag, epochs, threads) for tag, tree in trees.items()}
    d = {tag: demo(tree, tag) for tag, tree in trees.items()}
    # both trees serve the same run, so the answers differ only if the serving code does
    s = {tag: serve(tree, tag, "before") for tag, tree in trees.items()}
    s2 = {tag: serve(tree, f"{tag}-2", "before") for tag, tree in reversed(trees.items())}
    keys = ("ndcg@10", "hr@10", "mrr", "valid_ndcg@10", "epochs", "best_epoch")
    p50 = {tag: (s[tag]["p50_ms"] + s2[tag]["p50_ms"]) / 2 for tag in trees}
    return {
        "beauty_test_equal": all(round(b["before"][k], 4) == round(b["after"][k], 4)
                                 for k in keys),
        "beauty": {tag: {k: b[tag][k] for k in keys + ("tokens_per_s", "peak_rss_mb")}
                   for tag in trees},
        "tokens_per_s_ratio": b["after"]["tokens_per_s"] / b["before"]["tokens_per_s"],
        "demo_report_equal": _stable(d["before"]) == _stable(d["after"]),
        "demo_weights_equal": d["before"]["weights_sha256"] == d["after"]["weights_sha256"],
        "demo": {tag: {k: d[tag][k] for k in ("model", "train", "weights_sha256")}
                 for tag in trees},
        "serve_answers_equal": _stable(s["before"]["answers"]) == _stable(s["after"]["answers"]),
        "serve_requests": len(s["before"]["answers"]),
        "p50_ms": p50, "p50_ratio": p50["after"] / p50["before"],
    }


def table(result: dict[str, Any]) -> str:
    """The RESULTS.md table of a :func:`compare` result."""
    b, d, p50 = result["beauty"], result["demo"], result["p50_ms"]
    rows = ["| check | before | after | equal / ratio |", "|---|---|---|---|"]
    for k in ("ndcg@10", "hr@10", "mrr", "valid_ndcg@10"):
        label = k.replace("valid_", "validation ") if k.startswith("valid") else f"test {k}"
        rows.append(f"| Beauty {label} | {b['before'][k]:.4f} | {b['after'][k]:.4f} | "
                    f"{round(b['before'][k], 4) == round(b['after'][k], 4)} |")
    rows.append(f"| Beauty training tokens/s | {b['before']['tokens_per_s']:,.0f} | "
                f"{b['after']['tokens_per_s']:,.0f} | {result['tokens_per_s_ratio']:.3f} |")
    rows.append(f"| demo test NDCG@10 | {d['before']['model']['ndcg@10']:.4f} | "
                f"{d['after']['model']['ndcg@10']:.4f} | report {result['demo_report_equal']} |")
    rows.append(f"| demo weights sha256 | {d['before']['weights_sha256'][:12]} | "
                f"{d['after']['weights_sha256'][:12]} | {result['demo_weights_equal']} |")
    rows.append(f"| serving answers ({result['serve_requests']} requests) | | | "
                f"{result['serve_answers_equal']} |")
    rows.append(f"| /v1/recommend p50 ms | {p50['before']:.2f} | {p50['after']:.2f} | "
                f"{result['p50_ratio']:.3f} |")
    rows.append("")
    rows.append("One seed (0) and one run per tree of each part: the equality rows compare the "
                "same seeded work, the ratios are single measurements in this invocation.")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ref", default="38f5a9c", help="the commit to compare with")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", nargs=3, metavar=("RUN", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:  # a child process: the request set against one tree's run
        serve_answers(*args.serve)
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import write_result

    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "base"
    if not base.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.ref], cwd=ROOT,
                       check=True)
    result = compare({"before": base, "after": ROOT}, args.epochs, args.threads)
    metrics = {k: result[k] for k in ("tokens_per_s_ratio", "p50_ratio", "beauty_test_equal",
                                      "demo_report_equal", "demo_weights_equal",
                                      "serve_answers_equal")}
    path = write_result("redesign", f"s3rec/Beauty ({args.epochs} epochs), synthetic demo",
                        0, time.perf_counter() - t0, metrics, {**result, "ref": args.ref},
                        table_md=table(result))
    print(json.dumps(json.loads(path.read_text())["metrics"], indent=2))


if __name__ == "__main__":
    main()
