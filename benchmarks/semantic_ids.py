"""Semantic ids: codebooks of real and synthetic catalogs and constrained beam decoding.

    python -m benchmarks.semantic_ids [--minutes 6] [--generative-minutes 6] [--seeds 0 1 2]

In one invocation:

1. **Beauty codebooks.** A Beauty model (the sequential benchmark's configuration, trained
   ``--minutes`` on this machine, best validation epoch kept) is quantised with the default
   codebooks (3 levels × 256 and a uniqueness level) from each ``source``: codebook use per
   level, the share of items whose tuple collides before the last level, reconstruction
   error, and the size of the last level.
2. **Beam decoding latency.** :class:`recfm.model.semantic.GenerativeHead` over Beauty's
   12k-item code trie (``source = auto``): one user at a time, k = 10, the default beam,
   in-process on the benchmark's threads; p50 / p99 over ``--calls`` decodes of
   validation users' states. The head is untrained (decoding cost does not depend on the
   weights; the quality of generative retrieval is not measured here).
3. **Generative retrieval on Beauty**, per ``--seeds``: the id-softmax model of part 1
   (its own seed), semantic ids from it (``source = auto``), then that model with a
   generative head trained ``--generative-minutes`` more with the next-item loss
   (``recfm train --semantic-ids``); test NDCG@10 / HR@10 (full catalog, seen items
   excluded) of the id softmax before and after and of the beam search (k = 10).
4. **One code space for a mixed catalog.** The synthetic world (movies, series, games, live
   events; MiniLM text vectors) trained ``--world-minutes``: how level-1 codes cluster by
   entity type and genre (purity, and the purity of the same codes with the labels
   shuffled over the items), per source.

Writes ``benchmarks/results/semantic_ids.json``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA, write_result
from benchmarks.sequential import DATASETS, MODEL, TRAIN

SOURCES = ("content", "ids", "both")


def train_run(prepared: Path, run: Path, model_kw: dict, minutes: float, seed: int) -> Path:
    from recfm.model.config import ModelConfig
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    shutil.rmtree(run, ignore_errors=True)  # this benchmark's own folder
    train(prepared, run, ModelConfig(**model_kw),
          TrainConfig(**{**TRAIN["default"], "max_minutes": minutes, "seed": seed,
                         "tensorboard": False}), evaluate_test=False)
    return run


def codebooks(run: Path, seed: int) -> dict[str, dict]:
    from recfm.adapt.semantic_ids import SemanticIdConfig, build_semantic_ids

    out = {}
    for source in SOURCES:
        rep = build_semantic_ids(run, SemanticIdConfig(source=source, seed=seed),
                                 overwrite=True)
        out[source] = {k: rep[k] for k in ("utilisation", "collision_rate", "sizes",
                                           "reconstruction_error", "prefixes", "wall_s")}
        out[source]["clusters"] = rep.get("clusters", {})
        print(source, out[source], flush=True)
    return out


def beam_latency(run: Path, prepared: Path, calls: int, k: int = 10) -> dict[str, float]:
    from recfm.adapt.semantic_ids import SemanticIdConfig, build_semantic_ids, load_semantic_ids
    from recfm.data.splits import leave_one_out
    from recfm.model.semantic import CodeTrie, GenerativeHead
    from recfm.pipeline import Recommender
    from recfm.tokens.prepare import PreparedDataset
    from recfm.tokens.tokenizer import N_RESERVED_ITEMS

    build_semantic_ids(run, SemanticIdConfig(), overwrite=True)
    sem = load_semantic_ids(run)
    rec = Recommender.from_pretrained(run)
    valid = leave_one_out(PreparedDataset.load(prepared).sequences).valid.head(calls)
    histories = [[rec.tokenizer.item_ids[i - N_RESERVED_ITEMS] for i in row]
                 for row in valid["item"].to_list()]
    with torch.no_grad():
        users = rec.encode_users(histories)  # (calls, d)
        t = time.perf_counter()
        trie = CodeTrie(sem.codes, sem.sizes, N_RESERVED_ITEMS)
        trie_ms = (time.perf_counter() - t) * 1e3
        head = GenerativeHead(users.size(1), sem.sizes).eval()
        for u in users[:20]:  # warm-up
            head.beam_search(u[None], trie, k)
        times = []
        for u in users:
            t = time.perf_counter()
            head.beam_search(u[None], trie, k)
            times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "calls": len(times), "k": k, "items": int(len(trie.items)),
            "sizes": sem.sizes, "trie_build_ms": trie_ms, "threads": torch.get_num_threads()}


def generative(prepared: Path, run: Path, out: Path, minutes: float, seed: int) -> dict:
    """Test metrics of ``run`` (id softmax) and of it tuned with a generative head."""
    from recfm.adapt.semantic_ids import SemanticIdConfig, build_semantic_ids, generative_model
    from recfm.data.splits import leave_one_out
    from recfm.evaluate.evaluator import GenerativeScorer, evaluate_scorer, model_scorer
    from recfm.pipeline import Recommender
    from recfm.tokens.prepare import PreparedDataset
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    build_semantic_ids(run, SemanticIdConfig(seed=seed), overwrite=True)
    test = leave_one_out(PreparedDataset.load(prepared).sequences).test

    def metrics(model, scorer) -> dict[str, float]:
        model.eval()
        m = evaluate_scorer(scorer, test, model.cfg.n_items, model.cfg.max_len,
                            model.input_columns, batch_size=128)
        return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}

    before = Recommender.from_pretrained(run).model
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's own folder
    t = time.perf_counter()
    res = train(prepared, out, None,
                TrainConfig(**{**TRAIN["default"], "max_minutes": minutes, "seed": seed,
                               "tensorboard": False}),
                init_from=generative_model(run), evaluate_test=False)
    tuned = Recommender.from_pretrained(out).model
    t_eval = time.perf_counter()
    gen = metrics(tuned, GenerativeScorer(tuned, k=10))
    return {"seed": seed, "id_softmax": metrics(before, model_scorer(before)),
            "id_softmax_tuned": metrics(tuned, model_scorer(tuned)), "generative": gen,
            "generative_eval_s": time.perf_counter() - t_eval,
            "tune_minutes": (t_eval - t) / 60, "tune_best_epoch": res.best_epoch,
            "sizes": tuned.cfg.semantic_sizes}


def synthetic_run(work: Path, minutes: float, seed: int) -> Path:
    from recfm.content.store import embed_dataset
    from recfm.data import synthetic
    from recfm.tokens.prepare import prepare

    cfg = synthetic.SynthConfig(seed=seed, n_users=3000, n_items=2000)
    shutil.rmtree(work / "world", ignore_errors=True)
    synthetic.write_world(synthetic.generate(cfg), work / "world", cfg)
    prepare(synthetic.load_world(work / "world"), work / "world-prepared", overwrite=True)
    embed_dataset(work / "world-prepared", None, cache_dir=work / "cache")  # MiniLM, offline
    return train_run(work / "world-prepared", work / "world-run",
                     dict(d_model=64, n_layers=2, n_heads=2, max_len=50, dropout=0.2),
                     minutes, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--generative-minutes", type=float, default=6.0)
    ap.add_argument("--world-minutes", type=float, default=2.0)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "semantic-ids")
    ap.add_argument("--tag", default="", help="results/semantic_ids-TAG.json: a variant's "
                    "run beside the default one")
    args = ap.parse_args()

    from recfm.tokens.prepare import load_raw, prepare

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    rel, fmt = DATASETS["beauty"]
    prepared = args.work / "beauty-prepared"
    prepare(load_raw(args.data_dir / rel, fmt=fmt), prepared, overwrite=True)
    seed = args.seeds[0]
    gen = []
    for s in args.seeds:
        run = train_run(prepared, args.work / f"beauty-run-{s}", MODEL["default"], args.minutes, s)
        if s == seed:
            beauty = codebooks(run, seed)
            beam = beam_latency(run, prepared, args.calls)
            print("beam", beam, flush=True)
        gen.append(generative(prepared, run, args.work / f"beauty-generative-{s}",
                              args.generative_minutes, s))
        print("generative", gen[-1], flush=True)
    world = codebooks(synthetic_run(args.work, args.world_minutes, seed), seed)

    def summary(key: str) -> dict:
        out = {}
        for m in ("ndcg@10", "hr@10"):
            vals = [g[key][m] for g in gen]
            out[m] = float(np.mean(vals))
            out[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out["seeds"] = [{"seed": g["seed"], **g[key]} for g in gen]
        return out

    metrics = {
        "codebooks": {"beauty": {s: {"utilisation": beauty[s]["utilisation"],
                                     "collision_rate": beauty[s]["collision_rate"],
                                     "last_level": beauty[s]["sizes"][-1],
                                     "reconstruction_error": beauty[s]["reconstruction_error"]}
                                 for s in SOURCES}},
        "clusters": {"synthetic": {s: world[s]["clusters"] for s in SOURCES}},
        "generative": {"beauty": summary("generative")},
        "id_softmax": {"beauty": summary("id_softmax")},
        "id_softmax_tuned": {"beauty": summary("id_softmax_tuned")},
        "beam_p50_ms": beam["p50_ms"], "beam_p99_ms": beam["p99_ms"],
    }
    rows = []
    for name, res in (("beauty", beauty), ("synthetic", world)):
        for s in SOURCES:
            r = res[s]
            clusters = "; ".join(f"{k} {v['purity']:.1%} (shuffled {v['shuffled']:.1%})"
                                 for k, v in r["clusters"].items()) or "—"
            rows.append(f"| {name} | {s} | {', '.join(f'{u:.0%}' for u in r['utilisation'])} | "
                        f"{r['collision_rate']:.1%} | {r['sizes'][-1]} | "
                        f"{r['reconstruction_error']:.3f} | {clusters} |")
    table = ("| catalog | source | codebook use per level | items colliding before the last "
             "level | last level | reconstruction error | level-1 purity |\n"
             "|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
             f"\n\nBeam decoding (untrained head, Beauty trie of {beam['items']:,} items, "
             f"sizes {beam['sizes']}, k = 10, one user per call, {beam['threads']} threads, "
             f"{beam['calls']} calls): p50 {beam['p50_ms']:.2f} ms, p99 {beam['p99_ms']:.2f} ms; "
             f"trie built in {beam['trie_build_ms']:.1f} ms. Beauty model trained "
             f"{args.minutes:g} min, synthetic world (3,000 users, 2,000 items) "
             f"{args.world_minutes:g} min, seed {seed}.\n\n"
             "| Beauty, test (seeds " + ", ".join(str(g["seed"]) for g in gen) + ") | "
             "NDCG@10 | HR@10 |\n|---|---|---|\n" + "\n".join(
                 f"| {label} | {summ['ndcg@10']:.4f} ± {summ['ndcg@10_std']:.4f} | "
                 f"{summ['hr@10']:.4f} ± {summ['hr@10_std']:.4f} |"
                 for label, summ in (
                     (f"id softmax ({args.minutes:g} min)", summary("id_softmax")),
                     (f"id softmax after +{args.generative_minutes:g} min with the head",
                      summary("id_softmax_tuned")),
                     ("generative (beam search, k = 10)", summary("generative")))))
    write_result("semantic_ids" + (f"-{args.tag}" if args.tag else ""),
                 "s3rec/Beauty.txt + synthetic world",
                 seed if len(args.seeds) == 1 else ", ".join(map(str, args.seeds)),
                 time.perf_counter() - t0, metrics,
                 extra={"beauty": beauty, "synthetic": world, "beam": beam, "runs": gen,
                        "minutes": args.minutes, "world_minutes": args.world_minutes,
                        "generative_minutes": args.generative_minutes},
                 table_md=table)


if __name__ == "__main__":
    main()
