"""Semantic ids: every item of a run as a short tuple of discrete codes.

``recfm semantic-ids RUN`` quantises each item's vector by residual k-means (faiss): level 1
clusters the vectors into ``codes`` centroids, level 2 clusters what level 1 left over, and
so on for ``levels`` levels; a last level numbers the items that share a tuple (0, 1, …) so
every tuple is unique (TIGER, Rajput et al. 2023). Similar items share prefixes, so a title
added later shares codes with its neighbours from the day it arrives.

The vector of an item (``source``):

- ``content``: its content vector (the run's text / file vectors), or else the mean of its
  attributes' embeddings (the run's attribute table): what a never-trained item has too;
- ``ids``: the item vector the model scores with (collaborative);
- ``both``: the two, each L2-normalised, side by side; ``auto``: ``both`` when the run has
  content or attributes, else ``ids``.

Saved in ``RUN/semantic_ids/`` (an output folder of its own; nothing else in the run is
touched): ``codes.parquet`` (item_id, idx, codes), ``codebooks.safetensors`` (one (K, D)
table per level) and ``meta.json`` (format version, config, level sizes, report). Loaded with
no training data by :func:`load_semantic_ids`; :func:`extend_semantic_ids` codes the items a
run gained later (``recfm add-items``) with the frozen codebooks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from safetensors.numpy import load_file, save_file

from recfm.errors import RecfmError
from recfm.io import atomic_dir
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender

log = logging.getLogger(__name__)

FOLDER = "semantic_ids"
FORMAT = 1
SOURCES = ("auto", "content", "ids", "both")


@dataclass
class SemanticIdConfig:
    """How the codes are learned (saved in ``meta.json``)."""

    levels: int = 3
    """Residual k-means levels, before the last level that makes tuples unique."""
    codes: int = 256
    """Centroids per level (fewer when the catalog is smaller)."""
    source: Literal["auto", "content", "ids", "both"] = "auto"
    seed: int = 0
    niter: int = 25
    """k-means iterations per level."""


@dataclass
class SemanticIds:
    """A run's codes: ``codes`` (n_items, levels + 1) by item index, -1 on the reserved rows
    and on items without a code."""

    codes: torch.Tensor
    sizes: list[int]
    """Codes per level; the last is the largest number of items sharing one tuple."""
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- item vectors

def has_content(model: FoundationModel) -> bool:
    enc = model.item_encoder
    return enc.use_content or (enc.use_attrs and enc.attr_values.numel() > 0)


@torch.no_grad()
def content_vectors(model: FoundationModel) -> torch.Tensor:
    """(n_items, D) content vectors, else attribute-bag vectors; a RecfmError if neither."""
    enc = model.item_encoder
    if enc.use_content:
        return enc.content.float()
    if enc.use_attrs and enc.attr_values.numel() > 0:
        return enc.attrs(enc.attr_values, enc.attr_offsets[:-1]).float()  # (n_items, d)
    raise RecfmError("--source content: the run has neither content vectors nor item "
                     "attributes; use --source ids")


@torch.no_grad()
def item_vectors(model: FoundationModel, source: str) -> np.ndarray:
    """(n_items, D) float32 vectors of ``source`` (``auto`` resolved), rows L2-normalised."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    model.eval()
    if source == "content":
        out = unit(content_vectors(model))
    elif source == "ids":
        out = unit(model.item_table().float())
    elif source == "both":
        out = torch.cat([unit(content_vectors(model)), unit(model.item_table().float())],
                        dim=1) / 2 ** 0.5
    else:
        raise RecfmError(f"--source: expected one of {', '.join(SOURCES[1:])}, found {source!r}")
    return out.numpy().astype(np.float32)


def resolve_source(model: FoundationModel, source: str) -> str:
    if source not in SOURCES:
        raise RecfmError(f"--source: expected one of {', '.join(SOURCES)}, found {source!r}")
    if source == "auto":
        return "both" if has_content(model) else "ids"
    return source


# --------------------------------------------------------------------------- quantisation

def residual_kmeans(x: np.ndarray, levels: int, codes: int, seed: int = 0, niter: int = 25
                    ) -> list[np.ndarray]:
    """Codebooks [(K, D)] × levels: level l clusters the residuals that levels < l leave."""
    import faiss

    residual = x.astype(np.float32).copy()
    books = []
    for level in range(levels):
        k = max(1, min(codes, len(residual)))
        km = faiss.Kmeans(residual.shape[1], k, niter=niter, seed=seed + level,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        km.train(residual)
        book = km.centroids.astype(np.float32)
        residual -= book[nearest(residual, book)]
        books.append(book)
    return books


def nearest(x: np.ndarray, book: np.ndarray) -> np.ndarray:
    """(N,) index of each row's nearest codebook row (L2)."""
    import faiss

    index = faiss.IndexFlatL2(book.shape[1])
    index.add(book)
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def encode(x: np.ndarray, books: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, levels) codes of ``x`` under frozen codebooks and the (N, D) reconstructions."""
    residual = x.astype(np.float32).copy()
    out = np.zeros((len(x), len(books)), dtype=np.int64)
    for level, book in enumerate(books):
        out[:, level] = nearest(residual, book)
        residual -= book[out[:, level]]
    return out, x - residual


def unique_level(codes: np.ndarray, taken: dict[tuple, int] | None = None) -> np.ndarray:
    """(N,) last-level code: the item's number among the items sharing its tuple, in row
    order, after the ``taken`` count of each tuple (codes already given out)."""
    count = dict(taken or {})
    out = np.zeros(len(codes), dtype=np.int64)
    for i, row in enumerate(map(tuple, codes.tolist())):
        out[i] = count.get(row, 0)
        count[row] = out[i] + 1
    return out


# --------------------------------------------------------------------------- report

def report(x: np.ndarray, recon: np.ndarray, codes: np.ndarray, sizes: list[int],
           items: pl.DataFrame | None = None) -> dict[str, Any]:
    """Codebook use per level, collisions before the last level, reconstruction error, how
    many items share a prefix of each length and, with ``items``, how level-1 codes cluster
    by entity type and first genre (:func:`purity`)."""
    n, levels = codes.shape[0], codes.shape[1] - 1
    out: dict[str, Any] = {
        "items": n,
        "sizes": sizes,
        "utilisation": [round(len(np.unique(codes[:, j])) / sizes[j], 4) for j in range(levels)],
        "reconstruction_error": float(((x - recon) ** 2).sum(1).mean()
                                      / max(float((x ** 2).sum(1).mean()), 1e-12)),
    }
    prefixes = []
    for j in range(1, levels + 2):
        _, inverse, counts = np.unique(codes[:, :j], axis=0, return_inverse=True,
                                       return_counts=True)
        shared = counts[inverse.reshape(-1)] > 1
        prefixes.append({"length": j, "distinct": int(len(counts)),
                         "items_sharing": round(float(shared.mean()), 4)})
    out["prefixes"] = prefixes
    out["collision_rate"] = prefixes[levels - 1]["items_sharing"]
    if items is not None:
        out["clusters"] = purity(codes[:, 0], items)
    return out


def purity(first: np.ndarray, items: pl.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Σ over level-1 codes of their commonest label ÷ items, per label column present, and
    the same with the labels shuffled over the items (what codes of these sizes get by
    chance) and the commonest label's share."""
    labels = {}
    if "entity_type" in items.columns:
        labels["entity_type"] = items["entity_type"].cast(pl.Utf8).fill_null("")
    if "genres" in items.columns:
        labels["genre"] = items["genres"].list.first().cast(pl.Utf8).fill_null("")
    rng = np.random.default_rng(seed)

    def top(label: pl.Series) -> float:
        frame = pl.DataFrame({"code": first, "label": label})
        best = frame.group_by("code", "label").len().group_by("code").agg(pl.col("len").max())
        return float(best["len"].sum()) / len(frame)

    out = {}
    for name, col in labels.items():
        if col.n_unique() < 2:
            continue
        out[name] = {"purity": round(top(col), 4),
                     "shuffled": round(top(col.gather(rng.permutation(len(col)))), 4),
                     "majority_share": round(float(col.value_counts()["count"].max())
                                             / len(col), 4),
                     "labels": int(col.n_unique())}
    return out


# --------------------------------------------------------------------------- build, load, extend

def build_semantic_ids(run: str | Path, cfg: SemanticIdConfig | None = None,
                       overwrite: bool = False,
                       on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Learn the codebooks of ``run``'s items and write ``RUN/semantic_ids``; the report."""
    cfg = cfg or SemanticIdConfig()
    step = on_step or (lambda name: log.info(name))
    if cfg.levels < 1 or cfg.codes < 2:
        raise RecfmError(f"semantic ids: expected --levels ≥ 1 and --codes ≥ 2, found "
                         f"{cfg.levels} and {cfg.codes}")
    t0 = time.perf_counter()
    run = Path(run)
    step("loading the run")
    model, items = _load(run)
    source = resolve_source(model, cfg.source)
    step(f"item vectors ({source})")
    x = item_vectors(model, source)[items["idx"].to_numpy()]  # (N, D): the catalog's items
    step(f"residual k-means, {cfg.levels} levels × {cfg.codes}")
    books = residual_kmeans(x, cfg.levels, cfg.codes, cfg.seed, cfg.niter)
    codes, recon = encode(x, books)
    codes = np.concatenate([codes, unique_level(codes)[:, None]], axis=1)  # (N, levels + 1)
    sizes = [len(b) for b in books] + [int(codes[:, -1].max()) + 1]
    rep = report(x, recon, codes, sizes, items)
    rep.update(source=source, dim=int(x.shape[1]), wall_s=round(time.perf_counter() - t0, 3))
    step("writing")
    meta = {"format": FORMAT, "config": asdict(cfg), "source": source, "sizes": sizes,
            "n_items": int(model.cfg.n_items), "report": rep}
    _write(run, books, items, codes, meta, overwrite)
    return rep


def load_semantic_ids(run: str | Path, n_items: int | None = None) -> SemanticIds:
    """The codes of ``run`` as (n_items, levels + 1) rows by item index (-1: no code)."""
    folder = Path(run) / FOLDER
    if not (folder / "meta.json").is_file():
        raise RecfmError(f"{run}: no semantic ids (run `recfm semantic-ids {run}` first)")
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise RecfmError(f"{folder / 'meta.json'}: semantic-id format {meta.get('format')}, "
                         f"this recfm reads format {FORMAT}")
    frame = pl.read_parquet(folder / "codes.parquet")
    rows = n_items or max(int(meta["n_items"]), int(frame["idx"].max()) + 1)
    codes = torch.full((rows, len(meta["sizes"])), -1, dtype=torch.long)
    idx = torch.from_numpy(frame["idx"].to_numpy().astype(np.int64))
    codes[idx] = torch.from_numpy(np.stack(frame["codes"].to_numpy()).astype(np.int64))
    return SemanticIds(codes, list(meta["sizes"]), meta)


def extend_semantic_ids(run: str | Path, source_run: str | Path | None = None
                        ) -> dict[str, Any] | None:
    """Code the items of ``run`` that ``source_run``'s semantic ids (default: its own) lack,
    with the frozen codebooks, and write ``RUN/semantic_ids``; None if there are none."""
    run = Path(run)
    src = Path(source_run) if source_run is not None else run
    if not (src / FOLDER / "meta.json").is_file():
        return None
    old = load_semantic_ids(src)
    meta = dict(old.meta)
    books = [v for _, v in sorted(load_file(src / FOLDER / "codebooks.safetensors").items(),
                                  key=lambda kv: int(kv[0].removeprefix("level")))]
    model, items = _load(run)
    n = model.cfg.n_items
    codes = torch.full((n, old.codes.size(1)), -1, dtype=torch.long)
    keep = min(n, old.codes.size(0))
    codes[:keep] = old.codes[:keep]
    idx = items["idx"].to_numpy().astype(np.int64)  # a writable copy, to index tensors
    new = idx[codes[idx, 0].numpy() < 0]
    if len(new):
        level_codes, _ = encode(item_vectors(model, meta["source"])[new], books)
        had = codes[idx].numpy()
        taken: dict[tuple, int] = {}
        for row in had[had[:, 0] >= 0].tolist():
            taken[tuple(row[:-1])] = max(taken.get(tuple(row[:-1]), 0), row[-1] + 1)
        last = unique_level(level_codes, taken)
        codes[new] = torch.from_numpy(np.concatenate([level_codes, last[:, None]], axis=1))
    meta["sizes"] = meta["sizes"][:-1] + [int(codes[:, -1].max()) + 1]
    meta["n_items"] = n
    meta["extended"] = list(meta.get("extended", [])) + [{"items": len(new), "from": str(src)}]
    _write(run, books, items, codes[idx].numpy(), meta, overwrite=run == src)
    return {"items": len(new), "sizes": meta["sizes"]}


def generative_model(run: str | Path, codes_run: str | Path | None = None) -> Recommender:
    """``run``'s model with a new generative head over the semantic ids of ``codes_run``
    (default: ``run``'s own), every other weight kept: train it with
    ``train(data, out, init_from=<this>)`` (``recfm train --semantic-ids``)."""
    rec = Recommender.from_pretrained(run)
    src = Path(codes_run) if codes_run is not None else Path(run)
    sem = load_semantic_ids(src)
    frame = pl.read_parquet(src / FOLDER / "codes.parquet")
    if rec.tokenizer is None:
        raise RecfmError(f"{run}: the run has no tokenizer.json")
    index, coded = rec.tokenizer.item_index(), set(frame["item_id"].to_list())
    missing = [i for i in rec.tokenizer.item_ids if i not in coded]
    if missing:
        raise RecfmError(f"{src / FOLDER}: no semantic id for {len(missing):,} of the run's "
                         f"items (e.g. {missing[0]!r}); build them on this run "
                         f"(recfm semantic-ids {run})")
    codes = torch.full((rec.cfg.n_items, len(sem.sizes)), -1, dtype=torch.long)
    rows = torch.tensor([index[i] for i in frame["item_id"].to_list()], dtype=torch.long)
    codes[rows] = torch.from_numpy(np.stack(frame["codes"].to_numpy()).astype(np.int64))
    model = FoundationModel(replace(rec.cfg, semantic_sizes=list(sem.sizes)), rec.tokenizer,
                            rec.items)
    state = rec.model.state_dict()
    model.item_encoder.set_attributes(state["item_encoder.attr_offsets"],
                                      state["item_encoder.attr_values"])
    missing_keys, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing_keys if not k.startswith("generative.") and k != "item_codes"]
    if new or unexpected:
        raise RecfmError(f"{run}: its weights do not fit a generative model "
                         f"({(new + unexpected)[0]})")
    model.set_semantic_ids(codes)
    return Recommender(model, rec.tokenizer, rec.items, rec.run_dir)


def _load(run: Path) -> tuple[FoundationModel, pl.DataFrame]:
    model = FoundationModel.from_pretrained(run)
    items = pl.read_parquet(run / "items.parquet").sort("idx")
    return model, items


def _write(run: Path, books: list[np.ndarray], items: pl.DataFrame, codes: np.ndarray,
           meta: dict[str, Any], overwrite: bool) -> None:
    """``codes``: (items.height, levels + 1), a row per row of ``items``."""
    frame = pl.DataFrame({"item_id": items["item_id"], "idx": items["idx"],
                          "codes": codes.tolist()})
    with atomic_dir(run / FOLDER, "semantic-ids", overwrite) as tmp:
        frame.write_parquet(tmp / "codes.parquet")
        save_file({f"level{i}": b for i, b in enumerate(books)}, str(tmp / "codebooks.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
