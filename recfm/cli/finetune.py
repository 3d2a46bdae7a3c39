"""`recfm finetune`: the command line of :mod:`recfm.consume.finetune`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recfm.cli.output import JSON, console, json_mode, print_json


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)


def finetune_cmd(
    run: Path = typer.Argument(..., help="The foundation run to start from."),
    task: Path = typer.Option(..., "--task", help="task.toml: kind (surface | binary | "
                              "shown), [items] filter, label_action or impressions, "
                              "[train] options."),
    out: Path = typer.Option(..., "--out", help="Run directory to write."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset (default: "
                                        "the one RUN was trained on)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train the same task "
                                      "model from random init (the baseline)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    as_json: bool = JSON,
) -> None:
    """Fine-tune a run for a downstream task: a restricted surface, a binary head, or
    chosen vs shown titles."""
    json_mode(as_json)
    from recfm.consume.finetune import finetune, load_task
    cfg = load_task(task)
    command = " ".join(["recfm"] + sys.argv[1:])
    with Progress(TextColumn("step"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("finetune", total=cfg.max_steps, loss=0.0)

        def on_progress(p: dict) -> None:
            if p.get("eval"):
                key = next(k for k in p if k.startswith("valid_"))
                progress.console.print(f"step {p['step']}: loss {p['train_loss']:.4f}  "
                                       f"{key} {p[key]:.4f}  (best {p['best']:.4f} at step "
                                       f"{p['best_step']})")
            else:
                progress.update(bar, completed=p["step"], loss=p["loss"])

        res = finetune(run, cfg, out, data_dir=data, from_scratch=from_scratch or None,
                       resume=resume, on_progress=on_progress, command=command)
    t = Table(title=f"{cfg.kind} task {cfg.name!r} → {out}"
                    f"{' (from scratch)' if from_scratch or cfg.from_scratch else ''}")
    t.add_column("metric")
    t.add_column("valid (best step)", justify="right")
    t.add_column("test", justify="right")
    for key, value in res.test.items():
        v = res.best_valid.get(key)
        fmt = (lambda x: f"{x:.4f}") if isinstance(value, float) else str
        t.add_row(key, fmt(v) if v is not None else "-", fmt(value))
    console.print(t)
    console.print(f"best step {res.best_step} of {res.steps}; {res.n_trainable:,} of "
                  f"{res.n_params:,} parameters trained; {res.wall_s:.0f} s")
    if as_json:
        print_json(res)
