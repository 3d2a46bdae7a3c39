"""Micro-batches: whole rows, every row once, parts as even as the rows allow."""

from __future__ import annotations

import torch

from recfm.train.batches import micro_batches


def batch(rows: int, length: int) -> dict[str, torch.Tensor]:
    t = torch.arange(rows * length).view(rows, length)
    return {"item": t, "target": t + 1, "future_item": torch.zeros(rows, length + 1)}


def test_a_batch_that_fits_is_not_split():
    b = batch(8, 4)
    assert micro_batches(b, 32) == [b] and micro_batches(b, 0) == [b]


def test_a_large_batch_becomes_even_parts_of_whole_rows():
    b = batch(10, 50)  # 500 positions in parts of at most ~128
    parts = micro_batches(b, 128)
    assert [len(p["item"]) for p in parts] == [3, 3, 3, 1]
    assert all(p.keys() == b.keys() for p in parts)
    for key in b:
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), b[key])


def test_one_row_longer_than_the_budget_stays_whole():
    b = batch(3, 100)
    assert [len(p["item"]) for p in micro_batches(b, 10)] == [1, 1, 1]
    assert micro_batches(batch(1, 100), 10)[0]["item"].shape == (1, 100)
