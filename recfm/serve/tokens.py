"""One request's raw events → tokens, without a DataFrame: the serving tokenizer.

:func:`recfm.tokenizer.tokenize` is built for millions of events; on one request's handful it
costs milliseconds of fixed overhead (and it rebuilds the item mapping of the whole catalog
each call). This is the same algorithm — filter, merge repeats, encode facets, bucket
values, gaps and hours — written over Python lists for one user, with the vocabularies
mapped once. It handles integer timestamps (seconds or milliseconds) or none; requests
with ISO-8601 strings go through the reference tokenizer. The tests hold the two to
identical output on generated event lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recfm.tokenizer import FACET_UNK, N_RESERVED_FACET, Tokenizer

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
        ts = [e.get("timestamp") for e in events]
        return all(t is None for t in ts) or all(
            isinstance(t, int) and not isinstance(t, bool) for t in ts)

    def __call__(self, events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(L, C) int64 tokens (columns ``self.columns``) and (L,) first times of each token."""
        cfg = self.cfg
        present = [f for f in CATEGORICAL + ("value", "row")
                   if any(e.get(f) is not None for e in events)]
        has_ts = any(e.get("timestamp") is not None for e in events)
        rows = []  # (ts, order, item, action, value, facets)
        for order, e in enumerate(events):
            t = int(e["timestamp"]) if has_ts else order
            t = t // 1000 if abs(t) >= _MS_THRESHOLD else t
            cats = {f: (None if e.get(f) in (None, "") else str(e.get(f))) for f in CATEGORICAL}
            value = None if e.get("value") is None else float(e["value"])
            action = cats["action"]
            if action is not None and action in self.drop:
                continue
            if cfg.min_play_seconds > 0 and "value" in present and value is not None \
                    and action in self.short and value < cfg.min_play_seconds:
                if cfg.short_play_mode == "drop":
                    continue
                action = cfg.short_play_label
            cats["action"] = action
            rows.append((t, order, self.index_of[str(e["item_id"])], value, cats, e.get("row")))
        rows.sort(key=lambda r: r[0])  # stable: equal times keep the request's order

        groups: list[list[tuple]] = []
        for i, r in enumerate(rows):
            prev = rows[i - 1] if i else None
            new = (prev is None or cfg.merge_window_s <= 0 or r[2] != prev[2]
                   or (r[0] - prev[0]) > cfg.merge_window_s)
            if new:
                groups.append([r])
            else:
                groups[-1].append(r)

        n = len(groups)
        mat = np.full((n, len(self.columns)), FACET_UNK, dtype=np.int64)
        first_ts = np.zeros(n, dtype=np.int64)
        prev_last = None
        for j, g in enumerate(groups):
            first, last = g[0], g[-1]
            values = [r[3] for r in g if r[3] is not None]
            value = None
            if values:
                value = {"sum": sum(values),
                         "max": max(values), "last": values[-1]}[cfg.value_agg]
            action = first[4]["action"]
            if len(g) > 1 and "action" in present:
                ranked = sorted(g, key=lambda r: self.strength.get(r[4]["action"], 0)
                                if r[4]["action"] is not None else 0)
                action = ranked[-1][4]["action"]
            row_out = {"item": first[2]}
            for f in CATEGORICAL:
                if f in present:
                    v = action if f == "action" else first[4][f]
                    row_out[f] = self.codes.get(f, {}).get(v, FACET_UNK) if v is not None \
                        else FACET_UNK
            if "row" in present:
                r = first[5]
                row_out["row"] = FACET_UNK if r is None else \
                    min(max(int(r), 0), cfg.max_row) + N_RESERVED_FACET
            if value is None:
                row_out["value_bucket"] = 0
            elif len(self.edges) == 0:
                row_out["value_bucket"] = 1
            else:
                row_out["value_bucket"] = int(np.searchsorted(self.edges, value, "right")) + 1
            ts = first[0]
            if self.has_time:
                if prev_last is None:
                    row_out["gap_bucket"] = 0
                else:
                    gap = max(ts - prev_last, 0)
                    b = int(math.floor(math.log(gap + 1.0) / math.log(2.0))) + 1
                    row_out["gap_bucket"] = min(b, cfg.n_gap_buckets - 1)
                row_out["hour_of_week"] = (ts // 3600 + 72) % 168
            else:
                row_out["gap_bucket"] = 0
                row_out["hour_of_week"] = 0
            prev_last = last[0]
            for c, v in row_out.items():
                k = self.col.get(c)
                if k is not None:
                    mat[j, k] = v
            first_ts[j] = ts
        return mat, first_ts
