"""Scale benchmarks (issue 9, item 6): attention vs sequence length, training vs catalog size.

    python -m benchmarks.scale --parts attention,catalog --threads 2
    python -m benchmarks.scale --parts ddp,scaling          # benchmarks/scaling.py's parts
    python -m benchmarks.scale --parts none                 # re-merge / re-render only

* ``attention``: one training step (forward, backward, AdamW) of the foundation model
  (d_model 64, 2 layers, 2 heads, rotary positions, full softmax over 2,000 items) on one
  random sequence of length 256 … 8,192, with dense causal attention and with local
  attention (window ``--window``, ``--globals`` global tokens; :mod:`recfm.model.sparse`).
  Every point runs in a **fresh subprocess**; ``peak_mb`` is the growth of its peak RSS
  (VmHWM, reset through /proc/self/clear_refs once the model and batch exist) over the
  warm-up step and the timed steps, i.e. the memory the training step itself needs;
  ``s_per_step`` is the mean of the timed steps. Points that would not fit the memory or
  time cap (``--max-dense-len``) are recorded as skipped with the reason.
* ``catalog``: the synthetic world (default generator, 5,000 users) with its 2,000 titles
  placed at random ids of a catalog of 10k / 100k / 1M items (the other items copy the
  metadata of a random title and are never interacted with), prepared, then **one full
  epoch** of ``recfm.train`` (sampled softmax, 512 popularity-sampled negatives with logQ
  correction) followed by the loop's usual validation, final validation and test —
  full ranking over the whole catalog, streamed in item chunks. One subprocess per size;
  ``peak_mb`` is that process's whole peak RSS (data, model, optimizer, evaluation);
  ``tokens_per_s`` is training tokens (targets) per second of the epoch.
* ``ddp`` / ``scaling``: :func:`benchmarks.scaling.run_ddp` / ``run_scaling``.

Results are merged into ``results/scale.json`` (other keys kept), so parts can run in
separate invocations; ``results/scale_attention.png`` plots the attention part.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.scale_tables import rows_globals, rows_window, tables

log = logging.getLogger("benchmarks.scale")

SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192)
CATALOGS = (10_000, 100_000, 1_000_000)
META = ("name", "dataset", "command", "git_commit", "date", "machine", "seed", "wall_s",
        "metrics", "extra", "table_md")


# ----------------------------------------------------------------------------- attention


def attention_point(impl: str, seq_len: int, window: int, n_global: int, steps: int,
                    seed: int) -> dict[str, Any]:
    """Child process: one model, one sequence, ``steps`` timed training steps."""
    import torch

    from benchmarks.common import peak_rss_mb
    from recfm.model.config import ModelConfig
    from recfm.model.foundation import FoundationModel

    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=2, dropout=0.0, max_len=seq_len,
                      positions="rope", n_items=2003,
                      attention_pattern="local" if impl == "sparse" else "dense",
                      local_window=window, n_global=n_global)
    model = FoundationModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq = torch.randint(3, cfg.n_items, (1, seq_len + 1))
    batch = {"item": seq[:, :-1], "target": seq[:, 1:].clone()}
    rss0 = _rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    times = []
    for i in range(steps + 1):  # the first step warms up (allocates optimizer state)
        t = time.perf_counter()
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {"impl": impl, "seq_len": seq_len, "peak_mb": round(peak_rss_mb() - rss0, 1),
            "s_per_step": round(sum(times) / len(times), 4),
            "process_peak_rss_mb": round(peak_rss_mb(), 1), "steps_timed": steps}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_attention(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for impl in ("dense", "sparse"):
        for L in args.seq_lens:
            if impl == "dense" and L > args.max_dense_len:
                out.append({"impl": impl, "seq_len": L, "peak_mb": None, "s_per_step": None,
                            "skipped": f"over --max-dense-len {args.max_dense_len}"})
                continue
            steps = 2 if L >= 4096 else 3
            r = _child(args, ["attention", impl, str(L), str(args.window), str(args.globals),
                              str(steps)], timeout=args.point_timeout)
            if r is None:
                r = {"impl": impl, "seq_len": L, "peak_mb": None, "s_per_step": None,
                     "skipped": f"did not finish in {args.point_timeout} s or failed"}
            else:
                r.update(window=args.window if impl == "sparse" else None,
                         n_global=args.globals if impl == "sparse" else None)
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def plot_attention(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl, style in (("dense", "o-"), ("sparse", "s-")):
        pts = sorted((r["seq_len"], r["peak_mb"], r["s_per_step"]) for r in rows
                     if r["impl"] == impl and r.get("peak_mb") is not None)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        label = impl if impl == "dense" else \
            f"sparse (window {rows_window(rows)}, {rows_globals(rows)} global)"
        line = ax_m.plot(xs, [p[1] for p in pts], style, label=label)[0]
        ax_t.plot(xs, [p[2] for p in pts], style, label=label, color=line.get_color())
        ref = [p for p in pts if p[0] == 1024]
        if impl == "sparse" and ref:  # linear growth from the 1,024 point
            ax_m.plot(xs, [ref[0][1] * x / 1024 for x in xs], ":", color=line.get_color(),
                      label="linear from sparse @1024")
    for ax, ylabel in ((ax_m, "training-step memory (MB, peak RSS growth)"),
                       (ax_t, "seconds per training step")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (batch 1, d 64, 2 layers)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Dense vs local+global attention, one training step, 2-core CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The must-show ratios: memory at 8,192 over 8 × memory at 1,024, per impl."""
    out: dict[str, Any] = {}
    for impl in ("dense", "sparse"):
        by = {r["seq_len"]: r["peak_mb"] for r in rows
              if r["impl"] == impl and r.get("peak_mb") is not None}
        if 1024 in by and 8192 in by and by[1024] > 0:
            out[f"{impl}_mem_8192_over_8x_1024"] = round(by[8192] / (8 * by[1024]), 3)
    if "sparse_mem_8192_over_8x_1024" in out:
        out["sparse_linear_within_1_5x"] = out["sparse_mem_8192_over_8x_1024"] <= 1.5
    return out


# ----------------------------------------------------------------------------- catalog


def world_prepared(work: Path, seed: int) -> Path:
    """The default synthetic world, prepared (cached under ``work``)."""
    from recfm.data import synthetic
    from recfm.tokens.prepare import load_raw, prepare

    out = work / f"world-s{seed}" / "prepared"
    if (out / "tokens.parquet").exists():
        return out
    world_dir = work / f"world-s{seed}" / "world"
    world = synthetic.generate(synthetic.SynthConfig(seed=seed))
    synthetic.write_world(world, world_dir)
    prepare(load_raw(world_dir), out)
    return out


def widen_catalog(prepared: Path, out: Path, n_catalog: int, seed: int) -> Path:
    """A copy of ``prepared`` whose items sit at random ids of an ``n_catalog`` catalog.

    The other items copy the metadata of a random real item (so the attribute bags of the
    whole catalog are as dense as the real ones) and never occur in any sequence.
    """
    import shutil

    import numpy as np
    import polars as pl

    from recfm.tokens.tokenizer import N_RESERVED_ITEMS

    if (out / "tokens.parquet").exists():
        return out
    items = pl.read_parquet(prepared / "items.parquet").sort("idx")
    n_real = items.height
    if n_catalog < n_real:
        raise ValueError(f"catalog of {n_catalog} is smaller than the world's {n_real} items")
    rng = np.random.default_rng(seed)
    new_pos = rng.choice(n_catalog, n_real, replace=False)  # real item i → catalog slot
    source = rng.integers(0, n_real, n_catalog)  # metadata donor of every slot
    source[new_pos] = np.arange(n_real)
    is_real = np.zeros(n_catalog, dtype=bool)
    is_real[new_pos] = True
    wide = items.drop("idx").select(pl.all().gather(source))
    fill = pl.Series([f"x{j:07d}" for j in range(n_catalog)])
    wide = wide.with_columns(
        pl.Series("idx", np.arange(n_catalog) + N_RESERVED_ITEMS),
        pl.when(pl.Series(is_real)).then(pl.col("item_id")).otherwise(fill).alias("item_id"))
    for c in ("n_events", "n_tokens"):
        if c in wide.columns:
            wide = wide.with_columns(pl.when(pl.Series(is_real)).then(pl.col(c))
                                     .otherwise(0).alias(c))
    wide = wide.select(["idx"] + [c for c in items.columns if c != "idx"])
    mapping = np.arange(N_RESERVED_ITEMS + n_real, dtype=np.int64)  # old idx → new idx
    old_idx = items["idx"].to_numpy()
    mapping[old_idx] = new_pos + N_RESERVED_ITEMS
    seqs = pl.read_parquet(prepared / "tokens.parquet")
    dtype = seqs.schema["item"].inner
    flat = seqs["item"].explode().to_numpy()
    new_flat = np.where(flat >= N_RESERVED_ITEMS, mapping[np.maximum(flat, 0)], flat)
    lens = seqs["item"].list.len().to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    lists = [new_flat[offsets[i]:offsets[i + 1]] for i in range(seqs.height)]
    seqs = seqs.with_columns(pl.Series("item", lists, dtype=pl.List(dtype)))
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    seqs.write_parquet(tmp / "tokens.parquet")
    wide.write_parquet(tmp / "items.parquet")
    for name in ("tokenizer.json", "report.json"):
        if (prepared / name).exists():
            shutil.copy(prepared / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def catalog_point(n_catalog: int, work: Path, seed: int, negatives: int) -> dict[str, Any]:
    """Child process: widen the catalog, train one epoch, report memory and speed."""
    import shutil

    import polars as pl

    from benchmarks.common import peak_rss_mb
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    t0 = time.perf_counter()
    base = world_prepared(work, seed)
    data = widen_catalog(base, work / f"catalog-{n_catalog}-s{seed}", n_catalog, seed)
    t_data = time.perf_counter() - t0
    run = work / f"run-{n_catalog}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    model = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_len=50, loss="sampled",
                        negatives="popularity", n_negatives=negatives, logq_correction=True)
    tcfg = TrainConfig(epochs=1, batch_size=128, seed=seed, tensorboard=False, threads=None)
    t1 = time.perf_counter()
    res = train(data, run, model, tcfg)
    wall = time.perf_counter() - t1
    metrics = list(pl.read_csv(run / "metrics.csv").iter_rows(named=True))[-1]
    tokens = int(metrics["tokens_per_s"] * metrics["epoch_train_s"])
    return {"items": n_catalog, "peak_mb": round(peak_rss_mb(), 1),
            "tokens_per_s": round(res.tokens_per_s, 1),
            "epoch_train_s": metrics["epoch_train_s"], "epoch_tokens": tokens,
            "validation_eval_s": metrics["eval_s"], "train_call_wall_s": round(wall, 1),
            "data_prep_s": round(t_data, 1), "n_params": res.n_params,
            "valid_ndcg@10": round(res.best_valid["ndcg@10"], 4),
            "test_ndcg@10": round(res.test["ndcg@10"], 4) if res.test else None,
            "loss": f"sampled softmax, {negatives} popularity negatives, logQ",
            "epochs": 1, "extrapolated": False}


def run_catalog(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for n in args.catalogs:
        r = _child(args, ["catalog", str(n), str(args.work / "scale"), str(args.negatives)],
                   timeout=args.point_timeout * 4)
        if r is None:
            r = {"items": n, "peak_mb": None, "tokens_per_s": None,
                 "skipped": "failed or timed out"}
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


# ----------------------------------------------------------------------------- processes


def _child(args: argparse.Namespace, argv: list[str], timeout: float) -> dict[str, Any] | None:
    """Run one point in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", *argv,
           "--threads", str(args.threads), "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=ROOT.parent, env=env)
    except subprocess.TimeoutExpired:
        log.warning("%s: timed out after %.0f s", " ".join(argv), timeout)
        return None
    if res.returncode != 0:
        log.warning("%s failed:\n%s", " ".join(argv), res.stderr[-3000:])
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def child_main(argv: list[str], threads: int, seed: int) -> None:
    import torch

    torch.set_num_threads(threads)
    kind = argv[0]
    if kind == "attention":
        impl, L, window, n_global, steps = argv[1], *map(int, argv[2:6])
        r = attention_point(impl, L, window, n_global, steps, seed)
    elif kind == "catalog":
        r = catalog_point(int(argv[1]), Path(argv[2]), seed, int(argv[3]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(json.dumps(r), flush=True)


# ----------------------------------------------------------------------------- results


def merge(parts: dict[str, Any], wall: float, seed: int, args: argparse.Namespace) -> Path:
    """Merge ``parts`` into results/scale.json, keeping every other key."""
    from benchmarks.common import RESULTS, write_result

    path = RESULTS / "scale.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    keep = {k: v for k, v in old.items() if k not in META}
    keep.update(parts)
    if keep.get("attention"):
        keep["attention_summary"] = attention_summary(keep["attention"])
        plot_attention(keep["attention"], RESULTS / "scale_attention.png")
    metrics = dict(old.get("metrics", {}))
    for k, v in keep.get("attention_summary", {}).items():
        if isinstance(v, float):
            metrics[k] = v
    for r in keep.get("catalog", []):
        if r.get("peak_mb") is not None:
            metrics[f"catalog_{r['items']}_peak_mb"] = r["peak_mb"]
            metrics[f"catalog_{r['items']}_tokens_per_s"] = r["tokens_per_s"]
    extra = dict(old.get("extra", {}))
    extra.setdefault("commands", {})
    if parts:
        extra["commands"]["scale.py " + ",".join(sorted(parts))] = \
            " ".join(["python -m benchmarks.scale"] + sys.argv[1:])
    table = tables(keep)
    try:  # the scaling / ddp tables of benchmarks/scaling.py, when it has them
        from benchmarks.scaling import scaling_table
        table = "\n".join(t for t in (table, scaling_table(keep)) if t)
    except ImportError:
        pass
    return write_result("scale", old.get("dataset", "synthetic world, Beauty"), seed,
                        old.get("wall_s", 0.0) + wall, metrics, extra, top=keep,
                        table_md=table or old.get("table_md"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="attention,catalog",
                    help="comma list of attention, catalog, ddp, scaling (or none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS))
    ap.add_argument("--window", type=int, default=128, help="sparse: local window")
    ap.add_argument("--globals", type=int, default=4, help="sparse: global tokens")
    ap.add_argument("--max-dense-len", type=int, default=8192,
                    help="skip dense attention above this length (recorded as skipped)")
    ap.add_argument("--catalogs", type=int, nargs="+", default=list(CATALOGS))
    ap.add_argument("--negatives", type=int, default=512)
    ap.add_argument("--point-timeout", type=float, default=180.0,
                    help="seconds per attention point (catalog points: 4×)")
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    ap.add_argument("--data-dir", type=Path, default=None, help="for the scaling/ddp parts")
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.child:
        child_main(args.child, args.threads, args.seed)
        return
    import torch

    torch.set_num_threads(args.threads)
    wanted = [p for p in args.parts.split(",") if p and p != "none"]
    unknown = set(wanted) - {"attention", "catalog", "ddp", "scaling"}
    if unknown:
        raise SystemExit(f"--parts: unknown part {sorted(unknown)[0]!r}")
    t0 = time.perf_counter()
    parts: dict[str, Any] = {}
    if "attention" in wanted:
        parts["attention"] = run_attention(args)
    if "catalog" in wanted:
        parts["catalog"] = run_catalog(args)
    if "ddp" in wanted or "scaling" in wanted:
        try:
            from benchmarks import scaling
        except ImportError as e:
            log.warning("benchmarks/scaling.py is not importable (%s): skipping ddp/scaling", e)
            scaling = None
        if scaling is not None:
            if args.data_dir is None:
                del args.data_dir  # scaling.py's own default
            if "scaling" in wanted and hasattr(scaling, "run_scaling"):
                got = scaling.run_scaling(args)
                if "scaling_all" in got and hasattr(scaling, "merge_results"):
                    scaling.merge_results(got, 0.0, args.seed)  # its fits, plot and keys
                    got = {}
                parts.update(got)
            if "ddp" in wanted and hasattr(scaling, "run_ddp"):
                parts["ddp"] = scaling.run_ddp(args)
            for name in ("run_scaling", "run_ddp"):
                if not hasattr(scaling, name):
                    log.warning("benchmarks/scaling.py has no %s: skipping", name)
    path = merge(parts, time.perf_counter() - t0, args.seed, args)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
