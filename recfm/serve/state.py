"""A content-addressed cache of encoded user states (the "prefix cache"), keyed by prefix
hashes of the window's tokens; a hit is confirmed by comparing the tokens, so a collision
never serves a wrong state. How: docs/guide/serving.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from recfm.model.attention import KVCache


OBJECT_BYTES = 512
"""Memory of each object of a cached state beyond its array bytes (tensor and array headers,
allocator rounding): uncounted, a cache of small states held 1.5× its budget."""


@dataclass
class CachedState:
    tokens: np.ndarray  # (T, C) int64, the encoded window
    kv: KVCache  # B = 1, length T
    user: torch.Tensor  # (d,)

    @property
    def nbytes(self) -> int:
        objects = 2 * len(self.kv.keys) + 3  # keys, values, tokens, user, the entry
        return (self.tokens.nbytes + self.kv.nbytes + self.user.numel() * 4
                + OBJECT_BYTES * objects)


class PrefixHasher:
    """Hashes of every prefix of a token window in one vectorised pass.

    ``h[n-1] = Σ_{i<n} mix(row_i) · w_i`` (mod 2⁶⁴) with random odd per-column and
    per-position weights: a prefix hash that costs a cumsum, not a loop.
    """

    def __init__(self, n_columns: int, max_len: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.col = rng.integers(1, 2**63, size=n_columns, dtype=np.uint64) | np.uint64(1)
        self.pos = rng.integers(1, 2**63, size=max_len, dtype=np.uint64) | np.uint64(1)

    def prefixes(self, tokens: np.ndarray) -> np.ndarray:
        """(T,) uint64: hash of tokens[:n] at index n - 1."""
        with np.errstate(over="ignore"):
            rows = (tokens.astype(np.uint64) * self.col[None, :]).sum(1, dtype=np.uint64)
            rows ^= rows >> np.uint64(29)
            return np.cumsum(rows * self.pos[:len(rows)], dtype=np.uint64)


class UserStateCache:
    """LRU of :class:`CachedState` bounded in bytes, thread-safe. An entry is found by the hash
    of its window and of its window less the last token (which a merged repeat changes)."""

    def __init__(self, max_bytes: int, n_columns: int, max_len: int) -> None:
        self.max_bytes = int(max_bytes)
        self.hasher = PrefixHasher(n_columns, max_len)
        self._entries: OrderedDict[int, CachedState] = OrderedDict()
        self._short: dict[int, int] = {}  # hash of window[:-1] → key of the entry
        self._lock = threading.Lock()
        self.bytes = 0
        self.stats = {"hit": 0, "extend": 0, "miss": 0}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup_hashed(self, tokens: np.ndarray
                      ) -> tuple[int, CachedState | None, np.ndarray | None]:
        """(P, state, hashes): a cached state whose first P tokens are the first P of
        ``tokens``, P as large as possible (P == len(tokens): an exact hit; (0, None): a miss;
        use ``state.kv.prefix(P)`` when P < len(state.tokens)), and the prefix hashes of
        ``tokens`` for a :meth:`put` of them."""
        if not self.enabled or len(tokens) == 0:
            return 0, None, None
        hashes = self.hasher.prefixes(tokens)
        with self._lock:
            for n in range(len(tokens), 0, -1):
                h = int(hashes[n - 1])
                for key in (h, self._short.get(h)):
                    state = self._entries.get(key) if key is not None else None
                    if state is not None and len(state.tokens) >= n \
                            and np.array_equal(state.tokens[:n], tokens[:n]):
                        self._entries.move_to_end(key)
                        self.stats["hit" if n == len(tokens) else "extend"] += 1
                        return n, state, hashes
            self.stats["miss"] += 1
        return 0, None, hashes

    def put(self, state: CachedState, hashes: np.ndarray | None = None) -> None:
        """Cache ``state``; ``hashes``: its tokens' prefix hashes if already computed."""
        if not self.enabled or state.nbytes > self.max_bytes:
            return
        if hashes is None:
            hashes = self.hasher.prefixes(state.tokens)
        key = int(hashes[-1])
        with self._lock:
            self._drop(key)
            self._entries[key] = state
            if len(hashes) > 1:
                self._short[int(hashes[-2])] = key
            self.bytes += state.nbytes
            while self.bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        old = self._entries.pop(key, None)
        if old is None:
            return
        self.bytes -= old.nbytes
        if len(old.tokens) > 1:
            short = int(self.hasher.prefixes(old.tokens[:-1])[-1])
            if self._short.get(short) == key:
                del self._short[short]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._short.clear()
            self.bytes = 0
