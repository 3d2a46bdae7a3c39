"""Item catalog rows → one text per item, by a versioned recipe (``TEXT_RECIPE``): the cache
key hashes the text, so a new recipe must change the text. Fields: docs/guide/prepare.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import polars as pl

TEXT_RECIPE = 1
TEXT_FIELDS = ("title", "description", "genres", "tags", "attributes", "entity_type",
               "language", "release_year")
MAX_LIST_VALUES = 20
"""At most this many genres / tags / attributes go into the text (the encoder truncates anyway)."""


def _words(values: Iterable | None) -> list[str]:
    """List values that read as words (numeric attribute ids do not)."""
    texts = (str(v).strip() for v in values or () if v is not None)
    words = (s for s in texts if s and not s.lstrip("-").isdigit())
    return list(itertools.islice(words, MAX_LIST_VALUES))


def item_text(row: dict) -> str:
    """The text of one item (a dict of catalog columns); '' when it has no text at all."""
    parts: list[str] = []
    title = (row.get("title") or "").strip()
    year = row.get("release_year")
    if title:
        parts.append(f"{title} ({year})." if year else f"{title}.")
    if row.get("entity_type"):
        parts.append(f"{row['entity_type']}.")
    for field, label in (("genres", "Genres"), ("tags", "Tags"), ("attributes", "Attributes")):
        words = _words(row.get(field))
        if words:
            parts.append(f"{label}: {', '.join(words)}.")
    if row.get("language"):
        parts.append(f"Language: {row['language']}.")
    desc = (row.get("description") or "").strip()
    if desc:
        parts.append(desc)
    return " ".join(parts)


def item_texts(items: pl.DataFrame) -> list[str]:
    """One text per row of an item frame (columns as in :mod:`recfm.data.schema`)."""
    cols = [c for c in TEXT_FIELDS if c in items.columns]
    return [item_text(row) for row in items.select(cols).iter_rows(named=True)]


def has_text(items: pl.DataFrame) -> bool:
    """Whether the catalog has any text field a text embedder can use."""
    if any(c in items.columns for c in ("title", "description", "tags")):
        return True
    return any(c in items.columns and any(_words(v) for v in items[c].head(100).to_list())
               for c in ("genres", "attributes"))
