"""Scoring a large catalog a chunk of items at a time.

``score(users) = users @ table.T`` is a (B, n_items) matrix: 2 GB for 512 users and a
million items. These functions stream over item chunks and keep only what the caller
needs (a running top-k, a rank), so memory is O(B × chunk + n_items × d).

Example:
    >>> users, table = torch.randn(2, 8), torch.randn(1000, 8)
    >>> vals, idx = chunked_topk(lambda s, e: users @ table[s:e].T, 1000, k=5, chunk=128)
    >>> bool((idx == torch.topk(users @ table.T, 5).indices).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

ChunkFn = Callable[[int, int], torch.Tensor]
"""(start, end) → (B, end - start) scores of items start .. end-1, a fresh tensor (callers
write -inf into it). An optional ``.rows(rows, start, end)`` attribute scores a subset of
the rows only."""


def _masked_chunks(score_chunk: ChunkFn, n_items: int, chunk: int,
                   seen: tuple[np.ndarray, np.ndarray] | None
                   ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, (B, end - start) float scores with the ``seen`` pairs at -inf) per chunk."""
    for start in range(0, n_items, chunk):
        end = min(start + chunk, n_items)
        s = score_chunk(start, end).float()  # (B, C)
        if seen is not None:
            b, items = seen
            inside = (items >= start) & (items < end)
            s[torch.from_numpy(b[inside]), torch.from_numpy(items[inside] - start)] = float("-inf")
        yield start, end, s


def _merge_topk(best_v: torch.Tensor | None, best_i: torch.Tensor | None, s: torch.Tensor,
                start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k`` (values, item indices) merged with chunk ``s`` at ``start``."""
    v, i = torch.topk(s, min(k, s.size(1)), dim=1)  # (B, kk)
    i = i + start
    if best_v is not None:
        v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
        top = torch.topk(v, min(k, v.size(1)), dim=1)
        v, i = top.values, i.gather(1, top.indices)
    return v, i


def chunked_topk(score_chunk: ChunkFn, n_items: int, k: int, chunk: int = 65536,
                 seen: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, item indices), each (B, k), over items 0 .. n_items-1, equal to
    ``torch.topk`` of the full matrix up to exact ties. ``seen``: (row, item) pairs excluded."""
    best_v: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start, end, s in _masked_chunks(score_chunk, n_items, chunk, seen):
        best_v, best_i = _merge_topk(best_v, best_i, s, start, k)
    assert best_v is not None and best_i is not None, "n_items must be positive"
    return best_v, best_i


def chunked_ranks(score_chunk: ChunkFn, n_items: int, targets: torch.Tensor,
                  chunk: int = 65536, seen: tuple[np.ndarray, np.ndarray] | None = None,
                  k: int = 0, extra: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None,
                             torch.Tensor]:
    """Pessimistic 0-based rank of each target among all items, in one pass over chunks.

    targets: (B,) item ids ≥ 0. Returns (ranks (B,), top-``k`` indices (B, k) or None, scores
    of the ``extra`` (B, m) items or None, target scores (B,), -inf where filtered), as
    :func:`recfm.evaluate.metrics.ranks_of` and ``torch.topk`` give them from the full
    matrix; a target ``seen`` removed ranks last (n_items).
    """
    B = targets.numel()
    t_score = torch.empty(B)
    t_chunk = targets // chunk
    sub_rows = getattr(score_chunk, "rows", None)
    for c in torch.unique(t_chunk).tolist():
        rows = (t_chunk == c).nonzero().squeeze(1)  # (r,)
        start, end = c * chunk, min((c + 1) * chunk, n_items)
        if sub_rows is not None:  # a chunk function that can score some rows only
            s = sub_rows(rows, start, end).float()  # (r, C)
        else:
            s = score_chunk(start, end).float()[rows]
        t_score[rows] = s.gather(1, (targets[rows] - start)[:, None]).squeeze(1)
    if seen is not None:  # a target among the seen items is filtered: it ranks last
        b, items = seen
        hit = items == targets.numpy()[b]
        t_score[torch.from_numpy(np.unique(b[hit]))] = float("-inf")
    above = torch.zeros(B, dtype=torch.long)
    best_v = best_i = None
    extra_s = torch.full(extra.shape, float("-inf")) if extra is not None else None
    for start, end, s in _masked_chunks(score_chunk, n_items, chunk, seen):
        own = (targets >= start) & (targets < end)
        if own.any():  # the target itself is not above itself
            r = own.nonzero().squeeze(1)
            s[r, targets[r] - start] = float("nan")
        above += (s >= t_score[:, None]).sum(1)  # NaN compares False
        if extra is not None:
            inside = (extra >= start) & (extra < end)
            rr, cc = inside.nonzero(as_tuple=True)
            extra_s[rr, cc] = s[rr, extra[rr, cc] - start]
        if k:
            s = torch.nan_to_num(s, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
            if own.any():  # put the target's score back for the top-k
                s[r, targets[r] - start] = t_score[r]
            best_v, best_i = _merge_topk(best_v, best_i, s, start, k)
    if extra is not None:  # the target itself may be among the extra items
        is_t = extra == targets[:, None]
        extra_s[is_t] = t_score[:, None].expand_as(extra_s)[is_t]
    ranks = torch.where(torch.isfinite(t_score), above, torch.full_like(above, n_items))
    return ranks, best_i, extra_s, t_score


def without_reserved(fn: ChunkFn, n_reserved: int) -> ChunkFn:
    """``fn`` with the scores of items 0 .. n_reserved-1 (padding, unknown, …) at -inf."""

    def masked(scores: torch.Tensor, start: int, end: int) -> torch.Tensor:
        lo = min(max(n_reserved - start, 0), end - start)
        if lo:
            scores = scores.float().clone()
            scores[:, :lo] = float("-inf")
        return scores

    def score_chunk(start: int, end: int) -> torch.Tensor:
        return masked(fn(start, end), start, end)

    sub = getattr(fn, "rows", None)
    score_chunk.rows = (lambda r, start, end: masked(sub(r, start, end), start, end)) \
        if sub is not None else (lambda r, start, end: masked(fn(start, end)[r], start, end))
    return score_chunk
