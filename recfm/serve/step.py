"""The serving step: one new token after a cached user state, written lean.

A history that grew by one event needs one token run through the model against the cached
keys/values (:meth:`FoundationModel.encode_incremental`). At serving sizes (d = 128, two
blocks) that token costs almost no flops; what it costs is per-op overhead — module calls,
the batch dict, masks, shape checks. :class:`OneTokenStep` does the same arithmetic with
everything that does not depend on the token prepared once per model version:

* weights as contiguous (in, out) matrices for ``addmm`` on a (1, C) row, the attention
  scale 1/√Dh folded into the query rows of the fused qkv projection;
* learned position rows, or rotary cos/sin rows, looked up by index instead of built;
* single-query attention without a mask (the new token sees every cached key);
* the new key/value written into the cache's reserved buffers (``_Room``) in place.

It is exact up to float rounding: ``tests/serve/test_step.py`` holds it to
:meth:`FoundationModel.encode_incremental` (the reference path) within 1e-5. It serves
only what it covers — one token, B = 1, dense attention, a cache with room to append in
place; :meth:`OneTokenStep.supports` says so and the engine takes the reference path
otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from recfm.model.backbone import KVCache
from recfm.model.foundation import FoundationModel


class _Layer:
    """One block's weights, prepared for a (1, C) row."""

    def __init__(self, block: torch.nn.Module, scale: float) -> None:
        attn, C = block.attn, block.attn.qkv.in_features
        self.ln1 = (block.ln1.weight.detach(), block.ln1.bias.detach(), block.ln1.eps)
        self.ln2 = (block.ln2.weight.detach(), block.ln2.bias.detach(), block.ln2.eps)
        w = attn.qkv.weight.detach().clone()  # (3C, C)
        b = attn.qkv.bias.detach().clone()  # (3C,)
        w[:C] *= scale  # q · k / √Dh with the scale folded into q
        b[:C] *= scale
        self.qkv_w, self.qkv_b = w.t().contiguous(), b  # (C, 3C)
        self.proj_w = attn.proj.weight.detach().t().contiguous()  # (C, C)
        self.proj_b = attn.proj.bias.detach()
        self.fc_w = block.mlp.fc.weight.detach().t().contiguous()  # (C, F)
        self.fc_b = block.mlp.fc.bias.detach()
        self.out_w = block.mlp.out.weight.detach().t().contiguous()  # (F, C)
        self.out_b = block.mlp.out.bias.detach()


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
        self.items = item_vectors  # (N, d) input side, as encode_incremental takes it
        emb = fm.embed
        self.emb_scale = float(emb.scale)
        self.facets = [(fm.input_columns.index(name), e.weight.detach())
                       for name, e in emb.facets.items() if name in fm.input_columns]
        self.norm = (emb.norm.weight.detach(), emb.norm.bias.detach(), emb.norm.eps)
        self.pos = emb.positions.weight.detach() if emb.positions is not None else None
        self.rope = cfg.positions == "rope"
        if self.rope:  # rotary_from's angles, one row per position
            half = self.Dh // 2
            freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
            angles = torch.arange(self.max_len, dtype=torch.float32)[:, None] * freqs
            self.cos, self.sin = angles.cos(), angles.sin()  # (max_len, half)
        self.layers = [_Layer(b, 1.0 / math.sqrt(self.Dh)) for b in fm.backbone.blocks]
        lnf = fm.backbone.ln_f
        self.ln_f = (lnf.weight.detach(), lnf.bias.detach(), lnf.eps)

    def supports(self, past: KVCache, window_len: int) -> bool:
        """True if this step can extend ``past`` to ``window_len`` tokens in place."""
        room = past.room
        return (self.dense and window_len == past.length + 1 and window_len <= self.max_len
                and room is not None and room.filled == past.length
                and int(past.keys[0].size(0)) == 1)

    def _rotate(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """rotary_from for one position. x: (H, Dh)."""
        half = self.Dh // 2
        cos, sin = self.cos[pos], self.sin[pos]  # (half,)
        x1, x2 = x[:, :half], x[:, half:2 * half]
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[:, 2 * half:]], dim=1)
        return out

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
        x = F.layer_norm(x.view(1, C), (C,), *self.norm)  # (1, C)
        for i, layer in enumerate(self.layers):
            y = F.layer_norm(x, (C,), *layer.ln1)
            qkv = torch.addmm(layer.qkv_b, y, layer.qkv_w).view(3, H, Dh)  # (3, H, Dh)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (H, Dh)
            if self.rope:
                q, k = self._rotate(q, start), self._rotate(k, start)
            kbuf, vbuf = room.keys[i][0], room.values[i][0]  # (H, capacity, Dh)
            kbuf[:, start] = k
            vbuf[:, start] = v
            keys, values = kbuf[:, :start + 1], vbuf[:, :start + 1]  # (H, P + 1, Dh)
            a = F.scaled_dot_product_attention(q.view(1, H, 1, Dh), keys[None], values[None],
                                               scale=1.0)  # (1, H, 1, Dh), q pre-scaled
            x = x + torch.addmm(layer.proj_b, a.view(1, C), layer.proj_w)
            y = F.layer_norm(x, (C,), *layer.ln2)
            y = F.gelu(torch.addmm(layer.fc_b, y, layer.fc_w))  # (1, F)
            x = x + torch.addmm(layer.out_b, y, layer.out_w)
        user = F.layer_norm(x, (C,), *self.ln_f)[0]  # (C,)
        n = start + 1
        grown = KVCache([k[:, :, :n] for k in room.keys], [v[:, :, :n] for v in room.values],
                        room)
        return user, grown
