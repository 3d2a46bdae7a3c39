"""`recfm recommend`: the top items of one user, several, all, or raw events — printed as
tables or JSON, or streamed to a Parquet / JSON-lines file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recfm.cli.output import OVERWRITE, at_least_one, console, print_json
from recfm.errors import InputError, RecfmError, shorten
from recfm.io import atomic_write_file

if TYPE_CHECKING:  # annotations only: polars loads with the command (start-up time)
    import polars as pl

# Printed tables beyond this many users would scroll away: --out writes them instead.
MAX_PRINTED = 50


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_cmd)


def recommend_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    user: Optional[list[str]] = typer.Option(None, help="A known user id (history from "
                                             "--data); repeat for several."),
    users: Optional[str] = typer.Option(None, help="'all' known users, or a file of user ids "
                                        "(one per line, or a table with a user_id column)."),
    events: Optional[Path] = typer.Option(None, help="Raw events of (new) users, shaped like "
                                          "the training data's file (its options are "
                                          "remembered by the run)."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset with the users' "
                                        "histories (default: the one the run was trained on)."),
    k: int = typer.Option(10, help="How many items per user.", callback=at_least_one("--k")),
    include_seen: bool = typer.Option(False, help="Allow items already in the history."),
    map_: Optional[str] = typer.Option(None, "--map", help="Column mapping for --events."),
    prompt: Optional[str] = typer.Option(None, help="A soft prompt of the run (recfm "
                                         "prompt-tune), e.g. kids."),
    out: Optional[Path] = typer.Option(None, help="Write to this .parquet or .jsonl file "
                                       "(one row per user and item / one line per user)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    batch_size: int = typer.Option(256, help="Users scored at once.",
                                   callback=at_least_one("--batch-size")),
    overwrite: bool = OVERWRITE,
) -> None:
    """Recommendations for known users or from a file of raw events.

    Every user to a file: recfm recommend RUN --users all --k 100 --out recs.parquet
    """
    from recfm.data.schema import parse_mapping
    from recfm.pipeline import Recommender
    import polars as pl
    if sum(x is not None and x != [] for x in (user, users, events)) != 1:
        raise RecfmError("recommend: give one of --user, --users or --events")
    if out is not None:
        _check_out(out, overwrite)
    rec = Recommender.from_pretrained(run)
    if events is not None:
        histories = rec.read_events(events, parse_mapping(map_))
    else:
        histories = _known_histories(run, data, user or _user_ids(users))
    n = histories["user_id"].n_unique() if "user_id" in histories.columns else 1
    batches = rec.recommend_batches(histories, k, not include_seen, prompt, batch_size=batch_size)
    if out is not None:
        _write(out, batches, n)
        return
    if n > MAX_PRINTED:
        raise RecfmError(f"recommend: {n:,} users are too many to print (at most "
                         f"{MAX_PRINTED}): write them with --out recs.parquet")
    recs = pl.concat(list(batches))
    if rec.items is not None and "title" in rec.items.columns:
        recs = recs.join(rec.items.select("item_id", "title"), on="item_id", how="left",
                         maintain_order="left")
    if as_json:
        print_json([{"user_id": uid, "items": g.drop("user_id").to_dicts()}
                    for (uid,), g in recs.group_by("user_id", maintain_order=True)])
        return
    for (uid,), g in recs.group_by("user_id", maintain_order=True):
        _print_table(g.drop("user_id"), f"top {k} for {uid}" + (f" ({events})" if events else ""))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix not in (".parquet", ".jsonl"):
        raise RecfmError(f"--out: expected a .parquet or .jsonl file, found {out.name!r}")
    if out.exists() and (not overwrite or out.is_dir()):
        raise RecfmError(f"--out {out}: expected a new file (--overwrite replaces a file), "
                         "found one there")


def _user_ids(spec: str) -> list[str] | None:
    """None for ``all``, else the ids of a file: a table's user_id column, or one per line."""
    from recfm.data.readers import read_table
    import polars as pl
    if spec == "all":
        return None
    path = Path(spec)
    if not path.is_file():
        raise InputError(spec, None, None, "'all' or a file of user ids", "no such file")
    if path.suffix.lower() in (".parquet", ".csv", ".tsv", ".jsonl"):
        table = read_table(path)
        if "user_id" not in table.columns:
            raise InputError(spec, 1, "user_id", "a user_id column", ", ".join(table.columns))
        return table["user_id"].cast(pl.Utf8).to_list()
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _known_histories(run: Path, data: Path | None, ids: list[str] | None) -> pl.DataFrame:
    """The prepared histories of ``ids`` (None: all users), in the order given
    (:func:`recfm.pipeline.histories.history_sources`)."""
    import polars as pl

    from recfm.pipeline.histories import history_sources, known_histories

    sources = history_sources(run, data)
    if not sources:
        raise RecfmError(f"{run}: the dataset it was trained on is not there; give --data")
    seqs = known_histories(sources)
    if ids is None:
        return seqs
    wanted = pl.DataFrame({"user_id": ids}).unique("user_id", maintain_order=True)
    found = wanted.join(seqs, on="user_id", how="left", maintain_order="left")
    missing = found.filter(pl.col("item").is_null())["user_id"]
    if missing.len():
        raise RecfmError(f"{', '.join(str(d / 'tokens.parquet') for d in sources)}: expected "
                         f"known users, found {missing.len()} unknown, e.g. "
                         f"{shorten(missing[0])}")
    return found


def _write(out: Path, batches: Iterator[pl.DataFrame], n_users: int) -> None:
    """Stream the batches to ``out`` (atomic: the file appears whole) under a progress bar."""
    import polars as pl
    t0 = time.perf_counter()
    rows = 0
    with Progress(TextColumn("recommending"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("users"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("users", total=n_users)

        def counted() -> Iterator[pl.DataFrame]:
            nonlocal rows
            for b in batches:
                rows += b.height
                progress.update(task, advance=b["user_id"].n_unique())
                yield b

        atomic_write_file(out, lambda tmp: (_write_parquet if out.suffix == ".parquet"
                                            else _write_jsonl)(tmp, counted()))
    wall = time.perf_counter() - t0
    console.print(f"wrote {out}: {rows:,} recommendations for {n_users:,} users in "
                  f"{wall:.1f} s ({n_users / max(wall, 1e-9):,.0f} users/s)")


def _write_parquet(path: Path, batches: Iterator[pl.DataFrame]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    writer = None
    for b in batches:
        table = b.to_arrow()
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    if writer is None:  # no user at all: an empty table with the columns
        pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "rank": [],
                                 "item_id": pa.array([], pa.string()), "score": []}), path)
    else:
        writer.close()


def _write_jsonl(path: Path, batches: Iterator[pl.DataFrame]) -> None:
    with open(path, "w") as f:
        for b in batches:
            for (uid,), g in b.group_by("user_id", maintain_order=True):
                f.write(json.dumps({"user_id": uid, "items": g.drop("user_id").to_dicts()})
                        + "\n")


def _print_table(recs: pl.DataFrame, title: str) -> None:
    t = Table(title=title)
    for c in recs.columns:
        t.add_column(c)
    for row in recs.iter_rows():
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(t)
