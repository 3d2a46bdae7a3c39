"""Leave-one-out and temporal splits: targets, histories and the users they cannot use."""

from __future__ import annotations

import polars as pl

from recfm.data.splits import (drop_last, event_rows, history_rows, last_token_split,
                               leave_one_out, temporal_split)


def seqs() -> pl.DataFrame:
    return pl.DataFrame(schema_overrides={"length": pl.Int32}, data={
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


def test_drop_last_cuts_every_list_column_and_empties_short_rows():
    out = drop_last(seqs(), 2)
    assert out["item"].to_list() == [[3, 4], [], [9]]
    assert out["ts"].to_list() == [[1, 2], [], [5]]
    assert out["length"].to_list() == [2, 0, 1]
    assert out.schema == seqs().schema                       # same columns, same types
    per_row = drop_last(seqs(), pl.col("user_idx") + 1)     # k per row: 1, 2, 3
    assert per_row["item"].to_list() == [[3, 4, 5], [], []]


def test_history_rows_and_event_rows():
    one = history_rows(seqs(), pl.col("length") - 1)
    assert one["target"].to_list() == [6, 8, 11]
    assert one["target_ts"].to_list() == [4, 9, 7]
    assert one["item"].to_list() == [[3, 4, 5], [7], [9, 10]]
    # every token from position 2 on (position 1 at least), each with its whole history
    ev = event_rows(seqs(), pl.lit(2))
    assert ev["user_idx"].to_list() == [0, 0, 2]
    assert ev["pos"].to_list() == [2, 3, 2]
    assert ev["target"].to_list() == [5, 6, 11]
    assert ev["item"].to_list() == [[3, 4], [3, 4, 5], [9, 10]]
    assert ev["ts"].to_list() == [[1, 2], [1, 2, 3], [5, 6]]
    assert event_rows(seqs(), pl.lit(0))["pos"].to_list() == [1, 2, 3, 1, 1, 2]


def test_last_token_split_holds_out_only_the_last_token():
    s = last_token_split(seqs().vstack(pl.DataFrame(
        {"user_idx": [3], "user_id": ["d"], "length": [1], "item": [[12]], "ts": [[1]]},
        schema=seqs().schema)))
    assert s.counts == {"users": 4, "users_validating": 3}
    assert s.train.sort("user_idx")["item"].to_list() == [[3, 4, 5], [7], [9, 10], [12]]
    assert s.valid["target"].to_list() == [6, 8, 11]
    assert s.test is s.valid
