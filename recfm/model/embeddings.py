"""Event embedding = item (id ⊕ attribute bag) + facet embeddings + time + position.

Every facet the dataset has (action, value bucket, device, country, surface, row, any
extra categorical, gap bucket, hour of week) gets a small embedding table; they are summed
with the item representation. Facets a dataset lacks are simply absent from
``ModelConfig.facet_sizes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recfm.model.config import ModelConfig
from recfm.model.dropout import Dropout

TIME_FACETS = ("gap_bucket", "hour_of_week")


class ItemEncoder(nn.Module):
    """Item vectors: id embedding + mean of its attribute embeddings, combined with its
    projected content vector when the model has content.

    Attributes (genres, S3-Rec attribute ids, entity type, language) are CSR buffers
    ``attr_offsets`` (n_items + 1,) and ``attr_values`` (nnz,). Content: a fixed
    (n_items, content_dim) buffer through ``content_proj``, summed with or gated against the
    id embedding, so a never-trained item (zero id) is its content (id dropout teaches this).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ids = nn.Embedding(cfg.n_items, cfg.d_model, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)
        with torch.no_grad():
            self.ids.weight[0].zero_()
        self.use_attrs = cfg.use_item_attributes and cfg.n_attributes > 0
        if self.use_attrs:
            self.attrs = nn.EmbeddingBag(cfg.n_attributes, cfg.d_model, mode="mean")
            nn.init.normal_(self.attrs.weight, std=0.02)
        self.register_buffer("attr_offsets", torch.zeros(cfg.n_items + 1, dtype=torch.long))
        self.register_buffer("attr_values", torch.zeros(0, dtype=torch.long))
        self.use_content = cfg.content_dim > 0
        self.combine = cfg.content_combine
        self.id_dropout = cfg.id_dropout
        if self.use_content:
            self.register_buffer("content", torch.zeros(cfg.n_items, cfg.content_dim))
            if cfg.content_hidden > 0:
                self.content_proj = nn.Sequential(nn.Linear(cfg.content_dim, cfg.content_hidden),
                                                  nn.GELU(),
                                                  nn.Linear(cfg.content_hidden, cfg.d_model))
            else:
                self.content_proj = nn.Linear(cfg.content_dim, cfg.d_model)
            if self.combine == "gate":
                self.gate = nn.Linear(2 * cfg.d_model, cfg.d_model)
                nn.init.zeros_(self.gate.bias)  # g = σ(0) = ½ at the start

    def set_attributes(self, offsets: torch.Tensor, values: torch.Tensor) -> None:
        self.attr_offsets = offsets.long()
        self.attr_values = values.long()

    def set_content(self, content: torch.Tensor) -> None:
        """(n_items, content_dim) content vectors in model order (reserved rows zero)."""
        if not self.use_content:
            raise ValueError("this model has no content path (content_dim is 0)")
        if content.shape != self.content.shape:
            raise ValueError(f"content of shape {tuple(content.shape)}, expected "
                             f"{tuple(self.content.shape)}")
        self.content = content.to(self.content.dtype).contiguous()

    def combine_content(self, ids: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """(N, d) id rows ⊕ (N, content_dim) content rows → (N, d) item vectors."""
        c = self.content_proj(content)  # (N, d)
        if self.combine == "sum":
            return ids + c
        g = torch.sigmoid(self.gate(torch.cat([ids, c], dim=-1)))  # (N, d)
        return g * ids + (1 - g) * c

    def table(self) -> torch.Tensor:
        """(n_items, d) representation of every item."""
        w = self.ids.weight
        if self.use_content:
            if self.training and self.id_dropout > 0:
                keep = torch.rand(w.size(0), 1, device=w.device) >= self.id_dropout  # (V, 1)
                w = w * keep.to(w.dtype)
            w = self.combine_content(w, self.content)  # (V, d)
        if not self.use_attrs or self.attr_values.numel() == 0:
            return w
        bag = self.attrs(self.attr_values, self.attr_offsets[:-1])  # (n_items, d); empty → 0
        return w + bag

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) distinct item ids → (N, d): those rows of :meth:`table`, computing no other
        item's attribute bag (a million-item catalog costs per batch only what it uses).
        Without content only (content id dropout draws over the whole table)."""
        w = self.ids.weight[ids]  # (N, d)
        if not self.use_attrs or self.attr_values.numel() == 0:
            return w
        starts = self.attr_offsets[ids]
        lens = self.attr_offsets[ids + 1] - starts  # (N,)
        offsets = torch.cumsum(lens, 0) - lens  # (N,) bag starts in the gathered values
        pos = torch.repeat_interleave(starts - offsets, lens) + torch.arange(
            int(lens.sum()), device=ids.device)  # positions in attr_values, bag by bag
        return w + self.attrs(self.attr_values[pos], offsets)  # empty bag → 0

    def forward(self, items: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        if table is None and not self.use_attrs and not self.use_content:
            return self.ids(items)
        if table is None and not self.use_content:  # only the rows of this batch's items
            uniq, inv = torch.unique(items, return_inverse=True)
            return self.rows(uniq)[inv]  # (*items.shape, d)
        return F.embedding(items, self.table() if table is None else table)


class EventEmbedding(nn.Module):
    """(B, T) token facets → (B, T, d) event vectors."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.facets = nn.ModuleDict()
        for name, size in sorted(cfg.facet_sizes.items()):
            is_time = name in TIME_FACETS
            if (is_time and not cfg.use_time) or (not is_time and not cfg.use_facets):
                continue
            emb = nn.Embedding(size, cfg.d_model, padding_idx=0)
            nn.init.normal_(emb.weight, std=0.02)
            self.facets[name] = emb
        self.positions = (nn.Embedding(cfg.max_len, cfg.d_model)
                          if cfg.positions == "learned" else None)
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        self.scale = cfg.d_model ** 0.5
        self.drop = Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout,
                            cfg.fast_dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, batch: dict[str, torch.Tensor], item_vecs: torch.Tensor,
                start: int = 0) -> torch.Tensor:
        """``item_vecs``: (B, T, d) from the item encoder; ``start``: position of the first
        token (the tokens after a cached prefix)."""
        x = item_vecs * self.scale  # (B, T, d)
        for name, emb in self.facets.items():
            if name in batch:
                x = x + emb(batch[name])
        if self.positions is not None:
            T = x.size(1)
            x = x + self.positions(torch.arange(start, start + T, device=x.device))[None]
        return self.drop(self.norm(x))
