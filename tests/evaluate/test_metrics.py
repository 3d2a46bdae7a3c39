"""Metrics against hand-computed cases; baselines; memory that does not grow with users."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest
import torch

from recfm.evaluate.evaluator import evaluate_scorer, popularity_scorer, recent_scorer
from recfm.evaluate.metrics import RankingAccumulator, ranks_of


def test_ranks_are_pessimistic_on_ties():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9], [0.3, 0.3, 0.3, 0.3]])
    assert ranks_of(scores, torch.tensor([1, 0])).tolist() == [2, 3]
    filtered = torch.tensor([[float("-inf"), 1.0, 0.0, 0.0]])
    assert ranks_of(filtered, torch.tensor([0])).tolist() == [4]


def test_hand_computed_metrics():
    # three users over 6 items (no reserved ids); ranks 0, 2 (tie counted above) and 5
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3, 0.0, 0.05],   # target 0 → rank 0
        [0.1, 0.8, 0.5, 0.5, 0.0, 0.0],    # target 2 → one higher + one tie → rank 2
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # target 5 → rank 5
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # no target
    ])
    targets = torch.tensor([0, 2, 5, 0])
    targets[3] = -1
    acc = RankingAccumulator(n_items=6, n_reserved=0, ks=(1, 3, 5))
    acc.add(scores[:2], targets[:2])
    acc.add(scores[2:], targets[2:])      # batching must not matter
    r = acc.result()
    assert r["users"] == 3 and r["users_without_target"] == 1
    assert r["hr@1"] == pytest.approx(1 / 3)
    assert r["hr@3"] == pytest.approx(2 / 3)
    assert r["hr@5"] == pytest.approx(2 / 3)
    assert r["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert r["ndcg@1"] == pytest.approx(1 / 3)
    assert r["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)
    # top-1 lists: item 0, 1, 0 → 2 of 6 items covered
    assert r["coverage@1"] == pytest.approx(2 / 6)


def test_sampled_metrics_are_labelled_extras():
    acc = RankingAccumulator(n_items=50, n_reserved=3, ks=(10,), sampled_negatives=20)
    scores = torch.arange(50, dtype=torch.float32).repeat(4, 1)
    acc.add(scores, torch.tensor([49, 49, 49, 49]))
    r = acc.result()
    assert r["sampled20_hr@10"] == 1.0 and r["hr@10"] == 1.0
    assert "sampled20_ndcg@10" in r


def frame(histories, targets, ts=None):
    data = {"user_idx": list(range(len(histories))), "item": histories, "target": targets}
    if ts is not None:
        data["ts"] = ts
    return pl.DataFrame(data, schema_overrides={"item": pl.List(pl.Int64)})


def test_seen_items_are_excluded_and_repeats_counted():
    train = frame([[3, 3, 3, 4], [5]], [0, 0])
    pop = popularity_scorer(train, n_items=8)
    test = frame([[3, 4], [6]], [5, 3])
    res = evaluate_scorer(pop, test, n_items=8, max_len=10, columns=["item"], ks=(1, 2))
    # user 0 saw 3 and 4: the most popular unseen item is 5 → hit at rank 0
    # user 1 saw 6: ranking 3 (pop 3), 4 and 5 (pop 1 each) → target 3 at rank 0
    assert res["hr@1"] == 1.0
    res2 = evaluate_scorer(pop, frame([[3]], [3]), n_items=8, max_len=10, columns=["item"],
                           ks=(1,))
    assert res2["hr@1"] == 0.0 and res2["targets_seen_before"] == 1


def test_recent_baseline_orders_by_last_time():
    train = frame([[3, 4], [5]], [0, 0], ts=[[10, 30], [20]])
    rec = recent_scorer(train, n_items=7)
    scores = rec(np.arange(1), {"item": torch.zeros(1, 1, dtype=torch.long)})[0]
    assert scores[4] > scores[5] > scores[3] > scores[6]


def test_evaluation_memory_is_flat_in_users():
    """Peak RSS with 8× the users stays within a margin far below a users × items matrix."""
    code = textwrap.dedent("""
        import resource, sys, numpy as np, polars as pl, torch
        from recfm.evaluate.evaluator import evaluate_scorer
        n_users, n_items = int(sys.argv[1]), 20000
        rng = np.random.default_rng(0)
        f = pl.DataFrame({"user_idx": np.arange(n_users),
                          "item": [rng.integers(3, n_items, 5).tolist() for _ in range(n_users)],
                          "target": rng.integers(3, n_items, n_users)})
        w = torch.randn(n_items, 8)
        score = lambda rows, b: torch.randn(len(rows), 8) @ w.T
        evaluate_scorer(score, f, n_items, 10, ["item"], batch_size=256)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)

    def peak_kb(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak_kb(2_000), peak_kb(16_000)
    dense_kb = 16_000 * 20_000 * 4 // 1024   # what a users × items float matrix would cost
    assert large - small < dense_kb // 10, (small, large)
