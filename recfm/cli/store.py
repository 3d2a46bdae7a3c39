"""`recfm embed` and `recfm store versions|diff`: the embedding store (:mod:`recfm.store`)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recfm.cli.output import JSON, at_least_one, console, json_mode, print_json

store_app = typer.Typer(no_args_is_help=True,
                        help="Embedding stores: list versions, compare two versions.")


def embed_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset whose users to embed "
                                        "(default: the one the run was trained on)."),
    store: str = typer.Option(..., help="Store path (or file:// URI); created if new."),
    keep: Optional[int] = typer.Option(None, help="Versions to keep (default: the store's "
                                       "setting, 3 for a new store)."),
    pooling: Optional[str] = typer.Option(None, help="last, mean_last, attention, "
                                          "last_attention, layer_mean, layer_mix or mean "
                                          "(default: as trained)."),
    batch_size: int = typer.Option(256, help="Users per encoding batch."),
    backend: Optional[str] = typer.Option(None, help="lancedb (default) or parquet, for a "
                                          "new store."),
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    nproc: int = typer.Option(1, help="Embed with N local processes (torchrun on 127.0.0.1), "
                              "each encoding its shard of the users; one version published."),
    as_json: bool = JSON,
) -> None:
    """Embed every user and item with a run and publish them as a new store version.

    Several processes: recfm embed RUN --store S --nproc 2  (= torchrun … -m recfm.store)
    """
    json_mode(as_json)
    from recfm.store import embed, open_store
    from recfm.train.distributed import current, launch, strip_nproc
    import torch
    if nproc > 1:
        args = sys.argv[sys.argv.index("embed") + 1:] if "embed" in sys.argv else sys.argv[2:]
        raise typer.Exit(launch(nproc, strip_nproc(args), module="recfm.store"))
    if threads:
        torch.set_num_threads(threads)
    st = open_store(store, keep=keep, backend=backend)
    ctx = current()
    label = f"embedding users (rank 0's shard of {ctx.world})" if ctx else "embedding users"
    with Progress(TextColumn(label), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,}"),
                  TextColumn("{task.fields[ups]:,.0f} users/s"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("embed", total=1, ups=0.0)

        def on_progress(done: int, total: int) -> None:
            elapsed = progress.tasks[task].elapsed or 0.0
            progress.update(task, completed=done, total=total,
                            ups=done / elapsed if elapsed > 0 else 0.0)

        info = embed(run, data, st, batch_size=batch_size, pooling=pooling,
                     on_progress=on_progress)
    console.print(f"published version {info.version} to {store}: {info.users:,} users, "
                  f"{info.items:,} items, dim {info.dim}, pooling {info.pooling} "
                  f"({info.extra['users_per_s']:,.0f} users/s"
                  f"{f' over {ctx.world} processes' if ctx else ''}; publish "
                  f"{info.extra['publish_s']:.2f} s; keeping {st.keep})")
    if as_json:
        print_json(info)


@store_app.command("versions")
def versions_cmd(
    path: str = typer.Argument(..., help="Store path (or file:// URI)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the retained versions with their metadata."""
    from recfm.store import open_store
    st = open_store(path)
    versions = st.versions()
    current = st.current_version
    if as_json:
        print_json({"current": current, "versions": [asdict(v) for v in versions]})
        return
    t = Table(title=f"versions of {path}")
    for col in ("version", "created_at", "users", "items", "dim", "pooling", "model",
                "tokenizer", "users/s"):
        t.add_column(col, justify="right" if col in ("users", "items", "dim", "users/s")
                     else "left")
    for v in versions:
        ups = v.extra.get("users_per_s")
        t.add_row(f"{v.version}{' *' if v.version == current else ''}", v.created_at,
                  f"{v.users:,}", f"{v.items:,}", str(v.dim), v.pooling or "-",
                  v.model_version or "-", v.tokenizer_sha256 or "-",
                  f"{ups:,.0f}" if ups is not None else "-")
    console.print(t)
    console.print(f"current: version {current}; keeping the last {st.keep}")


@store_app.command("diff")
def diff_cmd(
    path: str = typer.Argument(..., help="Store path (or file:// URI)."),
    a: Optional[int] = typer.Option(None, "--a", help="Older version (default: the one "
                                    "before --b)."),
    b: Optional[int] = typer.Option(None, "--b", help="Newer version (default: the latest)."),
    k: int = typer.Option(10, help="Recommendation list length for the overlap.",
                          callback=at_least_one("--k")),
    sample_users: int = typer.Option(2000, help="Users sampled for the top-k overlap."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stability report between two versions: per-user cosine, top-k overlap, churn."""
    from recfm.store import open_store
    rep = open_store(path).diff(a, b, k=k, sample_users=sample_users)
    if as_json:
        print_json(rep)
        return
    t = Table(title=f"{path}: version {rep['a']} → {rep['b']}")
    for col in ("", "n", "median", "p10", "p90", "mean"):
        t.add_column(col, justify="left" if not col else "right")
    for name, s in (("user cosine", rep["cosine"]), (f"top-{k} overlap", rep["top_overlap"])):
        if s is None:
            t.add_row(name, "-", "dimensions differ", "", "", "")
            continue
        t.add_row(name, f"{s['n']:,}", *(f"{s[q]:.4f}" for q in ("median", "p10", "p90",
                                                                   "mean")))
    console.print(t)
    c = Table(title="churn")
    for col in ("", f"v{rep['a']}", f"v{rep['b']}", "common", "added", "removed"):
        c.add_column(col, justify="right" if col else "left")
    for kind in ("users", "items"):
        ch = rep[kind]
        c.add_row(kind, *(f"{ch[x]:,}" for x in ("a", "b", "common", "added", "removed")))
    console.print(c)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.add_typer(store_app, name="store")
