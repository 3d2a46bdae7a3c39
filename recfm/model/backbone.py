"""Causal transformer backbone (pre-norm): one attention forward, kernels behind a switch.

``attention="sdpa"`` calls :func:`torch.nn.functional.scaled_dot_product_attention`;
``attention="reference"`` is :func:`recfm.model.attention.reference_attention`, the ground
truth. Positions are learned (SASRec) or rotary (RoFormer, Su et al. 2021). The same
:class:`Block` runs training and, after a :class:`~recfm.model.attention.KVCache`, only the
new tokens of a grown sequence (:meth:`Backbone.extend`; the model is causal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recfm.model.attention import (
    KVCache,
    attention_mask,
    extension_mask,
    reference_attention,
    rotary,
)
from recfm.model.config import ModelConfig
from recfm.model.dropout import Dropout
from recfm.model.sparse import LocalMask, local_attention_mask, local_extension_mask

Mask = torch.Tensor | LocalMask | None
"""(B or 1, 1, T, S) boolean, a local pattern, or None: every query sees every key."""


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.layer = layer  # this layer's slot in a KVCache
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.rope = cfg.positions == "rope"
        self.impl = cfg.attention

    def forward(self, x: torch.Tensor, mask: Mask, cache: KVCache | None = None,
                start: int = 0, only: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) tokens at positions ``start``..; returns (B, T, C).

        ``cache`` (from :meth:`KVCache.grow`): keys/values before ``start``; this call's are
        added. ``only`` (B,): output just this position of each row, (B, 1, C); every
        position's keys and values still go to the cache.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, T, Dh)
        if self.rope:
            q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, P + T, Dh)
        if only is not None:
            rows = torch.arange(B, device=x.device)
            q = q[rows, :, only].unsqueeze(2)  # (B, H, 1, Dh)
            mask = mask.expand(B, 1, T, mask.size(-1))[rows, :, only].unsqueeze(2)
            T = 1
        p = self.dropout if self.training else 0.0
        y = self.attend(q, k, v, mask, p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask,
               p: float) -> torch.Tensor:
        """The kernel chosen by ``cfg.attention``. q: (B, H, T, Dh), k, v: (B, H, S, Dh)."""
        if isinstance(mask, LocalMask):  # local + global pattern, linear memory
            return mask.attend(q, k, v, p, self.impl)
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return reference_attention(q, k, v, mask, p)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ff_dim)
        self.out = nn.Linear(cfg.ff_dim, cfg.d_model)
        self.drop = Dropout(cfg.dropout, cfg.fast_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout, cfg.fast_dropout)

    def forward(self, x: torch.Tensor, mask: Mask, cache: KVCache | None = None,
                start: int = 0, only: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`CausalSelfAttention.forward`; with ``only``, returns (B, 1, C)."""
        h = self.attn(self.ln1(x), mask, cache, start, only)
        if only is not None:
            x = x[torch.arange(x.size(0), device=x.device), only].unsqueeze(1)  # (B, 1, C)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.ln2(x)))


class Backbone(nn.Module):
    """A stack of blocks and a final LayerNorm. Returns every layer's output if asked."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # (window, n_global) of local attention, or None for dense causal attention
        self.local = ((cfg.local_window, cfg.n_global) if cfg.attention_pattern == "local"
                      else None)
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """x: (B, T, C) right-padded, ``valid`` (B, T) marks real tokens → (B, T, C)."""
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

    def extend(self, x: torch.Tensor, valid: torch.Tensor | None = None,
               past: KVCache | None = None, last_only: bool = False
               ) -> tuple[torch.Tensor, KVCache]:
        """Run new tokens through the blocks; returns (B, T, C) outputs and the grown cache.

        Without ``past``: x is right-padded (``valid`` (B, T)), outputs as ``self(x, valid)``.
        With ``past``: x holds tokens P .. P+T-1 of the same unpadded sequences; outputs equal
        a full forward's. ``last_only``: (B, 1, C) at each row's last real token, the last
        block computing one position per row instead of T.
        """
        B, T, _ = x.shape
        past = past if past is not None else KVCache()
        start = past.length
        if start == 0 and valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
        mask, last = self._extension_mask(valid if start == 0 else None, start, B, T,
                                          x.device)
        cache = past.grow(T)
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            only = last if last_only and i == n - 1 and T > 1 else None
            x = block(x, mask, cache, start, only)
        return self.ln_f(x), KVCache(cache.keys, cache.values, cache.room)

    def _extension_mask(self, valid: torch.Tensor | None, start: int, B: int, T: int,
                        device: torch.device) -> tuple[Mask, torch.Tensor | None]:
        """The mask of T new tokens after ``start`` cached ones, and each row's last real
        token (B,) — None where one token needs no mask (it sees the whole cache)."""
        if valid is not None:  # a fresh, right-padded batch
            last = valid.sum(1).clamp_min(1) - 1  # (B,)
            if self.local is not None:
                return local_attention_mask(valid, *self.local), last
            return attention_mask(valid), last  # (B, 1, T, T)
        if T == 1 and self.local is None:
            return None, None
        last = torch.full((B,), T - 1, dtype=torch.long, device=device)
        if self.local is not None:
            return local_extension_mask(start, T, *self.local, device), last
        return extension_mask(start, T, device), last  # (1, 1, T, P + T)
