"""One request's raw events → tokens, without a DataFrame: the serving tokenizer.

:func:`recfm.tokens.tokenizer.tokenize` is built for millions of events and has a fixed
cost per call (DataFrames, the whole catalog's item mapping). This is the same algorithm —
filter, merge repeats, encode facets, bucket values, gaps and hours — over Python lists
for one user, with the vocabularies mapped once. It takes integer timestamps (seconds or
milliseconds) or none; ISO-8601 strings go through ``tokenize``. The tests hold the two
to identical output on generated event lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recfm.tokens.tokenizer import FACET_UNK, N_RESERVED_FACET, Tokenizer, hour_of_week

_MS_THRESHOLD = 100_000_000_000  # as recfm.data.schema: integer times above are milliseconds
CATEGORICAL = ("action", "device", "country", "surface")


class EventTokenizer:
    """Tokens of one user's events with a fitted tokenizer (see module docstring)."""

    def __init__(self, tok: Tokenizer, columns: list[str], index_of: dict[str, int]) -> None:
        self.cfg = tok.config
        self.has_time = tok.has_time
        self.columns = columns
        self.col = {c: i for i, c in enumerate(columns)}
        self.index_of = index_of
        self.codes = {f: {v: N_RESERVED_FACET + i for i, v in enumerate(values)}
                      for f, values in tok.facets.items()}
        self.edges = np.asarray(tok.value_edges, dtype=np.float64)
        self.strength = {a: i + 1 for i, a in enumerate(self.cfg.action_strength)}
        self.drop = set(self.cfg.drop_actions)
        self.short = set(self.cfg.short_play_actions)

    @staticmethod
    def supports(events: list[dict[str, Any]]) -> bool:
        """True if every event has an integer timestamp (not a bool), or none has one."""
        ts = [e.get("timestamp") for e in events]
        return ts.count(None) == len(ts) or all(type(t) is int for t in ts)

    def __call__(self, events: list[dict[str, Any]], items: list[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(L, C) int64 tokens (columns ``self.columns``) and (L,) first times of each token;
        ``items``: the events' item indices when the caller has looked them up already.
        Column-wise numpy; Python loops only over the few merged groups (repeats).
        """
        present, cats, values, rows, items, t = self._columns(events, items)
        actions = cats["action"]
        kept = np.flatnonzero(self._keep(actions, values))
        idx = kept[np.argsort(t[kept], kind="stable")]  # equal times keep the request's order
        ts = t[idx]  # (M,)
        item = np.asarray(items, dtype=np.int64)[idx]
        starts, ends = self._groups(item, ts)
        first = idx[starts]  # event index of each group's first event
        value, action = self._aggregate(values, actions, idx, starts, ends)

        out: dict[str, np.ndarray | list[int]] = {"item": item[starts]}
        out.update(self._facet_codes(present, cats, action, rows, first))
        out["value_bucket"] = self._value_buckets(value)
        first_ts = ts[starts]  # (n,)
        out.update(self._time_codes(first_ts, ts, ends))
        mat = np.full((len(starts), len(self.columns)), FACET_UNK, dtype=np.int64)
        for c, v in out.items():
            k = self.col.get(c)
            if k is not None:
                mat[:, k] = v
        return mat, first_ts.copy()

    def _columns(self, events: list[dict[str, Any]], items: list[int] | None) -> tuple:
        """The events column-wise: the fields some event has, categorical values as text,
        values as floats, rows, item indices, and (N,) times in seconds (positions when no
        event has a time)."""
        n_events = len(events)
        keys = set().union(*events)  # the fields any event has: others are skipped
        raw = {f: [e.get(f) for e in events] if f in keys else [None] * n_events
               for f in CATEGORICAL + ("value", "row")}
        present = [f for f, col in raw.items() if f in keys and any(v is not None for v in col)]
        # a field no event has is all None here, and stays None through every conversion
        cats = {f: [None if v in (None, "") else str(v) for v in raw[f]] for f in CATEGORICAL}
        values = [None if v is None else float(v) for v in raw["value"]]
        if items is None:
            items = [self.index_of[str(e["item_id"])] for e in events]
        stamps = [e.get("timestamp") for e in events] if "timestamp" in keys else []
        if any(t is not None for t in stamps):
            t = np.array([int(x) for x in stamps], dtype=np.int64)
            t = np.where(np.abs(t) >= _MS_THRESHOLD, t // 1000, t)
        else:
            t = np.arange(len(events), dtype=np.int64)
        return present, cats, values, raw["row"], items, t

    def _keep(self, actions: list[str | None], values: list[float | None]) -> list[bool]:
        """Which events become tokens: not a dropped action, not a short play in ``drop``
        mode (in ``relabel`` mode its entry in ``actions`` is relabelled)."""
        cfg = self.cfg
        keep = [a is None or a not in self.drop for a in actions]
        if cfg.min_play_seconds > 0:
            for i, (a, v) in enumerate(zip(actions, values)):
                if keep[i] and v is not None and a in self.short and v < cfg.min_play_seconds:
                    if cfg.short_play_mode == "drop":
                        keep[i] = False
                    else:
                        actions[i] = cfg.short_play_label
        return keep

    def _groups(self, item: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) starts and ends of the groups of merged repeats among the (M,) kept events:
        same item as the previous event, within ``merge_window_s``."""
        M = len(item)
        new = np.ones(M, dtype=bool)
        if self.cfg.merge_window_s > 0 and M > 1:
            new[1:] = (item[1:] != item[:-1]) | ((ts[1:] - ts[:-1]) > self.cfg.merge_window_s)
        starts = np.flatnonzero(new)  # (n,)
        return starts, np.append(starts[1:], M)

    def _aggregate(self, values: list, actions: list, idx: np.ndarray, starts: np.ndarray,
                   ends: np.ndarray) -> tuple[list, list]:
        """Value and action of each token: its event's, or over a merged group the
        ``value_agg`` of the values and the strongest action (ties: the later event)."""
        first = idx[starts]
        value = [values[i] for i in first]
        action = [actions[i] for i in first]
        for j in np.flatnonzero(ends - starts > 1):  # merged groups: aggregate in Python
            members = idx[starts[j]:ends[j]]
            vs = [values[i] for i in members if values[i] is not None]
            value[j] = ({"sum": sum(vs), "max": max(vs), "last": vs[-1]}[self.cfg.value_agg]
                        if vs else None)
            ranked = sorted(members, key=lambda i: self.strength.get(actions[i], 0))
            action[j] = actions[ranked[-1]]
        return value, action

    def _facet_codes(self, present: list[str], cats: dict[str, list], action: list,
                     rows: list, first: np.ndarray) -> dict[str, list[int]]:
        """Codes of the categorical facets (the token's action, its first event's others)
        and of its first event's row; only for the fields some event has."""
        out = {}
        for f in CATEGORICAL:
            if f in present:
                codes = self.codes.get(f, {})
                vals = action if f == "action" else [cats[f][i] for i in first]
                out[f] = [FACET_UNK if v is None else codes.get(v, FACET_UNK) for v in vals]
        if "row" in present:
            out["row"] = [FACET_UNK if r is None else min(max(int(r), 0), self.cfg.max_row)
                          + N_RESERVED_FACET for r in (rows[i] for i in first)]
        return out

    def _value_buckets(self, value: list[float | None]) -> np.ndarray:
        """(n,) value buckets: 0 without a value, else 1 + the edges at or below it."""
        has_value = np.array([v is not None for v in value], dtype=bool)
        if len(self.edges) == 0:
            return has_value.astype(np.int64)
        v = np.array([0.0 if x is None else x for x in value], dtype=np.float64)
        return np.where(has_value, np.searchsorted(self.edges, v, "right") + 1, 0)

    def _time_codes(self, first_ts: np.ndarray, ts: np.ndarray,
                    ends: np.ndarray) -> dict[str, np.ndarray]:
        """(n,) gap buckets (from the previous token's last event) and hours of the week of
        the tokens starting at ``first_ts``; zeros for a tokenizer without times."""
        n = len(first_ts)
        if not self.has_time:
            zeros = np.zeros(n, dtype=np.int64)
            return {"gap_bucket": zeros, "hour_of_week": zeros}
        gap_bucket = np.zeros(n, dtype=np.int64)
        if n > 1:
            gap = np.maximum(first_ts[1:] - ts[ends[:-1] - 1], 0)  # from the previous
            b = np.floor(np.log(gap + 1.0) / math.log(2.0)).astype(np.int64) + 1
            for j in np.flatnonzero((gap & (gap + 1)) == 0):  # gap + 1 a power of two:
                b[j] = int(math.floor(math.log(gap[j] + 1.0) / math.log(2.0))) + 1
            gap_bucket[1:] = np.minimum(b, self.cfg.n_gap_buckets - 1)
        return {"gap_bucket": gap_bucket, "hour_of_week": hour_of_week(first_ts)}
