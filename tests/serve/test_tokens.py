"""The serving tokenizer gives exactly the reference tokenizer's tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfm.serve.config import ServeConfig
from recfm.serve.engine import Engine


@pytest.fixture(scope="module")
def engine(served) -> Engine:
    return Engine(served.run, ServeConfig(cache_mb=0))


def event_lists(item_ids: list[str]):
    event = st.fixed_dictionaries(
        {"item_id": st.sampled_from(item_ids)},
        optional={
            "action": st.sampled_from(["play", "complete", "impression", "trailer", "rate",
                                       "never-seen-action", ""]),
            "value": st.one_of(st.floats(0, 20_000, allow_nan=False), st.integers(0, 5)),
            "device": st.sampled_from(["tv", "mobile", "web", "toaster"]),
            "country": st.sampled_from(["US", "FR", "XX"]),
            "surface": st.sampled_from(["home", "search", "kids", "row9"]),
            "row": st.integers(0, 100),
        })
    gaps = st.integers(0, 3 * 3600) | st.sampled_from([0, 1, 3, 7, 1023, 1024, 1799, 1800, 1801])
    return st.lists(st.tuples(event, gaps), min_size=1, max_size=25)


def with_times(pairs, start: int, ms: bool) -> list[dict]:
    out, t = [], start
    for e, gap in pairs:
        t += gap
        out.append({**e, "timestamp": t * 1000 if ms else t})
    return out


def reference(engine: Engine, events: list[dict]):
    engine.fast_tokens = False
    try:
        return engine._event_tokens(events, ignore_unknown=False)
    finally:
        engine.fast_tokens = True


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fast_tokens_equal_reference_tokens(engine, data):
    pairs = data.draw(event_lists(engine.item_ids[3:40]))
    ms = data.draw(st.booleans())
    shuffle = data.draw(st.booleans())
    events = with_times(pairs, 1_700_000_000, ms)
    if shuffle:  # out-of-order requests are sorted by time, ties kept in request order
        events = events[::2] + events[1::2]
    variants = [engine.rec.tokenizer.config]
    for kw in ({"merge_window_s": 0.0}, {"value_agg": "max", "min_play_seconds": 60.0},
               {"short_play_mode": "relabel", "min_play_seconds": 600.0, "value_agg": "last"}):
        cfg = copy.deepcopy(engine.rec.tokenizer.config)
        for k, v in kw.items():
            setattr(cfg, k, v)
        variants.append(cfg)
    original = engine.rec.tokenizer.config
    try:
        for cfg in variants:
            engine.rec.tokenizer.config = cfg
            engine.event_tokenizer.cfg = cfg
            fast, fast_ts = engine.event_tokenizer(events)
            ref, ref_ts = reference(engine, events)
            assert fast.shape == ref.shape
            np.testing.assert_array_equal(fast, ref)
            if len(ref):
                np.testing.assert_array_equal(fast_ts, ref_ts)
    finally:
        engine.rec.tokenizer.config = original
        engine.event_tokenizer.cfg = original


def test_events_without_times_use_their_order(engine):
    events = [{"item_id": i} for i in engine.item_ids[3:12]] * 2
    fast, _ = engine.event_tokenizer(events)
    np.testing.assert_array_equal(fast, reference(engine, events)[0])
