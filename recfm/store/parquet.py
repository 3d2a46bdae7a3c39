"""A second backend: one Parquet file per table and the base class's exact reference reads,
for environments without LanceDB or tools that read Parquet.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from recfm.io import atomic_write_bytes
from recfm.store.base import EmbeddingStore


class ParquetStore(EmbeddingStore):
    """An :class:`~recfm.store.base.EmbeddingStore` of Parquet files."""

    backend: ClassVar[str] = "parquet"

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    def _write_table(self, name: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(self._path(name), buf.getvalue())

    def _read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self._path(name), columns=columns)

    def _drop_table(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _table_names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.parquet"))
