"""Prompt tuning: per-surface soft tokens before the history, the foundation frozen.

Only the prompt (``input``: k vectors; ``deep``: k keys/values per layer) trains, so one
frozen backbone serves many surfaces. The history keeps its own positions (with rotary the
prompt holds 0..k-1, leaving every history-to-history score unchanged); every event sees
the whole prompt, the prompt only itself. Usage, loss and storage: docs/guide/prompts.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, count_batches
from recfm.config import from_dict
from recfm.consume.distill import item_logits
from recfm.consume.finetune import item_subset
from recfm.data.splits import leave_one_out
from recfm.errors import InputError, RecfmError
from recfm.model.foundation import FoundationModel
from recfm.model.prompt import prefix_from_tokens
from recfm.pipeline import Recommender
from recfm.pipeline.prompts import check_name, state_sha256, write_prompt
from recfm.runinfo import weights_sha256
from recfm.tokens.tokenizer import N_RESERVED_FACET, N_RESERVED_ITEMS
from recfm.train.batches import MemoryBatches
from recfm.train.config import TrainConfig
from recfm.train.loop import run_dataset
from recfm.train.trainer import Budget, ProgressFn, Trainer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- surfaces


@dataclass
class PromptConfig:
    """What a prompt is trained on and how (``recfm prompt-tune --config`` TOML keys).
    ``surface``: conditions every *target* token must meet: docs/guide/prompts.md."""

    name: str = "kids"
    tokens: int = 16
    depth: Literal["deep", "input"] = "deep"
    """``input``: k vectors before the event embeddings. ``deep``: k keys/values in every
    layer, which move a small frozen backbone much further (docs/guide/prompts.md)."""
    surface: dict[str, str] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    surface_weight: float = 1.0
    """Weight of −log P(the next item is on the surface) at *every* position, so any history
    leads to the surface. Needs ``item.*`` conditions; 0 turns it off."""
    rank_weight: float = 0.0
    """Weight of the top-k ranking term (:func:`rank_loss`): at every position, the
    ``rank_k`` best unseen items *off* the surface are pushed ``rank_margin`` below the
    ``rank_k``-th best *on* it, so what every user sees is on the surface (even after an
    off-surface sequel the backbone is sure of). Needs ``item.*`` conditions; 0: off."""
    rank_k: int = 10
    rank_margin: float = 1.0
    warmup_steps: int = 20
    seed: int = 0
    max_minutes: float | None = None
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<prompt config>") -> "PromptConfig":
        cfg = from_dict(cls, data, source)
        if cfg.tokens < 1:
            raise InputError(source, None, "tokens", "at least 1", str(cfg.tokens))
        if not cfg.surface:
            raise InputError(source, None, "surface", "at least one condition "
                             "(e.g. item.kids=true)", "none")
        if cfg.rank_k < 1:
            raise InputError(source, None, "rank_k", "at least 1", str(cfg.rank_k))
        if cfg.rank_weight < 0:
            raise InputError(source, None, "rank_weight", "0 or more", str(cfg.rank_weight))
        return cfg


def parse_surface(specs: list[str], source: str = "--surface") -> dict[str, str]:
    """``["item.kids=true", "surface=kids"]`` → a surface dict."""
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise InputError(source, None, None, "KEY=VALUE (item.<column>=v or <facet>=v)",
                             repr(spec))
        out[key.strip()] = value.strip()
    return out


def surface_items(surface: dict[str, str], items: pl.DataFrame, n_items: int,
                  source: str = "items.parquet") -> torch.Tensor | None:
    """(n_items,) bool: items meeting every ``item.<column>`` condition (None: no such key)."""
    filters = {k[len("item."):]: v for k, v in surface.items() if k.startswith("item.")}
    return item_subset(items, n_items, filters, source) if filters else None


def surface_facets(surface: dict[str, str], facets: dict[str, list[str]],
                   source: str = "tokenizer.json") -> dict[str, int]:
    """Token-facet conditions → {column: code}."""
    out = {}
    for key, value in surface.items():
        if key.startswith("item."):
            continue
        if key not in facets:
            raise InputError(source, None, key, "item.<column> or a token facet "
                             f"({', '.join(sorted(facets))})", "no such facet")
        if value not in facets[key]:
            raise InputError(source, None, key, f"one of {', '.join(facets[key])}", repr(value))
        out[key] = N_RESERVED_FACET + facets[key].index(value)
    return out


def surface_mask(batch: dict[str, torch.Tensor], items: torch.Tensor | None,
                 facets: dict[str, int]) -> torch.Tensor:
    """(B, T) bool: positions whose next token is on the surface (and is an item)."""
    target = batch["target"]  # (B, T)
    keep = target > 0
    if items is not None:
        keep = keep & items[target]
    for col, code in facets.items():
        keep = keep & (batch[f"future_{col}"][:, 1:] == code)
    return keep


# ----------------------------------------------------------------------------- training


def surface_loss(model, h: torch.Tensor, target: torch.Tensor, keep: torch.Tensor,
                 items: torch.Tensor | None, surface_weight: float) -> torch.Tensor:
    """Next-item cross-entropy at the surface's positions, plus ``surface_weight`` × the
    mean −log P(next item is on the surface) at every position with a next item.
    h: (B, T, d); target, keep: (B, T); items: (n_items,) surface mask, or None (facet-only
    surface: no second term)."""
    rows = target > 0  # (B, T)
    logits = item_logits(model, h[rows])  # (N, V − reserved)
    ce = torch.nn.functional.cross_entropy(logits[keep[rows]],
                                           target[keep] - N_RESERVED_ITEMS)
    if items is None or surface_weight == 0:
        return ce
    on = items[N_RESERVED_ITEMS:]  # (V − reserved,)
    log_p = torch.logsumexp(logits[:, on], dim=-1) - torch.logsumexp(logits, dim=-1)  # (N,)
    return ce - surface_weight * log_p.mean()


def seen_before(items: torch.Tensor, rows: torch.Tensor, n_items: int) -> torch.Tensor:
    """(N, n_items) bool, one row per True of ``rows`` (B, T): item v occurs in history
    ``items[b, :t + 1]`` (B, T); the padding id 0 counts as seen (only a reserved id)."""
    B, T = items.shape
    b, t = rows.nonzero(as_tuple=True)  # (N,), (N,)
    upto = torch.arange(T)[None, :] <= t[:, None]  # (N, T)
    hist = torch.where(upto, items[b].long(), 0)  # (N, T): later positions → padding
    seen = torch.zeros(len(b), n_items, dtype=torch.bool)
    return seen.scatter_(1, hist, True)


def rank_loss(logits: torch.Tensor, on: torch.Tensor, seen: torch.Tensor, k: int,
              margin: float) -> torch.Tensor:
    """Mean over positions of Σ_j softplus(s_j − τ + margin) / k, s_j the k best unseen
    off-surface scores, τ the k-th best unseen on-surface one: a smooth "the top k are all
    on the surface". logits: (N, V); on: (V,) bool surface mask; seen: (N, V) bool."""
    neg_inf = torch.finfo(logits.dtype).min
    on_s = logits.masked_fill(seen | ~on, neg_inf)  # (N, V)
    off_s = logits.masked_fill(seen | on, neg_inf)
    k_on = min(k, int(on.sum()))
    tau = torch.topk(on_s, k_on, dim=-1).values[:, -1:]  # (N, 1)
    top_off = torch.topk(off_s, min(k, int((~on).sum())), dim=-1).values  # (N, k)
    ok = (top_off > neg_inf / 2) & (tau > neg_inf / 2)  # enough unseen items on both sides
    terms = torch.nn.functional.softplus(top_off - tau + margin) * ok
    return terms.sum(-1).mean() / k


@dataclass
class PromptResult:
    path: Path
    name: str
    tokens: int
    steps: int
    loss_first: float
    loss_last: float
    surface_targets: int
    wall_s: float
    backbone_sha256: str


def _init_vectors(model, surface_items_mask: torch.Tensor | None, store, k: int,
                  depth: str, gen: torch.Generator) -> torch.Tensor:
    """Start from k frequent surface items: as events before the history."""
    with torch.no_grad():
        counts = np.bincount(store.values["item"], minlength=model.cfg.n_items)[:model.cfg.n_items]
        counts[:N_RESERVED_ITEMS] = 0
        if surface_items_mask is not None:
            counts = np.where(surface_items_mask.numpy(), counts, 0)
        top = np.argsort(-counts, kind="stable")[:k]
        if len(top) < k or counts[top].min() == 0:
            top = np.resize(top[counts[top] > 0] if (counts[top] > 0).any() else
                            np.arange(N_RESERVED_ITEMS, model.cfg.n_items), k)
        vecs = model.item_encoder.table()[torch.from_numpy(top)]  # (k, d)
        x = model.embed.norm(vecs * model.embed.scale)  # the scale of an event embedding
        if depth == "deep":  # the keys / values these k events would leave in a KV cache
            x = prefix_from_tokens(model.backbone, x)
        return x + 0.02 * torch.randn(x.shape, generator=gen)


def prompt_tune(run: str | Path, cfg: PromptConfig, data_dir: str | Path | None = None,
                on_progress: ProgressFn | None = None) -> PromptResult:
    """Train prompt ``cfg.name`` for ``run`` on the leave-one-out *train* part of its
    dataset, the foundation frozen (checked bit-identical before writing); writes
    ``run/prompts/<name>.safetensors`` (+ ``.json``)."""
    t0 = time.perf_counter()
    run = Path(run)
    check_name(cfg.name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec, ds, data_dir = run_dataset(run, data_dir)
    model = rec.model
    item_mask = surface_items(cfg.surface, rec.items, model.cfg.n_items,
                              str(run / "items.parquet"))
    facet_codes = surface_facets(cfg.surface, ds.tokenizer.facets, str(data_dir / "tokenizer.json"))

    file_hash = weights_sha256(run)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()  # frozen and deterministic: no dropout in the foundation
    state_before = state_sha256(model)

    store = SequenceStore(leave_one_out(ds.sequences).train,
                          model.input_columns + list(facet_codes))
    spans = store.spans(model.cfg.max_len + 1, "truncate", min_len=2)
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.nn.Parameter(_init_vectors(model, item_mask, store, cfg.tokens,
                                              cfg.depth, gen))
    losses: list[float] = []
    n_targets = {}

    def progress(p: dict[str, Any]) -> None:
        losses.append(p["loss"])
        if on_progress:
            on_progress(p)

    def epoch_end(epoch: int, mean_loss: float, n: int) -> None:
        n_targets.setdefault(0, n)  # the first epoch's surface targets
        log.info("prompt %s epoch %d: surface loss %.4f over %d targets", cfg.name, epoch,
                 mean_loss, n)

    trainer = _prompt_trainer(model, prompt, cfg, (item_mask, facet_codes),
                              MemoryBatches(store, spans, cfg.batch_size, cfg.seed))
    trainer.on_progress, trainer.on_epoch_end = progress, epoch_end
    trainer.state["train_s"] = time.perf_counter() - t0  # the budget counts the set-up
    trainer.fit()
    step = trainer.state["step"]
    if step == 0:
        raise RecfmError(f"{data_dir}: no training position has a next token on the surface "
                         f"{cfg.surface}")
    if state_sha256(model) != state_before or weights_sha256(run) != file_hash:
        raise RecfmError(f"{run}: the foundation weights changed during prompt tuning")
    wall = time.perf_counter() - t0
    head = max(1, min(20, len(losses) // 10))
    result_meta = {
        "name": cfg.name, "tokens": cfg.tokens, "depth": cfg.depth,
        "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers,
        "surface": cfg.surface, "config": asdict(cfg), "data": str(data_dir),
        "backbone_sha256": file_hash, "steps": step,
        "surface_targets_per_epoch": n_targets.get(0, 0),
        "loss_first": float(np.mean(losses[:head])), "loss_last": float(np.mean(losses[-head:])),
        "wall_s": round(wall, 2),
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = write_prompt(run, cfg.name, prompt.detach(), result_meta)
    return PromptResult(path, cfg.name, cfg.tokens, step, result_meta["loss_first"],
                        result_meta["loss_last"], n_targets.get(0, 0), wall, file_hash)


def _prompt_trainer(model: FoundationModel, prompt: torch.nn.Parameter, cfg: PromptConfig,
                    surface: tuple[torch.Tensor | None, dict[str, list[int]]],
                    data: MemoryBatches) -> Trainer:
    """The Trainer of a prompt: only ``prompt`` trains, on the surface loss (+ ranking)."""
    item_mask, facet_codes = surface

    def loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int] | None:
        keep = surface_mask(batch, item_mask, facet_codes)  # (B, T)
        if not keep.any():
            return None  # no target on the surface: the batch teaches nothing
        inputs = {c: batch[c] for c in model.input_columns if c in batch}
        inputs["soft_prompt"] = prompt
        h = model.positions(inputs)  # (B, T, d)
        value = surface_loss(model, h, batch["target"], keep, item_mask, cfg.surface_weight)
        if cfg.rank_weight > 0 and item_mask is not None:
            rows = batch["target"] > 0  # (B, T)
            seen = seen_before(batch["item"], rows, model.cfg.n_items)  # (N, V)
            value = value + cfg.rank_weight * rank_loss(
                item_logits(model, h[rows]), item_mask[N_RESERVED_ITEMS:],
                seen[:, N_RESERVED_ITEMS:], cfg.rank_k, cfg.rank_margin)
        return value, int(keep.sum())

    tcfg = TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, epochs=cfg.epochs)
    budget = Budget(cfg.max_minutes, strict=True, fit_schedule=False) if cfg.max_minutes \
        else None
    # the trained module is the prompt alone; the foundation stays in eval mode
    return Trainer(torch.nn.ParameterList([prompt]),
                   torch.optim.AdamW([prompt], lr=cfg.lr, weight_decay=0.0), tcfg, data, loss,
                   count_batches(len(data.spans), cfg.batch_size) * cfg.epochs, budget=budget)


@torch.no_grad()
def top_k_items(rec: Recommender, frame: pl.DataFrame, k: int = 10, prompt: str | None = None,
                batch_size: int = 256) -> np.ndarray:
    """(n, k) top-``k`` item indices per history of ``frame``: :meth:`Recommender.recommend`
    batched (history items excluded, no other filter)."""
    model = rec.model
    store = SequenceStore(frame, model.input_columns)
    users = rec.encode_store(store, batch_size=batch_size, prompt=prompt)  # (n, d)
    out = []
    for start in range(0, len(store), batch_size):
        rows = np.arange(start, min(start + batch_size, len(store)))
        scores = model.score(users[rows])  # (b, n_items)
        b, seen = store.history_items(rows)
        scores[torch.from_numpy(b), torch.from_numpy(seen)] = float("-inf")
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def surface_share(top: np.ndarray, items: torch.Tensor) -> np.ndarray:
    """(n,) share of each row of top-k item indices that is on the surface (``items`` mask)."""
    return items.numpy()[top].mean(axis=1)
