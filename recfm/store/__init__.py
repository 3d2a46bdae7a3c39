"""Embedding store: versioned user and item embeddings for the rest of the company.
:func:`embed` publishes a version, :func:`open_store` reads one. Usage: docs/guide/store.md.
"""

from __future__ import annotations

from recfm.store.backends import BACKENDS, open_store
from recfm.store.base import DEFAULT_KEEP, EmbeddingStore, VersionInfo
from recfm.store.embed import embed
from recfm.store.lance import LanceStore
from recfm.store.parquet import ParquetStore

__all__ = ["BACKENDS", "DEFAULT_KEEP", "EmbeddingStore", "LanceStore", "ParquetStore",
           "VersionInfo", "embed", "open_store"]
