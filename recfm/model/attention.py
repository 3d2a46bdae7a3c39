"""The attention pieces every block shares: masks, the plain reference, rotary, the KV cache.

``reference_attention`` is softmax(QKᵀ/√d)V written out: the ground truth that the fast
kernels (SDPA, the blocked local pattern of :mod:`recfm.model.sparse`, the numpy serving
step) are tested against. :class:`KVCache` holds every layer's keys and values of the
tokens seen so far, so that one attention forward serves a whole sequence, a sequence
after a cached prefix, and the one-token serving step (the cache object of HF's
``cache_utils``: ``update(layer, k, v)`` stores the new keys/values and returns them all).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask: query t sees key s ≤ t that is not padding. The diagonal
    stays open so a padded query (output ignored) has no empty row, NaN in softmax."""
    B, T = valid.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    mask = causal & (valid[:, None, :] | eye)  # (B, T, T)
    return mask[:, None]


def extension_mask(past: int, new: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (1, 1, new, past + new) mask: new query i sees keys 0 .. past + i."""
    q = torch.arange(new, device=device)[:, None] + past
    k = torch.arange(past + new, device=device)[None, :]
    return (k <= q)[None, None]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None, dropout: float = 0.0) -> torch.Tensor:
    """softmax(QKᵀ/√d + mask) V — the plain path. q: (B, H, T, Dh), k, v: (B, H, S, Dh);
    ``mask`` (B, 1, T, S) boolean, or None when every query sees every key."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout > 0:
        weights = F.dropout(weights, dropout)
    return weights @ v  # (B, H, T, Dh)


def rotary(x: torch.Tensor, start: int = 0, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels by the angles of positions ``start .. start + T - 1``
    (RoFormer, Su et al. 2021). x: (B, H, T, Dh)."""
    T, Dh = x.shape[-2], x.shape[-1]
    half = Dh // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(start, start + T, device=x.device, dtype=torch.float32)
    angles = pos[:, None] * freqs  # (T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([out, x[..., 2 * half:]], dim=-1) if Dh % 2 else out


class Room:
    """Buffers (B, H, capacity, Dh) per layer, keys/values in the first ``filled`` positions.
    A cache ending at ``filled`` appends in place; claiming is atomic, so of two extensions of
    one state only the first writes there (the other copies): every view stays valid."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], filled: int) -> None:
        self.keys, self.values, self.filled = keys, values, filled
        self.capacity = int(keys[0].size(2))
        self._lock = threading.Lock()

    def claim(self, length: int, new: int) -> bool:
        with self._lock:
            if self.filled != length or length + new > self.capacity:
                return False
            self.filled = length + new
            return True


@dataclass
class KVCache:
    """Keys and values of every layer for the first ``length`` tokens of B sequences.

    ``keys[l]``, ``values[l]``: (B, H, length, Dh), keys rotated. With ``room``
    (:meth:`row`) they view larger buffers a grown cache appends to in place. A filled
    cache never changes: :meth:`grow` makes a new one, so earlier states stay usable.
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    room: Room | None = None

    @property
    def length(self) -> int:
        return int(self.keys[0].size(2)) if self.keys else 0

    @property
    def nbytes(self) -> int:
        if self.room is not None:  # the reserved buffers, shared or not
            return sum(t.numel() * t.element_size() for t in self.room.keys + self.room.values)
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def grow(self, new: int) -> "KVCache":
        """An empty cache to be filled, layer by layer (:meth:`update`), with this one's
        tokens and ``new`` more; it writes into this cache's room when it can claim it."""
        room = self.room if self.room is not None and self.room.claim(self.length, new) else None
        return KVCache([], [], room) if room is not None else _Grown(self)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s keys/values of the new tokens (B, H, T, Dh) after those
        already in this cache's room; returns every position's (B, H, P + T, Dh)."""
        if self.room is None:
            raise ValueError("update a cache made by grow()")
        start = self.room.filled - k.size(2)
        kbuf, vbuf = self.room.keys[layer], self.room.values[layer]
        kbuf[:, :, start:start + k.size(2)] = k
        vbuf[:, :, start:start + v.size(2)] = v
        k, v = kbuf[:, :, :self.room.filled], vbuf[:, :, :self.room.filled]
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def row(self, b: int, n: int, capacity: int | None = None) -> "KVCache":
        """Sequence ``b``'s first ``n`` positions as a compact B = 1 cache (copies); with
        ``capacity`` > n, in buffers of that many positions that later tokens fill in place."""
        if capacity is None or capacity <= n:
            return KVCache([k[b:b + 1, :, :n].clone() for k in self.keys],
                           [v[b:b + 1, :, :n].clone() for v in self.values])
        bufs = []
        for t in self.keys + self.values:
            buf = t.new_empty(1, t.size(1), capacity, t.size(3))  # (1, H, capacity, Dh)
            buf[:, :, :n] = t[b:b + 1, :, :n]
            bufs.append(buf)
        L = len(self.keys)
        room = Room(bufs[:L], bufs[L:], n)
        return KVCache([k[:, :, :n] for k in room.keys], [v[:, :, :n] for v in room.values], room)

    def prefix(self, n: int) -> "KVCache":
        """The first ``n`` positions (views, no copy)."""
        return KVCache([k[:, :, :n] for k in self.keys], [v[:, :, :n] for v in self.values],
                       self.room)


class _Grown(KVCache):
    """A cache grown by copying: each layer's keys/values are the past's, then the new ones
    (an empty past: just the new ones)."""

    def __init__(self, past: KVCache) -> None:
        super().__init__([], [], None)
        self.past = past

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.past.keys:
            k = torch.cat([self.past.keys[layer], k], dim=2)  # (B, H, P + T, Dh)
            v = torch.cat([self.past.values[layer], v], dim=2)
        self.keys.append(k)
        self.values.append(v)
        return k, v
