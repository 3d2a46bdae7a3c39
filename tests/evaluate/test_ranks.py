"""Per-event ranks and log-probabilities against a brute-force reference; their summary."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from recfm.evaluate.evaluator import evaluate_scorer
from recfm.evaluate.metrics import rank_summary
from recfm.evaluate.ranks import target_log_probs, target_ranks
from recfm.tokens.tokenizer import N_RESERVED_ITEMS

N_ITEMS = 12


def world(seed: int = 0, n_rows: int = 40):
    """Rows of random histories and targets (some seen before); a fixed score per (row,
    item) with many ties (scores on a coarse grid)."""
    rng = np.random.default_rng(seed)
    hist = [rng.integers(N_RESERVED_ITEMS, N_ITEMS, rng.integers(1, 8)).tolist()
            for _ in range(n_rows)]
    target = rng.integers(N_RESERVED_ITEMS, N_ITEMS, n_rows).tolist()
    frame = pl.DataFrame({"user_idx": np.arange(n_rows), "item": hist, "target": target},
                         schema_overrides={"item": pl.List(pl.Int64)})
    table = torch.from_numpy(rng.integers(0, 4, (n_rows, N_ITEMS)).astype(np.float32))

    def scorer(rows, batch):
        return table[torch.from_numpy(rows)]  # (B, V)

    return frame, table.numpy(), scorer


def brute_rank(scores: np.ndarray, history: list[int], target: int,
               candidates: set[int] | None = None) -> int:
    """Pessimistic 0-based rank, written out: the items that can be ranked are the real,
    unseen (candidate) ones; every other one scoring at least the target ranks above it."""
    allowed = [j for j in range(N_RESERVED_ITEMS, N_ITEMS)
               if j not in history and (candidates is None or j in candidates)]
    if target not in allowed:
        return N_ITEMS
    return sum(1 for j in allowed if j != target and scores[j] >= scores[target])


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_ranks_equal_brute_force(batch_size):
    frame, table, scorer = world()
    ranks = target_ranks(scorer, frame, max_len=3, columns=["item"], batch_size=batch_size)
    expected = [brute_rank(table[r], h, t) for r, (h, t) in
                enumerate(zip(frame["item"].to_list(), frame["target"].to_list()))]
    assert ranks.tolist() == expected
    # a history longer than the context still excludes every item it holds
    assert any(len(h) > 3 for h in frame["item"].to_list())


def test_ranks_among_candidates_and_without_exclusion():
    frame, table, scorer = world(seed=1)
    cand = torch.zeros(N_ITEMS, dtype=torch.bool)
    cand[[4, 6, 7, 9, 11]] = True
    ranks = target_ranks(scorer, frame, 50, ["item"], candidates=cand)
    expected = [brute_rank(table[r], h, t, {4, 6, 7, 9, 11}) for r, (h, t) in
                enumerate(zip(frame["item"].to_list(), frame["target"].to_list()))]
    assert ranks.tolist() == expected
    kept = target_ranks(scorer, frame, 50, ["item"], exclude_seen=False)
    assert kept.tolist() == [brute_rank(table[r], [], t)
                             for r, t in enumerate(frame["target"].to_list())]


def test_rows_without_target_get_minus_one():
    frame, _, scorer = world(n_rows=5)
    frame = frame.with_columns(pl.when(pl.col("user_idx") == 2).then(None)
                               .otherwise(pl.col("target")).alias("target"))
    ranks = target_ranks(scorer, frame, 50, ["item"])
    assert ranks[2] == -1 and (np.delete(ranks, 2) >= 0).all()


def test_ranks_agree_with_the_evaluator():
    frame, _, scorer = world(seed=2, n_rows=60)
    ranks = target_ranks(scorer, frame, 50, ["item"])
    res = evaluate_scorer(scorer, frame, N_ITEMS, 50, ["item"], ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert res[f"hr@{k}"] == pytest.approx(float((ranks < k).mean()))
    assert res["ndcg@10"] == pytest.approx(rank_summary(ranks)["ndcg@10"])
    assert res["mrr"] == pytest.approx(float((1.0 / (ranks + 1)).mean()))


def test_log_probs_equal_brute_force():
    frame, table, scorer = world(seed=3)
    logp = target_log_probs(scorer, frame, 50, ["item"], batch_size=7)
    for r, t in enumerate(frame["target"].to_list()):
        real = table[r, N_RESERVED_ITEMS:].astype(np.float64)
        expected = table[r, t] - math.log(np.exp(real).sum())
        assert logp[r] == pytest.approx(expected, abs=1e-5)


def test_rank_summary_by_hand():
    out = rank_summary(np.array([0, 2, 10, 50]), k=10, seed=0)
    assert out["events"] == 4
    assert out["hr@10"] == 0.5
    assert out["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)
    lo, hi = out["ndcg@10_ci95"]
    assert 0.0 <= lo <= out["ndcg@10"] <= hi <= 1.0
    assert rank_summary(np.array([0, 2, 10, 50]), seed=0) == out  # seeded
    assert rank_summary(np.array([], dtype=np.int64)) == {"events": 0}
