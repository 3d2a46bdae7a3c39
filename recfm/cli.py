"""`recfm …` — the command line. The library logs; only this module prints.

Every :class:`~recfm.errors.RecfmError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from recfm.errors import RecfmError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="recfm: a foundation model for personalized recommendation.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthesize, describe, download.")
app.add_typer(data_app, name="data")
content_app = typer.Typer(no_args_is_help=True, help="Item content: text / attribute embeddings.")
app.add_typer(content_app, name="content")

console = Console()
err_console = Console(stderr=True)


@contextmanager
def steps(title: str):
    """A spinner whose text follows the library's ``on_step`` callbacks."""
    with console.status(f"{title}…") as status:
        yield lambda name: status.update(f"{title}: {name}…")


def _print_json(obj) -> None:
    console.print_json(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- data


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
) -> None:
    """Generate the synthetic streaming world (events, items, ground truth)."""
    from recfm.data import synthetic

    cfg = synthetic.SynthConfig(seed=seed, n_users=users, n_items=items,
                                events_per_user=events_per_user, habit_fraction=habit_fraction,
                                completion_sigma=completion_sigma)
    try:
        cfg.validate()
    except ValueError as e:
        raise RecfmError(f"data synth: {e}") from None
    with steps("synthesizing"):
        world = synthetic.generate(cfg)
        synthetic.write_world(world, out, cfg)
    console.print(f"wrote {out}: {world.events.height:,} events, "
                  f"{world.events['user_id'].n_unique():,} users, {world.items.height:,} items")


@data_app.command("describe")
def data_describe(
    path: Path = typer.Argument(..., help="A prepared dataset directory."),
    top: int = typer.Option(10, help="How many of the most frequent items to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts, sequence-length percentiles, top items and time range."""
    from recfm.prepare import describe

    d = describe(path, top=top)
    if as_json:
        _print_json(d)
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
                  f"(×{rep['compression']})")
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
    name: str = typer.Argument(..., help="ml-latest-small, ml-1m, ml-10m, ml-25m or ml-32m."),
    dest: Path = typer.Option(Path("data"), help="Folder to extract into."),
    sha256: Optional[str] = typer.Option(None, help="Expected SHA-256 of the zip."),
    base_url: Optional[str] = typer.Option(None, help="Mirror to download from."),
) -> None:
    """Download a MovieLens dataset (needs internet) and verify its SHA-256."""
    from recfm.data.download import download_movielens

    path = download_movielens(name, dest, base_url=base_url, sha256=sha256)
    console.print(f"extracted to {path}")


# ----------------------------------------------------------------------------- prepare


@app.command("prepare")
def prepare_cmd(
    events: Path = typer.Option(..., help="Event file, or a dataset folder in a known layout."),
    out: Path = typer.Option(..., help="Prepared dataset directory to write."),
    items: Optional[Path] = typer.Option(None, help="Item catalog file."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer config (TOML)."),
    fmt: str = typer.Option("auto", "--format",
                            help="auto, generic, synthetic, movielens, s3rec or amazon."),
    map_: Optional[str] = typer.Option(None, "--map",
                                       help="Event columns, e.g. user_id=userId,item_id=movieId."),
    item_map: Optional[str] = typer.Option(None, "--item-map", help="Item columns, likewise."),
) -> None:
    """Read events (+ items), tokenize, and write a prepared dataset directory."""
    from recfm.config import load_toml
    from recfm.data.schema import parse_mapping
    from recfm.prepare import load_raw, prepare
    from recfm.tokenizer import TokenizerConfig

    cfg = load_toml(TokenizerConfig, tokenizer) if tokenizer else None
    with steps("preparing") as on_step:
        on_step("reading")
        raw = load_raw(events, items, fmt, parse_mapping(map_), parse_mapping(item_map))
        report = prepare(raw, out, cfg, on_step=on_step)
    _print_report(report, out)


def _print_report(report: dict, out: Path) -> None:
    t = Table(title=f"prepared {out}", show_header=False)
    t.add_row("dataset", str(report["dataset"]))
    t.add_row("users", f"{report['users']:,}")
    t.add_row("items with events", f"{report['items_with_events']:,}")
    t.add_row("events in", f"{report['events_in']:,}")
    t.add_row("tokens out", f"{report['tokens_out']:,} (compression ×{report['compression_from_input']})")
    t.add_row("dropped", ", ".join(f"{k} {v:,}" for k, v in report["dropped"].items()) or "none")
    sl = report["sequence_length"]
    t.add_row("sequence length", f"p50 {sl['p50']:g}, p90 {sl['p90']:g}, p99 {sl['p99']:g}, "
              f"max {sl['max']:g}")
    loo = report["split"]["leave_one_out"]
    t.add_row("leave-one-out", f"{loo['users_evaluated']:,} users evaluated, "
              f"{loo['users_too_short']:,} too short (train only)")
    t.add_row("wall time", f"{report['wall_s']:.2f} s")
    console.print(t)


# ----------------------------------------------------------------------------- model


@app.command("train")
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
    nproc: int = typer.Option(1, help="Train with N local processes (DistributedDataParallel "
                              "through torchrun on 127.0.0.1; same global batch)."),
) -> None:
    """Train the foundation model (leave-one-out validation, early stopping).

    Incremental: recfm train --init-from RUN2 --events recent.parquet --incremental --out RUN3
    Several processes: recfm train DATA --out RUN --nproc 2  (= torchrun … -m recfm.train)
    """
    if nproc > 1:
        from recfm.train.distributed import launch, strip_nproc
        args = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else sys.argv[2:]
        raise typer.Exit(launch(nproc, strip_nproc(args)))
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from recfm.model.config import ModelConfig
    from recfm.train.loop import TrainConfig, load_run_config, train

    mcfg, tcfg = load_run_config(config) if config else (ModelConfig(), TrainConfig())
    if epochs is not None:
        tcfg.epochs = epochs
    if max_minutes is not None:
        tcfg.max_minutes = max_minutes
    if seed is not None:
        tcfg.seed = seed
    if (events is not None or incremental) and init_from is None:
        raise RecfmError("--events and --incremental fine-tune a run: give it with --init-from")
    if incremental and events is None:
        raise RecfmError("--incremental needs the recent events: give them with --events FILE")
    if data_dir is None and events is None:
        raise RecfmError("train: give a prepared dataset directory (DATA_DIR)")
    if events is not None:
        from recfm.adapt.incremental import (INCREMENTAL_TRAIN, build_incremental_dataset,
                                             run_data_dir)
        from recfm.data.readers import read_events

        history = data_dir if data_dir is not None else \
            run_data_dir(init_from) if incremental else None
        if incremental and not config:
            for key, value in INCREMENTAL_TRAIN.items():
                if key != "epochs" or epochs is None:
                    setattr(tcfg, key, value)
        with steps("tokenizing recent events"):
            recent = read_events(events).drop("_line")
            data_dir = out / "data"
            rep = build_incremental_dataset(init_from, recent, data_dir, history, replay)
        console.print(f"recent events: {rep['fresh_tokens']:,} tokens of {rep['users']:,} users "
                      f"(+{rep['context_tokens']:,} context tokens from {rep['history']}); "
                      f"{rep['unknown_item_tokens_dropped']:,} on unknown items dropped")
    command = " ".join(["recfm"] + sys.argv[1:])
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

        result = train(data_dir, out, mcfg, tcfg, resume=resume, on_progress=on_progress,
                       command=command, init_from=init_from)
    print_train_result(result, f"run {out}")
    console.print(f"best epoch {result.best_epoch}, {result.epochs_run} epochs, "
                  f"{result.n_params:,} parameters, {result.wall_s:.0f} s")


def print_train_result(result, title: str) -> None:
    """The validation (best epoch) and test metrics of a finished training, as a table."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("valid (best epoch)", justify="right")
    t.add_column("test", justify="right")
    for key in ("ndcg@10", "hr@10", "mrr"):
        test = f"{result.test[key]:.4f}" if result.test else "-"
        t.add_row(key, f"{result.best_valid[key]:.4f}", test)
    console.print(t)


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    data: Path = typer.Option(..., help="The prepared dataset it was trained on."),
    split: str = typer.Option("test", help="test or valid."),
    sampled: int = typer.Option(0, help="Also report sampled metrics with N negatives."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Full-ranking HR/NDCG/MRR/coverage@K of the model and the baselines."""
    from recfm.evaluate.evaluator import evaluate_run
    from recfm.io import atomic_write_json

    if split not in ("test", "valid"):
        raise RecfmError(f"--split: expected test or valid, found {split!r}")
    res = evaluate_run(run, data, split, sampled_negatives=sampled)
    atomic_write_json(run / f"eval-{split}.json", res)
    if as_json:
        _print_json(res)
        return
    _print_metrics_table(res, f"{run} on {data} ({split}, full ranking, seen items excluded)")


def _print_metrics_table(res: dict, title: str) -> None:
    t = Table(title=title)
    t.add_column("metric")
    for name in res:
        t.add_column(name, justify="right")
    keys = [k for k in next(iter(res.values())) if "@" in k or k == "mrr"]
    for k in keys:
        t.add_row(k, *(f"{res[n][k]:.4f}" for n in res))
    console.print(t)


@app.command("recommend")
def recommend_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    user: Optional[str] = typer.Option(None, help="A known user id (history from --data)."),
    events: Optional[Path] = typer.Option(None, help="Raw events of a (new) user."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset with the user's history "
                                        "(default: the one the run was trained on)."),
    k: int = typer.Option(10, help="How many items."),
    include_seen: bool = typer.Option(False, help="Allow items already in the history."),
    map_: Optional[str] = typer.Option(None, "--map", help="Column mapping for --events."),
    prompt: Optional[str] = typer.Option(None, help="A soft prompt of the run (recfm "
                                         "prompt-tune), e.g. kids."),
) -> None:
    """Recommendations for a known user or from a file of raw events."""
    import polars as pl

    from recfm.data.readers import read_events
    from recfm.data.schema import parse_mapping
    from recfm.model.foundation import FoundationModel

    if (user is None) == (events is None):
        raise RecfmError("recommend: give exactly one of --user or --events")
    fm = FoundationModel.from_pretrained(run)
    if events is not None:
        history = read_events(events, parse_mapping(map_)).drop("_line")
    else:
        if data is None:
            data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
        seqs = pl.read_parquet(data / "tokens.parquet")
        history = seqs.filter(pl.col("user_id") == user)
        if history.height == 0:
            raise RecfmError(f"{data / 'tokens.parquet'}: expected user {user!r}, found no such user")
    recs = fm.recommend(history, k=k, exclude_seen=not include_seen, prompt=prompt)
    t = Table(title=f"top {k} for {user or events}")
    for c in recs.columns:
        t.add_column(c)
    for row in recs.iter_rows():
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(t)


# ----------------------------------------------------------------------------- content


@content_app.command("embed")
def content_embed(
    data_dir: Path = typer.Argument(..., help="A prepared dataset directory."),
    embedder: Optional[str] = typer.Option(None, help="minilm, hash:D, attributes:D or "
                                           "file:PATH (default: minilm for catalogs with text, "
                                           "attributes:256 for attribute ids only)."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder "
                                         "(default: $RECFM_CACHE_DIR or ~/.cache/recfm)."),
) -> None:
    """Embed every item's content; `recfm train` then combines it with the id embeddings."""
    from recfm.content.store import embed_dataset

    with steps("content") as on_step:
        meta = embed_dataset(data_dir, embedder, cache, on_step=on_step)
    hits = f", {meta['cache_hits']:,} from the cache" if meta.get("cache_hits") else ""
    console.print(f"wrote {data_dir / 'content.parquet'}: {meta['items']:,} items × "
                  f"{meta['dim']} ({meta['embedder']}{hits}; {meta['items_without_content']:,} "
                  f"without content) in {meta['wall_s']:.1f} s")


# ----------------------------------------------------------------------------- new items


@app.command("add-items")
def add_items_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    items: Path = typer.Option(..., help="Catalog file of the new items (Parquet, CSV, JSONL)."),
    out: Path = typer.Option(..., help="New run directory to write."),
    init: str = typer.Option("scaled", help="Id embeddings of new items: scaled (content "
                             "alone, as long as a trained item's vector; zero where it does "
                             "not apply), zero (content alone), "
                             "neighbours (mean of the nearest items in content space), "
                             "content (ridge map from content) or random."),
    k: int = typer.Option(10, help="Neighbours averaged by --init neighbours."),
    embedder: Optional[str] = typer.Option(None, help="For a run without content: the "
                                           "embedder used by --init content / neighbours."),
    vectors: Optional[Path] = typer.Option(None, help="The new items' vectors, for a run "
                                           "trained on your own vectors (file:...)."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder."),
) -> None:
    """Add new titles to a run without retraining; existing items keep ids and weights."""
    from recfm.adapt.new_items import add_items

    with steps("adding items") as on_step:
        rep = add_items(run, items, out, init=init, k=k, embedder=embedder, vectors=vectors,
                        cache_dir=cache, on_step=on_step)
    console.print(f"wrote {out}: {rep['added']:,} new items ({rep['skipped_existing']:,} "
                  f"already known), {rep['n_items_after']:,} in all; init {rep['init']}, "
                  f"content {rep['embedder'] or 'none'}; {rep['wall_s']:.1f} s")


# ----------------------------------------------------------------------------- serve


@app.command("serve")
def serve_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (localhost by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset with known users' "
                                        "histories (default: the one the run was trained on)."),
    config: Optional[Path] = typer.Option(None, help="TOML with ServeConfig keys "
                                          "(recfm.serve.config)."),
    retrieval: Optional[str] = typer.Option(None, help="auto, exact or hnsw."),
    window_hop: Optional[int] = typer.Option(None, help="Move the context window in steps "
                                             "of this many tokens (cacheable growth)."),
    cache_mb: Optional[float] = typer.Option(None, help="Memory for cached user states."),
    threads: Optional[int] = typer.Option(None, help="torch threads for the model."),
    log_level: str = typer.Option("warning", help="Server log level."),
) -> None:
    """Serve a run over HTTP: recommendations, embeddings, collections, explorer page at /."""
    import uvicorn

    from recfm.serve.app import create_app
    from recfm.serve.config import ServeConfig, load_serve_config

    cfg = load_serve_config(config) if config else ServeConfig()
    if retrieval is not None:
        if retrieval not in ("auto", "exact", "hnsw"):
            raise RecfmError(f"--retrieval: expected auto, exact or hnsw, found {retrieval!r}")
        cfg.retrieval = retrieval  # type: ignore[assignment]
    if window_hop is not None:
        cfg.window_hop = window_hop
    if cache_mb is not None:
        cfg.cache_mb = cache_mb
    if threads is not None:
        cfg.threads = threads
    logging.getLogger("recfm").setLevel(log_level.upper())
    with steps("loading") as on_step:
        on_step(str(run))
        web = create_app(run, cfg, data)
    engine = web.state.service.engine
    console.print(f"serving {engine.version} ({engine.n_items - 3:,} items, "
                  f"{engine.index.kind} retrieval) on http://{host}:{port}  "
                  f"(explorer at /, API docs at /docs)")
    uvicorn.run(web, host=host, port=port, log_level=log_level, access_log=False)


# ----------------------------------------------------------------------------- demo


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-output"), help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, help="Seed of the world and of training."),
) -> None:
    """The whole path offline on the synthetic world: synth → prepare → train → evaluate."""
    from recfm.demo import run_demo

    with steps("demo") as on_step:
        def on_progress(p: dict) -> None:
            if p.get("epoch_end"):
                on_step(f"training: epoch {p['epoch']} valid ndcg@10 {p['valid_ndcg@10']:.4f}")

        report = run_demo(out, seed, on_step=on_step, on_progress=on_progress)
    data_describe(out / "prepared", top=5, as_json=False)
    _print_metrics_table({k: report[k] for k in ("model", "popularity", "recent")},
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


from recfm.consume.distill_prompt_cli import register as _reg_distill; _reg_distill(app)  # noqa: E402,E702
from recfm.store.cli import register as _reg_store; _reg_store(app)  # noqa: E402,E702
from recfm.consume.cli import register as _reg_finetune; _reg_finetune(app)  # noqa: E402,E702
from recfm.rank.cli import register as _reg_rank; _reg_rank(app)  # noqa: E402,E702


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RecfmError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)

if __name__ == "__main__":
    main()
