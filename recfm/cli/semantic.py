"""`recfm semantic-ids`: a short tuple of discrete codes for every item of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from recfm.cli.output import JSON, OVERWRITE, at_least_one, console, json_mode, print_json, steps


def register(app: typer.Typer) -> None:
    app.command("semantic-ids")(semantic_ids_cmd)


def semantic_ids_cmd(
    run: Path = typer.Argument(..., help="A run directory; the codes go to RUN/semantic_ids."),
    levels: int = typer.Option(3, help="Residual k-means levels (a last level then makes "
                               "every tuple unique).", callback=at_least_one("--levels")),
    codes: int = typer.Option(256, help="Codes per level.", callback=at_least_one("--codes")),
    source: str = typer.Option("auto", help="Item vectors quantised: content (text vectors, "
                               "else attribute bags), ids (the model's item vectors), both, "
                               "or auto (both when the run has content or attributes)."),
    seed: int = typer.Option(0, help="k-means seed."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Learn semantic ids for the items of a run (residual k-means) and report the codebooks."""
    json_mode(as_json)
    from recfm.adapt.semantic_ids import SemanticIdConfig, build_semantic_ids
    cfg = SemanticIdConfig(levels=levels, codes=codes, source=source, seed=seed)
    with steps("semantic ids") as on_step:
        rep = build_semantic_ids(run, cfg, overwrite=overwrite, on_step=on_step)
    use = ", ".join(f"{u:.0%}" for u in rep["utilisation"])
    console.print(f"wrote {run / 'semantic_ids'}: {rep['items']:,} items, codes "
                  f"{' × '.join(map(str, rep['sizes']))} from {rep['source']} vectors; "
                  f"codebook use {use}; {rep['collision_rate']:.1%} of items share a tuple "
                  f"before the last level; reconstruction error "
                  f"{rep['reconstruction_error']:.3f}; {rep['wall_s']:.1f} s")
    for name, c in rep.get("clusters", {}).items():
        console.print(f"level-1 codes by {name}: purity {c['purity']:.1%} (shuffled "
                      f"{name}s: {c['shuffled']:.1%}; {c['labels']} values)")
    if as_json:
        print_json(rep)
