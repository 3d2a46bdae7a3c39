"""Tokenizer behaviour: filters, merging, features, vocabulary, and its invariants."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.data.schema import normalize_events
from recfm.tokens.tokenizer import (
    N_RESERVED_ITEMS,
    Tokenizer,
    TokenizerConfig,
    context_windows,
    tokenize,
)


def events(rows: list[tuple]) -> pl.DataFrame:
    cols = ["user_id", "item_id", "timestamp", "action", "value"]
    return normalize_events(pl.DataFrame(rows, schema=cols, orient="row"), "test")


def test_drops_impressions_and_counts_them():
    ev = events([("u", "a", 1, "impression", None), ("u", "a", 2, "play", 60.0),
                 ("u", "b", 3, "impression", None)])
    r = tokenize(ev, TokenizerConfig())
    assert r.dropped == {"action:impression": 2}
    assert r.tokens["length"].to_list() == [1]


def test_short_plays_dropped_or_relabelled():
    ev = events([("u", "a", 1, "play", 5.0), ("u", "b", 10_000, "play", 600.0)])
    dropped = tokenize(ev, TokenizerConfig(min_play_seconds=30))
    assert dropped.dropped == {"short_play": 1}
    assert dropped.tokens["length"].to_list() == [1]
    relabel = tokenize(ev, TokenizerConfig(min_play_seconds=30, short_play_mode="relabel"))
    assert relabel.tokens["length"].to_list() == [2]
    assert relabel.tokenizer.facets["action"] == ["play", "short_play"]


def test_merge_rolls_up_adjacent_repeats_within_window():
    ev = events([
        ("u", "a", 0, "trailer", 60.0),
        ("u", "a", 100, "play", 1000.0),
        ("u", "a", 1200, "complete", 2000.0),   # within 1800 s of the previous event
        ("u", "b", 1300, "play", 10.0),
        ("u", "a", 1400, "play", 5.0),         # same item, but not adjacent
        ("u", "a", 9000, "play", 7.0),         # adjacent, but outside the window
    ])
    r = tokenize(ev, TokenizerConfig(merge_window_s=1800))
    row = r.tokens.row(0, named=True)
    assert row["length"] == 4
    assert row["count"] == [3, 1, 1, 1]
    assert row["value"] == [3060.0, 10.0, 5.0, 7.0]
    assert row["ts"] == [0, 1300, 1400, 9000]
    assert row["ts_last"] == [1200, 1300, 1400, 9000]
    actions = r.tokenizer.facets["action"]
    assert actions[row["action"][0] - 2] == "complete"  # the strongest action wins


def test_merge_disabled_keeps_every_event():
    ev = events([("u", "a", 0, "play", 1.0), ("u", "a", 1, "play", 1.0)])
    r = tokenize(ev, TokenizerConfig(merge_window_s=0))
    assert r.tokens["length"].to_list() == [2]


def test_max_value_aggregation_for_ratings():
    ev = events([("u", "a", 0, "rate", 3.0), ("u", "a", 1, "rate", 5.0)])
    r = tokenize(ev, TokenizerConfig(value_agg="max"))
    assert r.tokens["value"].to_list() == [[5.0]]


def test_time_features():
    monday = 4 * 86400  # 1970-01-05 00:00 UTC was a Monday
    ev = events([("u", "a", monday, "play", 1.0), ("u", "b", monday + 3600 * 25, "play", 1.0),
                 ("u", "c", monday + 3600 * 25 + 1, "play", 1.0)])
    r = tokenize(ev, TokenizerConfig(merge_window_s=0))
    row = r.tokens.row(0, named=True)
    assert row["hour_of_week"] == [0, 25, 25]
    assert row["gap_bucket"][0] == 0           # no previous token
    assert row["gap_bucket"][2] == 2           # 1 s gap: 1 + floor(log2(2))
    assert row["gap_bucket"][1] > row["gap_bucket"][2]


def test_no_time_zeroes_time_features():
    ev = events([("u", "a", 0, None, None), ("u", "b", 1, None, None)])
    r = tokenize(ev, TokenizerConfig(), has_time=False)
    row = r.tokens.row(0, named=True)
    assert row["gap_bucket"] == [0, 0] and row["hour_of_week"] == [0, 0]


def test_vocabulary_reserved_ids_and_growth(tmp_path):
    ev = events([("u", "10", 0, None, None), ("u", "9", 1, None, None),
                 ("v", "100", 0, None, None)])
    r = tokenize(ev, TokenizerConfig())
    tok = r.tokenizer
    assert tok.item_ids == ["9", "10", "100"]          # numeric order, not text order
    assert r.tokens["item"].to_list() == [[4, 3], [5]]
    assert min(r.tokens["item"].explode()) >= N_RESERVED_ITEMS
    before = tok.item_index()
    assert tok.add_items(["7", "10"]) == [6, 4]
    assert {k: v for k, v in tok.item_index().items() if k in before} == before
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json", tok.item_ids)
    assert again.to_json() == tok.to_json()


def test_context_windows_cover_every_token():
    assert context_windows(5, 10) == [(0, 5)]
    assert context_windows(10, 4) == [(6, 10)]
    spans = context_windows(10, 4, "sliding", stride=3)
    covered = set()
    for s, e in spans:
        assert e - s == 4
        covered.update(range(s, e))
    assert covered == set(range(10)) and spans[-1][1] == 10


# ----------------------------------------------------------------------- properties

event_rows = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 5000),
        st.sampled_from(["play", "complete", "trailer", "impression"]),
        st.floats(0, 5000, allow_nan=False).map(lambda x: round(x, 1)),
    ),
    min_size=1, max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_rows)
def test_merging_conserves_events_and_duration(rows):
    ev = events(rows)
    cfg = TokenizerConfig(drop_actions=[], merge_window_s=1800)
    r = tokenize(ev, cfg)
    n_tokens = int(r.tokens["length"].sum())
    assert n_tokens <= ev.height
    assert int(r.tokens["count"].explode().sum()) == ev.height
    total = sum(v for *_, v in rows)
    assert r.tokens["value"].explode().sum() == pytest.approx(total, rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_rows, st.randoms(use_true_random=False))
def test_output_independent_of_row_order_beyond_time_ties(rows, rnd):
    """Shuffle the rows, keeping the file order of rows with equal (user, timestamp)."""
    ev = events(rows)
    groups: dict[tuple, list[int]] = {}
    for i, (user, _, ts, _, _) in enumerate(rows):
        groups.setdefault((user, ts), []).append(i)
    queues = {k: list(v) for k, v in groups.items()}
    order = []
    keys = [k for k in groups for _ in groups[k]]
    rnd.shuffle(keys)
    for k in keys:  # interleave groups randomly, each group's rows in file order
        order.append(queues[k].pop(0))
    shuffled = events([rows[i] for i in order])
    cfg = TokenizerConfig(merge_window_s=600)
    a = tokenize(ev, cfg)
    b = tokenize(shuffled, cfg)
    assert a.tokens.equals(b.tokens)
    assert a.tokenizer.to_json() == b.tokenizer.to_json()
    assert a.dropped == b.dropped
