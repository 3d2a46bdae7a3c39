"""How much two embedding versions differ, as the store's consumers see it: does a user's
vector stay put (per-user cosine; meaningful only when both versions share one space, e.g. an
incremental update) and do their recommendations (overlap of each version's top-k item ids)?
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Vectors = tuple[Sequence[str], np.ndarray]


def _summary(values: np.ndarray) -> dict[str, float | int]:
    if len(values) == 0:
        return {"n": 0, **dict.fromkeys(("mean", "median", "p10", "p90"), float("nan"))}
    return {"n": int(len(values)), "mean": float(values.mean()),
            "median": float(np.median(values)), "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9))}


def _changes(a: Sequence[str], b: Sequence[str], examples: int = 5) -> dict:
    sa, sb = set(a), set(b)
    added = sorted(sb - sa)
    removed = sorted(sa - sb)
    return {"a": len(sa), "b": len(sb), "common": len(sa & sb), "added": len(added),
            "removed": len(removed), "added_examples": added[:examples],
            "removed_examples": removed[:examples]}


def top_k_ids(users: np.ndarray, items: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """(n, k) row indices into ``items`` of each user's k highest dot products, best first."""
    k = min(k, items.shape[0])
    out = np.empty((users.shape[0], k), dtype=np.int64)
    for s in range(0, users.shape[0], chunk):
        scores = users[s:s + chunk] @ items.T  # (c, n_items)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (c, k) unordered
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, 1)
    return out


def stability_report(users_a: Vectors, users_b: Vectors, items_a: Vectors, items_b: Vectors,
                     k: int = 10, sample_users: int = 2000, seed: int = 0) -> dict:
    """Per-user cosine and top-``k`` overlap between versions a and b, plus id churn, over the
    users in both. Overlap (``|top_a ∩ top_b| / k``, seen items kept: the store has no
    histories) on a seeded sample of ``sample_users``; cosine is None if the dims differ."""
    ids_a, ua = list(users_a[0]), users_a[1]
    ids_b, ub = list(users_b[0]), users_b[1]
    row_b = {u: i for i, u in enumerate(ids_b)}
    common = [(i, row_b[u]) for i, u in enumerate(ids_a) if u in row_b]
    ra = np.array([i for i, _ in common], dtype=np.int64)
    rb = np.array([j for _, j in common], dtype=np.int64)

    cosine = None
    if ua.shape[1] == ub.shape[1]:
        x, y = ua[ra].astype(np.float64), ub[rb].astype(np.float64)
        den = np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
        cosine = _summary((x * y).sum(1) / den)

    sample = np.arange(len(common))
    if len(common) > sample_users:
        sample = np.sort(np.random.default_rng(seed).choice(len(common), sample_users,
                                                            replace=False))
    ids_ia, ia = np.asarray(list(items_a[0]), dtype=object), items_a[1]
    ids_ib, ib = np.asarray(list(items_b[0]), dtype=object), items_b[1]
    overlap = np.zeros(0)
    if len(sample) and len(ids_ia) and len(ids_ib):
        top_a = ids_ia[top_k_ids(ua[ra[sample]], ia, k)]  # (s, k) item ids
        top_b = ids_ib[top_k_ids(ub[rb[sample]], ib, k)]
        kk = min(k, top_a.shape[1], top_b.shape[1])
        overlap = np.array([len(set(x[:kk]) & set(y[:kk])) / kk
                            for x, y in zip(top_a, top_b)])
    return {
        "users": _changes(ids_a, ids_b),
        "items": _changes(list(items_a[0]), list(items_b[0])),
        "cosine": cosine,
        "top_overlap": {**_summary(overlap), "k": k, "sampled_users": int(len(sample))},
    }
