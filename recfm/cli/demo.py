"""`recfm demo` (``make demo``): synth → prepare → train → evaluate → recommend, offline,
into one folder; ``report.json`` holds the test metrics of the model and baselines.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from recfm.cli.data import data_describe
from recfm.cli.output import console, print_metrics_table, steps
from recfm.io import MARKER, atomic_write_json, check_out
from recfm.model.config import ModelConfig
from recfm.train.config import TrainConfig

log = logging.getLogger(__name__)

DEMO_MODEL = ModelConfig(d_model=64, n_layers=2, n_heads=2, max_len=50, dropout=0.2)
DEMO_TRAIN = TrainConfig(epochs=30, batch_size=128, lr=2e-3, warmup_steps=50, patience=4,
                         max_minutes=3.0)


def run_demo(out: str | Path, seed: int = 0, on_step: Callable[[str], None] | None = None,
             on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run the whole path into ``out`` (new, empty or an earlier demo's, which is replaced)
    and return the report also written to ``report.json``."""
    from recfm.data import synthetic
    from recfm.evaluate.evaluator import evaluate_run
    from recfm.pipeline import Recommender
    from recfm.tokens.prepare import prepare
    from recfm.train.loop import train
    import polars as pl
    step = on_step or (lambda s: log.info(s))
    out = Path(out)
    check_out(out, "demo", overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"kind": "demo"})
    t0 = time.perf_counter()

    step("synthesizing the world")
    cfg = synthetic.SynthConfig(seed=seed)
    world = synthetic.generate(cfg)
    synthetic.write_world(world, out / "world", cfg, overwrite=True)

    step("preparing tokens")
    prep_report = prepare(synthetic.load_world(out / "world"), out / "prepared", overwrite=True)

    step("training")
    shutil.rmtree(out / "run", ignore_errors=True)
    tcfg = TrainConfig(**{**DEMO_TRAIN.__dict__, "seed": seed})
    result = train(out / "prepared", out / "run", DEMO_MODEL, tcfg, on_progress=on_progress,
                   command="recfm demo")

    step("evaluating")
    metrics = evaluate_run(out / "run", out / "prepared", "test")

    step("recommending")
    rec = Recommender.from_pretrained(out / "run")
    seqs = pl.read_parquet(out / "prepared" / "tokens.parquet").head(3)
    examples = []
    for row in seqs.iter_rows(named=True):
        hist = [rec.item_id(i) for i in row["item"]]
        recs = rec.recommend(hist, k=5)
        titles = dict(zip(rec.items["item_id"], rec.items["title"]))
        examples.append({"user_id": row["user_id"],
                         "last_watched": [titles[i] for i in hist[-3:]],
                         "recommended": recs.select("item_id", "title", "score").to_dicts()})

    keys = ("ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20", "coverage@10")
    report = {name: {k: m[k] for k in keys} for name, m in metrics.items()}
    report["ratio_ndcg@10_vs_popularity"] = (report["model"]["ndcg@10"]
                                             / max(report["popularity"]["ndcg@10"], 1e-12))
    report["prepare"] = {k: prep_report[k] for k in ("events_in", "tokens_out", "dropped",
                                                     "users")}
    report["train"] = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       "n_params": result.n_params, "wall_s": round(result.wall_s, 1)}
    report["examples"] = examples
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "report.json", report)
    return report


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def demo_cmd(
    out: Path = typer.Option(Path("demo-output"), help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, help="Seed of the world and of training."),
) -> None:
    """The whole path offline on the synthetic world: synth → prepare → train → evaluate."""
    with steps("demo") as on_step:
        def on_progress(p: dict) -> None:
            if p.get("epoch_end"):
                on_step(f"training: epoch {p['epoch']} valid ndcg@10 {p['valid_ndcg@10']:.4f}")

        report = run_demo(out, seed, on_step=on_step, on_progress=on_progress)
    data_describe(out / "prepared", top=5, as_json=False)
    print_metrics_table({k: report[k] for k in ("model", "popularity", "recent")},
                        "synthetic world, test (leave-one-out, full ranking)")
    console.print(f"model / popularity NDCG@10: ×{report['ratio_ndcg@10_vs_popularity']:.2f}")
    for ex in report["examples"]:
        t = Table(title=f"user {ex['user_id']} — last watched: {'; '.join(ex['last_watched'])}")
        t.add_column("recommended")
        t.add_column("score", justify="right")
        for r in ex["recommended"]:
            t.add_row(str(r["title"]), f"{r['score']:.3f}")
        console.print(t)
    console.print(f"report: {out / 'report.json'}  ({report['wall_s']:.0f} s in all)")
