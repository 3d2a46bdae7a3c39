"""The user-state cache: a byte budget that bounds the memory it really holds."""

from __future__ import annotations

import numpy as np
import torch

from recfm.model.attention import KVCache
from recfm.serve.state import CachedState, UserStateCache


def test_the_byte_budget_counts_each_entrys_objects_not_only_its_arrays():
    """Small states are mostly object headers: a budget of their array bytes alone would let
    the process hold half as much again (measured 1.5× for 16-token, 16-wide states)."""
    def state(i: int) -> CachedState:
        kv = KVCache([torch.zeros(1, 2, 16, 8)] * 2, [torch.zeros(1, 2, 16, 8)] * 2)
        return CachedState(np.full((16, 4), i, np.int64), kv, torch.zeros(16))

    arrays = state(0).tokens.nbytes + state(0).kv.nbytes + 16 * 4
    cache = UserStateCache(100 * arrays, n_columns=4, max_len=16)
    for i in range(200):
        cache.put(state(i))
    assert 0 < len(cache) < 70 and cache.bytes <= 100 * arrays
