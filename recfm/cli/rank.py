"""`recfm rank holdout|train|evaluate|serve-hook`: the unified ranker (:mod:`recfm.rank`);
the order of the commands: the README's command table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from recfm.cli.output import (JSON, OVERWRITE, at_least_one, console, json_mode, override,
                              print_json)
from recfm.config import read_toml
from recfm.errors import InputError, RecfmError
from recfm.io import atomic_write_json, check_out

rank_app = typer.Typer(no_args_is_help=True,
                       help="Unified contextual ranker: search and recommendation, one model.")


def _knobs(values: list[str] | None) -> dict[str, float]:
    from recfm.rank.data import check_task
    out = {}
    for v in values or []:
        task, sep, num = v.partition("=")
        if not sep:
            raise RecfmError(f"--knob: expected TASK=VALUE, found {v!r}")
        check_task(task, "--knob")
        try:
            out[task] = float(num)
        except ValueError:
            raise RecfmError(f"--knob: expected a number after '=', found {num!r}") from None
    return out


@rank_app.command("holdout")
def holdout_cmd(
    prepared: Path = typer.Argument(..., help="A prepared dataset (recfm prepare)."),
    out: Path = typer.Option(..., help="Where to write the copy the foundation model trains on."),
    holdout: int = typer.Option(6, help="Tokens per user held out for ranking requests."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Copy a prepared dataset without each user's last tokens (the ranking requests)."""
    json_mode(as_json)
    from recfm.rank.data import holdout_dataset
    counts = holdout_dataset(prepared, out, holdout, overwrite)
    console.print(f"{out}: {counts['users']} users, {counts['tokens']} tokens "
                  f"({counts['tokens_held_out']} held out for ranking)")
    if as_json:
        print_json(counts)


@rank_app.command("train")
def train_cmd(
    prepared: Path = typer.Argument(..., help="The full prepared dataset."),
    fm: Path = typer.Option(..., help="A foundation-model run trained on `recfm rank holdout` "
                            "of PREPARED."),
    out: Path = typer.Option(..., help="Ranker directory to write."),
    config: Optional[Path] = typer.Option(None, help="TOML with [ranker] (RankerConfig) and "
                                          "[data] (RankDataConfig) tables."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per stage (overrides the config)."),
    embedder: Optional[str] = typer.Option(None, help="minilm (default) or hash:D."),
    seed: Optional[int] = typer.Option(None, help="Seed of the ranker."),
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Build ranking requests with the foundation model, then train the unified ranker."""
    json_mode(as_json)
    from recfm.pipeline import Recommender
    from recfm.rank.data import RankDataConfig, build_requests
    from recfm.rank.model import RankerConfig
    from recfm.rank.train import evaluate, fit, prepare_features, tune_knobs
    import torch
    check_out(out / "data", "rank-data", overwrite)  # before the (long) request building
    if threads:
        torch.set_num_threads(threads)
    data_cfg, rank_cfg = RankDataConfig(), RankerConfig()
    if config is not None:
        tables = read_toml(config)
        unknown = set(tables) - {"ranker", "data"}
        if unknown:
            raise InputError(str(config), None, sorted(unknown)[0], "a [ranker] or [data] table",
                             "another key")
        data_cfg = RankDataConfig.from_dict(tables.get("data", {}), str(config))
        rank_cfg = RankerConfig.from_dict(tables.get("ranker", {}), str(config))
    override(rank_cfg, epochs=epochs, embedder=embedder, seed=seed)
    t0 = time.perf_counter()
    with console.status("building ranking requests") as status:
        model_fm = Recommender.from_pretrained(fm)
        data = build_requests(prepared, model_fm, data_cfg,
                              progress=lambda s: status.update(s))
        data.save(out / "data", overwrite)
        status.update("computing features")
        feats, vocab, tables_, _ = prepare_features(data, rank_cfg.embedder)

        def on_epoch(r: dict) -> None:
            status.update(f"{r['stage']} epoch {r['epoch']}: loss {r['loss']:.4f}, "
                          f"valid ndcg@10 {r['valid_ndcg@10']:.4f}")

        model, history = fit(feats["train"], feats["valid"], vocab, tables_, rank_cfg, on_epoch)
        valid_req = data.requests.filter(data.requests["split"] == "valid")
        nav = (valid_req["query_kind"] == "navigational").fill_null(False).to_numpy()
        tune_knobs(model, feats["valid"], nav)
    valid = evaluate(model, feats["valid"])
    model.save(out, extra={"fm_run": str(fm), "prepared": str(prepared),
                           "data_config": data_cfg.__dict__, "valid": valid})
    data.items.write_parquet(out / "items.parquet")
    atomic_write_json(out / "history.json", {"history": history, "counts": data.counts,
                                             "wall_s": time.perf_counter() - t0})
    _print(valid, f"{out}: validation (default knob)")
    if as_json:
        print_json(valid)


def _print(res: dict, title: str) -> None:
    t = Table(title=title)
    for c in ("task", "requests", "NDCG@10", "MRR"):
        t.add_column(c, justify="left" if c == "task" else "right")
    for task, m in res.items():
        t.add_row(task, str(m["n"]), f"{m['ndcg@10']:.4f}", f"{m['mrr']:.4f}")
    console.print(t)


@rank_app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="A ranker directory (recfm rank train)."),
    split: str = typer.Option("test", help="test or valid."),
    knob: Optional[list[str]] = typer.Option(None, help="TASK=VALUE personalization (repeat); "
                                             "default: the ranker's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """NDCG@10 and MRR per task over the candidate sets of the ranker's own requests."""
    from recfm.rank.data import RankData, TASKS
    from recfm.rank.model import UnifiedRanker
    from recfm.rank.train import evaluate, prepare_features
    import torch
    if split not in ("test", "valid"):
        raise RecfmError(f"--split: expected test or valid, found {split!r}")
    model = UnifiedRanker.load(run)
    knobs = {**model.cfg.knob, **_knobs(knob)}
    data = RankData.load(run / "data")
    feats, _, _, _ = prepare_features(data, model.cfg.embedder, splits=(split,))
    b = feats[split]
    values = torch.tensor([knobs.get(t, 1.0) for t in TASKS])[b.ctx[:, 0]]
    res = {"ranker": evaluate(model, b, values), "no_personalization": evaluate(model, b, 0.0)}
    if as_json:
        print(json.dumps({"split": split, "knob": knobs, **res}, indent=2))
        return
    _print(res["ranker"], f"{run}: {split} (knob {knobs})")
    _print(res["no_personalization"], f"{run}: {split}, knob 0 (no personalization)")


@rank_app.command("serve-hook")
def serve_hook_cmd(
    run: Path = typer.Argument(..., help="A ranker directory (recfm rank train)."),
    fm: Path = typer.Option(..., help="The foundation-model run the ranker was trained with."),
    user: str = typer.Option(..., help="A known user id of the run's dataset."),
    task: str = typer.Option("home", help="search, home, more-like-this or kids."),
    query: Optional[str] = typer.Option(None, help="The typed query (search)."),
    country: str = typer.Option("unknown", help="Country of the request."),
    device: str = typer.Option("unknown", help="Device of the request."),
    k: int = typer.Option(10, help="Items to show.", callback=at_least_one("--k")),
    knob: Optional[float] = typer.Option(None, help="Personalization (default: the ranker's)."),
) -> None:
    """Rank one request as the serving engine's second pass would, and print it as JSON."""
    from recfm.rank.data import check_task
    from recfm.rank.serve import RankerHook
    from recfm.serve.engine import Engine
    import numpy as np
    import torch
    check_task(task, "--task")
    engine = Engine(fm)
    hook = RankerHook(run)
    if engine.n_items != hook.n_items:
        raise RecfmError(f"{run}: the ranker scores {hook.n_items} items, the model {fm} "
                         f"{engine.n_items}: train the ranker with this model")
    q = engine.query(user_id=user, k=hook.n_candidates,
                     surface="kids" if task == "kids" else "home")
    if not len(q.window):
        raise RecfmError(f"--user: expected a known user with a history, found {user!r}")
    users = engine.encode([q]).numpy()
    if task == "search":
        if not query:
            raise RecfmError("--query: a search request needs the typed query")
        cands, _ = hook.bm25.top(query, hook.n_candidates,
                                 tie_break=hook.model.item_dense[:, 0].numpy())
        cands = cands.tolist()
    else:
        cands = engine.index.search(torch.from_numpy(users), hook.n_candidates, [q.allowed])[0][0]
        cands = np.asarray(cands).tolist()
    anchors = [int(q.window[-1, 0])] if task == "more-like-this" else None
    order, scores = hook.rerank(users, [cands], [task], [query], [country], [device], anchors,
                                knob)[0]
    out = [{**engine.describe_item(int(i)), "rank": r + 1, "score": float(s),
            "first_pass_rank": cands.index(int(i)) + 1}
           for r, (i, s) in enumerate(zip(order[:k], scores[:k]))]
    print(json.dumps({"user": user, "task": task, "query": query, "items": out}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(rank_app, name="rank")
