"""Shared fixtures: tiny datasets the tests write themselves."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chain_events(n_users: int = 60, n_items: int = 40, length: int = 12,
                 seed: int = 0) -> pl.DataFrame:
    """Users walk a ring of items (item i → i+1 mostly): easy sequential signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        item = int(rng.integers(0, n_items))
        for t in range(length):
            rows.append((f"u{u}", f"i{item}", 1_600_000_000 + 3600 * t,
                         str(rng.choice(["play", "complete"])), float(rng.uniform(10, 3000)),
                         str(rng.choice(["tv", "web"]))))
            item = (item + 1) % n_items if rng.random() < 0.9 else int(rng.integers(0, n_items))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "action", "value",
                                      "device"], orient="row")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A prepared dataset of 60 users on a 40-item ring, with items carrying genres."""
    from recfm.data.readers import RawDataset
    from recfm.data.schema import normalize_events, normalize_items
    from recfm.tokens.prepare import prepare

    root = tmp_path_factory.mktemp("tiny")
    events = normalize_events(chain_events(), "events")
    items = normalize_items(pl.DataFrame({
        "item_id": [f"i{i}" for i in range(40)],
        "title": [f"Title {i}" for i in range(40)],
        "genres": [["drama"] if i % 2 else ["comedy", "kids"] for i in range(40)],
    }), "items")
    raw = RawDataset(events, items, "events", "items", {"name": "tiny", "has_time": True})
    prepare(raw, root / "prepared")
    return root / "prepared"
