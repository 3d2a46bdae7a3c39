"""The GPU path, measured: minutes to quality, training throughput and MFU, and full-ranking
evaluation on a 1M-item catalog. Designed to finish within 8 minutes on one H100.

    python -m benchmarks.gpu [--device auto] [--smoke] [--compile] [--out FILE]

(a) S3-Rec Beauty with the default recipe (``recfm train``'s defaults, no config) on the
device until patience stops it or ``--beauty-minutes``: the minutes to its best validation
epoch, that epoch, test NDCG@10 / HR@10. (b) Training throughput (target tokens/s) and model
FLOP utilisation for ``SIZES`` (up to ≥ 100M parameters) on a synthetic world of ≥ 10M
events: ``--steps`` optimizer steps after ``--warmup`` (bf16 autocast on a GPU); FLOPs per
token as benchmarks/sequential.py counts them, against the GPU's dense bf16 peak
(``PEAK_BF16``; another GPU or a CPU: a measured matmul peak). (c) Full-ranking evaluation of
``--eval-users`` users against a catalog of ``--eval-items`` items (chunked scores on the
device, seen items excluded): users/s.

``--smoke`` runs every part tiny on whatever device there is (a CPU in the test suite) and
writes only ``--out``. Otherwise it writes ``benchmarks/results/gpu.json`` with the GPU's
name, driver and the torch version.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA, matmul_peak_gflops, write_result
from benchmarks.sequential import training_flops_per_token

# Dense bf16 peaks (no sparsity), FLOP/s, from the vendors' data sheets.
PEAK_BF16 = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
             "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
# (d_model, n_layers, n_heads): about 8M, 40M and 120M parameters with a 20k-item world.
SIZES = [(256, 4, 4), (512, 8, 8), (1024, 8, 16)]
SMOKE_SIZES = [(16, 1, 2), (32, 2, 2), (48, 2, 2)]
WORLD = dict(n_users=50_000, n_items=20_000, events_per_user=200.0)  # ≈ 10M events
SMOKE_WORLD = dict(n_users=300, n_items=60, events_per_user=30.0)


def gpu_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"name": None, "driver": None, "torch": torch.__version__}
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = None
    return {"name": torch.cuda.get_device_name(device), "driver": driver,
            "torch": torch.__version__, "cuda": torch.version.cuda}


def peak_flops(device: torch.device) -> tuple[float, str]:
    """The dense peak the MFU is measured against, and where it comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = next((k for k in PEAK_BF16 if k in name), None)
        if key is not None:
            return PEAK_BF16[key], f"data sheet, dense bf16 ({key})"
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
        return 20 * 2 * 8192**3 / (time.perf_counter() - t0), "measured bf16 matmul"
    return matmul_peak_gflops() * 1e9, "measured fp32 matmul (this CPU)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minutes_to_quality(prepared: Path, run: Path, device: str, minutes: float,
                       smoke: bool) -> dict[str, Any]:
    """(a) The default recipe on ``prepared`` until patience (or the time budget)."""
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    tcfg = TrainConfig(device=device, max_minutes=minutes, tensorboard=False,
                       eval_batch_size=128 if smoke else 1024,
                       **(dict(epochs=2) if smoke else {}))
    res = train(prepared, run, ModelConfig(), tcfg)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    upto = [r for r in rows if int(r["epoch"]) <= res.best_epoch]
    to_best = sum(float(r["epoch_train_s"]) + float(r["eval_s"]) for r in upto)
    return {"best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
            "minutes_to_best_epoch": to_best / 60, "stop_reason": res.stop_reason,
            "tokens_per_s": float(rows[-1]["tokens_per_s"]) if rows else None,
            "test_ndcg@10": res.test["ndcg@10"], "test_hr@10": res.test["hr@10"],
            "valid_ndcg@10": res.best_valid["ndcg@10"], "n_params": res.n_params}


def throughput(prepared: Path, size: tuple[int, int, int], at, steps: int, warmup: int,
               batch_size: int, compile_loss: bool, peak: float) -> dict[str, Any]:
    """(b) Target tokens/s and MFU of ``steps`` optimizer steps of one model size."""
    from recfm.data.splits import leave_one_out
    from recfm.model.config import ModelConfig
    from recfm.model.device import compiled
    from recfm.tokens.batching import SequenceStore
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.batches import MemoryBatches
    from recfm.train.loop import new_model
    from recfm.train.trainer import decay_groups

    d, layers, heads = size
    ds = PreparedDataset.load(prepared)
    split = leave_one_out(ds.sequences)
    model = new_model(ModelConfig(d_model=d, n_layers=layers, n_heads=heads, max_len=200,
                                  dropout=0.1), ds, split, prepared).model.to(at.device)
    opt = at.optimizer(decay_groups(list(model.named_parameters()), 0.1), 1e-4, (0.9, 0.98))
    loss_fn = at.loss(compiled(model.loss, compile_loss))
    store = SequenceStore(split.train, model.train_columns)
    spans = store.spans(model.cfg.max_len + 1, "truncate", min_len=2)
    batches = MemoryBatches(store, spans, batch_size, seed=0)
    n = batches.start(0, 0.0)
    model.train()
    tokens, lengths, t0 = 0, [], 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(at.device)
            t0, tokens = time.perf_counter(), 0
        batch = batches.batch(0, i % n)
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += int((batch["target"] > 0).sum())
        lengths.append(float((batch["target"] > 0).sum(1).float().mean()))
    sync(at.device)
    wall = time.perf_counter() - t0
    tps = tokens / wall
    flops = training_flops_per_token(model.cfg, float(np.mean(lengths))) * tps
    return {"d_model": d, "n_layers": layers, "n_heads": heads,
            "n_params": sum(p.numel() for p in model.parameters()), "tokens_per_s": tps,
            "model_tflops": flops / 1e12, "mfu_pct": 100 * flops / peak, "steps": steps,
            "batch_size": batch_size, "compile": compile_loss}


def eval_throughput(prepared: Path, at, n_items: int, n_users: int) -> dict[str, Any]:
    """(c) Users/s of full-ranking evaluation against an ``n_items`` catalog."""
    from recfm.data.splits import leave_one_out
    from recfm.evaluate.evaluator import evaluate_scorer, model_scorer
    from recfm.model.config import ModelConfig
    from recfm.model.foundation import FoundationModel, build_config
    from recfm.tokens.prepare import PreparedDataset

    ds = PreparedDataset.load(prepared)
    split = leave_one_out(ds.sequences)
    cfg, _ = build_config(ModelConfig(d_model=256, n_layers=2, n_heads=4, max_len=200),
                          ds.tokenizer, ds.items, split.train)
    model = FoundationModel(replace(cfg, n_items=n_items)).to(at.device).eval()
    frame = split.test.head(n_users)
    sync(at.device)
    t0 = time.perf_counter()
    m = evaluate_scorer(model_scorer(model, at), frame, n_items, cfg.max_len,
                        model.input_columns, batch_size=1024, item_chunk=131072)
    sync(at.device)
    wall = time.perf_counter() - t0
    return {"n_items": n_items, "users": m["users"], "users_per_s": m["users"] / wall,
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss in (b).")
    ap.add_argument("--beauty-minutes", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-items", type=int, default=1_000_000)
    ap.add_argument("--eval-users", type=int, default=20_000)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "gpu")
    ap.add_argument("--out", type=Path, help="Result file (default: results/gpu.json).")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch_size = 3, 1, 16
        args.eval_items, args.eval_users = 5_000, 50
    t0 = time.perf_counter()
    from recfm.data import synthetic
    from recfm.model.device import Placement
    from recfm.tokens.prepare import load_raw, prepare

    at = Placement.of(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    world_dir, world_prep = args.work / "world", args.work / "world-prepared"
    t_world = time.perf_counter()
    cfg = synthetic.SynthConfig(seed=0, **(SMOKE_WORLD if args.smoke else WORLD))
    world = synthetic.generate(cfg)
    synthetic.write_world(world, world_dir, cfg, overwrite=True)
    prepare(load_raw(world_dir), world_prep, overwrite=True)
    world_s = time.perf_counter() - t_world
    beauty_prep = world_prep if args.smoke else args.work / "beauty"
    if not args.smoke:
        prepare(load_raw(args.data_dir / "s3rec" / "Beauty.txt", fmt="s3rec"), beauty_prep,
                overwrite=True)
    peak, peak_source = peak_flops(at.device)
    quality = minutes_to_quality(beauty_prep, args.work / "beauty-run", args.device,
                                 args.beauty_minutes, args.smoke)
    print("beauty", quality, flush=True)
    sizes = []
    for size in SMOKE_SIZES if args.smoke else SIZES:
        sizes.append(throughput(world_prep, size, at, args.steps, args.warmup, args.batch_size,
                                args.compile, peak))
        print("size", sizes[-1], flush=True)
    evaluation = eval_throughput(world_prep, at, args.eval_items, args.eval_users)
    print("eval", evaluation, flush=True)
    metrics = {"minutes_to_best_epoch": quality["minutes_to_best_epoch"],
               "ndcg@10": quality["test_ndcg@10"], "hr@10": quality["test_hr@10"],
               "tokens_per_s": sizes[-1]["tokens_per_s"], "mfu_pct": sizes[-1]["mfu_pct"],
               "eval_users_per_s_1m": evaluation["users_per_s"], "beauty": quality,
               "sizes": sizes, "eval": evaluation}
    extra = {"gpu": gpu_info(at.device), "device": str(at.device),
             "autocast": str(at.dtype or "fp32"), "peak_flops": peak, "peak_source": peak_source,
             "world_events": world.events.height, "world_s": world_s, "smoke": args.smoke}
    if args.smoke or args.out is not None:  # a smoke run never replaces the measured result
        from recfm.io import atomic_write_json

        atomic_write_json(args.out or args.work / "gpu-smoke.json",
                          {"metrics": metrics, "extra": extra, "wall_s": time.perf_counter() - t0})
    else:
        write_result("gpu", "beauty + synthetic", 0, time.perf_counter() - t0, metrics, extra)


if __name__ == "__main__":
    main()
