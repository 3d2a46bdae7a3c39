"""Soft prompts as the network sees them: the forward pass over [prompt; history].

An ``input`` prompt (k, d) is prepended to the event embeddings (Lester et al. 2021); a
``deep`` one (2, n_layers, k, d) is the KV cache k prompt events would leave (prefix tuning,
Li & Liang 2021). Training prompts: :mod:`recfm.consume.prompt`; their files:
:mod:`recfm.pipeline.prompts`.
"""

from __future__ import annotations

import torch

from recfm.errors import RecfmError
from recfm.model.attention import KVCache
from recfm.model.backbone import Backbone


def prompted_backbone(backbone: Backbone, x: torch.Tensor, valid: torch.Tensor,
                      prompt: torch.Tensor, all_layers: bool = False
                      ) -> torch.Tensor | list[torch.Tensor]:
    """``backbone`` over [prompt; x], as ``backbone(x, valid)`` returns it: (B, T, d) history
    positions only. x: (B, T, d), valid: (B, T); ``prompt``: (k, d) input tokens or
    (2, n_layers, k, d) deep ones (:func:`prefix_backbone`)."""
    if prompt.dim() == 4:
        if all_layers:
            raise RecfmError("deep prompts give the last layer only: use a model whose "
                             "user_repr is last, mean_last, attention or last_attention")
        return prefix_backbone(backbone, x, prompt)
    B, T, d = x.shape
    k = prompt.size(0)
    p = prompt.to(x.dtype)[None].expand(B, k, d)  # (B, k, d)
    xp = torch.cat([p, x], dim=1)  # (B, k + T, d)
    vp = torch.cat([valid.new_ones(B, k), valid], dim=1)  # (B, k + T)
    out = backbone(xp, vp, all_layers=all_layers)
    if all_layers:
        return [h[:, k:] for h in out]
    return out[:, k:]  # (B, T, d)


def prefix_backbone(backbone: Backbone, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """``backbone`` over x (B, T, d) after k *deep* prompt tokens: learned keys and values.

    prompt: (2, n_layers, k, d), keys ``prompt[0, l]`` and values ``prompt[1, l]`` of layer
    l as a KV cache holds them (prefix tuning; Liu et al. 2022, P-Tuning v2). The history
    runs after that cache and sees all of it; right padding comes after every real token.
    """
    B, T, d = x.shape
    _, L, k, _ = prompt.shape
    H = backbone.blocks[0].attn.n_heads
    heads = prompt.to(x.dtype).view(2, L, k, H, d // H).transpose(2, 3)  # (2, L, H, k, Dh)
    past = KVCache([heads[0, i][None].expand(B, H, k, d // H) for i in range(L)],
                   [heads[1, i][None].expand(B, H, k, d // H) for i in range(L)])
    out, _ = backbone.extend(x, None, past)
    return out  # (B, T, d)


def prefix_from_tokens(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """(k, d) event embeddings → (2, n_layers, k, d): the keys and values they leave in a
    KV cache, i.e. the deep prompt equivalent to a history of those k events."""
    with torch.no_grad():
        _, cache = backbone.extend(x[None])
    k, d = x.shape
    keys = torch.stack([t[0].transpose(0, 1).reshape(k, d) for t in cache.keys])  # (L, k, d)
    values = torch.stack([t[0].transpose(0, 1).reshape(k, d) for t in cache.values])
    return torch.stack([keys, values])
