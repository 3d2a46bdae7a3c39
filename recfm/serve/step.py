"""The serving step: :meth:`FoundationModel.encode_incremental` of one new token after a
cached user state, in numpy with everything token-independent prepared once (one token costs
per-op overhead, not flops). Exact within 1e-5. How: docs/guide/serving.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recfm.model.attention import KVCache
from recfm.model.foundation import FoundationModel


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _layer_norm(x: np.ndarray, ln: tuple[np.ndarray, np.ndarray, float, np.ndarray]
                ) -> np.ndarray:
    """F.layer_norm of a (C,) row (biased variance, as torch). Mean and variance as dot
    products: cheaper than ``ndarray.mean`` on a row this short."""
    d = x - x.dot(ln[3])
    return d * (ln[0] / np.sqrt(d.dot(d) * ln[3][0] + ln[2])) + ln[1]


def _ln(module: torch.nn.LayerNorm) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(weight, bias, eps, a row of 1/C) of a LayerNorm."""
    C = module.weight.numel()
    return (_np(module.weight), _np(module.bias), float(module.eps),
            np.full(C, 1.0 / C, dtype=np.float32))


class _Layer:
    """One block's weights, prepared for a (C,) row."""

    def __init__(self, block: torch.nn.Module, scale: float) -> None:
        attn, C = block.attn, block.attn.qkv.in_features
        self.ln1, self.ln2 = _ln(block.ln1), _ln(block.ln2)
        w = attn.qkv.weight.detach().clone()  # (3C, C)
        b = attn.qkv.bias.detach().clone()  # (3C,)
        w[:C] *= scale  # q · k / √Dh with the scale folded into q
        b[:C] *= scale
        self.qkv_w, self.qkv_b = _np(w.t()), _np(b)  # (C, 3C)
        self.proj_w, self.proj_b = _np(attn.proj.weight.t()), _np(attn.proj.bias)  # (C, C)
        self.fc_w, self.fc_b = _np(block.mlp.fc.weight.t()), _np(block.mlp.fc.bias)  # (C, F)
        self.out_w, self.out_b = _np(block.mlp.out.weight.t()), _np(block.mlp.out.bias)


class OneTokenStep:
    """``encode_incremental`` of a window one token longer than a cached state (B = 1).

    Example:
        >>> step = OneTokenStep(fm, fm.input_item_table())                  # doctest: +SKIP
        >>> if step.supports(past, len(window)):
        ...     user, grown = step(window[-1], past)  # (d,), the cache one token longer
    """

    def __init__(self, fm: FoundationModel, item_vectors: torch.Tensor) -> None:
        cfg = fm.cfg
        self.C, self.H = cfg.d_model, cfg.n_heads
        self.Dh = self.C // self.H
        self.max_len = cfg.max_len
        self.dense = getattr(fm.backbone, "local", None) is None
        self.items = _np(item_vectors)  # (N, d) input side, as encode_incremental takes it
        emb = fm.embed
        self.emb_scale = np.float32(emb.scale)
        self.facets = [(fm.input_columns.index(name), _np(e.weight))
                       for name, e in emb.facets.items() if name in fm.input_columns]
        self.norm = _ln(emb.norm)
        self.pos = _np(emb.positions.weight) if emb.positions is not None else None
        self.rope = cfg.positions == "rope"
        if self.rope:  # rotary's angles, one row per position
            half = self.Dh // 2
            freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
            angles = torch.arange(self.max_len, dtype=torch.float32)[:, None] * freqs
            self.cos, self.sin = angles.cos().numpy(), angles.sin().numpy()  # (max_len, half)
        self.layers = [_Layer(b, 1.0 / math.sqrt(self.Dh)) for b in fm.backbone.blocks]
        self.ln_f = _ln(fm.backbone.ln_f)

    def supports(self, past: KVCache, window_len: int) -> bool:
        """True if this step can extend ``past`` to ``window_len`` tokens in place."""
        room = past.room
        return (self.dense and window_len == past.length + 1 and window_len <= self.max_len
                and room is not None and room.filled == past.length
                and int(past.keys[0].size(0)) == 1
                and room.keys[0].dtype == torch.float32)

    def _rotate(self, x: np.ndarray, pos: int) -> np.ndarray:
        """rotary for one position. x: (H, Dh)."""
        half = self.Dh // 2
        cos, sin = self.cos[pos], self.sin[pos]  # (half,)
        x1, x2 = x[:, :half], x[:, half:2 * half]
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[:, 2 * half:]], 1)

    def __call__(self, token: np.ndarray, past: KVCache
                 ) -> tuple[torch.Tensor, KVCache] | None:
        """(d,) user vector and the grown cache for ``token`` (C,) — the window's last row,
        columns ``fm.input_columns`` — after ``past``; None if another request claimed the
        cache's room first (then use the reference path, which copies)."""
        start = past.length
        room = past.room
        if room is None or not room.claim(start, 1):
            return None
        C, H, Dh = self.C, self.H, self.Dh
        x = self.items[int(token[0])] * self.emb_scale  # (C,)
        for col, table in self.facets:
            x = x + table[int(token[col])]
        if self.pos is not None:
            x = x + self.pos[start]
        x = _layer_norm(x, self.norm)  # (C,)
        n = start + 1
        for i, layer in enumerate(self.layers):
            y = _layer_norm(x, layer.ln1)
            qkv = (y @ layer.qkv_w + layer.qkv_b).reshape(3, H, Dh)  # (3, H, Dh)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (H, Dh)
            if self.rope:
                q, k = self._rotate(q, start), self._rotate(k, start)
            kbuf, vbuf = room.keys[i][0].numpy(), room.values[i][0].numpy()  # (H, cap, Dh)
            kbuf[:, start] = k  # written into the shared buffers in place
            vbuf[:, start] = v
            s = np.matmul(kbuf[:, :n], q[:, :, None])[:, :, 0]  # (H, P + 1), q pre-scaled
            s = np.exp(s - s.max(1, keepdims=True))
            s /= s.sum(1, keepdims=True)
            a = np.matmul(s[:, None, :], vbuf[:, :n])[:, 0]  # (H, Dh)
            x = x + (a.reshape(C) @ layer.proj_w + layer.proj_b)
            y = _layer_norm(x, layer.ln2)
            y = F.gelu(torch.from_numpy(y @ layer.fc_w + layer.fc_b)).numpy()  # (F,)
            x = x + (y @ layer.out_w + layer.out_b)
        user = torch.from_numpy(_layer_norm(x, self.ln_f).astype(np.float32, copy=False))
        grown = KVCache([k[:, :, :n] for k in room.keys], [v[:, :, :n] for v in room.values],
                        room)
        return user, grown
