"""Causal transformer backbone (pre-norm), attention behind a named switch.

``attention="sdpa"`` calls :func:`torch.nn.functional.scaled_dot_product_attention` with an
explicit boolean mask (causal and padding); ``attention="reference"`` is the plain
softmax(QKᵀ/√d)V written out, kept as the ground truth the fast path is tested against.
Positions are learned (SASRec) or rotary (RoFormer, Su et al. 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recfm.model.config import ModelConfig


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
        if self.impl == "sdpa":
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
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        mask = attention_mask(valid)  # (B, 1, T, T)
        layers = []
        for block in self.blocks:
            x = block(x, mask)
            layers.append(x)
        out = self.ln_f(x)  # (B, T, C)
        if all_layers:
            return [self.ln_f(h) for h in layers[:-1]] + [out]
        return out
