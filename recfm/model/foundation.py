"""FoundationModel: the causal transformer over interaction tokens, and its public API.

    fm = FoundationModel.from_pretrained("runs/beauty")
    users = fm.encode_users(histories)            # (n, d) user vectors
    recs = fm.recommend(history, k=10)            # item ids and scores

The hidden state after a user's last token is the user representation; item scores are
its dot product with the item table (tied to the input embeddings, or separate). A run
directory holds ``config.json``, ``model.safetensors``, ``tokenizer.json`` and
``items.parquet``; it loads without the training data and without pickle.
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
from recfm.batching import SequenceStore, history_batches
from recfm.io import atomic_write_json
from recfm.model.backbone import Backbone
from recfm.model.config import ModelConfig
from recfm.model.embeddings import EventEmbedding, ItemEncoder
from recfm.model.heads import full_softmax_loss, sample_negatives, sampled_softmax_loss
from recfm.tokenizer import N_RESERVED_ITEMS, UNK, Tokenizer, tokenize

log = logging.getLogger(__name__)

# Token columns that are model inputs besides the item (when the dataset has them).
NON_FACET_COLUMNS = ("item", "ts", "ts_last", "count", "value", "target")
ITEM_ATTRIBUTE_COLUMNS = ("genres", "attributes", "entity_type", "language")


def facet_sizes(tok: Tokenizer, seqs: pl.DataFrame | None = None) -> dict[str, int]:
    """Embedding-table sizes of every facet the dataset actually varies in."""
    sizes = {name: len(values) + 2 for name, values in tok.facets.items() if values}
    cfg = tok.config
    sizes["value_bucket"] = len(tok.value_edges) + 2
    sizes["row"] = cfg.max_row + 3
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
    lengths = np.zeros(n_items, dtype=np.int64)
    idx = bags["idx"].to_numpy()
    bag_lens = bags["bag"].list.len().fill_null(0).to_numpy()
    lengths[idx] = bag_lens
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(offsets[-1], dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    flat = [code[v] for bag in bags["bag"].gather(order).to_list() if bag for v in bag]
    values[:] = flat
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
        self.tokenizer = tokenizer
        self.items = items
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
        return self.backbone(x, valid, all_layers=all_layers)

    def loss(self, batch: dict[str, torch.Tensor],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Next-item loss over every position that has a target."""
        h = self(batch)  # (B, T, d)
        target = batch["target"]
        keep = target > 0
        h, target = h[keep], target[keep]  # (N, d), (N,)
        weights = batch["weight"][keep] if "weight" in batch else None
        table = self.item_table()
        cfg = self.cfg
        if cfg.loss == "full":
            return full_softmax_loss(h, target, table, cfg.label_smoothing, cfg.temperature,
                                     weights)
        negs = sample_negatives(cfg.n_negatives, target, cfg.n_items, cfg.negatives, generator)
        log_q = self._sampler_log_q(target) if cfg.logq_correction else None
        return sampled_softmax_loss(h, target, table, negs, log_q, cfg.label_smoothing,
                                    cfg.temperature, weights)

    def _sampler_log_q(self, targets: torch.Tensor) -> torch.Tensor:
        """log of each item's probability under the negative sampler in use."""
        uniform = torch.full_like(self.log_q, -float(np.log(self.cfg.n_items - N_RESERVED_ITEMS)))
        if self.cfg.negatives == "uniform":
            return uniform
        if self.cfg.negatives == "in_batch":
            return self.log_q
        return torch.logaddexp(uniform, self.log_q) - float(np.log(2.0))

    def last_hidden(self, batch: dict[str, torch.Tensor], pooling: str = "last",
                    n_last: int = 4) -> torch.Tensor:
        """(B, d) user vectors from right-padded history batches."""
        h = self(batch)  # (B, T, d)
        valid = batch["item"] > 0
        lengths = valid.sum(1).clamp_min(1)
        if pooling == "last":
            return h[torch.arange(h.size(0)), lengths - 1]
        if pooling == "mean_last":
            pos = torch.arange(h.size(1), device=h.device)[None]
            w = (valid & (pos >= (lengths - n_last)[:, None])).float()
            return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        if pooling == "mean":
            w = valid.float()
            return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        raise ValueError(f"unknown pooling {pooling!r}: expected last, mean_last or mean")

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores; reserved ids get -inf."""
        scores = users @ self.item_table().T
        scores[:, :N_RESERVED_ITEMS] = float("-inf")
        return scores

    # ------------------------------------------------------------------ histories in, ids out

    def _store(self, histories: Any) -> SequenceStore:
        """Histories as a sequences frame, a list of item-id lists, or raw event frames."""
        if isinstance(histories, pl.DataFrame) and "item" in histories.columns:
            seqs = histories
        elif isinstance(histories, pl.DataFrame):  # raw events (canonical columns)
            seqs = self.tokenize_events(histories)
        else:
            index = self.tokenizer.item_index() if self.tokenizer else {}
            rows = [[index.get(str(i), UNK) for i in h] for h in histories]
            seqs = pl.DataFrame({"item": rows}, schema={"item": pl.List(pl.Int64)})
        return SequenceStore(seqs, self.input_columns)

    def tokenize_events(self, events: pl.DataFrame) -> pl.DataFrame:
        """Raw events of (possibly new) users → token sequences with this model's vocabularies."""
        from recfm.data.schema import normalize_events

        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: load it with from_pretrained")
        ev = normalize_events(events, "<events>")
        return tokenize(ev, self.tokenizer.config, fitted=self.tokenizer,
                        has_time=self.tokenizer.has_time).tokens

    @torch.no_grad()
    def encode_users(self, histories: Any, pooling: str = "last",
                     batch_size: int = 256) -> torch.Tensor:
        """(n, d) user vectors for histories (see :meth:`_store` for accepted forms)."""
        return self.encode_store(self._store(histories), pooling, batch_size)

    @torch.no_grad()
    def encode_store(self, store: SequenceStore, pooling: str = "last",
                     batch_size: int = 256) -> torch.Tensor:
        self.eval()
        out = [self.last_hidden(b, pooling) for _, b in
               history_batches(store, self.cfg.max_len, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.d_model)

    @torch.no_grad()
    def recommend(self, history: Any, k: int = 10, exclude_seen: bool = True
                  ) -> pl.DataFrame:
        """Top-``k`` items for one user: a list of item ids or a frame of raw events.

        Returns a frame with ``item_id``, ``score`` and, when the catalog has them, titles.
        """
        histories = history if isinstance(history, pl.DataFrame) else [list(history)]
        store = self._store(histories)
        if len(store) != 1:
            raise ValueError(f"recommend takes one user's history; got {len(store)} users")
        user = self.encode_store(store)
        scores = self.score(user)[0]
        if exclude_seen:
            _, seen = store.history_items(np.arange(1))
            scores[torch.from_numpy(seen)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        idx = top.indices.numpy()
        ids = [self.tokenizer.item_ids[i - N_RESERVED_ITEMS] for i in idx] if self.tokenizer \
            else [str(i) for i in idx]
        out = pl.DataFrame({"rank": np.arange(1, k + 1), "item_id": ids,
                            "score": top.values.numpy().astype(np.float64)})
        if self.items is not None and "title" in self.items.columns:
            out = out.join(self.items.select("item_id", "title"), on="item_id", how="left")
        return out

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (+ tokenizer, items) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = path / ".model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"recfm_version": __version__})
        tmp.replace(path / "model.safetensors")
        atomic_write_json(path / "config.json", {"model": asdict(self.cfg), **(extra or {})})
        if self.tokenizer is not None:
            self.tokenizer.save(path / "tokenizer.json")
        if self.items is not None:
            tmp_items = path / ".items.parquet.tmp"
            self.items.write_parquet(tmp_items)
            tmp_items.replace(path / "items.parquet")

    @classmethod
    def from_pretrained(cls, path: str | Path, weights: str = "model.safetensors"
                        ) -> "FoundationModel":
        path = Path(path)
        from recfm.errors import InputError

        for name in ("config.json", weights):
            if not (path / name).is_file():
                raise InputError(str(path / name), None, None, "a recfm run file",
                                 "nothing at that path")
        meta = json.loads((path / "config.json").read_text())
        cfg = ModelConfig.from_dict(meta["model"], str(path / "config.json"))
        items = pl.read_parquet(path / "items.parquet") if (path / "items.parquet").is_file() \
            else None
        tok = None
        if (path / "tokenizer.json").is_file() and items is not None:
            tok = Tokenizer.load(path / "tokenizer.json", items["item_id"].to_list())
        model = cls(cfg, tok, items)
        state = load_file(str(path / weights))
        model.item_encoder.set_attributes(state["item_encoder.attr_offsets"],
                                          state["item_encoder.attr_values"])
        model.load_state_dict(state)
        model.eval()
        return model
