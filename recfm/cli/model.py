"""`recfm train` and `recfm evaluate`: make a run and measure it (asking it: recommend.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from recfm.cli.output import (JSON, console, json_mode, override, print_json, print_metrics_table,
                              print_train_result, steps)
from recfm.errors import RecfmError
from recfm.io import atomic_write_json
from recfm.model.config import ModelConfig
from recfm.runinfo import run_data_dir
from recfm.train.config import TrainConfig, load_run_config


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)


def train_cmd(
    data_dir: Optional[Path] = typer.Argument(None, help="A prepared dataset directory (with "
                                              "--events: older histories used as context)."),
    out: Path = typer.Option(..., help="Run directory to write."),
    config: Optional[Path] = typer.Option(None, help="TOML with [model] and [train] tables."),
    resume: bool = typer.Option(False, help="Continue from the run's last checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="Override [train] epochs."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop training after this long."),
    seed: Optional[int] = typer.Option(None, help="Override [train] seed."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this run's weights, config "
                                             "and vocabulary (fine-tuning)."),
    events: Optional[Path] = typer.Option(None, help="Fine-tune on these raw (recent) events "
                                          "only, tokenized with the --init-from run's "
                                          "tokenizer; DATA_DIR's histories are context."),
    incremental: bool = typer.Option(False, help="Incremental update: fine-tuning schedule "
                                     "(lr 1e-3, 20 epochs, patience 3) and, without DATA_DIR, "
                                     "the run's own training data as context."),
    replay: float = typer.Option(0.0, help="With --events: also train on this fraction of "
                                 "the older (context) tokens, drawn at random, so that the "
                                 "new titles of the recent events are not over-recommended "
                                 "(1 with --max-minutes: the cold_start benchmark's recipe)."),
    semantic_ids: Optional[Path] = typer.Option(
        None, "--semantic-ids", help="A run with semantic ids (recfm semantic-ids RUN): "
        "add a generative head over its codes and train it with the next-item loss, "
        "starting from --init-from's weights (default: that run's)."),
    nproc: int = typer.Option(1, help="Train with N local processes (DistributedDataParallel "
                              "through torchrun on 127.0.0.1; same global batch)."),
    device: Optional[str] = typer.Option(None, help="auto (a CUDA GPU when there is one), "
                                         "cpu or cuda; overrides [train] device."),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 autocast on a GPU), fp32 "
                                            "or bf16; overrides [train] precision."),
    as_json: bool = JSON,
) -> None:
    """Train the foundation model (leave-one-out validation, early stopping).

    Incremental: recfm train --init-from RUN2 --events recent.parquet --incremental --out RUN3
    Several processes: recfm train DATA --out RUN --nproc 2  (= torchrun … -m recfm.train)
    """
    json_mode(as_json)
    from recfm.adapt.incremental import INCREMENTAL_TRAIN
    from recfm.train.distributed import launch, strip_nproc
    from recfm.train.run import refuse_existing_run
    if nproc > 1:
        args = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else sys.argv[2:]
        raise typer.Exit(launch(nproc, strip_nproc(args)))
    mcfg, tcfg = load_run_config(config) if config else (ModelConfig(), TrainConfig())
    override(tcfg, epochs=epochs, max_minutes=max_minutes, seed=seed, device=device,
             precision=precision)
    if (events is not None or incremental) and init_from is None:
        raise RecfmError("--events and --incremental fine-tune a run: give it with --init-from")
    if incremental and events is None:
        raise RecfmError("--incremental needs the recent events: give them with --events FILE")
    if data_dir is None and events is None:
        raise RecfmError("train: give a prepared dataset directory (DATA_DIR)")
    if events is not None:
        if incremental and not config:
            for key, value in INCREMENTAL_TRAIN.items():
                if key != "epochs" or epochs is None:
                    setattr(tcfg, key, value)
        refuse_existing_run(out, resume)  # before its data folder is rebuilt
        data_dir = _recent_dataset(events, data_dir, out, init_from, incremental, replay)
    command = " ".join(["recfm"] + sys.argv[1:])
    start = init_from
    if semantic_ids is not None:
        from recfm.adapt.semantic_ids import generative_model
        start = generative_model(init_from or semantic_ids, semantic_ids)
    result = _train_with_progress(data_dir, out, mcfg, tcfg, resume, command, start)
    print_train_result(result, f"run {out}")
    console.print(f"best epoch {result.best_epoch}, {result.epochs_run} epochs, "
                  f"{result.n_params:,} parameters, {result.wall_s:.0f} s")
    if as_json:
        print_json(result)


def _recent_dataset(events: Path, data_dir: Path | None, out: Path, init_from: Path,
                    incremental: bool, replay: float) -> Path:
    """Tokenize the recent ``events`` with the ``init_from`` run's tokenizer into
    ``out/data`` (older histories as context; one written before by this command is
    replaced) and return that dataset directory."""
    from recfm.adapt.incremental import build_incremental_dataset
    from recfm.pipeline import Recommender
    history = data_dir if data_dir is not None else \
        run_data_dir(init_from) if incremental else None
    with steps("tokenizing recent events"):
        recent = Recommender.read_run_events(init_from, events)
        data_dir = out / "data"
        rep = build_incremental_dataset(init_from, recent, data_dir, history, replay,
                                        overwrite=True)
    console.print(f"recent events: {rep['fresh_tokens']:,} tokens of {rep['users']:,} users "
                  f"(+{rep['context_tokens']:,} context tokens from {rep['history']}); "
                  f"{rep['unknown_item_tokens_dropped']:,} on unknown items dropped")
    return data_dir


def _train_with_progress(data_dir: Path, out: Path, mcfg: ModelConfig, tcfg: TrainConfig,
                         resume: bool, command: str, init_from):
    """:func:`recfm.train.loop.train` under a progress bar; one line per finished epoch."""
    from recfm.train.loop import train
    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} batches"),
                  TextColumn("loss {task.fields[loss]:.4f}"),
                  TextColumn("{task.fields[tps]:,.0f} tok/s"),
                  TextColumn("best ndcg@10 {task.fields[best]:.4f}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=1, epoch=0, loss=0.0, tps=0.0, best=0.0)

        def on_progress(p: dict) -> None:
            if p.get("epoch_end"):
                progress.update(task, best=max(p["best"], 0.0))
                progress.console.print(
                    f"epoch {p['epoch']}: loss {p['train_loss']:.4f}  valid ndcg@10 "
                    f"{p['valid_ndcg@10']:.4f}  hr@10 {p['valid_hr@10']:.4f}  "
                    f"{p['tokens_per_s']:,.0f} tok/s")
            else:
                progress.update(task, total=p["batches"], completed=p["batch"],
                                epoch=p["epoch"], loss=p["loss"], tps=p["tokens_per_s"])

        return train(data_dir, out, mcfg, tcfg, resume=resume, on_progress=on_progress,
                     command=command, init_from=init_from)


def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    data: Path = typer.Option(..., help="The prepared dataset it was trained on."),
    split: str = typer.Option("test", help="test or valid."),
    sampled: int = typer.Option(0, help="Also report sampled metrics with N negatives."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one), cpu or "
                               "cuda: where the model scores."),
) -> None:
    """Full-ranking HR/NDCG/MRR/coverage@K of the model and the baselines."""
    from recfm.evaluate.evaluator import evaluate_run
    if split not in ("test", "valid"):
        raise RecfmError(f"--split: expected test or valid, found {split!r}")
    res = evaluate_run(run, data, split, sampled_negatives=sampled, device=device)
    atomic_write_json(run / f"eval-{split}.json", res)
    if as_json:
        print_json(res)
        return
    print_metrics_table(res, f"{run} on {data} ({split}, full ranking, seen items excluded)")
