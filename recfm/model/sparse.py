"""Local + global causal attention whose memory grows linearly with sequence length.

Each query sees the ``window`` most recent positions and the first ``n_global`` ones. The
fast path runs blocks of ``window`` queries (block j attends to the globals and blocks
j - 1 and j) through SDPA with a block-local mask (FlexAttention has no CPU backward pass);
:func:`local_attention_mask` is the dense reference. The pattern: docs/guide/model.md.

Example:
    >>> q = k = v = torch.randn(1, 2, 10, 8)
    >>> valid = torch.ones(1, 10, dtype=torch.bool)
    >>> local_attention(q, k, v, valid, window=4, n_global=1).shape
    torch.Size([1, 2, 10, 8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recfm.model.attention import reference_attention


def _allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, n_global: int
             ) -> torch.Tensor:
    """True where a query at ``q_pos`` may see a key at ``k_pos`` (broadcasting)."""
    causal = k_pos <= q_pos
    local = (q_pos - k_pos) < window
    return causal & (local | (k_pos < n_global))


def local_attention_mask(valid: torch.Tensor, window: int, n_global: int = 0) -> torch.Tensor:
    """Boolean (B, 1, T, T) local + global mask (the reference path); padding and diagonal as
    in :func:`recfm.model.attention.attention_mask`, which this equals when window ≥ T."""
    B, T = valid.shape
    pos = torch.arange(T, device=valid.device)
    allowed = _allowed(pos[:, None], pos[None, :], window, n_global)  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    return (allowed & (valid[:, None, :] | eye))[:, None]  # (B, 1, T, T)


def local_extension_mask(past: int, new: int, window: int, n_global: int = 0,
                         device: torch.device | None = None) -> torch.Tensor:
    """(1, 1, new, past + new) mask for new tokens after a cache of ``past`` (incremental)."""
    q = torch.arange(new, device=device)[:, None] + past
    k = torch.arange(past + new, device=device)[None, :]
    return _allowed(q, k, window, n_global)[None, None]


def reference_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              valid: torch.Tensor, window: int, n_global: int = 0,
                              dropout: float = 0.0) -> torch.Tensor:
    """softmax(QKᵀ/√d + local mask) V with the full (T, T) mask. q, k, v: (B, H, T, Dh)."""
    return reference_attention(q, k, v, local_attention_mask(valid, window, n_global), dropout)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                    window: int, n_global: int = 0, dropout: float = 0.0) -> torch.Tensor:
    """Blocked local + global causal attention. q, k, v: (B, H, T, Dh); valid: (B, T). Equal
    to :func:`reference_local_attention` (forward and gradients), no (T, T) tensor."""
    B, H, T, Dh = q.shape
    W = max(1, min(window, T))
    n_blocks = -(-T // W)
    pad = n_blocks * W - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # (B, H, nb·W, Dh)
        valid = F.pad(valid, (0, pad), value=False)
    G = min(n_global, T)
    qb, kb, vb = (t.view(B, H, n_blocks, W, Dh) for t in (q, k, v))  # (B, H, nb, W, Dh)
    # keys of block j: [global 0..G-1] + block j-1 + block j
    k_prev = F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # (B, H, nb, W, Dh), block -1 = zeros
    v_prev = F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :-1]
    k_parts, v_parts = [k_prev, kb], [v_prev, vb]
    if G:
        k_parts.insert(0, k[:, :, None, :G].expand(B, H, n_blocks, G, Dh))
        v_parts.insert(0, v[:, :, None, :G].expand(B, H, n_blocks, G, Dh))
    keys = torch.cat(k_parts, dim=3)  # (B, H, nb, G + 2W, Dh)
    values = torch.cat(v_parts, dim=3)

    dev = q.device
    blk = torch.arange(n_blocks, device=dev)[:, None]  # (nb, 1)
    q_pos = blk * W + torch.arange(W, device=dev)[None, :]  # (nb, W)
    local = torch.arange(-W, W, device=dev)[None, :] + blk * W  # (nb, 2W): prev + current
    k_pos = torch.cat([torch.arange(G, device=dev)[None, :].expand(n_blocks, G), local],
                      dim=1)  # (nb, S)
    is_global = torch.arange(k_pos.size(1), device=dev) < G  # (S,)
    dist = q_pos[:, :, None] - k_pos[:, None, :]  # (nb, W, S)
    in_window = (dist >= 0) & (dist < W)
    # a block key counts when inside the window; a global key when causal and outside it
    # (a global key inside the window is attended once, through the window)
    allowed = torch.where(is_global[None, None, :], (dist >= 0) & ~in_window, in_window)
    allowed &= (k_pos >= 0)[:, None, :]
    key_valid = valid[:, k_pos.clamp_min(0)]  # (B, nb, S)
    eye = q_pos[:, :, None] == k_pos[:, None, :]  # (nb, W, S) (only in the current block)
    eye &= ~is_global[None, None, :]
    mask = allowed[None] & (key_valid[:, :, None, :] | eye[None])  # (B, nb, W, S)
    y = F.scaled_dot_product_attention(qb, keys, values, attn_mask=mask[:, None],
                                       dropout_p=dropout)  # (B, H, nb, W, Dh)
    return y.reshape(B, H, n_blocks * W, Dh)[:, :, :T]


@dataclass
class LocalMask:
    """What a local-attention layer needs instead of a dense mask: the padding and the
    pattern. ``Backbone`` passes it to every block (see ``ModelConfig.attention_pattern``)."""

    valid: torch.Tensor  # (B, T)
    window: int
    n_global: int = 0

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float,
               impl: str) -> torch.Tensor:
        """``impl`` ``sdpa``: the blocked fast path; ``reference``: the dense-mask one."""
        if impl == "reference":
            return reference_local_attention(q, k, v, self.valid, self.window, self.n_global,
                                             dropout)
        return local_attention(q, k, v, self.valid, self.window, self.n_global, dropout)
