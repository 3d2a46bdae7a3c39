"""Top-k maximum-inner-product retrieval over the item table, with per-query eligibility:
exact, or a faiss HNSW graph with an exact fallback. How: docs/guide/serving.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from recfm.tokens.tokenizer import N_RESERVED_ITEMS

log = logging.getLogger(__name__)


class Index(Protocol):
    kind: str
    n_items: int

    def search(self, users: torch.Tensor, k: int, allowed: list[np.ndarray]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per user: (item indices, scores), best first, at most k, only ``allowed`` items."""
        ...


def _exact_rows(table: torch.Tensor, users: torch.Tensor, k: int,
                allowed: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k of ``users @ table.T`` per row, rules as −inf (the reference path)."""
    scores = users @ table.T  # (B, N)
    mask = torch.from_numpy(np.stack(allowed))  # (B, N) bool
    scores = scores.masked_fill(~mask, float("-inf"))
    top = torch.topk(scores, min(k, scores.size(1)), dim=1)
    vals, idx = top.values.numpy(), top.indices.numpy()
    return [(i[np.isfinite(v)], v[np.isfinite(v)]) for i, v in zip(idx, vals)]


def _exact_one(table: np.ndarray, user: torch.Tensor, k: int, allowed: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_exact_rows` for one user through numpy (less per-call overhead on CPU)."""
    scores = table @ user.numpy()  # (N,)
    scores[~allowed] = -np.inf
    top = torch.topk(torch.from_numpy(scores), min(k, len(scores)))
    vals, idx = top.values.numpy(), top.indices.numpy()
    keep = np.isfinite(vals)
    return idx[keep], vals[keep]


def _subset_exact(table: torch.Tensor, user: torch.Tensor, k: int, ok: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the eligible items only: O(eligible · d)."""
    cand = np.flatnonzero(ok)
    scores = (table[torch.from_numpy(cand)] @ user).numpy()  # (n_ok,)
    k = min(k, len(cand))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
    order = top[np.argsort(-scores[top], kind="stable")]
    return cand[order], scores[order]


class ExactIndex:
    """Exact top-k by scoring the whole table: ``users @ table.T``, rules as −inf."""

    kind = "exact"

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.detach().contiguous()  # (N, d)
        self.table_np = self.table.numpy()  # the same memory
        self.n_items = int(table.size(0))
        self.fast = True
        """One user at a time through :func:`_exact_one` (False: :func:`_exact_rows` only)."""

    def search(self, users: torch.Tensor, k: int, allowed: list[np.ndarray]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.fast and len(allowed) == 1:
            return [_exact_one(self.table_np, users[0].detach(), k, allowed[0])]
        return _exact_rows(self.table, users, k, allowed)


def table_fingerprint(table: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(table).view(np.uint8)).hexdigest()[:16]


class HNSWIndex:
    """Approximate top-k over a faiss ``IndexHNSWFlat`` (L2 after the MIPS reduction)."""

    kind = "hnsw"

    def __init__(self, table: torch.Tensor, m: int = 32, ef_construction: int = 80,
                 ef_search: int = 256, cache_dir: Path | None = None,
                 build_threads: int | None = None) -> None:
        import faiss  # heavy: deliberately deferred until an HNSW index is built

        self.faiss = faiss
        self.table = table.detach().contiguous()  # (N, d) for exact fallbacks and scores
        self.n_items = int(table.size(0))
        self.ef_search = ef_search
        items = self.table[N_RESERVED_ITEMS:].numpy().astype(np.float32)  # (n, d)
        self.n_real = items.shape[0]
        norms2 = (items.astype(np.float64) ** 2).sum(1)
        self.max_norm2 = float(norms2.max()) if len(norms2) else 0.0
        extra = np.sqrt(np.maximum(self.max_norm2 - norms2, 0.0)).astype(np.float32)
        augmented = np.concatenate([items, extra[:, None]], axis=1)  # (n, d + 1)
        key = f"hnsw-m{m}-efc{ef_construction}-{table_fingerprint(items)}.faiss"
        path = cache_dir / key if cache_dir is not None else None
        t0 = time.perf_counter()
        self.loaded = path is not None and path.is_file()
        if self.loaded:
            self.index = faiss.read_index(str(path))
            log.info("loaded HNSW index %s (%d items)", path, self.n_real)
        else:
            faiss.omp_set_num_threads(build_threads or os.cpu_count() or 1)
            self.index = faiss.IndexHNSWFlat(augmented.shape[1], m)
            self.index.hnsw.efConstruction = ef_construction
            self.index.add(augmented)
            log.info("built HNSW index over %d items in %.1f s", self.n_real,
                     time.perf_counter() - t0)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                faiss.write_index(self.index, str(tmp))
                os.replace(tmp, path)
        faiss.omp_set_num_threads(1)  # one query at a time; torch owns the cores
        self.build_s = time.perf_counter() - t0

    def search(self, users: torch.Tensor, k: int, allowed: list[np.ndarray]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        faiss = self.faiss
        q = users.detach().numpy().astype(np.float32)
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.float32)], axis=1)  # (B, d + 1)
        out = []
        for b, ok in enumerate(allowed):
            real_ok = ok[N_RESERVED_ITEMS:]
            n_ok = int(real_ok.sum())
            want = min(k, n_ok)
            if want == 0:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            if n_ok <= max(8 * want, self.n_real // 50):  # selective rule: exact on the few
                out.append(_subset_exact(self.table, users[b], want, ok))
                continue
            bitmap = np.packbits(real_ok, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.n_real, faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.ef_search, 2 * want))
            _, ids = self.index.search(q[b:b + 1], want, params=params)
            ids = ids[0][ids[0] >= 0]
            if len(ids) < want:  # the walk ran out of eligible neighbours: exact fallback
                out.append(_subset_exact(self.table, users[b], want, ok))
                continue
            idx = ids.astype(np.int64) + N_RESERVED_ITEMS
            scores = (self.table[torch.from_numpy(idx)] @ users[b]).numpy()  # exact scores
            order = np.argsort(-scores, kind="stable")
            out.append((idx[order], scores[order]))
        return out


def build_index(table: torch.Tensor, retrieval: str, hnsw_min_items: int, m: int,
                ef_construction: int, ef_search: int, cache_dir: Path | None) -> Index:
    """The index ``retrieval`` asks for (``auto``: HNSW from ``hnsw_min_items`` items up)."""
    n = int(table.size(0)) - N_RESERVED_ITEMS
    if retrieval == "hnsw" or (retrieval == "auto" and n >= hnsw_min_items):
        return HNSWIndex(table, m, ef_construction, ef_search, cache_dir)
    return ExactIndex(table)


def recall_at_k(approx: Index, exact: Index, users: torch.Tensor, k: int,
                allowed: list[np.ndarray]) -> float:
    """Mean share of the exact top-k that the approximate index also returns."""
    a = approx.search(users, k, allowed)
    e = exact.search(users, k, allowed)
    hits = [len(np.intersect1d(x[0], y[0])) / max(len(y[0]), 1) for x, y in zip(a, e)]
    return float(np.mean(hits)) if hits else float("nan")
