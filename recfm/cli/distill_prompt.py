"""`recfm distill`, `recfm prompt-tune` and `recfm prompts`: a student model, soft prompts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from recfm.cli.output import JSON, console, json_mode, override, print_json, print_train_result
from recfm.config import read_toml
from recfm.errors import RecfmError


def distill_cmd(
    teacher: Path = typer.Argument(..., help="The teacher's run directory."),
    student_config: Path = typer.Option(..., "--student-config",
                                        help="TOML with [model], [train] and [distill] tables."),
    out: Path = typer.Option(..., help="Run directory of the student."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset (default: the teacher's)."),
    epochs: Optional[int] = typer.Option(None, help="Override [train] epochs."),
    resume: bool = typer.Option(False, help="Continue from the student's last checkpoint."),
    as_json: bool = JSON,
) -> None:
    """Train a small student on a teacher's item scores (KL) plus the next item (CE)."""
    json_mode(as_json)
    from recfm.consume.distill import distill, load_student_config
    mcfg, tcfg, dcfg = load_student_config(student_config)
    override(tcfg, epochs=epochs)
    if not (teacher / "model.safetensors").is_file():
        raise RecfmError(f"{teacher / 'model.safetensors'}: expected a recfm run file, "
                         "found nothing at that path")
    command = " ".join(["recfm"] + sys.argv[1:])
    with console.status("distilling…") as status:
        def on_progress(p: dict) -> None:
            if p.get("epoch_end"):
                console.print(f"epoch {p['epoch']}: loss {p['train_loss']:.4f}  valid ndcg@10 "
                              f"{p['valid_ndcg@10']:.4f}")
            else:
                status.update(f"distilling: epoch {p['epoch']} batch {p['batch']}/"
                              f"{p['batches']} loss {p['loss']:.4f}")

        result = distill(teacher, out, mcfg, tcfg, dcfg, data, resume=resume,
                         on_progress=on_progress, command=command)
    print_train_result(result, f"student {out} (teacher {teacher})")
    console.print(f"{result.n_params:,} parameters, best epoch {result.best_epoch}, "
                  f"{result.wall_s:.0f} s")
    if as_json:
        print_json(result)


def prompt_tune_cmd(
    run: Path = typer.Argument(..., help="A run directory; the prompt is written into it."),
    name: Optional[str] = typer.Option(None, help="Prompt name, e.g. kids."),
    surface: Optional[list[str]] = typer.Option(
        None, help="Targets to train on, KEY=VALUE, repeatable: item.<column>=v (an items "
        "column of the next item) or <facet>=v (a facet of the next event), e.g. "
        "item.kids=true or surface=kids."),
    tokens: Optional[int] = typer.Option(None, help="Number of soft tokens (default 8)."),
    config: Optional[Path] = typer.Option(None, help="TOML with PromptConfig keys."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset (default: the run's)."),
    epochs: Optional[int] = typer.Option(None, help="Override epochs."),
    rank_weight: Optional[float] = typer.Option(
        None, help="Weight of the top-k ranking term (default 0: off), which keeps the "
        "best off-surface items of every history below the k-th best on-surface one."),
    as_json: bool = JSON,
) -> None:
    """Train soft prompt tokens for one surface with every foundation weight frozen."""
    json_mode(as_json)
    from recfm.consume.prompt import PromptConfig, parse_surface, prompt_tune
    values = dict(read_toml(config)) if config else {}
    override(values, name=name, surface=parse_surface(surface) if surface else None,
             tokens=tokens, epochs=epochs, rank_weight=rank_weight)
    cfg = PromptConfig.from_dict(values, str(config) if config else "prompt-tune options")
    if not (run / "model.safetensors").is_file():
        raise RecfmError(f"{run / 'model.safetensors'}: expected a recfm run file, "
                         "found nothing at that path")
    with console.status("prompt tuning…") as status:
        def on_progress(p: dict) -> None:
            status.update(f"prompt tuning: epoch {p['epoch']} step {p['step']}/{p['total']} "
                          f"loss {p['loss']:.4f}")

        res = prompt_tune(run, cfg, data, on_progress=on_progress)
    console.print(f"wrote {res.path}: {res.tokens} tokens, {res.steps} steps, surface loss "
                  f"{res.loss_first:.3f} → {res.loss_last:.3f}, {res.wall_s:.0f} s; foundation "
                  f"weights unchanged (sha256 {res.backbone_sha256[:12]}…)")
    if as_json:
        print_json(res)


def prompts_cmd(run: Path = typer.Argument(..., help="A run directory.")) -> None:
    """List the soft prompts stored in a run."""
    from recfm.pipeline.prompts import prompt_metadata, prompt_names
    names = prompt_names(run)
    if not names:
        console.print(f"{run}: no prompts (train one with recfm prompt-tune)")
        return
    t = Table(title=f"prompts of {run}")
    for c in ("name", "tokens", "surface", "steps", "loss", "created"):
        t.add_column(c)
    for n in names:
        m = prompt_metadata(run, n)
        surf = ", ".join(f"{k}={v}" for k, v in m.get("surface", {}).items())
        loss = f"{m.get('loss_first', 0):.3f} → {m.get('loss_last', 0):.3f}"
        t.add_row(n, str(m.get("tokens")), surf, str(m.get("steps")), loss,
                  str(m.get("created_at")))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_cmd)
    app.command("prompt-tune")(prompt_tune_cmd)
    app.command("prompts")(prompts_cmd)
