"""FoundationModel: the causal transformer over interaction tokens — tensors in, tensors out.

    fm = FoundationModel.from_pretrained("runs/beauty")
    users = fm.last_hidden({"item": items})       # (B, d) user vectors of token batches
    scores = fm.score(users)                      # (B, n_items)

The hidden state after a user's last token is the user representation; item scores are
its dot product with the item table (tied to the input embeddings, or separate). The
network saves ``config.json`` and ``model.safetensors``; item ids, raw events, titles and
prompts are the pipeline's (:class:`recfm.pipeline.Recommender`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recfm import __version__
from recfm.errors import ConfigError, InputError, reading
from recfm.io import atomic_write_file, atomic_write_json
from recfm.runinfo import RUN_FILES, verify_manifest, write_manifest
from recfm.model.attention import KVCache
from recfm.model.backbone import Backbone
from recfm.model.config import ModelConfig
from recfm.model.embeddings import EventEmbedding, ItemEncoder
from recfm.model.heads import full_softmax_loss, sample_negatives, sampled_softmax_loss
from recfm.model.objectives import (
    HORIZONS,
    ITEM_FACET_HEADS,
    ObjectiveHeads,
    facet_head_sizes,
    facet_losses,
    item_facet_tensors,
    multi_label_window,
    position_repr,
    target_weights,
    window_loss,
    window_scores,
)
from recfm.model.prompt import prompted_backbone
from recfm.model.scoring import chunked_topk
from recfm.model.semantic import CodeTrie, GenerativeHead
from recfm.tokens.tokenizer import N_RESERVED_FACET, N_RESERVED_ITEMS, Tokenizer

log = logging.getLogger(__name__)

ITEM_ATTRIBUTE_COLUMNS = ("genres", "attributes", "entity_type", "language")


def facet_sizes(tok: Tokenizer, seqs: pl.DataFrame | None = None) -> dict[str, int]:
    """Embedding-table sizes of every facet the dataset actually varies in."""
    sizes = {name: len(values) + N_RESERVED_FACET for name, values in tok.facets.items()
             if values}
    cfg = tok.config
    sizes["value_bucket"] = len(tok.value_edges) + N_RESERVED_FACET
    sizes["row"] = cfg.max_row + 1 + N_RESERVED_FACET
    if tok.has_time:
        sizes["gap_bucket"] = cfg.n_gap_buckets
        sizes["hour_of_week"] = 168
    if seqs is not None:  # drop facets that never vary (e.g. no values at all)
        for name in list(sizes):
            if name not in seqs.columns or seqs[name].explode().n_unique() <= 1:
                sizes.pop(name)
    return sizes


def item_attribute_csr(items: pl.DataFrame, n_items: int
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Attributes of each item (genres, attribute ids, entity type, language) as CSR."""
    cols = [c for c in ITEM_ATTRIBUTE_COLUMNS if c in items.columns]
    if not cols:
        return torch.zeros(n_items + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), []
    parts = []
    for c in cols:
        s = items[c]
        expr = pl.col(c) if isinstance(s.dtype, pl.List) else pl.concat_list(pl.col(c))
        parts.append(expr.list.eval(pl.lit(f"{c}:") + pl.element().cast(pl.Utf8)))
    bags = items.select(pl.col("idx"), pl.concat_list(parts).list.drop_nulls().alias("bag"))
    vocab = sorted(bags["bag"].explode().drop_nulls().unique().to_list())
    code = {v: i for i, v in enumerate(vocab)}
    idx = bags["idx"].to_numpy()
    lengths = np.zeros(n_items, dtype=np.int64)
    lengths[idx] = bags["bag"].list.len().fill_null(0).to_numpy()
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    order = np.argsort(idx, kind="stable")
    values = np.array([code[v] for bag in bags["bag"].gather(order).to_list() if bag
                       for v in bag], dtype=np.int64)  # (nnz,), bag by bag in item order
    return torch.from_numpy(offsets), torch.from_numpy(values), vocab


def build_config(base: ModelConfig, tok: Tokenizer, items: pl.DataFrame,
                 seqs: pl.DataFrame | None = None) -> tuple[ModelConfig, tuple]:
    """Fill vocabulary sizes of ``base`` from a prepared dataset."""
    offsets, values, vocab = item_attribute_csr(items, tok.n_items)
    cfg = ModelConfig.from_dict({**asdict(base), "n_items": tok.n_items,
                                 "facet_sizes": facet_sizes(tok, seqs),
                                 "n_attributes": len(vocab)})
    return cfg, (offsets, values)


class FoundationModel(nn.Module):
    """Causal transformer over interaction tokens (see module docstring)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None = None,
                 items: pl.DataFrame | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_encoder = ItemEncoder(cfg)
        self.embed = EventEmbedding(cfg)
        self.backbone = Backbone(cfg)
        self.output_items = None
        if not cfg.tied_embeddings:
            self.output_items = nn.Embedding(cfg.n_items, cfg.d_model)
            nn.init.normal_(self.output_items.weight, std=0.02)
        # log q(item) for sampled softmax: item frequency in the training data (smoothed).
        self.register_buffer("log_q", torch.full((cfg.n_items,), -float(np.log(max(cfg.n_items, 1)))))
        self.input_columns = ["item"] + sorted(self.embed.facets.keys())
        self._init_objectives(cfg, tokenizer, items)
        self.generative = None  # semantic ids: the next item's codes, level by level
        if cfg.semantic_sizes:
            self.generative = GenerativeHead(cfg.d_model, cfg.semantic_sizes)
            self.register_buffer("item_codes", torch.full(
                (cfg.n_items, len(cfg.semantic_sizes)), -1, dtype=torch.long))
        self._tries: dict[Any, CodeTrie] = {}
        if self.context_len > cfg.max_len and cfg.positions == "learned":
            raise ConfigError(f"inference_len {cfg.inference_len} > max_len {cfg.max_len} needs "
                             "positions = 'rope' or 'none' (learned positions end at max_len)")

    @property
    def context_len(self) -> int:
        """History tokens read at inference: ``inference_len``, or ``max_len``."""
        return self.cfg.inference_len or self.cfg.max_len

    def _init_objectives(self, cfg: ModelConfig, tok: Tokenizer | None,
                         items: pl.DataFrame | None) -> None:
        """Heads beyond next-item, and their item-facet and action-weight tables: buffers
        rebuilt from the vocabularies on load (non-persistent), so never stale or missing."""
        obj = cfg.objectives
        self.heads = ObjectiveHeads(cfg, facet_head_sizes(cfg, tok))
        if obj.hierarchical and "entity_type" not in self.heads.facets:
            raise ValueError("hierarchical prediction needs the entity_type facet head "
                             "(objectives.facet_heads = { entity_type = 0.2 })")
        entity, genres = item_facet_tensors(items, tok, cfg.n_items)
        self.register_buffer("item_entity", entity, persistent=False)
        self.register_buffer("item_genres", genres, persistent=False)
        actions = tok.facets.get("action", []) if tok else []
        unknown = set(obj.action_weights) - set(actions)
        if unknown and actions:
            raise ValueError(f"action_weights: no action {sorted(unknown)[0]!r} in this dataset "
                             f"(actions: {', '.join(actions)})")
        weights = [1.0, 1.0] + [obj.action_weights.get(a, 1.0) for a in actions]
        self.register_buffer("action_weight", torch.tensor(weights), persistent=False)
        edges = tok.value_edges if tok else []
        self.value_ref = float(edges[len(edges) // 2]) if edges else 1.0

    @property
    def train_columns(self) -> list[str]:
        """Token columns training needs: the inputs plus what the objectives read."""
        obj = self.cfg.objectives
        extra = [n for n in obj.facet_heads if n not in ITEM_FACET_HEADS]
        if obj.action_weights:
            extra.append("action")
        if obj.value_weighting != "none":
            extra.append("value")
        if obj.window_events and obj.window_days > 0:
            extra.append("ts")
        return self.input_columns + [c for c in dict.fromkeys(extra)
                                     if c not in self.input_columns]

    # ------------------------------------------------------------------ tensors in, out

    def item_table(self) -> torch.Tensor:
        """(n_items, d) output item vectors used for scoring."""
        if self.output_items is not None:
            return self.output_items.weight
        return self.item_encoder.table()

    def forward(self, batch: dict[str, torch.Tensor], all_layers: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        """Hidden states (B, T, d) of right-padded token batches (``item`` 0 = padding)."""
        items = batch["item"]  # (B, T)
        valid = items > 0
        vecs = self.item_encoder(items)  # (B, T, d)
        x = self.embed(batch, vecs)
        if "soft_prompt" in batch:  # (k, d) learned tokens before the history
            return prompted_backbone(self.backbone, x, valid, batch["soft_prompt"], all_layers)
        return self.backbone(x, valid, all_layers=all_layers)

    def positions(self, batch: dict[str, torch.Tensor], mode: str | None = None
                  ) -> torch.Tensor:
        """(B, T) → (B, T, d) user representation at every position (``cfg.user_repr``)."""
        mode = mode or self.cfg.user_repr
        valid = batch["item"] > 0
        if mode in ("layer_mean", "layer_mix"):
            layers = self(batch, all_layers=True)
        else:
            layers = [self(batch)]
        return position_repr(layers, valid, mode, self.cfg.repr_n_last, self.heads)

    def _item_loss(self, h: torch.Tensor, target: torch.Tensor, table: torch.Tensor | None,
                   weights: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        """Next-item style loss of states h (N, d) against items (N,); ``table`` None: built
        from only the rows the sampled loss needs."""
        cfg = self.cfg
        if cfg.loss == "full":
            bias = self.hierarchy_bias(h)
            return full_softmax_loss(h, target, table, cfg.label_smoothing, cfg.temperature,
                                     weights, bias, cfg.loss_chunk)
        negs = sample_negatives(cfg.n_negatives, target, cfg.n_items, cfg.negatives, generator,
                                self.log_q)
        log_q = self._sampler_log_q(target) if cfg.logq_correction else None
        if table is None:  # only the rows of the targets and negatives (large catalogs)
            uniq, inv = torch.unique(torch.cat([target, negs]), return_inverse=True)
            table = (self.output_items.weight[uniq] if self.output_items is not None
                     else self.item_encoder.rows(uniq))  # (U, d)
            target, negs = inv[:len(target)], inv[len(target):]
            log_q = log_q[uniq] if log_q is not None else None
        return sampled_softmax_loss(h, target, table, negs, log_q, cfg.label_smoothing,
                                    cfg.temperature, weights)

    def _loss_table(self) -> torch.Tensor | None:
        """The item table the loss scores against, or None when every term reads only its
        targets' and negatives' rows (sampled softmax, no future-window head, no content)."""
        if (self.cfg.loss == "sampled" and self.heads.window is None
                and not self.item_encoder.use_content):
            return None
        return self.item_table()

    def hierarchy_bias(self, h: torch.Tensor) -> torch.Tensor | None:
        """log p(entity type of each item | h), (N, n_items - reserved), when hierarchical."""
        if not self.cfg.objectives.hierarchical:
            return None
        logp = torch.log_softmax(self.heads.facets["entity_type"](h), dim=-1)  # (N, types)
        return logp[:, self.item_entity[N_RESERVED_ITEMS:]]

    def loss(self, batch: dict[str, torch.Tensor],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Weighted sum of the configured objectives; the last call's components (floats)
        are kept in ``self.last_losses``."""
        cfg, obj = self.cfg, self.cfg.objectives
        h = self.positions(batch)  # (B, T, d)
        B, T, _ = h.shape
        table = self._loss_table()
        target = batch["target"]  # (B, T)
        future = batch.get("future_item")  # (B, T + 1) or None
        w_all = None
        if future is not None:
            w_all = target_weights(cfg, self.action_weight if obj.action_weights else None,
                                   batch.get("future_action"), batch.get("future_value"),
                                   self.value_ref)  # (B, T + 1) or None
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=h.device)

        keep = target > 0
        w_next = w_all[:, 1:][keep] if w_all is not None else batch["weight"][keep] \
            if "weight" in batch else None
        if obj.next_item_weight > 0:
            parts["next_item"] = self._item_loss(h[keep], target[keep], table, w_next, generator)
            total = total + obj.next_item_weight * parts["next_item"]

        if self.generative is not None and obj.generative_weight > 0:
            gen = self._generative_loss(h[keep], target[keep], w_next)
            if gen is not None:
                parts["generative"] = gen
                total = total + obj.generative_weight * gen

        if self.heads.facets:
            targets = {}
            for name in self.heads.facets:
                if name == "entity_type":
                    targets[name] = self.item_entity[target[keep]]
                elif name == "genres":
                    targets[name] = self.item_genres[target[keep]]
                else:
                    targets[name] = batch[f"future_{name}"][:, 1:][keep]
            for name, value in facet_losses(self.heads, h[keep], targets).items():
                parts[f"facet_{name}"] = value
                total = total + obj.facet_heads[name] * value

        if len(self.heads.multi) and future is not None:
            multi = []
            for j, head in enumerate(self.heads.multi, start=2):
                if T + 1 - j <= 0:
                    break
                tj = torch.zeros_like(target)
                tj[:, :T + 1 - j] = future[:, j:]
                kj = (tj > 0) & (batch["item"] > 0)
                if not kj.any():
                    continue
                wj = None
                if w_all is not None:
                    wfull = torch.zeros_like(target, dtype=w_all.dtype)
                    wfull[:, :T + 1 - j] = w_all[:, j:]
                    wj = wfull[kj]
                multi.append(self._item_loss(head(h[kj]), tj[kj], table, wj, generator))
            if multi:
                parts["multi_token"] = torch.stack(multi).mean()
                total = total + obj.multi_token_weight * parts["multi_token"]

        if self.heads.window is not None and future is not None:
            tgt, mask = multi_label_window(future, batch.get("future_ts"), obj.window_events,
                                           obj.window_days)  # (B, T, N)
            rows = mask.any(-1)
            if rows.any():
                ww = None
                if w_all is not None:
                    pos = (torch.arange(T, device=h.device)[:, None]
                           + torch.arange(1, obj.window_events + 1, device=h.device)[None])
                    ww = w_all[:, pos.clamp(max=T)][rows]
                parts["window"] = window_loss(self.heads.window(h[rows]), table, tgt[rows],
                                              mask[rows], ww)
                total = total + obj.window_weight * parts["window"]
        self.last_losses = {k: float(v.detach()) for k, v in parts.items()}
        return total

    def _generative_loss(self, h: torch.Tensor, target: torch.Tensor,
                         w: torch.Tensor | None) -> torch.Tensor | None:
        """The generative head's loss on states h (N, d) for target items (N,) that have
        codes, over the trie of all items; None when none has."""
        codes = self.item_codes[target]  # (N, L)
        coded = codes[:, 0] >= 0
        if not coded.any():
            return None
        return self.generative.loss(h[coded], codes[coded], w[coded] if w is not None else None,
                                    trie=self.code_trie())

    def _sampler_log_q(self, targets: torch.Tensor) -> torch.Tensor:
        """log of each item's probability under the negative sampler in use."""
        uniform = torch.full_like(self.log_q, -float(np.log(self.cfg.n_items - N_RESERVED_ITEMS)))
        if self.cfg.negatives == "uniform":
            return uniform
        if self.cfg.negatives in ("in_batch", "popularity"):  # both ~ training frequency
            return self.log_q
        return torch.logaddexp(uniform, self.log_q) - float(np.log(2.0))

    def last_hidden(self, batch: dict[str, torch.Tensor], pooling: str | None = None
                    ) -> torch.Tensor:
        """(B, d) user vectors of right-padded histories. ``pooling``: a ``user_repr`` at the
        last position, or ``mean`` over the history; default: the one trained with."""
        valid = batch["item"] > 0
        lengths = valid.sum(1).clamp_min(1)
        if pooling == "mean":
            h = self(batch)  # (B, T, d)
            w = valid.float()
            return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        h = self.positions(batch, pooling)  # (B, T, d)
        return h[torch.arange(h.size(0)), lengths - 1]

    def score_items(self, users: torch.Tensor, start: int, end: int,
                    table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, end - start) scores of items start..end-1 (a chunk of :meth:`score`);
        ``table``: :meth:`item_table`, precomputed."""
        table = self.item_table() if table is None else table
        scores = users @ table[start:end].T  # (B, C)
        if self.cfg.objectives.hierarchical:
            logp = torch.log_softmax(self.heads.facets["entity_type"](users), dim=-1)
            scores = scores + logp[:, self.item_entity[start:end]]
        lo = min(max(N_RESERVED_ITEMS - start, 0), end - start)
        scores[:, :lo] = float("-inf")
        return scores

    @torch.no_grad()
    def top_items(self, users: torch.Tensor, k: int = 10, chunk: int = 65536,
                  seen: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.topk(self.score(users), k)`` for users (B, d), ``chunk`` items at a time
        (no (B, n_items) matrix); ``seen``: (row, item) pairs to exclude."""
        table = self.item_table()
        return chunked_topk(lambda s, e: self.score_items(users, s, e, table), self.cfg.n_items,
                            k, chunk, seen)

    def set_semantic_ids(self, codes: torch.Tensor) -> None:
        """(n_items, L) codes of every item (-1: none, e.g. reserved rows) for the head."""
        if self.generative is None:
            raise ValueError("this model has no generative head (semantic_sizes is empty)")
        if codes.shape != self.item_codes.shape:
            raise ValueError(f"semantic ids of shape {tuple(codes.shape)}, expected "
                             f"{tuple(self.item_codes.shape)}")
        self.item_codes = codes.to(self.item_codes)
        self._tries.clear()

    def code_trie(self, eligible: torch.Tensor | None = None) -> CodeTrie:
        """The trie of the items' code tuples (all, or the ``eligible`` (n_items,) mask's),
        kept for the codes and mask it was built from."""
        key = None if eligible is None else eligible.cpu().numpy().tobytes()
        trie = self._tries.get(key)
        if trie is None:
            trie = CodeTrie(self.item_codes, self.cfg.semantic_sizes, N_RESERVED_ITEMS,
                            eligible)
            self._tries = {key: trie} if len(self._tries) > 8 else {**self._tries, key: trie}
        return trie

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._tries.clear()  # item_codes may change in place
        return super().load_state_dict(state_dict, strict, assign)

    @torch.no_grad()
    def generative_top(self, users: torch.Tensor, k: int = 10,
                       exclude: torch.Tensor | None = None, beam: int | None = None,
                       eligible: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generative retrieval: (B, k) items and log-probabilities decoded code by code from
        users (B, d) by a beam search over the trie of (``eligible``) items; -1 / -inf pad.
        ``exclude``: (B, n_items) bool, items never returned (e.g. seen)."""
        if self.generative is None:
            raise ValueError("this model has no generative head: train it with semantic ids "
                             "(recfm train --semantic-ids RUN)")
        return self.generative.beam_search(users, self.code_trie(eligible), k, beam, exclude)

    def score(self, users: torch.Tensor, horizon: str = "next") -> torch.Tensor:
        """(B, n_items) scores; reserved ids get -inf. ``horizon``: ``next`` item, or the
        items of the next events (``window``: :func:`~recfm.model.objectives.window_scores`);
        ``rollout`` decodes histories: :meth:`recfm.pipeline.Recommender.recommend`."""
        if horizon != "next":
            if horizon not in HORIZONS:
                raise ValueError(f"unknown horizon {horizon!r}: expected "
                                 f"{', '.join(HORIZONS)}")
            if horizon == "rollout":
                raise ValueError("the rollout horizon ranks from histories, not user vectors: "
                                 "use recommend(…, horizon='rollout') or "
                                 "recfm.model.objectives.rollout_scores")
            return window_scores(self, users)
        scores = users @ self.item_table().T
        bias = self.hierarchy_bias(users)
        if bias is not None:
            scores[:, N_RESERVED_ITEMS:] += bias
        scores[:, :N_RESERVED_ITEMS] = float("-inf")
        return scores

    # ------------------------------------------------------------------ incremental encoding

    @torch.no_grad()
    def input_item_table(self) -> torch.Tensor:
        """(n_items, d) input-side item vectors (id ⊕ attributes), constant in eval mode:
        serving computes it once for :meth:`encode_incremental`."""
        return self.item_encoder.table().detach()

    @torch.no_grad()
    def encode_incremental(self, batch: dict[str, torch.Tensor], past: KVCache | None = None,
                           item_vectors: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, KVCache]:
        """(B, d) user vectors (last token) and every layer's keys/values, reusing ``past``.

        ``batch``: right-padded (B, T) whole context windows. ``past``: the cache of their
        first P tokens; then rows must be unpadded and only tokens P .. T-1 are run (exact:
        the model is causal). Positions count from the window start, so a cache is reusable
        only while that start stays put. ``item_vectors``: :meth:`input_item_table`.

        Example:
            >>> u, cache = fm.encode_incremental(batch_of_t_tokens)            # doctest: +SKIP
            >>> u2, cache = fm.encode_incremental(batch_of_t_plus_1, cache)   # doctest: +SKIP
        """
        if self.training:  # eval() walks every submodule: not on each call
            self.eval()
        items = batch["item"]  # (B, T)
        B, T = items.shape
        if T > self.cfg.max_len:
            raise ValueError(f"a window of {T} tokens is longer than the context "
                             f"({self.cfg.max_len}); cut histories to their last max_len tokens")
        P = past.length if past is not None else 0
        if past is not None and (P >= T or (items == 0).any()):
            raise ValueError(f"encode_incremental: a cache of {P} tokens extends only unpadded "
                             f"windows longer than it; got {T} tokens")
        if P:  # every embedding is per token: only the new ones are computed
            batch = {k: v[:, P:] if v.dim() >= 2 else v for k, v in batch.items()}
            items = batch["item"]  # (B, T - P)
        vecs = self.item_encoder(items, item_vectors)  # (B, T - P, d)
        x = self.embed(batch, vecs, start=P)  # (B, T - P, d)
        valid = items > 0
        # only the last real token's output is needed: the last block skips the others
        h, cache = self.backbone.extend(x, valid if past is None else None, past,
                                        last_only=True)
        return h[:, 0], cache  # (B, d)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``, each atomically
        (the run's vocabularies: :meth:`recfm.pipeline.Recommender.save_pretrained`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write_file(path / "model.safetensors", lambda tmp: save_file(
            state, str(tmp), metadata={"recfm_version": __version__}))
        atomic_write_json(path / "config.json", {"model": asdict(self.cfg), **(extra or {})})
        write_manifest(path, ("config.json", "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "model.safetensors",
                        verify: bool = True) -> "FoundationModel":
        """The network of a run directory (its vocabularies build the objective tables);
        ``verify``: check its files against the run's manifest first."""
        if verify:
            verify_manifest(Path(path), (*RUN_FILES, weights))
        tok, items = read_vocabulary(Path(path))
        return cls.load(path, tok, items, weights)

    @classmethod
    def load(cls, path: str | Path, tok: Tokenizer | None, items: pl.DataFrame | None,
             weights: str = "model.safetensors") -> "FoundationModel":
        """``config.json`` + ``weights`` of ``path``, with the run's vocabularies given."""
        path = Path(path)
        for name in ("config.json", weights):
            if not (path / name).is_file():
                raise InputError(str(path / name), None, None, "a recfm run file",
                                 "nothing at that path")
        with reading(path / "config.json", "a run's config.json with a [model] table"):
            cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text())["model"],
                                        str(path / "config.json"))
            model = cls(cfg, tok, items)
        with reading(path / weights, "safetensors weights of the model config.json describes"):
            state = load_file(str(path / weights))
            model.item_encoder.set_attributes(state["item_encoder.attr_offsets"],
                                              state["item_encoder.attr_values"])
            model.load_state_dict(state)
        model.eval()
        return model


def read_vocabulary(path: Path) -> tuple[Tokenizer | None, pl.DataFrame | None]:
    """The tokenizer and item catalog saved in a run directory (None where absent)."""
    items = None
    if (path / "items.parquet").is_file():
        with reading(path / "items.parquet", "a Parquet item catalog with an item_id column"):
            items = pl.read_parquet(path / "items.parquet")
            items["item_id"]
    tok = None
    if (path / "tokenizer.json").is_file() and items is not None:
        tok = Tokenizer.load(path / "tokenizer.json", items["item_id"].to_list())
    return tok, items
