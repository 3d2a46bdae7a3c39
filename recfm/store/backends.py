"""Open a store by path or ``file://`` URI, choosing its backend (LanceDB or Parquet)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from recfm.errors import RecfmError
from recfm.store.base import EmbeddingStore, read_manifest
from recfm.store.lance import LanceStore
from recfm.store.parquet import ParquetStore

BACKENDS: dict[str, type[EmbeddingStore]] = {"lancedb": LanceStore, "parquet": ParquetStore}


def _local_path(path_or_uri: str | Path) -> Path:
    text = str(path_or_uri)
    scheme = urlparse(text).scheme
    if scheme == "file":
        return Path(urlparse(text).path)
    if len(scheme) > 1:  # one letter: a Windows drive
        raise RecfmError(f"{text}: expected a local path or file:// URI, found a {scheme}:// "
                         "URI (the store's manifest is swapped by a local rename; remote "
                         "object stores are not supported)")
    return Path(text)


def open_store(path_or_uri: str | Path, version: int | None = None, keep: int | None = None,
               backend: str | None = None) -> EmbeddingStore:
    """Open (or, on first publish, create) the embedding store at ``path_or_uri``.
    ``version`` pins every read (read-only); ``keep``: versions a publish retains (default:
    the store's, :data:`DEFAULT_KEEP` when new); ``backend`` (``lancedb``, default, or
    ``parquet``) applies to a new store: an existing one uses its own."""
    root = _local_path(path_or_uri)
    if backend is not None and backend not in BACKENDS:
        raise RecfmError(f"backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    manifest = read_manifest(root, missing_ok=True)
    chosen = backend or "lancedb"
    if manifest is not None:
        found = manifest.get("backend")
        if found not in BACKENDS:
            raise RecfmError(f"{root / 'manifest.json'}: expected a backend of "
                             f"{', '.join(BACKENDS)}, found {found!r}")
        if backend is not None and backend != found:
            raise RecfmError(f"{root}: expected a {backend} store, found a {found} store")
        chosen = found
    store = BACKENDS[chosen](root, version=version, keep=keep)
    if version is not None:
        store._resolve()  # an unknown version or a missing store fails here, in one line
    return store
