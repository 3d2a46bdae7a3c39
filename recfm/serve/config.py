"""The serving layer's one typed config (``recfm serve --config serve.toml`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recfm.config import from_dict, read_toml


@dataclass
class SurfaceConfig:
    """Rules a surface (a page of the product) always applies, on top of a request's filters."""

    kids_only: bool = False
    available_only: bool = True
    entity_types: list[str] | None = None
    """Only these entity types (None: any)."""
    genres: list[str] | None = None
    """Only items with at least one of these genres (None: any)."""


def default_surfaces() -> dict[str, SurfaceConfig]:
    return {"home": SurfaceConfig(), "kids": SurfaceConfig(kids_only=True),
            "search": SurfaceConfig()}


@dataclass
class ServeConfig:
    """Retrieval, batching, caching and limits of ``recfm serve``."""

    retrieval: Literal["auto", "exact", "hnsw"] = "auto"
    """Exact maximum-inner-product search, a faiss HNSW graph, or chosen by catalog size."""
    hnsw_min_items: int = 200_000
    """``auto`` builds HNSW from this many items up; below, exact search is faster anyway."""
    hnsw_m: int = 48
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 2048
    """Candidates explored per query (at least 2·k): more is higher recall, slower queries."""
    index_cache: bool = True
    """Keep a built HNSW index under ``RUN/serve-index/`` (keyed by the item table's hash)."""

    max_batch: int = 32
    """Most requests encoded together by the micro-batcher."""
    batch_wait_ms: float = 0.0
    """How long the batcher waits for company once a request is there (0: take what is queued)."""
    cache_mb: float = 256.0
    """Memory for cached user states (keys/values of encoded histories); 0 disables the cache."""
    fast_step: bool = True
    """Extend a cached state by one token with :mod:`recfm.serve.step` (False: the reference)."""
    window_hop: int = 1
    """Long histories are cut to a window whose start moves in steps of this many tokens: 1 is
    the last ``max_len`` tokens (as offline evaluation); a larger hop serves that many new
    events from the cache, with a context of ``max_len - hop + 1`` to ``max_len`` tokens."""
    threads: int | None = 1
    """torch threads (None: one per core). One leaves the other cores to the event loop and
    tokenizing, and avoids OpenMP spin-waits on shared cores."""

    max_body_bytes: int = 1_048_576
    """Larger request bodies are refused with 413 (limits of k and events: see ``schemas``)."""
    surfaces: dict[str, SurfaceConfig] = field(default_factory=default_surfaces)
    admin_token_env: str = "RECFM_ADMIN_TOKEN"
    """Environment variable holding the bearer token of ``POST /admin/reload``; unset: disabled."""
    runs_root: str | None = None
    """Reloads may name only runs and data inside this folder (None: the folder holding the
    served run; "/" allows any path)."""
    ranker: str | None = None
    """A ranker directory (``recfm rank train`` with this model) that reranks the top
    candidates as a second pass (None: off)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<serve config>") -> "ServeConfig":
        surfaces = data.get("surfaces")
        cfg = from_dict(cls, {k: v for k, v in data.items() if k != "surfaces"}, source)
        if surfaces is not None:
            cfg.surfaces = {name: from_dict(SurfaceConfig, dict(s), f"{source}:surfaces.{name}")
                            for name, s in surfaces.items()}
        return cfg


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read a :class:`ServeConfig` from TOML (top-level keys, or a ``[serve]`` table)."""
    data = read_toml(path)
    return ServeConfig.from_dict(data.get("serve", data), str(path))
