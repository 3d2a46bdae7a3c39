"""Scaling curve, DDP throughput and streaming memory (issue 9, items 3–6).

    python -m benchmarks.scaling --parts scaling --datasets synthetic --threads 2
    python -m benchmarks.scaling --parts scaling,ddp,streaming --datasets beauty --threads 2

* ``scaling``: one model family (``SIZES``, d_model 16 … 256, 1 … 4 blocks) trained on the
  same data for the **same number of epochs** per size (so the same number of training
  tokens), everything else fixed. Per size: total and non-embedding parameters, training
  tokens, training FLOPs ≈ 6 · N_total · tokens (Kaplan et al. 2020's approximation; with
  tied full-softmax output the item table is a weight matrix of the output layer, so it
  counts), validation cross-entropy of the validation target (full softmax over all items,
  best checkpoint), validation and test NDCG@10 (leave-one-out, full ranking, seen items
  excluded; model selection on validation only). Fits ``val_loss = a · N^(-α)`` (least
  squares in log–log space, r² there) against parameters and against FLOPs, and the same
  with an irreducible term ``E`` (``val_loss − E``, E by grid search), and plots
  ``results/scaling.png``.
* ``ddp``: tokens/s of the same training with 1 and 2 processes (gloo, one thread each)
  through ``torchrun`` on this machine.
* ``streaming``: peak RSS of one pass of training batches read lazily from the token
  Parquet (:mod:`recfm.train.shards`) as the data grows 1×, 4×, 16×, 64×, one subprocess per
  point, next to loading the same file whole.

Results are merged into ``results/scale.json`` (keys ``scaling``, ``scaling_all``, ``ddp``,
``streaming``) beside the attention / catalog parts of ``benchmarks/scale.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA
from benchmarks.scale_tables import tables

# (d_model, n_layers, n_heads): one family, widening and deepening together.
SIZES = [(16, 1, 1), (32, 1, 2), (48, 2, 2), (64, 2, 2), (96, 2, 4), (128, 3, 4),
         (192, 3, 4), (256, 4, 4)]
DATA = {
    "synthetic": dict(sizes=SIZES, epochs=5, n_users=10000,
                      regime="a fixed data budget: 10,000 users, 5 epochs of the same 113k "
                             "training tokens for every size, so large models are "
                             "data-limited"),
    "beauty": dict(sizes=[SIZES[i] for i in (0, 1, 3, 5, 6)], epochs=2,
                   regime="a short budget: 2 epochs (256k tokens) per size, far from "
                          "convergence (benchmarks/sequential.py's best epoch on Beauty is "
                          "11), where a larger model learns more per token"),
}
TRAIN = dict(batch_size=128, lr=2e-3, warmup_steps=50, patience=100, tensorboard=False)


# ----------------------------------------------------------------------------- data


def prepared_dir(dataset: str, work: Path, data_dir: Path, seed: int,
                 n_users: int = 10000) -> Path:
    """The prepared dataset (built once under ``work``)."""
    from recfm.tokens.prepare import load_raw, prepare

    out = work / dataset / "prepared"
    if (out / "tokens.parquet").exists():
        return out
    if dataset == "synthetic":
        from recfm.data import synthetic

        cfg = synthetic.SynthConfig(seed=seed, n_users=n_users)
        synthetic.write_world(synthetic.generate(cfg), work / dataset / "world", cfg, True)
        prepare(synthetic.load_world(work / dataset / "world"), out, overwrite=True)
    elif dataset == "beauty":
        prepare(load_raw(data_dir / "s3rec" / "Beauty.txt", fmt="s3rec"), out, overwrite=True)
    else:
        raise SystemExit(f"unknown dataset {dataset!r}")
    return out


# ----------------------------------------------------------------------------- scaling


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts; embedding = every (Bag) table."""
    emb = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            emb += m.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return total, total - emb


@torch.no_grad()
def validation_loss(model, frame, batch_size: int = 512) -> float:
    """Mean cross-entropy of each validation target given its history (full softmax)."""
    from recfm.tokens.batching import SequenceStore
    from recfm.evaluate.evaluator import model_scorer
    from recfm.evaluate.ranks import frame_targets, scored_batches

    model.eval()
    store = SequenceStore(frame, model.input_columns)
    targets = frame_targets(frame)
    total, n = 0.0, 0
    for rows, logits, _ in scored_batches(model_scorer(model), store, model.cfg.max_len,
                                          batch_size, exclude_seen=False):  # (B, V)
        total += float(torch.nn.functional.cross_entropy(logits, targets[rows],
                                                         reduction="sum"))
        n += len(rows)
    return total / max(n, 1)


def train_tokens_per_epoch(prepared: Path, max_len: int) -> int:
    """Targets one epoch trains on (the loop's truncate windows of the training split)."""
    from recfm.tokens.batching import SequenceStore
    from recfm.data.splits import leave_one_out
    from recfm.tokens.prepare import PreparedDataset

    split = leave_one_out(PreparedDataset.load(prepared).sequences)
    spans = SequenceStore(split.train, ["item"]).spans(max_len + 1, "truncate", min_len=2)
    return int((spans[:, 2] - spans[:, 1] - 1).sum())


def power_law(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares of log y = log a − α log x; r² in log space."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, intercept = np.polyfit(lx, ly, 1)
    pred = intercept + slope * lx
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    return {"exponent": float(-slope), "a": float(math.exp(intercept)),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def power_law_offset(x: list[float], y: list[float]) -> dict[str, float]:
    """``y = E + a · x^(−α)``: E by grid search (0 … 0.999·min y) maximising the log r²."""
    best = {"r2": -float("inf")}
    ymin = min(y)
    for e in np.linspace(0.0, 0.999 * ymin, 400):
        fit = power_law(x, [v - e for v in y])
        if fit["r2"] > best["r2"]:
            best = {**fit, "irreducible": float(e)}
    return best


def run_size(prepared: Path, work: Path, size: tuple[int, int, int], epochs: int, seed: int,
             threads: int | None, minutes: float | None) -> dict[str, Any]:
    from recfm.data.splits import leave_one_out
    from recfm.model.config import ModelConfig
    from recfm.model.foundation import FoundationModel
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    d, layers, heads = size
    run = work / f"d{d}-l{layers}"
    shutil.rmtree(run, ignore_errors=True)
    mcfg = ModelConfig(d_model=d, n_layers=layers, n_heads=heads, max_len=50, dropout=0.1)
    tcfg = TrainConfig(epochs=epochs, seed=seed, threads=threads, max_minutes=minutes, **TRAIN)
    t0 = time.perf_counter()
    result = train(prepared, run, mcfg, tcfg)
    wall = time.perf_counter() - t0
    best = FoundationModel.from_pretrained(run)
    split = leave_one_out(PreparedDataset.load(prepared).sequences)
    total, non_emb = param_counts(best)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    tokens = train_tokens_per_epoch(prepared, mcfg.max_len) * result.epochs_run
    return {
        "d_model": d, "n_layers": layers, "n_heads": heads,
        "params": total, "non_embedding_params": non_emb,
        "epochs": result.epochs_run, "tokens": tokens, "flops": 6.0 * total * tokens,
        "val_loss": validation_loss(best, split.valid),
        "ndcg@10": result.best_valid["ndcg@10"], "valid_ndcg@10": result.best_valid["ndcg@10"],
        "test_ndcg@10": result.test["ndcg@10"] if result.test else None,
        "best_epoch": result.best_epoch,
        "valid_ndcg@10_by_epoch": [round(float(r["valid_ndcg@10"]), 5) for r in rows],
        "tokens_per_s": round(float(np.mean([float(r["tokens_per_s"]) for r in rows])), 1),
        "wall_s": round(wall, 1),
    }


def _fits(points: list[dict]) -> dict[str, Any]:
    loss = [p["val_loss"] for p in points]
    out = {}
    for key in ("params", "non_embedding_params", "flops"):
        x = [p[key] for p in points]
        out[key] = {"plain": power_law(x, loss), "with_irreducible": power_law_offset(x, loss)}
    return out


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Train every size on each dataset of ``args.datasets``; the synthetic one is returned
    (the ``scaling`` key), all of them under ``scaling_all``."""
    datasets = getattr(args, "datasets", None) or ["synthetic"]
    seed = getattr(args, "seed", 0)
    threads = getattr(args, "threads", 2)
    work = Path(getattr(args, "work", None) or ROOT / ".work") / "scaling"
    data_dir = Path(getattr(args, "data_dir", None) or SHARED_DATA)
    minutes = getattr(args, "minutes", None)  # per-size safety cap (None: epochs only)
    results = []
    for name in datasets:
        spec = DATA[name]
        prepared = prepared_dir(name, work, data_dir, seed, spec.get("n_users", 10000))
        points = []
        for size in spec["sizes"]:
            # a finished size is kept (work/<dataset>/point-…json): an interrupted run resumes
            done = work / name / f"point-d{size[0]}-l{size[1]}-e{spec['epochs']}-s{seed}.json"
            if done.exists():
                p = json.loads(done.read_text())
            else:
                p = run_size(prepared, work / name, size, spec["epochs"], seed, threads,
                             minutes)
                done.write_text(json.dumps(p))
            print(json.dumps({"dataset": name, **p}), flush=True)
            points.append(p)
        fits = _fits(points)
        ndcg = [p["ndcg@10"] for p in points]
        loss = [p["val_loss"] for p in points]
        results.append({
            "dataset": name,
            "budget": f"equal epochs per size ({spec['epochs']}), i.e. equal training tokens",
            "regime": spec.get("regime"),
            "flops_note": "training FLOPs ≈ 6 · total params · training tokens",
            "exponent": fits["params"]["plain"]["exponent"],
            "r2": fits["params"]["plain"]["r2"],
            "fits": fits,
            "largest_improves_val_loss": loss[-1] < loss[-2],
            "largest_improves_ndcg": ndcg[-1] > ndcg[-2],
            "best_size_by_valid_ndcg": points[int(np.argmax(ndcg))]["params"],
            "points": points,
            "train": {**TRAIN, "epochs": spec["epochs"], "seed": seed, "threads": threads},
        })
    return {"scaling_all": results}


def plot_scaling(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for e in entries:
        pts = e["points"]
        for col, key in enumerate(("params", "flops")):
            x = [p[key] for p in pts]
            fit = e["fits"][key]["plain"]
            line = axes[0, col].plot(x, [p["val_loss"] for p in pts], "o-",
                                     label=f"{e['dataset']} (α={fit['exponent']:.3f}, "
                                           f"r²={fit['r2']:.2f})")[0]
            xs = np.geomspace(min(x), max(x), 50)
            axes[0, col].plot(xs, fit["a"] * xs ** -fit["exponent"], ":",
                              color=line.get_color())
            off = e["fits"][key]["with_irreducible"]
            axes[0, col].plot(xs, off["irreducible"] + off["a"] * xs ** -off["exponent"], "--",
                              color=line.get_color(), alpha=0.5,
                              label=f"  E + a·N^-α: E={off['irreducible']:.2f}, "
                                    f"α={off['exponent']:.2f}, r²={off['r2']:.2f}")
            axes[1, col].plot(x, [p["valid_ndcg@10"] for p in pts], "o-",
                              color=line.get_color(), label=f"{e['dataset']} valid")
            axes[1, col].plot(x, [p["test_ndcg@10"] for p in pts], "s--",
                              color=line.get_color(), label=f"{e['dataset']} test")
    for col, label in enumerate(("parameters (total)", "training FLOPs (6·N·tokens)")):
        for row in (0, 1):
            axes[row, col].set_xscale("log")
            axes[row, col].set_xlabel(label)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=8)
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("validation loss (CE of the validation target)")
        axes[1, col].set_ylabel("NDCG@10 (full ranking)")
    fig.suptitle("recfm scaling: equal training tokens per size, 2-core CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- ddp


def run_ddp(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training tokens/s with 1 and 2 processes (gloo, 1 thread per process), through
    ``recfm train --nproc N`` (torchrun); plus 1 process with 2 threads for reference."""
    seed = getattr(args, "seed", 0)
    base = Path(getattr(args, "work", None) or ROOT / ".work")
    work = base / "ddp"
    data_dir = Path(getattr(args, "data_dir", None) or SHARED_DATA)
    prepared = prepared_dir("synthetic", base / "scaling", data_dir, seed)
    tokens_per_epoch = train_tokens_per_epoch(prepared, 50)
    out = []
    for nproc, threads in ((1, 1), (2, 1), (1, 2)):
        run = work / f"nproc{nproc}-threads{threads}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = work / f"ddp-{threads}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text("[model]\nd_model = 64\nn_layers = 2\nmax_len = 50\n\n"
                       f"[train]\nepochs = 2\nbatch_size = 256\nseed = {seed}\n"
                       f"threads = {threads}\ntensorboard = false\n")
        cmd = [sys.executable, "-m", "recfm", "train", str(prepared), "--out", str(run),
               "--config", str(cfg), "--nproc", str(nproc)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                       stdout=subprocess.DEVNULL, cwd=ROOT.parent)
        wall = time.perf_counter() - t0
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        train_s = sum(float(r["epoch_train_s"]) for r in rows)
        out.append({"nproc": nproc, "threads_per_process": threads,
                    "tokens_per_s": round(tokens_per_epoch * len(rows) / train_s, 1),
                    "epochs": len(rows), "train_s": round(train_s, 2),
                    "train_loss_last_epoch": float(rows[-1]["train_loss"]),
                    "valid_ndcg@10_last_epoch": float(rows[-1]["valid_ndcg@10"]),
                    "wall_s": round(wall, 1), "backend": "gloo" if nproc > 1 else None,
                    "model": "d_model 64, 2 blocks, batch 256 (global)"})
        print(json.dumps(out[-1]), flush=True)
    return out


# ----------------------------------------------------------------------------- streaming


STREAM_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from benchmarks.common import peak_rss_mb
from recfm.tokens.batching import SequenceStore
from recfm.tokens.prepare import PreparedDataset
from recfm.train.batches import make_batch  # both modes import the same modules
from recfm.train.shards import ParquetTokens, StreamingBatches
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "whole":
    ds = PreparedDataset.load(path)
    store = SequenceStore(ds.sequences, ["item", "action", "device", "gap_bucket"])
    tokens = int(store.lengths.sum())
else:
    src = ParquetTokens(path + "/tokens.parquet")
    batches = StreamingBatches(src, ["item", "action", "device", "gap_bucket"], max_len=50,
                               batch_size=256, seed=0, window_groups=2)
    tokens = 0
    for batch in batches.epoch(0):
        tokens += int((batch["target"] > 0).sum())
print(json.dumps({"peak_rss_mb": peak_rss_mb(), "tokens": tokens,
                  "s": time.perf_counter() - t0}))
"""


def _replicate(prepared: Path, out: Path, times: int) -> Path:
    """A prepared dataset with every user repeated ``times`` times (new user ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (out / "tokens.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("items.parquet", "tokenizer.json", "report.json"):
        shutil.copy(prepared / name, out / name)
    table = pq.read_table(prepared / "tokens.parquet")
    n = table.num_rows
    with pq.ParquetWriter(out / "tokens.parquet.tmp", table.schema, compression="zstd") as w:
        for k in range(times):
            t = table
            if "user_idx" in t.column_names:
                i = t.column_names.index("user_idx")
                t = t.set_column(i, "user_idx", pa.array(
                    np.asarray(t["user_idx"]) + k * n, t.schema.field("user_idx").type))
            w.write_table(t, row_group_size=2048)
    os.replace(out / "tokens.parquet.tmp", out / "tokens.parquet")
    return out


def run_streaming(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Peak RSS of a streamed pass vs. a whole load as the token file grows 1× … 64×."""
    seed = getattr(args, "seed", 0)
    base = Path(getattr(args, "work", None) or ROOT / ".work")
    data_dir = Path(getattr(args, "data_dir", None) or SHARED_DATA)
    prepared = prepared_dir("synthetic", base / "scaling", data_dir, seed)
    out = []
    for times in (1, 4, 16, 64):
        ds = _replicate(prepared, base / "streaming" / f"x{times}", times)
        size_mb = (ds / "tokens.parquet").stat().st_size / 2 ** 20
        for mode in ("stream", "whole"):
            res = subprocess.run([sys.executable, "-c", STREAM_CHILD, mode, str(ds)],
                                 check=True, capture_output=True, text=True,
                                 cwd=ROOT.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})
            r = json.loads(res.stdout.strip().splitlines()[-1])
            out.append({"data_x": times, "mode": mode, "parquet_mb": round(size_mb, 1),
                        "tokens": r["tokens"], "peak_rss_mb": round(r["peak_rss_mb"], 1),
                        "s": round(r["s"], 2)})
            print(json.dumps(out[-1]), flush=True)
    return out


# ----------------------------------------------------------------------------- results


def merge_results(parts: dict[str, Any], wall: float, seed: int) -> Path:
    """Merge ``parts`` into results/scale.json (other keys kept) and regenerate RESULTS.md."""
    from benchmarks.common import RESULTS, write_result

    path = RESULTS / "scale.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    keep = {k: v for k, v in old.items()
            if k not in ("name", "dataset", "command", "git_commit", "date", "machine", "seed",
                         "wall_s", "metrics", "extra", "table_md")}
    command = " ".join(["python -m benchmarks.scaling"] + sys.argv[1:])
    commands = keep.setdefault("scaling_commands", {})  # what produced each part
    if "scaling_all" in parts:
        by_name = {e["dataset"]: e for e in keep.get("scaling_all", [])}
        for e in parts["scaling_all"]:
            commands[f"scaling {e['dataset']}"] = command
        by_name.update({e["dataset"]: e for e in parts.pop("scaling_all")})
        keep["scaling_all"] = [by_name[k] for k in sorted(by_name, key=lambda k: k != "synthetic")]
        keep["scaling"] = keep["scaling_all"][0]
    keep.update(parts)
    if keep.get("scaling_all"):
        plot_scaling(keep["scaling_all"], RESULTS / "scaling.png")
    metrics = dict(old.get("metrics", {}))
    for e in keep.get("scaling_all", []):
        metrics[f"scaling_{e['dataset']}_exponent"] = round(e["exponent"], 4)
        metrics[f"scaling_{e['dataset']}_r2"] = round(e["r2"], 4)
    for r in keep.get("ddp", []):
        metrics[f"ddp_nproc{r['nproc']}x{r.get('threads_per_process', 1)}t_tokens_per_s"] = \
            r["tokens_per_s"]
    extra = dict(old.get("extra", {}))
    extra.setdefault("commands", {})
    extra["commands"].pop("scaling.py", None)
    for name in parts:
        commands[name] = command
    table = "\n".join(t for t in (tables(keep), scaling_table(keep)) if t)
    argv = sys.argv
    if not parts and old.get("command", "").startswith("python -m benchmarks."):
        # a re-render measures nothing: the row keeps the last measuring command
        words = old["command"].split()
        sys.argv = [words[2].split(".", 1)[1] + ".py", *words[3:]]
    try:
        return write_result("scale", old.get("dataset", "synthetic world, Beauty"), seed,
                            old.get("wall_s", 0.0) + wall, metrics, extra, top=keep,
                            table_md=table or old.get("table_md"))
    finally:
        sys.argv = argv


def scaling_table(res: dict[str, Any]) -> str | None:
    lines = []
    for e in res.get("scaling_all", []):
        off = e["fits"]["params"]["with_irreducible"]
        lines.append(f"**Scaling, {e['dataset']}** ({e['budget']}; {e['flops_note']}): "
                     f"val loss ∝ N^-{e['exponent']:.3f} (r² {e['r2']:.3f}); "
                     f"with an irreducible term E={off['irreducible']:.3f}: "
                     f"α={off['exponent']:.3f} (r² {off['r2']:.3f}). Largest size "
                     f"{'improves' if e['largest_improves_val_loss'] else 'does NOT improve'} val "
                     f"loss and {'improves' if e['largest_improves_ndcg'] else 'does NOT improve'} "
                     "validation NDCG@10 over the next smaller one. Regime: "
                     f"{e.get('regime') or DATA.get(e['dataset'], {}).get('regime', '?')}.\n")
        lines.append("| d | layers | params | non-emb params | tokens | FLOPs | val loss | "
                     "valid NDCG@10 | test NDCG@10 | tok/s |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in e["points"]:
            lines.append(f"| {p['d_model']} | {p['n_layers']} | {p['params']:,} | "
                         f"{p['non_embedding_params']:,} | {p['tokens']:,} | {p['flops']:.2e} | "
                         f"{p['val_loss']:.4f} | {p['valid_ndcg@10']:.4f} | "
                         f"{p['test_ndcg@10']:.4f} | {p['tokens_per_s']:,.0f} |")
        lines.append("")
    if res.get("ddp"):
        lines.append("**DDP** (synthetic world, d 64, 2 blocks, 2 epochs, global batch 256; "
                     "2 processes = gloo on 127.0.0.1 through `recfm train --nproc 2`): "
                     + ", ".join(f"{r['nproc']} proc × {r.get('threads_per_process', 1)} "
                                 f"thread {r['tokens_per_s']:,.0f} tok/s (last-epoch loss "
                                 f"{r.get('train_loss_last_epoch', float('nan')):.4f})"
                                 for r in res["ddp"])
                     + ". On these 2 shared cores DDP is a correctness path, not a speed-up "
                     "over one process using both cores.\n")
    if res.get("streaming"):
        lines.append("**Streaming** (the synthetic token file repeated 1× … 64×; one "
                     "subprocess per point; peak RSS of the process): `stream` = one pass of "
                     "training batches (batch 256, length 50) from Parquet row groups, 2 "
                     "groups in memory; `whole` = loading tokens.parquet and building the "
                     "in-memory store as the default loop does.\n")
        lines.append("| data | Parquet MB | stream MB | whole MB |")
        lines.append("|---:|---:|---:|---:|")
        by = {(r["data_x"], r["mode"]): r for r in res["streaming"]}
        for x in sorted({r["data_x"] for r in res["streaming"]}):
            st, wh = by.get((x, "stream"), {}), by.get((x, "whole"), {})
            lines.append(f"| {x}× | {st.get('parquet_mb', wh.get('parquet_mb'))} | "
                         f"{st.get('peak_rss_mb', float('nan')):,.0f} | "
                         f"{wh.get('peak_rss_mb', float('nan')):,.0f} |")
        lines.append("")
    if res.get("scaling_commands"):
        lines.append("Commands (`benchmarks/scaling.py`, torch threads 2, under the CPU lock): "
                     + "; ".join(f"{k}: `{v}`" for k, v in res["scaling_commands"].items())
                     + "\n")
    return "\n".join(lines) if lines else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="scaling",
                    help="comma list: scaling,ddp,streaming (none: re-render only)")
    ap.add_argument("--datasets", nargs="+", default=["synthetic"], choices=sorted(DATA))
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=None,
                    help="per-size time cap (default: none, equal epochs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    parts: dict[str, Any] = {}
    wanted = args.parts.split(",")
    if "scaling" in wanted:
        parts.update(run_scaling(args))
    if "ddp" in wanted:
        parts["ddp"] = run_ddp(args)
    if "streaming" in wanted:
        parts["streaming"] = run_streaming(args)
    path = merge_results(parts, time.perf_counter() - t0, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
