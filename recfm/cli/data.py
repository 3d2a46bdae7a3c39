"""`recfm data synth|describe|download` and `recfm prepare`: datasets in, tokens out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from recfm.cli.output import JSON, OVERWRITE, at_least_one, console, json_mode, print_json, steps
from recfm.config import load_toml
from recfm.errors import RecfmError
from recfm.io import check_out

data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthesize, describe, download.")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command("prepare")(prepare_cmd)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the world into."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same files."),
    users: int = typer.Option(5000, help="Number of users."),
    items: int = typer.Option(2000, help="Number of titles."),
    events_per_user: float = typer.Option(100.0, help="Mean events per user."),
    habit_fraction: float = typer.Option(0.0, help="Share of users whose sessions come on a "
                                         "fixed cadence (0: uniform random days)."),
    completion_sigma: float = typer.Option(0.0, help="Spread of users' tendency to finish "
                                           "what they start (0: every user alike)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Generate the synthetic streaming world (events, items, ground truth)."""
    json_mode(as_json)
    from recfm.data import synthetic
    cfg = synthetic.SynthConfig(seed=seed, n_users=users, n_items=items,
                                events_per_user=events_per_user, habit_fraction=habit_fraction,
                                completion_sigma=completion_sigma)
    try:
        cfg.validate()
    except ValueError as e:
        raise RecfmError(f"data synth: {e}") from None
    check_out(out, "world", overwrite)
    with steps("synthesizing"):
        world = synthetic.generate(cfg)
        synthetic.write_world(world, out, cfg, overwrite)
    counts = {"out": str(out), "events": world.events.height,
              "users": world.events["user_id"].n_unique(), "items": world.items.height}
    console.print(f"wrote {out}: {counts['events']:,} events, {counts['users']:,} users, "
                  f"{counts['items']:,} items")
    if as_json:
        print_json(counts)


@data_app.command("describe")
def data_describe(
    path: Path = typer.Argument(..., help="A prepared dataset directory."),
    top: int = typer.Option(10, help="How many of the most frequent items to list.",
                            callback=at_least_one("--top")),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts, sequence-length percentiles, top items and time range."""
    from recfm.tokens.prepare import describe
    d = describe(path, top=top)
    if as_json:
        print_json(d)
        return
    t = Table(title=f"{path}", show_header=False)
    for key in ("users", "tokens", "items_in_vocabulary", "items_with_tokens"):
        t.add_row(key, f"{d[key]:,}")
    t.add_row("sequence length", ", ".join(f"{k} {v:g}" for k, v in d["sequence_length"].items()))
    if d["time_range"]:
        t.add_row("time range", f"{d['time_range'][0]} … {d['time_range'][1]}")
    t.add_row("facets", ", ".join(f"{k} ({n})" for k, n in d["facets"].items()) or "none")
    rep = d["report"]
    if rep.get("events_in") is not None:
        t.add_row("events in → tokens", f"{rep['events_in']:,} → {rep['tokens_out']:,} "
                  f"(×{rep['compression_from_input']})")
        t.add_row("dropped", ", ".join(f"{k} {v:,}" for k, v in rep["dropped"].items()) or "none")
    console.print(t)
    top_t = Table(title=f"top {top} items")
    top_t.add_column("item_id")
    top_t.add_column("tokens", justify="right")
    if d["top_items"] and "title" in d["top_items"][0]:
        top_t.add_column("title")
    for row in d["top_items"]:
        cells = [str(row["item_id"]), f"{row['n']:,}"]
        if "title" in row:
            cells.append(str(row["title"] or ""))
        top_t.add_row(*cells)
    console.print(top_t)


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="ml-100k, ml-latest-small, ml-1m, ml-10m, ml-25m or "
                               "ml-32m."),
    dest: Path = typer.Option(Path("data"), help="Folder to extract into."),
    sha256: Optional[str] = typer.Option(None, help="Expected SHA-256 of the zip."),
    base_url: Optional[str] = typer.Option(None, help="Mirror to download from."),
) -> None:
    """Download a MovieLens dataset (needs internet) and verify its SHA-256."""
    from recfm.data.download import download_movielens
    path = download_movielens(name, dest, base_url=base_url, sha256=sha256)
    console.print(f"extracted to {path}")


# ----------------------------------------------------------------------------- prepare


def prepare_cmd(
    events: Path = typer.Option(..., help="Event file, or a dataset folder in a known layout."),
    out: Path = typer.Option(..., help="Prepared dataset directory to write."),
    items: Optional[Path] = typer.Option(None, help="Item catalog file."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer config (TOML)."),
    fmt: str = typer.Option("auto", "--format", help="A layout (auto, generic, synthetic, "
                            "movielens, s3rec, amazon) or the events file's format (csv, tsv, "
                            "jsonl, parquet: whatever its suffix)."),
    map_: Optional[str] = typer.Option(None, "--map",
                                       help="Event columns, e.g. user_id=userId,item_id=movieId."),
    item_map: Optional[str] = typer.Option(None, "--item-map", help="Item columns, likewise."),
    sep: Optional[str] = typer.Option(None, help="Field separator of the events file, e.g. "
                                      "';', '|', '::' or 'tab'."),
    header: Optional[bool] = typer.Option(None, "--header/--no-header", help="Whether the "
                                          "events file's first line names its columns "
                                          "(default: yes, unless --columns names them)."),
    columns: Optional[str] = typer.Option(None, help="Names of the events file's fields in "
                                          "order, e.g. user_id,item_id,value,timestamp."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the files, e.g. latin-1."),
    item_format: Optional[str] = typer.Option(None, help="The item file's format, likewise."),
    item_sep: Optional[str] = typer.Option(None, help="Field separator of the item file."),
    item_columns: Optional[str] = typer.Option(None, help="Names of the item file's fields "
                                               "in order (the file then has no header)."),
    item_flags: Optional[str] = typer.Option(None, help="One-hot (1/0) item columns that "
                                             "become genres named by their column: A,B,C or "
                                             "a run FIRST..LAST, e.g. unknown..Western."),
    strict: bool = typer.Option(False, help="Amazon: refuse reviews of items missing from "
                                "the metadata (by default they are dropped and counted)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Read events (+ items), tokenize, and write a prepared dataset directory.

    Any delimited file: recfm prepare --events u.data --format tsv --no-header
    --columns user_id,item_id,value,timestamp --out prep
    """
    json_mode(as_json)
    from recfm.data.readers import ReadOptions
    from recfm.data.schema import parse_mapping
    from recfm.tokens.prepare import load_raw, prepare
    from recfm.tokens.tokenizer import TokenizerConfig
    check_out(out, "prepared", overwrite, (events, items))  # before the (long) reading
    cfg = load_toml(TokenizerConfig, tokenizer) if tokenizer else None
    options = ReadOptions(None, _sep(sep), header, _names(columns), encoding)
    item_options = ReadOptions(item_format, _sep(item_sep), None, _names(item_columns),
                               encoding)
    with steps("preparing") as on_step:
        on_step("reading")
        raw = load_raw(events, items, fmt, parse_mapping(map_), parse_mapping(item_map),
                       options, item_options, _names(item_flags), strict)
        report = prepare(raw, out, cfg, on_step=on_step, overwrite=overwrite)
    _print_report(report, out)
    if as_json:
        print_json(report)


def _sep(text: str | None) -> str | None:
    """A separator as typed: ``tab`` or ``\\t`` for a tab."""
    return "\t" if text in ("tab", "\\t", "TAB") else text


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _print_report(report: dict, out: Path) -> None:
    t = Table(title=f"prepared {out}", show_header=False)
    t.add_row("dataset", str(report["dataset"]))
    t.add_row("users", f"{report['users']:,}")
    t.add_row("items with tokens", f"{report['items_with_tokens']:,} "
              f"({report['items_with_events']:,} in the events read)")
    t.add_row("events in → tokens", f"{report['events_in']:,} → {report['tokens_out']:,} "
              f"(×{report['compression_from_input']})")
    t.add_row("dropped", ", ".join(f"{k} {v:,}" for k, v in report["dropped"].items()) or "none")
    sl = report["sequence_length"]
    t.add_row("sequence length", f"p50 {sl['p50']:g}, p90 {sl['p90']:g}, p99 {sl['p99']:g}, "
              f"max {sl['max']:g}")
    loo = report["split"]["leave_one_out"]
    t.add_row("leave-one-out", f"{loo['users_evaluated']:,} users evaluated, "
              f"{loo['users_too_short']:,} too short (train only)")
    t.add_row("wall time", f"{report['wall_s']:.2f} s (reading {report['read_s']:.2f} s)")
    console.print(t)
