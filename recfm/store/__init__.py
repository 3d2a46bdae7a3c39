"""Embedding store: versioned user and item embeddings for the rest of the company.

    from recfm.store import embed, open_store
    embed("runs/first", "prepared", "emb")           # publish a version (LanceDB, embedded)
    store = open_store("emb")
    store.user_vectors(["u00001", "u00002"])         # (2, d), current version
    store.similar_items("i0042", k=10)
    store.diff()                                     # stability of the two latest versions

Publishing is atomic and versions are retained up to ``keep`` (see
:mod:`recfm.store.base`); the default backend is LanceDB (:mod:`recfm.store.lance`), the
other stores Parquet files (:mod:`recfm.store.parquet`).
"""

from __future__ import annotations

from recfm.store.backends import BACKENDS, open_store
from recfm.store.base import DEFAULT_KEEP, EmbeddingStore, VersionInfo
from recfm.store.embed import embed
from recfm.store.lance import LanceStore
from recfm.store.parquet import ParquetStore

__all__ = ["BACKENDS", "DEFAULT_KEEP", "EmbeddingStore", "LanceStore", "ParquetStore",
           "VersionInfo", "embed", "open_store"]
