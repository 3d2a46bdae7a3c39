"""Content vectors of a prepared dataset: ``content.parquet`` + ``content.json`` (a run keeps
them in its weights, so needs no dataset at inference). File layout: docs/guide/prepare.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.content.embedders import Embedder, default_spec, make_embedder
from recfm.content.text import TEXT_RECIPE
from recfm.errors import InputError
from recfm.io import atomic_write_json

log = logging.getLogger(__name__)

CONTENT_FILE = "content.parquet"
CONTENT_META = "content.json"


def embed_dataset(data_dir: str | Path, spec: str | None = None,
                  cache_dir: str | Path | None = None,
                  on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Embed every item of a prepared dataset; write ``content.parquet`` / ``content.json``."""
    data_dir = Path(data_dir)
    path = data_dir / "items.parquet"
    if not path.is_file():
        raise InputError(str(path), None, None, "a prepared dataset (run `recfm prepare`)",
                         "nothing at that path")
    items = pl.read_parquet(path)
    spec = spec or default_spec(items)
    embedder = make_embedder(spec, cache_dir)
    if on_step:
        on_step(f"embedding {items.height:,} items with {spec}")
    t0 = time.perf_counter()
    vectors = embedder.embed_items(items)
    empty = int((np.abs(vectors).sum(1) == 0).sum())
    frame = items.select("item_id").with_columns(
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])))
    tmp = data_dir / f".{CONTENT_FILE}.tmp"
    frame.write_parquet(tmp)
    tmp.replace(data_dir / CONTENT_FILE)
    cache = getattr(embedder, "cache", None)
    meta = {"embedder": embedder.spec, "dim": int(vectors.shape[1]), "items": items.height,
            "items_without_content": empty, "text_recipe": TEXT_RECIPE,
            "cache_hits": cache.hits if cache else None,
            "cache_misses": cache.misses if cache else None,
            "wall_s": round(time.perf_counter() - t0, 3)}
    atomic_write_json(data_dir / CONTENT_META, meta)
    log.info("embedded %d items with %s in %.1fs", items.height, spec, meta["wall_s"])
    return meta


def load_dataset_content(data_dir: str | Path, items: pl.DataFrame, n_items: int
                         ) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """(n_items, dim) content rows of a prepared dataset and its meta, or None if it has none.

    Row ``idx`` of each item holds its vector; reserved rows and items without one are 0."""
    data_dir = Path(data_dir)
    path, meta_path = data_dir / CONTENT_FILE, data_dir / CONTENT_META
    if not path.is_file():
        return None
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"embedder": "file"}
    frame = pl.read_parquet(path)
    joined = items.select("idx", "item_id").join(frame, on="item_id", how="left",
                                                 maintain_order="left")
    dim = frame["vector"].dtype.size if isinstance(frame["vector"].dtype, pl.Array) \
        else int(frame["vector"].list.len().max())
    missing = joined["vector"].is_null()
    if missing.any():
        log.warning("%s: %d items have no content vector (zeros)", path, int(missing.sum()))
    out = torch.zeros(n_items, dim, dtype=torch.float32)
    have = joined.filter(~missing)
    if have.height:
        idx = torch.from_numpy(have["idx"].to_numpy().astype(np.int64))
        out[idx] = torch.from_numpy(np.asarray(have["vector"].to_list(), dtype=np.float32))
    return out, meta


def embed_new_items(spec: str, items: pl.DataFrame, cache_dir: str | Path | None = None,
                    vectors: str | Path | None = None) -> tuple[np.ndarray, Embedder]:
    """Vectors of new catalog rows in the space of ``spec`` (a run's embedder); ``vectors``:
    the Parquet file of the new items' vectors, for a ``file:`` embedder."""
    if spec.startswith("file:"):
        if vectors is None:
            raise InputError("--vectors", None, None,
                             "a Parquet file of item_id → vector for the new items (this run "
                             f"uses your own vectors: {spec})", "no file")
        spec = f"file:{vectors}"
    embedder = make_embedder(spec, cache_dir)
    return embedder.embed_items(items), embedder
