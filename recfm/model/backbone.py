"""Causal transformer backbone (pre-norm), attention behind a named switch.

``attention="sdpa"`` calls :func:`torch.nn.functional.scaled_dot_product_attention` with an
explicit boolean mask (causal and padding); ``attention="reference"`` is the plain
softmax(QKᵀ/√d)V written out, kept as the ground truth the fast path is tested against.
Positions are learned (SASRec) or rotary (RoFormer, Su et al. 2021).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recfm.model.config import ModelConfig
from recfm.model.sparse import LocalMask, local_attention_mask, local_extension_mask


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where query t may attend to key s.

    Causal (s ≤ t) and key not padding. The diagonal stays open so a padded query never
    has an empty row (its output is ignored anyway), which would give NaN in softmax.
    """
    B, T = valid.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    mask = causal & (valid[:, None, :] | eye)  # (B, T, T)
    return mask[:, None]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(QKᵀ/√d + mask) V — the plain path. q, k, v: (B, H, T, Dh)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout > 0:
        weights = F.dropout(weights, dropout)
    return weights @ v  # (B, H, T, Dh)


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels by position-dependent angles. x: (B, H, T, Dh)."""
    T, Dh = x.shape[-2], x.shape[-1]
    half = Dh // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freqs  # (T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([out, x[..., 2 * half:]], dim=-1) if Dh % 2 else out


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.rope = cfg.positions == "rope"
        self.impl = cfg.attention

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, T, Dh)
        if self.rope:
            q, k = rotary(q), rotary(k)
        p = self.dropout if self.training else 0.0
        if isinstance(mask, LocalMask):  # local + global pattern, linear memory
            y = mask.attend(q, k, v, p, self.impl)
        elif self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = reference_attention(q, k, v, mask, p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ff_dim)
        self.out = nn.Linear(cfg.ff_dim, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class Backbone(nn.Module):
    """A stack of blocks and a final LayerNorm. Returns every layer's output if asked."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # (window, n_global) of local attention, or None for dense causal attention
        self.local = ((cfg.local_window, cfg.n_global) if cfg.attention_pattern == "local"
                      else None)
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        mask = (attention_mask(valid) if self.local is None  # (B, 1, T, T)
                else LocalMask(valid, *self.local))
        layers = []
        for block in self.blocks:
            x = block(x, mask)
            layers.append(x)
        out = self.ln_f(x)  # (B, T, C)
        if all_layers:
            return [self.ln_f(h) for h in layers[:-1]] + [out]
        return out


# ----------------------------------------------------------------------------- incremental encoding
# Inference only (no dropout). A causal model's keys and values at positions < P never depend
# on later tokens, so a sequence that grew from P to T tokens needs only tokens P..T-1 run
# through the blocks, attending to the cached keys/values of the first P (the "KV cache" of
# autoregressive decoding). The plain forward above stays the reference these are tested
# against.


def rotary_from(x: torch.Tensor, start: int, base: float = 10000.0) -> torch.Tensor:
    """:func:`rotary` for positions ``start .. start + T - 1``. x: (B, H, T, Dh)."""
    T, Dh = x.shape[-2], x.shape[-1]
    half = Dh // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(start, start + T, device=x.device, dtype=torch.float32)
    angles = pos[:, None] * freqs  # (T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([out, x[..., 2 * half:]], dim=-1) if Dh % 2 else out


class _Room:
    """Buffers (B, H, capacity, Dh) per layer whose first ``filled`` positions hold keys and
    values. A cache that ends at ``filled`` may append in place; claiming is atomic, so of two
    extensions of one cached state only the first writes into the shared buffers (the other
    copies) and every cache viewing them stays valid."""

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

    ``keys[l]``, ``values[l]``: (B, H, length, Dh), rotary already applied to the keys. With
    ``room`` (see :meth:`row`) they are views of larger buffers and :func:`backbone_extend`
    appends new tokens in place instead of copying the whole cache.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    room: _Room | None = None

    @property
    def length(self) -> int:
        return int(self.keys[0].size(2)) if self.keys else 0

    @property
    def nbytes(self) -> int:
        if self.room is not None:  # the reserved buffers, shared or not
            return sum(t.numel() * t.element_size() for t in self.room.keys + self.room.values)
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

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
        room = _Room(bufs[:L], bufs[L:], n)
        return KVCache([k[:, :, :n] for k in room.keys], [v[:, :, :n] for v in room.values], room)

    def prefix(self, n: int) -> "KVCache":
        """The first ``n`` positions (views, no copy)."""
        return KVCache([k[:, :, :n] for k in self.keys], [v[:, :, :n] for v in self.values],
                       self.room)


def extension_mask(past: int, new: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (1, 1, new, past + new) mask: new query i sees keys 0 .. past + i."""
    q = torch.arange(new, device=device)[:, None] + past
    k = torch.arange(past + new, device=device)[None, :]
    return (k <= q)[None, None]


def _attend_cached(attn: CausalSelfAttention, x: torch.Tensor, mask: torch.Tensor | None,
                   past: tuple[torch.Tensor, torch.Tensor] | None, start: int,
                   only: torch.Tensor | None = None,
                   room: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``attn`` over new tokens x (B, T, C) at positions start.., keys/values of ``past`` first.

    ``only`` (B,): compute the output of just this position of each row (keys and values of
    every position are still returned) — the last layer of an encoder that needs only the
    last hidden state. ``mask`` None: every query sees every key (one new token). ``room``:
    buffers whose first ``start`` positions are ``past``; the new keys/values are written
    after them (no copy of the past).
    """
    B, T, C = x.shape
    q, k, v = attn.qkv(x).split(C, dim=-1)  # 3 × (B, T, C)
    q, k, v = (t.view(B, T, attn.n_heads, C // attn.n_heads).transpose(1, 2)
               for t in (q, k, v))  # (B, H, T, Dh)
    if attn.rope:
        q, k = rotary_from(q, start), rotary_from(k, start)
    if room is not None:
        room[0][:, :, start:start + T] = k
        room[1][:, :, start:start + T] = v
        k, v = room[0][:, :, :start + T], room[1][:, :, :start + T]  # (B, H, P + T, Dh)
    elif past is not None:
        k = torch.cat([past[0], k], dim=2)  # (B, H, P + T, Dh)
        v = torch.cat([past[1], v], dim=2)
    if mask is None:  # one new token after a cache: it attends to everything
        if attn.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = reference_attention(q, k, v, torch.ones(1, 1, T, k.size(2), dtype=torch.bool))
        return attn.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)
    if only is not None:
        rows = torch.arange(B, device=x.device)
        q = q[rows, :, only].unsqueeze(2)  # (B, H, 1, Dh)
        mask = mask.expand(B, 1, T, mask.size(-1))[rows, :, only].unsqueeze(2)  # (B, 1, 1, S)
        T = 1
    if attn.impl == "sdpa":
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        y = reference_attention(q, k, v, mask)
    y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    return attn.proj(y), (k, v)


def _extend_one(backbone: Backbone, x: torch.Tensor, past: KVCache) -> tuple[torch.Tensor,
                                                                                KVCache]:
    """:func:`backbone_extend` for one new token per row after ``past``: the serving step.

    The same arithmetic as the blocks' modules, called as functions on (B, C) rows: for one
    token the cost is per-op overhead, not flops, so this skips module dispatch, masks and
    reshapes. x: (B, 1, C) → (B, 1, C).
    """
    B, _, C = x.shape
    start = past.length
    room = past.room if past.room is not None and past.room.claim(start, 1) else None
    x = x.reshape(B, C)
    keys, values = [], []
    for i, block in enumerate(backbone.blocks):
        attn, ln1, ln2, mlp = block.attn, block.ln1, block.ln2, block.mlp
        H = attn.n_heads
        y = F.layer_norm(x, (C,), ln1.weight, ln1.bias, ln1.eps)
        q, k, v = torch.addmm(attn.qkv.bias, y, attn.qkv.weight.t()).view(B, 3, H, 1, C // H
                                                                          ).unbind(1)
        if attn.rope:  # (B, H, 1, Dh)
            q, k = rotary_from(q, start), rotary_from(k, start)
        if room is not None:
            room.keys[i][:, :, start] = k[:, :, 0]
            room.values[i][:, :, start] = v[:, :, 0]
            k, v = room.keys[i][:, :, :start + 1], room.values[i][:, :, :start + 1]
        else:
            k = torch.cat([past.keys[i], k], dim=2)  # (B, H, P + 1, Dh)
            v = torch.cat([past.values[i], v], dim=2)
        if attn.impl == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        else:
            a = reference_attention(q, k, v, torch.ones(1, 1, 1, start + 1, dtype=torch.bool))
        x = x + torch.addmm(attn.proj.bias, a.reshape(B, C), attn.proj.weight.t())
        y = F.layer_norm(x, (C,), ln2.weight, ln2.bias, ln2.eps)
        y = F.gelu(torch.addmm(mlp.fc.bias, y, mlp.fc.weight.t()))
        x = x + torch.addmm(mlp.out.bias, y, mlp.out.weight.t())
        keys.append(k)
        values.append(v)
    return backbone.ln_f(x).unsqueeze(1), KVCache(keys, values, room)


def backbone_extend(backbone: Backbone, x: torch.Tensor, valid: torch.Tensor | None = None,
                    past: KVCache | None = None, last_only: bool = False
                    ) -> tuple[torch.Tensor, KVCache]:
    """Run new tokens through ``backbone``; returns (B, T, C) outputs and the grown cache.

    Without ``past``: x is a right-padded batch (``valid`` (B, T) marks real tokens), the
    same outputs as ``backbone(x, valid)``. With ``past``: x holds tokens P .. P+T-1 of the
    same B sequences (no padding, every row the same P); outputs equal those positions of a
    full forward over all P + T tokens. ``last_only``: (B, 1, C), the output at each row's
    last real token only — the last block then runs its attention output, projection and
    MLP for one position per row instead of T, with the same keys/values cached.
    """
    B, T, _ = x.shape
    if past is not None and T == 1 and getattr(backbone, "local", None) is None:
        return _extend_one(backbone, x, past)
    if past is None:
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
        mask = attention_mask(valid)  # (B, 1, T, T)
        start = 0
        last = valid.sum(1).clamp_min(1) - 1  # (B,)
    elif T == 1:  # the common step: one token sees the whole cache, no mask, no gather
        start, mask, last_only = past.length, None, False
        last = None
    else:
        start = past.length
        mask = extension_mask(start, T, x.device)  # (1, 1, T, P + T)
        last = torch.full((B,), T - 1, dtype=torch.long, device=x.device)
    if backbone.local is not None:  # local attention: the same pattern as explicit masks
        window, n_global = backbone.local
        mask = (local_attention_mask(valid, window, n_global) if past is None
                else local_extension_mask(start, T, window, n_global, x.device))
    keys, values = [], []
    n = len(backbone.blocks)
    room = past.room if past is not None and past.room is not None \
        and past.room.claim(past.length, T) else None
    for i, block in enumerate(backbone.blocks):
        layer_past = (past.keys[i], past.values[i]) if past is not None else None
        only = last if last_only and i == n - 1 else None
        bufs = (room.keys[i], room.values[i]) if room is not None else None
        h, (k, v) = _attend_cached(block.attn, block.ln1(x), mask, layer_past, start, only, bufs)
        if only is not None:
            x = x[torch.arange(B, device=x.device), only].unsqueeze(1)  # (B, 1, C)
        x = x + h
        x = x + block.mlp(block.ln2(x))
        keys.append(k)
        values.append(v)
    return backbone.ln_f(x), KVCache(keys, values, room)
