"""Business rules as (n_items,) boolean masks over the item table, applied inside retrieval
(not to a finished top-k), so k results come back whenever k eligible items exist. Reserved
ids are never eligible.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import polars as pl

from recfm.serve.config import SurfaceConfig
from recfm.serve.errors import Unprocessable
from recfm.tokens.tokenizer import N_RESERVED_ITEMS

TRUE_TEXT = ("true", "1", "yes", "y", "t")


@dataclass(frozen=True)
class Filters:
    """What a request (or a surface) restricts the candidates to. Hashable: masks are cached."""

    entity_types: tuple[str, ...] | None = None
    genres: tuple[str, ...] | None = None
    """Items with at least one of these genres."""
    kids_only: bool = False
    available_only: bool = False

    @classmethod
    def of_surface(cls, s: SurfaceConfig) -> "Filters":
        return cls(tuple(s.entity_types) if s.entity_types else None,
                   tuple(s.genres) if s.genres else None, s.kids_only, s.available_only)


def _flag(items: pl.DataFrame, col: str, n_items: int, default: bool) -> np.ndarray | None:
    """A true/false item column as an (n_items,) array over the vocabulary (None if absent)."""
    if col not in items.columns:
        return None
    s = items[col]
    if s.dtype == pl.Boolean:
        val = s.fill_null(default).to_numpy()
    else:
        text = s.cast(pl.Utf8).str.to_lowercase().str.strip_chars()
        val = text.is_in(list(TRUE_TEXT)).to_numpy() | (text.is_null().to_numpy() & default)
    out = np.full(n_items, default, dtype=bool)
    out[items["idx"].to_numpy()] = val
    return out


class ItemRules:
    """Per-item attributes (availability, kids, entity type, genres) and the masks they give."""

    def __init__(self, items: pl.DataFrame | None, n_items: int, cache_size: int = 256) -> None:
        self.n_items = n_items
        self.base = np.ones(n_items, dtype=bool)
        self.base[:N_RESERVED_ITEMS] = False
        items = items if items is not None else pl.DataFrame({"idx": []}, schema={"idx": pl.Int64})
        self.available = _flag(items, "available", n_items, True)
        self.kids = _flag(items, "kids", n_items, False)
        idx = items["idx"].to_numpy()
        self.entity: dict[str, np.ndarray] = {}
        if "entity_type" in items.columns:
            for value in items["entity_type"].drop_nulls().unique().to_list():
                m = np.zeros(n_items, dtype=bool)
                m[idx[(items["entity_type"] == value).fill_null(False).to_numpy()]] = True
                self.entity[str(value)] = m
        self.genre: dict[str, np.ndarray] = {}
        self.item_genres: list[tuple[str, ...]] = [()] * n_items
        if "genres" in items.columns and isinstance(items["genres"].dtype, pl.List):
            for i, gs in zip(idx.tolist(), items["genres"].to_list()):
                self.item_genres[i] = tuple(gs or ())
            ex = items.select("idx", pl.col("genres").alias("g")).explode("g").drop_nulls()
            for g, rows in ex.group_by("g").agg(pl.col("idx")).iter_rows():
                m = np.zeros(n_items, dtype=bool)
                m[np.asarray(rows, dtype=np.int64)] = True
                self.genre[str(g)] = m
        self._cache: OrderedDict[Filters, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def mask(self, f: Filters) -> np.ndarray:
        """(n_items,) eligible items under ``f`` (cached, read-only). Thread-safe."""
        with self._lock:
            hit = self._cache.get(f)
            if hit is not None:
                self._cache.move_to_end(f)
                return hit
        m = self.base.copy()
        if f.available_only and self.available is not None:
            m &= self.available
        if f.kids_only:
            if self.kids is None:
                raise Unprocessable("filters.kids_only: this catalog has no `kids` column")
            m &= self.kids
        if f.entity_types is not None:
            m &= self._any(self.entity, f.entity_types, "entity_types")
        if f.genres is not None:
            m &= self._any(self.genre, f.genres, "genres")
        m.setflags(write=False)
        with self._lock:
            self._cache[f] = m
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return m

    def _any(self, table: dict[str, np.ndarray], values: tuple[str, ...], name: str) -> np.ndarray:
        if not table:
            raise Unprocessable(f"filters.{name}: this catalog has no {name.rstrip('s')} column")
        unknown = [v for v in values if v not in table]
        if unknown:
            known = ", ".join(sorted(table)[:30])
            raise Unprocessable(f"filters.{name}: unknown value {unknown[0]!r}; "
                                f"this catalog has: {known}")
        out = np.zeros(self.n_items, dtype=bool)
        for v in values:
            out |= table[v]
        return out

    def genres_over_cap(self, counts: dict[str, int], cap: int) -> np.ndarray | None:
        """Items having a genre already chosen ``cap`` times (None if there is none)."""
        full = tuple(g for g, n in counts.items() if n >= cap and g in self.genre)
        return self._any(self.genre, full, "genres") if full else None
