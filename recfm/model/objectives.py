"""Objectives beyond the next item, and user representations (the options:
:class:`recfm.model.config.ObjectiveConfig`, ``ModelConfig.user_repr``).

User representations are computed at every position, so the model is trained with the
representation it is served with. What each objective does: docs/guide/model.md.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from recfm.model.config import ModelConfig
from recfm.tokens.tokenizer import FACET_UNK, N_RESERVED_FACET, N_RESERVED_ITEMS, Tokenizer

ITEM_FACET_HEADS = ("entity_type", "genres")


def item_facet_tensors(items: pl.DataFrame | None, tok: Tokenizer | None, n_items: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: entity-type code (n_items,) and genre multi-hot (n_items, n_genres)."""
    entity = torch.zeros(n_items, dtype=torch.long)
    n_genres = len(tok.item_facets.get("genres", [])) if tok else 0
    genres = torch.zeros(n_items, max(n_genres, 1))
    if items is None or tok is None:
        return entity, genres
    idx = items["idx"].to_numpy().copy()
    if "entity_type" in items.columns and "entity_type" in tok.item_facets:
        code = {v: N_RESERVED_FACET + i for i, v in enumerate(tok.item_facets["entity_type"])}
        entity[torch.from_numpy(idx)] = torch.tensor(
            [code.get(v, FACET_UNK) for v in items["entity_type"].to_list()])
    if n_genres and "genres" in items.columns:
        gcode = {v: i for i, v in enumerate(tok.item_facets["genres"])}
        for row, gs in zip(idx, items["genres"].to_list()):
            for g in gs or []:
                if g in gcode:
                    genres[row, gcode[g]] = 1.0
    return entity, genres


def facet_head_sizes(cfg: ModelConfig, tok: Tokenizer | None) -> dict[str, int]:
    """Output size of every configured facet head (unknown facets are an error)."""
    sizes = {}
    for name in cfg.objectives.facet_heads:
        if name == "entity_type":
            n = len(tok.item_facets.get("entity_type", [])) if tok else 0
            sizes[name] = n + N_RESERVED_FACET
        elif name == "genres":
            sizes[name] = len(tok.item_facets.get("genres", [])) if tok else 0
        elif name in cfg.facet_sizes:
            sizes[name] = cfg.facet_sizes[name]
        else:
            raise ValueError(f"facet head {name!r}: the dataset has no such facet "
                             f"(has {', '.join(sorted(cfg.facet_sizes)) or 'none'}; "
                             "entity_type / genres need item metadata)")
        if sizes[name] <= 0:
            raise ValueError(f"facet head {name!r}: no values in this dataset")
    return sizes


class Residual(nn.Module):
    """h + W h, W zero-initialised: starts as the identity (the next-item head)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.lin(h)


class ObjectiveHeads(nn.Module):
    """Every head beyond the shared next-item scoring, created only when configured."""

    def __init__(self, cfg: ModelConfig, head_sizes: dict[str, int]) -> None:
        super().__init__()
        d, obj = cfg.d_model, cfg.objectives
        self.facets = nn.ModuleDict({n: nn.Linear(d, k) for n, k in sorted(head_sizes.items())})
        self.multi = nn.ModuleList(Residual(d) for _ in range(max(obj.multi_token_k - 1, 0)))
        self.window = Residual(d) if obj.window_events > 0 else None
        self.pool_query = (nn.Parameter(torch.zeros(d))
                           if cfg.user_repr in ("attention", "last_attention") else None)
        self.pool_gate = (nn.Parameter(torch.zeros(d)) if cfg.user_repr == "last_attention"
                          else None)
        """last_attention: per-dimension weight of the pooled history beside the last state,
        zero at first so the model starts as ``last`` (figures: benchmarks/RESULTS.md)."""
        self.layer_logits = (nn.Parameter(torch.zeros(cfg.n_layers))
                             if cfg.user_repr == "layer_mix" else None)


def position_repr(layers: list[torch.Tensor], valid: torch.Tensor, mode: str, n_last: int,
                  heads: ObjectiveHeads | None) -> torch.Tensor:
    """(B, T, d) user representation at every position from each layer's (B, T, d) output;
    every mode is causal (position t sees positions ≤ t)."""
    h = layers[-1]
    if mode == "last":
        return h
    if mode in ("layer_mean", "layer_mix"):
        stack = torch.stack(layers)  # (L, B, T, d)
        if mode == "layer_mean":
            return stack.mean(0)
        if heads is None or heads.layer_logits is None:
            raise ValueError("layer_mix needs a model trained with user_repr='layer_mix'")
        w = torch.softmax(heads.layer_logits, 0)  # (L,)
        return (w[:, None, None, None] * stack).sum(0)
    T = h.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()  # (T, T)
    keys = causal[None] & valid[:, None, :]  # (B, T, T): query t, key s
    if mode == "mean_last":
        pos = torch.arange(T, device=h.device)
        recent = (pos[None, :] > pos[:, None] - n_last)  # s > t - n
        w = (keys & recent[None]).float()
        return (w @ h) / w.sum(-1, keepdim=True).clamp_min(1)
    if mode in ("attention", "last_attention"):
        if heads is None or heads.pool_query is None:
            raise ValueError(f"{mode} pooling needs a model trained with user_repr={mode!r}")
        s = (h @ heads.pool_query) / math.sqrt(h.size(-1))  # (B, T)
        s = s[:, None, :].expand(-1, T, -1).masked_fill(~keys, float("-inf"))
        eye = torch.eye(T, dtype=torch.bool, device=h.device)[None]
        s = s.masked_fill(~keys.any(-1, keepdim=True) & eye, 0.0)  # padded rows: self
        pooled = torch.softmax(s, -1) @ h  # (B, T, d)
        if mode == "attention":
            return pooled
        return h + heads.pool_gate * pooled  # the last state keeps what the next item needs
    raise ValueError(f"unknown user representation {mode!r}: expected last, mean_last, "
                     "attention, last_attention, layer_mean or layer_mix")


def target_weights(cfg: ModelConfig, action_weight: torch.Tensor | None,
                   actions: torch.Tensor | None, values: torch.Tensor | None,
                   value_ref: float) -> torch.Tensor | None:
    """Weight of each target token (same shape as ``actions``/``values``), or None."""
    obj = cfg.objectives
    w = None
    if action_weight is not None and actions is not None:
        w = action_weight[actions.clamp(0, len(action_weight) - 1)]
    if obj.value_weighting != "none" and values is not None:
        v = values.float().clamp_min(0)
        vw = v / value_ref if obj.value_weighting == "linear" else (
            torch.log1p(v) / math.log1p(value_ref))
        vw = vw.clamp(0.1, 3.0)
        w = vw if w is None else w * vw
    return w


def multi_label_window(future_items: torch.Tensor, future_ts: torch.Tensor | None,
                       n_events: int, days: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (B, T, N) of each input position's future window (tokens t+1 .. t+N) and
    their mask, from ``future_items`` (B, T + 1) whole spans."""
    B, T1 = future_items.shape
    T = T1 - 1
    offs = torch.arange(1, n_events + 1, device=future_items.device)  # (N,)
    pos = torch.arange(T, device=future_items.device)[:, None] + offs[None, :]  # (T, N)
    inside = pos < T1
    idx = pos.clamp(max=T1 - 1)
    tgt = future_items[:, idx]  # (B, T, N)
    mask = inside[None] & (tgt > 0) & (future_items[:, :T, None] > 0)
    if future_ts is not None and days > 0:
        dt = future_ts[:, idx] - future_ts[:, :T, None]
        mask = mask & (dt <= days * 86400)
    return tgt, mask


def window_loss(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                mask: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over window targets of -log softmax. h: (N, d); targets, mask: (N, W)."""
    logp = torch.log_softmax(h @ table[N_RESERVED_ITEMS:].T, dim=-1)  # (N, V - reserved)
    t = (targets - N_RESERVED_ITEMS).clamp_min(0)
    nll = -logp.gather(1, t)  # (N, W)
    w = mask.float() if weights is None else mask.float() * weights
    return (nll * w).sum() / w.sum().clamp_min(1e-12)


def facet_losses(heads: ObjectiveHeads, h: torch.Tensor, targets: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """Cross-entropy per categorical head (code 0 ignored); BCE for the genre multi-hot."""
    out = {}
    for name, head in heads.facets.items():
        logits = head(h)
        tgt = targets[name]
        if name == "genres":
            has = tgt.sum(-1) > 0
            if has.any():
                out[name] = F.binary_cross_entropy_with_logits(logits[has], tgt[has])
        else:
            keep = tgt > 0
            if keep.any():
                out[name] = F.cross_entropy(logits[keep], tgt[keep])
    return out


def majority_accuracy(train_targets: np.ndarray, eval_targets: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent training class."""
    vals, counts = np.unique(train_targets, return_counts=True)
    return float((eval_targets == vals[counts.argmax()]).mean()) if len(vals) else 0.0


HORIZONS = ("next", "window", "rollout")


def window_head(heads: ObjectiveHeads) -> str:
    """The head that ranks a user's next events (``horizon="window"``): ``window`` (the
    future-window head), else ``multi`` (next-item + multi-token mixture), else ``next``."""
    if heads.window is not None:
        return "window"
    if len(heads.multi):
        return "multi"
    return "next"


def window_scores(model, users: torch.Tensor) -> torch.Tensor:
    """(B, n_items) scores of the items of the user's next events; reserved ids get -inf.

    Future-window head: its logits. Multi-token heads: log of the mean over j = 1..k of
    p(item at t + j), the log expected count among the next k. Neither: next-item scores.
    """
    head = window_head(model.heads)
    if head == "next":
        return model.score(users)
    table = model.item_table()
    if head == "window":
        scores = model.heads.window(users) @ table.T  # (B, V)
    else:
        logp = [torch.log_softmax(model.score(users)[:, N_RESERVED_ITEMS:], -1)]
        for proj in model.heads.multi:  # offsets 2..k
            logp.append(torch.log_softmax(proj(users) @ table[N_RESERVED_ITEMS:].T, -1))
        mix = torch.logsumexp(torch.stack(logp), 0) - math.log(len(logp))  # (B, V - reserved)
        scores = torch.cat([torch.zeros(len(users), N_RESERVED_ITEMS), mix], 1)
    scores[:, :N_RESERVED_ITEMS] = float("-inf")
    return scores


def _append_token(batch: dict[str, torch.Tensor], parent: torch.Tensor, items: torch.Tensor,
                  max_len: int) -> dict[str, torch.Tensor]:
    """Rows ``parent`` (N,) of a right-padded batch plus one token: item ``items`` (N,), other
    columns copied from the row's last token; a row already ``max_len`` long drops its first."""
    lengths = (batch["item"] > 0).sum(1)[parent]  # (N,)
    rows = torch.arange(len(parent))
    out = {}
    for name, v in batch.items():
        v = v[parent]
        ext = torch.cat([v, torch.zeros(len(v), 1, dtype=v.dtype)], 1)  # (N, T + 1)
        ext[rows, lengths] = v[rows, (lengths - 1).clamp_min(0)]
        out[name] = ext
    out["item"][rows, lengths] = items
    if out["item"].size(1) > max_len:
        full = lengths + 1 > max_len
        for name, v in out.items():
            v[full] = torch.roll(v[full], -1, 1)
            v[full, -1] = 0
        out = {name: v[:, :max_len] for name, v in out.items()}
    return out


@torch.no_grad()
def rollout_scores(model, batch: dict[str, torch.Tensor], exclude: torch.Tensor,
                   depth: int = 2, beam: int = 10) -> torch.Tensor:
    """(B, n_items) expected count of each item among the user's next ``depth`` items, by
    decoding the model's own next-item distribution: the ``beam`` likeliest continuations,
    each appended as a token and scored again (depth 1: the next-item distribution).

    ``batch``: right-padded (B, T) histories; ``exclude``: (B, n_items) bool, items that
    cannot come (the history); an item appended on a path is excluded on it after that.
    Pays where one title follows another (franchises; figures: benchmarks/RESULTS.md).
    """
    if depth < 1 or beam < 1:
        raise ValueError(f"rollout needs depth >= 1 and beam >= 1; got {depth}, {beam}")
    B, V = exclude.shape
    max_len = model.context_len

    def next_probs(b: dict[str, torch.Tensor], excl: torch.Tensor) -> torch.Tensor:
        s = model.score(model.last_hidden(b))  # (N, V), a new tensor
        s[excl] = float("-inf")
        return torch.softmax(s, -1)

    p = next_probs(batch, exclude)  # (B, V)
    count = p.clone()
    state, excl = batch, exclude
    path_w = torch.ones(B, 1)  # (B, paths): probability of each path, normalised
    for _ in range(depth - 1):
        n_paths = path_w.size(1)
        joint = (path_w[..., None] * p.view(B, n_paths, V)).view(B, -1)  # (B, paths·V)
        w, flat = torch.topk(joint, min(beam, joint.size(1)), 1)  # (B, beam)
        path_w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
        parent = (torch.arange(B)[:, None] * n_paths + flat // V).reshape(-1)  # (B·beam,)
        item = (flat % V).reshape(-1)
        state = _append_token(state, parent, item, max_len)
        excl = excl[parent].clone()
        excl[torch.arange(len(item)), item] = True
        p = next_probs(state, excl)  # (B·beam, V)
        count += (path_w[..., None] * p.view(B, -1, V)).sum(1)
    count[:, :N_RESERVED_ITEMS] = float("-inf")
    return count
