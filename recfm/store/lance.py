"""The default backend: an embedded LanceDB database in the store directory. Id lookups are
filtered scans over a BTree index on ``id``; nearest items a flat (exact) vector search,
scores ``1 - _distance``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recfm.store.base import EmbeddingStore, Metric

LOOKUP_CHUNK = 1000  # ids per `id IN (...)` filter
FULL_SCAN_IDS = 20_000  # more ids than this: read the id column once instead


def _sql_list(ids: list[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


class LanceStore(EmbeddingStore):
    """An :class:`~recfm.store.base.EmbeddingStore` in an embedded LanceDB database."""

    backend: ClassVar[str] = "lancedb"
    # a dropped table surfaces as "not found" (ValueError) or a missing data file
    # (RuntimeError / OSError from the Rust reader)
    _gone_errors = (ValueError, RuntimeError, OSError)

    def __init__(self, root: str | Path, version: int | None = None,
                 keep: int | None = None) -> None:
        super().__init__(root, version, keep)
        self._db: Any = None

    @property
    def db(self) -> Any:
        if self._db is None:
            os.environ.setdefault("LANCE_LOG", "error")
            import lancedb  # heavy: deliberately deferred to the first use of a LanceDB store

            self.root.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.root))
        return self._db

    def _write_table(self, name: str, table: pa.Table) -> None:
        from lancedb.index import BTree  # deferred with lancedb (see db)

        tbl = self.db.create_table(name, table, mode="create")
        if table.num_rows:
            tbl.create_index("id", config=BTree())

    def _read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        tbl = self.db.open_table(name)
        if columns is None:
            return tbl.to_arrow()
        return tbl.search().select(columns).limit(None).to_arrow()

    def _drop_table(self, name: str) -> None:
        self.db.drop_table(name)

    def _table_names(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            page = self.db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return names

    def _lookup(self, name: str, ids: list[str], columns: list[str]) -> pa.Table:
        if len(ids) > FULL_SCAN_IDS:
            return super()._lookup(name, ids, columns)
        tbl = self.db.open_table(name)
        parts = [tbl.search().where(f"id IN ({_sql_list(ids[s:s + LOOKUP_CHUNK])})")
                 .select(columns).limit(None).to_arrow()
                 for s in range(0, len(ids), LOOKUP_CHUNK)]
        return pa.concat_tables(parts) if parts else self._read_table(name, columns).slice(0, 0)

    def _search(self, name: str, vector: np.ndarray, k: int, metric: Metric,
                columns: list[str]) -> pa.Table:
        tbl = self.db.open_table(name)
        hits = (tbl.search(vector.astype(np.float32), vector_column_name="vector")
                .distance_type(metric).limit(k).select(columns + ["_distance"]).to_arrow())
        score = pc.subtract(1.0, hits.column("_distance").cast(pa.float64()))
        return hits.drop_columns(["_distance"]).append_column("score", score)
