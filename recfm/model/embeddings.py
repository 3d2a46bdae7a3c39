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

TIME_FACETS = ("gap_bucket", "hour_of_week")


class ItemEncoder(nn.Module):
    """Item vectors: an id embedding plus the mean of its attribute embeddings.

    Attributes (genres, S3-Rec attribute ids, entity type, language) are stored as a CSR
    pair of buffers: ``attr_offsets`` (n_items + 1,) and ``attr_values`` (nnz,).
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

    def set_attributes(self, offsets: torch.Tensor, values: torch.Tensor) -> None:
        self.attr_offsets = offsets.long()
        self.attr_values = values.long()

    def table(self) -> torch.Tensor:
        """(n_items, d) representation of every item."""
        w = self.ids.weight
        if not self.use_attrs or self.attr_values.numel() == 0:
            return w
        bag = self.attrs(self.attr_values, self.attr_offsets[:-1])  # (n_items, d); empty → 0
        return w + bag

    def forward(self, items: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        if table is None and not self.use_attrs:
            return self.ids(items)
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
        self.drop = nn.Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, batch: dict[str, torch.Tensor], item_vecs: torch.Tensor) -> torch.Tensor:
        """``item_vecs``: (B, T, d) from the item encoder."""
        x = item_vecs * self.scale  # (B, T, d)
        for name, emb in self.facets.items():
            if name in batch:
                x = x + emb(batch[name])
        if self.positions is not None:
            T = x.size(1)
            x = x + self.positions(torch.arange(T, device=x.device))[None]
        return self.drop(self.norm(x))
