"""Leave-one-out and temporal splits: targets, histories and the users they cannot use."""

from __future__ import annotations

import polars as pl

from recfm.data.splits import leave_one_out, temporal_split


def seqs() -> pl.DataFrame:
    return pl.DataFrame({
        "user_idx": [0, 1, 2],
        "user_id": ["a", "b", "c"],
        "length": [4, 2, 3],
        "item": [[3, 4, 5, 6], [7, 8], [9, 10, 11]],
        "ts": [[1, 2, 3, 4], [1, 9], [5, 6, 7]],
    })


def test_leave_one_out_targets_and_histories():
    s = leave_one_out(seqs())
    assert s.counts == {"users": 3, "users_evaluated": 2, "users_too_short": 1, "min_length": 3}
    test = s.test.sort("user_idx")
    assert test["target"].to_list() == [6, 11]
    assert test["item"].to_list() == [[3, 4, 5], [9, 10]]
    assert test["ts"].to_list() == [[1, 2, 3], [5, 6]]          # facets stay aligned
    valid = s.valid.sort("user_idx")
    assert valid["target"].to_list() == [5, 10]
    assert valid["item"].to_list() == [[3, 4], [9]]
    # training never sees a validation or test target; short users train on everything
    assert s.train.sort("user_idx")["item"].to_list() == [[3, 4], [7, 8], [9]]
    assert s.train["length"].to_list() == [2, 2, 1]


def test_temporal_split_counts_cold_and_futureless_users():
    s = temporal_split(seqs(), t=3)
    assert s.counts["users_evaluated"] == 2          # a and b
    assert s.counts["users_cold_at_t"] == 1          # c starts after t
    assert s.counts["users_without_future"] == 0
    assert s.test.sort("user_idx")["target"].to_list() == [5, 8]
    assert s.train.sort("user_idx")["item"].to_list() == [[3, 4], [7]]
    assert all(t < 3 for ts in s.train["ts"].to_list() for t in ts)
