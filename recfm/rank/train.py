"""Training and evaluation of the unified ranker on ranking requests.

Listwise softmax over each request's candidates, in two stages (base, then personalization
on the frozen base), each keeping the epoch with the best validation NDCG@10 averaged over
tasks (never test). Metrics: docs/guide/ranker.md.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import numpy as np
import torch

from recfm.content.embedders import make_embedder
from recfm.evaluate.metrics import ranks_of
from recfm.rank.data import TASKS, RankData
from recfm.rank.features import Batchable, ItemTables, Vocab, featurize, item_tables
from recfm.rank.lexical import BM25Index
from recfm.rank.model import RankerConfig, UnifiedRanker
from recfm.train.config import TrainConfig
from recfm.train.trainer import RunFiles, Trainer, Validation

log = logging.getLogger(__name__)


def macro_ndcg(res: dict[str, dict[str, float]]) -> float:
    """Mean NDCG@10 over the tasks present: each product surface counts the same."""
    vals = [res[t]["ndcg@10"] for t in TASKS if t in res]
    return float(np.mean(vals)) if vals else float("nan")


def ranking_metrics(ranks: torch.Tensor) -> dict[str, float]:
    r = ranks.double()
    if len(r) == 0:
        return {"ndcg@10": float("nan"), "mrr": float("nan"), "n": 0}
    ndcg = torch.where(r < 10, 1.0 / torch.log2(r + 2), torch.zeros_like(r))
    return {"ndcg@10": float(ndcg.mean()), "mrr": float((1.0 / (r + 1)).mean()), "n": len(r)}


@torch.no_grad()
def score_all(model: UnifiedRanker, b: Batchable, knob: float | torch.Tensor | None = None,
              batch_size: int = 1024) -> torch.Tensor:
    """(R, N) scores of every request; ``knob``: one value for all, (R,) per request, or the
    config's default per task."""
    model.eval()
    out = []
    for s in range(0, len(b), batch_size):
        part = b.take(np.arange(s, min(s + batch_size, len(b))))
        k = None
        if isinstance(knob, (int, float)):
            k = torch.full((len(part),), float(knob))
        elif isinstance(knob, torch.Tensor):
            k = knob[s:s + len(part)]
        out.append(model(part, k))
    return torch.cat(out) if out else torch.zeros(0, b.cand.size(1))


def evaluate(model: UnifiedRanker, b: Batchable, knob: float | torch.Tensor | None = None,
             select: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """NDCG@10 and MRR per task (and ``all``) over requests with a retrieved label."""
    keep = (b.label >= 0).numpy()
    if select is not None:
        keep &= select
    sub = b.take(np.nonzero(keep)[0])
    ranks = ranks_of(score_all(model, sub, knob), sub.label) if len(sub) else \
        torch.zeros(0, dtype=torch.long)
    out = {"all": ranking_metrics(ranks)}
    for j, t in enumerate(TASKS):
        m = sub.ctx[:, 0] == j
        if m.any():
            out[t] = ranking_metrics(ranks[m])
    return out


KNOB_GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def exact_at_1(model: UnifiedRanker, b: Batchable, nav: np.ndarray,
               knob: float | torch.Tensor | None = None) -> float:
    """Share of navigational requests (``nav``) whose label — the exact title — ranks first;
    a title the first pass missed counts as a miss."""
    idx = np.nonzero(nav)[0]
    if len(idx) == 0:
        return float("nan")
    sub = b.take(idx)
    if isinstance(knob, torch.Tensor):
        knob = knob[torch.as_tensor(idx)]
    scores = score_all(model, sub, knob)
    ok = sub.label >= 0
    first = torch.zeros(len(sub), dtype=torch.bool)
    first[ok] = ranks_of(scores[ok], sub.label[ok]) == 0
    return float(first.double().mean())


def tune_knobs(model: UnifiedRanker, valid: Batchable, nav: np.ndarray | None = None,
               grid: tuple[float, ...] = KNOB_GRID, min_exact_at_1: float = 0.97
               ) -> dict[str, float]:
    """Set each task's default knob to the grid value with the best validation NDCG@10. For
    search only values that keep the exact title first for ``min_exact_at_1`` of the
    navigational queries (``nav``) qualify (none: 0): a typed title beats personalization."""
    knobs = dict(model.cfg.knob)
    if model.personal is None:
        return knobs
    for j, task in enumerate(TASKS):
        sel = (valid.ctx[:, 0] == j).numpy()
        if not (sel & (valid.label >= 0).numpy()).any():
            continue
        best, best_k = -1.0, 0.0  # no value qualifies (search): lexical relevance only
        for k in grid:
            if task == "search" and nav is not None and nav[sel].any():
                if exact_at_1(model, valid, nav & sel, k) < min_exact_at_1:
                    continue
            v = evaluate(model, valid, k, select=sel)[task]["ndcg@10"]
            if v > best:
                best, best_k = v, k
        knobs[task] = float(best_k)
    model.cfg.knob = knobs
    log.info("default knobs (validation): %s", knobs)
    return knobs


def prepare_features(data: RankData, embedder_spec: str, embedder=None,
                     splits: tuple[str, ...] = ("train", "valid", "test")
                     ) -> tuple[dict[str, Batchable], Vocab, ItemTables, object]:
    """Vocabularies (from training requests), item tables and features of each split."""
    embedder = embedder or make_embedder(embedder_spec)
    req = data.requests
    vocab = Vocab.fit(req.filter(req["split"] == "train"), data.items)
    tables = item_tables(data.items, data.popularity, data.item_vec, vocab, embedder)
    bm25 = BM25Index(tables.titles, [sorted(g) for g in tables.genres])
    split = req["split"].to_numpy()
    feats = {s: featurize(data.subset(split == s), tables, vocab, embedder, bm25)
             for s in splits}
    return feats, vocab, tables, embedder


def new_model(cfg: RankerConfig, vocab: Vocab, tables: ItemTables,
              train: Batchable) -> UnifiedRanker:
    torch.manual_seed(cfg.seed)
    model = UnifiedRanker(cfg, vocab, tables.content.shape[1], tables.fm.shape[1],
                          tables.content.shape[0])
    model.set_tables(tables.cat, tables.dense, tables.content, tables.fm)
    model.fit_normalization(train)
    return model


class _Requests:
    """The Trainer's data source: the training requests in a fresh random order each epoch."""

    def __init__(self, train: Batchable, batch_size: int, seed: int) -> None:
        self.train, self.batch_size = train, batch_size
        self.keep = np.nonzero((train.label >= 0).numpy())[0]
        self.gen = torch.Generator().manual_seed(seed)

    def start(self, epoch: int, fraction: float) -> int:
        self.order = self.keep[torch.randperm(len(self.keep), generator=self.gen).numpy()]
        return -(-len(self.order) // self.batch_size)

    def batch(self, epoch: int, i: int) -> Batchable:
        return self.train.take(self.order[i * self.batch_size:(i + 1) * self.batch_size])


def _stage(model: UnifiedRanker, stage: str, train: Batchable, valid: Batchable,
           cfg: RankerConfig, on_epoch: Callable[[dict], None] | None) -> list[dict]:
    """Train the ``base`` or the ``personal`` tower with the one Trainer (a constant learning
    rate, no clipping); keep its best epoch on validation."""
    base_params = [p for n, p in model.named_parameters()
                   if not n.startswith(("personal.", "fm_user_proj", "fm_item_proj"))]
    params = base_params if stage == "base" else \
        [p for p in model.parameters() if all(p is not q for q in base_params)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=0,
                       min_lr_ratio=1.0, grad_clip=0.0, patience=cfg.patience,
                       tensorboard=False)
    data = _Requests(train, cfg.batch_size, cfg.seed + (0 if stage == "base" else 1))

    def loss(part: Batchable) -> tuple[torch.Tensor, int]:
        base, pers = model(part, parts=True)
        logits = base if stage == "base" else base.detach() + pers
        logits = logits.masked_fill(~part.mask, float("-inf"))  # (B, N)
        return torch.nn.functional.cross_entropy(logits, part.label), len(part)

    def validate() -> dict[str, float]:
        res = evaluate(model, valid, 0.0 if stage == "base" else 1.0)
        return {"ndcg@10": macro_ndcg(res), "mrr": res["all"]["mrr"]}

    def train_mode() -> None:
        model.train()
        if stage == "personal":
            model.base.eval()  # frozen: no dropout noise in the scores it adds to

    best: dict[str, dict] = {}
    history: list[dict] = []

    def epoch_end(p: dict) -> None:
        if "epoch_end" in p:
            row = {"stage": stage, "epoch": p["epoch"] + 1, "loss": p["train_loss"],
                   "valid_ndcg@10": p["valid_ndcg@10"], "valid_mrr": p["valid_mrr"],
                   "s": p["epoch_train_s"] + p["eval_s"]}
            history.append(row)
            if on_epoch:
                on_epoch(row)

    trainer = Trainer(model, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                      tcfg, data, loss, 0, Validation(validate, logged=("ndcg@10", "mrr")),
                      RunFiles(None, lambda: best.update(state=copy.deepcopy(model.state_dict()))),
                      train_mode=train_mode, on_progress=epoch_end)
    trainer.fit()
    if best:
        model.load_state_dict(best["state"])
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def fit(train: Batchable, valid: Batchable, vocab: Vocab, tables: ItemTables,
        cfg: RankerConfig, on_epoch: Callable[[dict], None] | None = None,
        base_from: UnifiedRanker | None = None) -> tuple[UnifiedRanker, list[dict]]:
    """Train a ranker: the base tower, then (``cfg.use_fm``) the personalization tower.
    ``base_from``: copy and freeze that ranker's base, so knob 0 reproduces it exactly."""
    model = new_model(cfg, vocab, tables, train)
    history: list[dict] = []
    if base_from is not None:
        own = model.state_dict()
        for k, v in base_from.state_dict().items():
            if k in own and own[k].shape == v.shape:
                own[k] = v.clone()
        model.load_state_dict(own)
    else:
        history += _stage(model, "base", train, valid, cfg, on_epoch)
    if cfg.use_fm:
        history += _stage(model, "personal", train, valid, cfg, on_epoch)
    return model, history
