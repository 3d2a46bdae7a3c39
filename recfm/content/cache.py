"""A Parquet cache of text embeddings keyed by ``sha256(embedder name + text)``: a folder of
append-only segments (``key``, ``vector``), each written atomically, so neither two processes
nor a crash can corrupt it; many small segments are merged into one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

MAX_SEGMENTS = 16


def default_cache_dir() -> Path:
    """``$RECFM_CACHE_DIR`` or ``~/.cache/recfm``."""
    env = os.environ.get("RECFM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "recfm"


def text_key(embedder: str, text: str) -> str:
    return hashlib.sha256(f"{embedder}\n{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors of one embedder (``name``) under ``root/<name>/``.

    Example:
        >>> cache = EmbeddingCache("/tmp/cache", "hash-16")          # doctest: +SKIP
        >>> found = cache.get(["k1", "k2"])   # {key: (16,) float32} for the keys it has
        >>> cache.put(["k3"], np.zeros((1, 16), np.float32))
    """

    def __init__(self, root: str | Path, name: str) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
        self.dir = Path(root) / safe
        self.hits = 0
        self.misses = 0

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []

    def _read(self) -> pl.DataFrame | None:
        segs = self._segments()
        if not segs:
            return None
        return pl.concat([pl.read_parquet(p) for p in segs], how="vertical")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of ``keys`` (missing keys are absent from the result)."""
        table = self._read()
        if table is None or not keys:
            self.misses += len(keys)
            return {}
        wanted = pl.DataFrame({"key": keys}).unique()
        hit = table.join(wanted, on="key", how="semi").unique("key", keep="first")
        vectors = hit["vector"].to_numpy() if hit.height else np.zeros((0, 0), np.float32)
        found = {k: vectors[i] for i, k in enumerate(hit["key"].to_list())}
        self.hits += sum(1 for k in keys if k in found)
        self.misses += sum(1 for k in keys if k not in found)
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (n, dim) under ``keys`` as one new segment."""
        if not keys:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        frame = pl.DataFrame({"key": keys}).with_columns(
            pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])))
        self._write(frame)
        if len(self._segments()) > MAX_SEGMENTS:
            self._compact()

    def _write(self, frame: pl.DataFrame) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = self.dir / f".{name}.tmp"
        frame.write_parquet(tmp)
        return tmp.replace(self.dir / name)

    def _compact(self) -> None:
        """Merge every segment into one (written before the old ones are removed)."""
        segs = self._segments()
        table = pl.concat([pl.read_parquet(p) for p in segs]).unique("key", keep="first")
        merged = self._write(table)
        for p in segs:
            if p != merged:
                p.unlink(missing_ok=True)
        log.info("compacted %d cache segments into %s", len(segs), merged.name)
