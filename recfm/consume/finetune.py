"""Fine-tuning the foundation model for one downstream task (``recfm finetune``).

A task (:class:`TaskConfig`, TOML) is a ``surface`` (softmax over a catalog subset), a
``binary`` head or a ``shown`` head (chosen vs shown titles, :func:`with_shown`). Training
is a configuration of the one :class:`recfm.train.trainer.Trainer` on the run's
leave-one-out split; the output is a run directory (:meth:`TaskModel.from_pretrained`).
``task.toml`` and metrics: docs/guide/finetune.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from recfm import __version__
from recfm.tokens.batching import SequenceStore, history_batches
from recfm.config import from_dict, read_toml
from recfm.consume.subgraph import freeze, trainable_modules
from recfm.data.readers import read_events
from recfm.data.splits import Split, leave_one_out
from recfm.errors import InputError, RecfmError, reading
from recfm.evaluate.evaluator import evaluate_scorer
from recfm.evaluate.ranks import target_ranks
from recfm.io import atomic_write_bytes, atomic_write_json
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender
from recfm.runinfo import verify_manifest, write_manifest
from recfm.tokens.tokenizer import N_RESERVED_FACET
from recfm.train.batches import MemoryBatches
from recfm.train.config import TrainConfig
from recfm.train.loop import run_dataset, run_meta
from recfm.train.trainer import ProgressFn, RunFiles, Trainer, Validation, decay_groups

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "task_head.safetensors"
SHOWN = "shown"
"""Token column of a shown task: a title shown before the token and not chosen (0: none)."""


def _default_train() -> TrainConfig:
    return TrainConfig(lr=1e-3, warmup_steps=20, patience=3, weight_decay=0.01,
                       tensorboard=False)


@dataclass
class TaskConfig:
    """One downstream task (the ``task.toml`` of ``recfm finetune``)."""

    kind: Literal["surface", "binary", "shown"]
    name: str = ""
    items: dict[str, Any] = field(default_factory=dict)
    """surface: the item subset, catalog column → value or list of values (all must hold)."""
    label_action: str = "complete"
    """binary: an event is positive when the next token's action is this one."""
    impressions: str = ""
    """shown: the impressions file (Parquet, CSV/TSV or JSON lines)."""
    trainable_layers: int = -1
    """-1: every weight trains. n ≥ 0: all but the top n blocks and the head are frozen."""
    from_scratch: bool = False
    """Train the same task model from random init (the baseline)."""
    max_steps: int = 300
    eval_every: int = 50
    """Validate every this many steps (early stopping counts validations: train.patience)."""
    head_hidden: int = 64
    """binary: width of the head's hidden layer."""
    head_norm: bool = True
    """binary: layer-normalise the user state and item vector before the head (their scale
    differs between pretrained and random backbones, frequent and rare titles; effect:
    benchmarks/RESULTS.md). Runs fine-tuned before this option load without it."""
    backbone_lr_scale: float = 1.0
    """Foundation weights' learning rate relative to ``train.lr`` (the head's): below 1 they
    move less (discriminative fine-tuning, Howard & Ruder 2018). Unused from scratch."""
    head_only_steps: int = 0
    """Fine-tuning only: the first n steps (within ``max_steps``) train the head alone, so a
    random head's first gradients do not scramble the pretrained features (LP-FT, Kumar et
    al. 2022). From scratch every weight trains from step 0."""
    train_users: float = 1.0
    """Share of users the task trains and validates on (a fixed draw, the same for every
    seed and from scratch); test events stay every user's."""
    next_item_weight: float = 0.0
    """Weight of the foundation's own next-item loss kept as an auxiliary (0: none)."""
    train: TrainConfig = field(default_factory=_default_train)
    """Optimisation (``[train]``: lr, batch_size, warmup_steps, weight_decay, grad_clip,
    seed, patience, eval_batch_size, threads; epochs is unused: ``max_steps`` rules)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<task config>") -> "TaskConfig":
        if "kind" not in data:
            raise InputError(source, None, "kind", 'a task kind ("surface", "binary" or '
                             '"shown")', "no kind")
        train = data.get("train", {})
        if not isinstance(train, dict):
            raise InputError(source, None, "train", "a [train] table", repr(train))
        base = asdict(_default_train())
        base["betas"] = list(base["betas"])
        data = {**data, "train": {**base, **train}}
        cfg = from_dict(cls, data, source)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "<task config>") -> None:
        checks = [("max_steps", self.max_steps >= 1, "at least 1"),
                  ("eval_every", self.eval_every >= 1, "at least 1"),
                  ("trainable_layers", self.trainable_layers >= -1, "-1 or more"),
                  ("head_hidden", self.head_hidden >= 1, "at least 1"),
                  ("head_only_steps", self.head_only_steps >= 0, "0 or more"),
                  ("next_item_weight", self.next_item_weight >= 0, "non-negative"),
                  ("train_users", 0 < self.train_users <= 1, "a share in (0, 1]"),
                  ("backbone_lr_scale", self.backbone_lr_scale > 0, "positive")]
        for key, ok, expected in checks:
            if not ok:
                raise InputError(source, None, key, expected, repr(getattr(self, key)))
        if self.kind == "surface" and not self.items:
            raise InputError(source, None, "items", "an [items] filter for a surface task "
                             '(e.g. kids = "true")', "none")
        if self.kind == "surface" and self.head_only_steps:
            raise InputError(source, None, "head_only_steps", "0 for a surface task (it has "
                             "no head to train alone)", str(self.head_only_steps))
        if self.kind != "surface" and self.items:
            raise InputError(source, None, "items", f"no [items] filter for a {self.kind} task",
                             "a filter")
        if (self.kind == "shown") != bool(self.impressions):
            raise InputError(source, None, "impressions", "an impressions file for a shown "
                             "task, and only for one", repr(self.impressions))
        for col, want in self.items.items():
            values = want if isinstance(want, list) else [want]
            if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
                raise InputError(source, None, f"items.{col}", "a value or a list of values",
                                 repr(want))

    @property
    def has_head(self) -> bool:
        """binary and shown tasks score (user, title) pairs with a :class:`BinaryHead`."""
        return self.kind in ("binary", "shown")

    @property
    def trainable(self) -> int | None:
        return None if self.trainable_layers < 0 else self.trainable_layers


def load_task(path: str | Path) -> TaskConfig:
    """Read and check a ``task.toml``; errors name the file and the key."""
    return TaskConfig.from_dict(read_toml(path), str(path))


def _as_text(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def item_subset(items: pl.DataFrame, n_items: int, filters: dict[str, Any],
                source: str = "<task config>") -> torch.Tensor:
    """(n_items,) bool: items passing every ``column = value(s)`` filter of the catalog (a
    list column passes when any element does)."""
    keep = np.ones(items.height, dtype=bool)
    for col, want in filters.items():
        if col not in items.columns:
            cols = ", ".join(c for c in items.columns if c not in ("idx", "n_events",
                                                                  "n_tokens"))
            raise InputError(source, None, f"items.{col}", f"a column of the catalog ({cols})",
                             f"no such column {col!r}")
        wanted = [_as_text(v) for v in (want if isinstance(want, list) else [want])]
        text = items[col].cast(pl.List(pl.Utf8) if isinstance(items[col].dtype, pl.List)
                               else pl.Utf8)
        if isinstance(text.dtype, pl.List):
            hit = text.list.eval(pl.element().is_in(wanted)).list.any()
        else:
            hit = text.is_in(wanted)
        hit = hit.fill_null(False).to_numpy()
        if not hit.any():
            found = (text.explode() if isinstance(text.dtype, pl.List) else text).unique()
            raise InputError(source, None, f"items.{col}", "a value some item has (e.g. "
                             f"{found.drop_nulls().head(8).to_list()})",
                             f"{want!r}, which matches no item")
        keep &= hit
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[torch.from_numpy(items["idx"].to_numpy()[keep].astype(np.int64))] = True
    if not mask.any():
        raise RecfmError(f"{source}: the [items] filter {filters} matches no item of the catalog")
    return mask


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, tied scores count one half)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct score, then of each sample
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class BinaryHead(nn.Module):
    """(user state h, candidate item vector e, log p(item | h)) → logit: an MLP over
    [h, e, h ⊙ e, log p]. ``log p``, the model's full-softmax next-item log-probability,
    says how expected the choice was, which the MLP could not compute from h and e alone.
    ``norm``: layer-normalise h and e first (``TaskConfig.head_norm``)."""

    def __init__(self, d: int, hidden: int, norm: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * d + 1, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.norm_h = nn.LayerNorm(d) if norm else nn.Identity()
        self.norm_e = nn.LayerNorm(d) if norm else nn.Identity()

    def forward(self, h: torch.Tensor, e: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        h, e = self.norm_h(h), self.norm_e(e)  # (N, d) each
        x = torch.cat([h, e, h * e, logp[:, None]], dim=-1)  # (N, 3d + 1)
        return self.mlp(x)[..., 0]  # (N,)


class TaskModel(nn.Module):
    """The foundation model with a task's targets and objective (docs/guide/finetune.md)."""

    def __init__(self, rec: Recommender, task: TaskConfig) -> None:
        super().__init__()
        fm = rec.model
        self.fm = fm
        self.rec = rec  # the pipeline around fm: vocabularies, raw histories
        self.task = task
        self.head = (BinaryHead(fm.cfg.d_model, task.head_hidden, task.head_norm)
                     if task.has_head else None)
        if task.kind == "surface":
            if rec.items is None:
                raise RecfmError("a surface task needs the run's items.parquet")
            subset = item_subset(rec.items, fm.cfg.n_items, task.items)
            pos = torch.full((fm.cfg.n_items,), -1, dtype=torch.long)
            pos[subset] = torch.arange(int(subset.sum()))
            self.register_buffer("subset", subset, persistent=False)
            self.register_buffer("subset_idx", subset.nonzero()[:, 0], persistent=False)
            self.register_buffer("subset_pos", pos, persistent=False)
        elif task.kind == "binary":
            actions = rec.tokenizer.facets.get("action", []) if rec.tokenizer else []
            if task.label_action not in actions:
                raise RecfmError(f"binary task: no action {task.label_action!r} in this "
                                 f"run's data (actions: {', '.join(actions) or 'none'})")
            self.label_code = actions.index(task.label_action) + N_RESERVED_FACET

    @property
    def columns(self) -> list[str]:
        """Token columns a training batch needs."""
        extra = {"binary": ["action"], "shown": [SHOWN]}.get(self.task.kind, [])
        return self.fm.input_columns + [c for c in extra if c not in self.fm.input_columns]

    def target_mask(self, target: torch.Tensor) -> torch.Tensor:
        """(B, T) positions that are targets of this task."""
        keep = target > 0
        if self.task.kind == "surface":
            keep &= self.subset[target]
        return keep

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.fm.positions(batch)  # (B, T, d)
        target = batch["target"]  # (B, T)
        keep = self.target_mask(target)
        if not keep.any():
            return h.sum() * 0.0
        table = self.fm.item_table()
        if self.task.kind == "surface":
            logits = h[keep] @ table[self.subset_idx].T  # (N, |subset|)
            loss = F.cross_entropy(logits, self.subset_pos[target[keep]])
            return loss + self._next_item_loss(h, target)
        if self.task.kind == "shown":  # (chosen, shown) pairs where a title was shown
            neg = batch[f"future_{SHOWN}"][:, 1:]  # (B, T)
            pair = keep & (neg > 0)
            if not pair.any():
                return h.sum() * 0.0 + self._next_item_loss(h, target)
            hp = h[pair]
            logit = torch.cat([self.binary_logit(hp, target[pair]),
                               self.binary_logit(hp, neg[pair])])  # (2N,)
            label = torch.cat([torch.ones(len(hp)), torch.zeros(len(hp))])
            return (F.binary_cross_entropy_with_logits(logit, label)
                    + self._next_item_loss(h, target))
        label = (batch["future_action"][:, 1:] == self.label_code)[keep].float()  # (N,)
        logit = self.binary_logit(h[keep], target[keep])
        loss = F.binary_cross_entropy_with_logits(logit, label)
        return loss + self._next_item_loss(h, target)

    def _next_item_loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor | float:
        """The foundation's next-item loss at every position, if kept as an auxiliary."""
        if self.task.next_item_weight <= 0:
            return 0.0
        keep = target > 0
        return self.task.next_item_weight * self.fm._item_loss(
            h[keep], target[keep], self.fm.item_table(), None, None)

    def binary_logit(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(N,) logits for user states h (N, d) and candidate items (N,)."""
        scores = self.fm.score(h)  # (N, n_items), reserved ids -inf
        logp = torch.log_softmax(scores, dim=-1).gather(1, items[:, None])[:, 0]  # (N,)
        return self.head(h, self.fm.item_table()[items], logp)

    def _subset_scorer(self, rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """surface: (B, n_items) next-item scores, items outside the subset at -inf."""
        scores = self.fm.score(self.fm.last_hidden(batch))
        return scores.masked_fill(~self.subset, float("-inf"))

    def _task_rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of a split frame this task evaluates (a target it can score)."""
        if self.task.kind == "binary":
            return frame.filter(pl.col("target_action").is_not_null()
                                & pl.col("target").is_not_null())
        if self.task.kind == "shown":
            return frame.filter(pl.col("target").is_not_null()
                                & (pl.col(f"target_{SHOWN}") > 0))
        in_subset = self.subset.numpy()[frame["target"].fill_null(0).to_numpy()]
        return frame.filter(pl.Series(in_subset))

    @torch.no_grad()
    def evaluate(self, frame: pl.DataFrame, batch_size: int = 512) -> dict[str, float]:
        """Metrics on a split frame (one row per user: history, ``target``, ``target_*``)."""
        self.eval()
        if self.task.kind == "surface":
            m = evaluate_scorer(self._subset_scorer, self._task_rows(frame), self.fm.cfg.n_items,
                                self.fm.cfg.max_len, self.fm.input_columns,
                                batch_size=batch_size, ks=(10, 20))
            keys = ("users", "ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")
            return {**{k: m[k] for k in keys}, "subset_items": int(self.subset.sum())}
        pu = self.per_user(frame, batch_size)
        logits, labels = pu["logit"], pu["label"]
        y = torch.from_numpy(labels.astype(np.float64))
        logloss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), y))
        users = len(logits) // 2 if self.task.kind == "shown" else len(logits)
        return {"users": users, "auc": auc_score(logits, labels), "logloss": logloss,
                "positive_rate": float(labels.mean()) if len(labels) else float("nan")}

    @torch.no_grad()
    def per_user(self, frame: pl.DataFrame, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per evaluated user in ``frame`` order, for paired comparisons of task models:
        surface → ``ndcg@10`` (subset rank, seen items excluded, ties against the model);
        binary → ``logit``, ``label``; shown → those of every chosen title, then of every
        shown one (users with a shown title only)."""
        self.eval()
        frame = self._task_rows(frame)
        if self.task.kind == "surface":
            ranks = target_ranks(self._subset_scorer, frame, self.fm.cfg.max_len,
                                 self.fm.input_columns, batch_size=batch_size)
            r = torch.from_numpy(ranks).double()  # NDCG in torch: numpy's log2 differs
            return {"ndcg@10": ((r < 10) / torch.log2(r + 2)).numpy()}
        store = SequenceStore(frame, self.fm.input_columns)
        targets = torch.from_numpy(frame["target"].to_numpy().astype(np.int64))
        out = np.zeros(len(frame), dtype=np.float64)
        shown = (torch.from_numpy(frame[f"target_{SHOWN}"].to_numpy().astype(np.int64))
                 if self.task.kind == "shown" else None)
        neg = np.zeros(len(frame), dtype=np.float64)
        for rows, batch in history_batches(store, self.fm.cfg.max_len, batch_size,
                                           by_length=True):
            h = self.fm.last_hidden(batch)
            out[rows] = self.binary_logit(h, targets[rows]).double().numpy()
            if shown is not None:
                neg[rows] = self.binary_logit(h, shown[rows]).double().numpy()
        if self.task.kind == "binary":
            return {"logit": out,
                    "label": frame["target_action"].to_numpy() == self.label_code}
        return {"logit": np.concatenate([out, neg]), "label": np.arange(2 * len(out)) < len(out)}

    def key_metric(self) -> str:
        return "auc" if self.task.has_head else "ndcg@10"

    @torch.no_grad()
    def recommend(self, history: Any, k: int = 10) -> pl.DataFrame:
        """surface: top-``k`` items of the subset for one user's history."""
        if self.task.kind != "surface":
            raise ValueError("recommend is for surface tasks; use predict for binary ones")
        self.eval()
        store = self.rec.store(history if isinstance(history, pl.DataFrame) else [list(history)])
        scores = self.fm.score(self.rec.encode_store(store))[0]
        scores = scores.masked_fill(~self.subset, float("-inf"))
        _, seen = store.history_items(np.arange(1))
        scores[torch.from_numpy(seen)] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        ids = [self.rec.item_id(i) for i in top.indices.tolist()]
        return pl.DataFrame({"rank": np.arange(1, len(ids) + 1), "item_id": ids,
                             "score": top.values.double().numpy()})

    @torch.no_grad()
    def predict(self, histories: Any, item_ids: list[str]) -> np.ndarray:
        """binary: (n,) probability of the label for each (history, next item) pair;
        shown: that the user chooses each title they are shown."""
        if not self.task.has_head:
            raise ValueError("predict is for binary tasks; use recommend for surface ones")
        self.eval()
        index = self.rec.tokenizer.item_index()
        missing = [i for i in item_ids if str(i) not in index]
        if missing:
            raise RecfmError(f"unknown item id {missing[0]!r}")
        h = self.rec.encode_users(histories)  # (n, d)
        items = torch.tensor([index[str(i)] for i in item_ids], dtype=torch.long)
        return torch.sigmoid(self.binary_logit(h, items)).numpy()

    def save_pretrained(self, path: str | Path, extra: dict[str, Any]) -> None:
        """A run directory: the backbone as ``model.safetensors`` (loads as a
        FoundationModel), the task head as ``task_head.safetensors``."""
        path = Path(path)
        rec = Recommender(self.fm, self.rec.tokenizer, self.rec.items)
        rec.save_pretrained(path, {**extra, "task": asdict(self.task)})
        if self.head is not None:
            weights = {k: v.detach().contiguous().clone()
                       for k, v in self.head.state_dict().items()}
            atomic_write_bytes(path / HEAD_WEIGHTS,
                               safetensors_bytes(weights, metadata={"recfm_version": __version__}))
            write_manifest(path, (HEAD_WEIGHTS,))

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool = True) -> "TaskModel":
        path = Path(path)
        if verify:
            verify_manifest(path, (HEAD_WEIGHTS,))
        rec = Recommender.from_pretrained(path, verify=verify)
        meta = json.loads((path / "config.json").read_text())
        if "task" not in meta:
            raise InputError(str(path / "config.json"), None, "task",
                             "a fine-tuned run (recfm finetune)", "a run without a task")
        saved = {"head_norm": False, **meta["task"]}  # runs from before head_norm had none
        model = cls(rec, TaskConfig.from_dict(saved, str(path / "config.json")))
        if model.head is not None:
            with reading(path / HEAD_WEIGHTS, "the task head's safetensors weights"):
                model.head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
        model.eval()
        return model


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneResult:
    run: Path
    best_step: int
    steps: int
    best_valid: dict[str, float]
    test: dict[str, float]
    n_params: int
    n_trainable: int
    wall_s: float


def with_shown(seqs: pl.DataFrame, item_index: dict[str, int], path: str | Path
               ) -> pl.DataFrame:
    """``seqs`` with the list column ``shown``: per token, the item index of the last title
    shown (an impression in ``path``) since the token before, other than its own title; 0:
    none. Impressions of users or titles the model does not know are ignored."""
    imp = read_events(path)
    if "action" in imp.columns:
        imp = imp.filter(pl.col("action") == "impression")
    known = pl.DataFrame({"item_id": list(item_index), "shown_item": list(item_index.values())},
                         schema={"item_id": pl.Utf8, "shown_item": pl.Int64})
    imp = (imp.select("user_id", "item_id", pl.col("timestamp").cast(pl.Int64).alias("t"))
           .join(known, on="item_id").drop("item_id"))
    tokens = (seqs.select("user_idx", "user_id", "item", "ts",
                          pl.int_ranges(pl.col("item").list.len()).alias("pos"))
              .explode("item", "ts", "pos")
              .with_columns(pl.col("ts").cast(pl.Int64).alias("t"),
                            pl.col("item").cast(pl.Int64)))
    # each impression → the first token at or after it (the choice it was shown for)
    hit = (imp.sort("t").join_asof(tokens.sort("t"), on="t", by="user_id", strategy="forward",
                                   check_sortedness=False)  # sorted just above
           .filter(pl.col("pos").is_not_null() & (pl.col("item") != pl.col("shown_item")))
           .group_by("user_idx", "pos").agg(pl.col("shown_item").last()))
    per_user = (tokens.select("user_idx", "pos")
                .join(hit, on=["user_idx", "pos"], how="left", maintain_order="left")
                .with_columns(pl.col("shown_item").fill_null(0).cast(pl.Int32))
                .group_by("user_idx", maintain_order=True).agg(pl.col("shown_item").alias(SHOWN)))
    return seqs.join(per_user, on="user_idx", how="left", maintain_order="left")


def labelled_users(split: Split, share: float) -> Split:
    """The split with training tokens and validation events of ``share`` of the users
    only (drawn with a fixed seed); the test events are kept whole."""
    if share >= 1:
        return split
    users = np.sort(split.train["user_idx"].unique().to_numpy())
    keep = np.random.default_rng(0).permutation(users)[: max(1, round(len(users) * share))]
    mine = pl.col("user_idx").is_in(keep)
    valid = split.valid.filter(mine) if split.valid is not None else None
    return replace(split, train=split.train.filter(mine), valid=valid)


def _scratch_copy(rec: Recommender, seed: int) -> Recommender:
    """The same model, randomly initialised; data buffers (attributes, content, log q) kept."""
    torch.manual_seed(seed)
    base = rec.model
    fresh = FoundationModel(base.cfg, rec.tokenizer, rec.items)
    params = {n for n, _ in fresh.named_parameters()}
    buffers = {k: v for k, v in base.state_dict().items() if k not in params}
    fresh.item_encoder.set_attributes(buffers["item_encoder.attr_offsets"],
                                      buffers["item_encoder.attr_values"])
    fresh.load_state_dict({**fresh.state_dict(), **buffers})
    return Recommender(fresh, rec.tokenizer, rec.items, rec.run_dir)


def _param_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0
                  ) -> list[dict[str, Any]]:
    """AdamW groups as in :func:`recfm.train.loop.train` (no decay on embeddings and
    biases), foundation weights (``fm.``) at ``backbone_lr_scale`` × the learning rate."""
    groups = []
    for is_fm in (True, False):
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith("fm.") == is_fm]
        groups += decay_groups(params, weight_decay,
                               lr_scale=backbone_lr_scale if is_fm else 1.0, fm=is_fm)
    return [g for g in groups if g["params"]]


def task_spans(store: SequenceStore, model: TaskModel, max_len: int, window: str) -> np.ndarray:
    """Training windows with at least one target of the task (the others teach nothing)."""
    spans = store.spans(max_len + 1, window, min_len=2)
    if model.task.kind != "surface" or not len(spans):
        return spans
    hit = model.subset.numpy()[store.values["item"]].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(hit)])
    base = store.offsets[spans[:, 0]]
    n_targets = cum[base + spans[:, 2]] - cum[base + spans[:, 1] + 1]
    return spans[n_targets > 0]


def finetune(run: str | Path, task: TaskConfig, out: str | Path,
             data_dir: str | Path | None = None, from_scratch: bool | None = None,
             resume: bool = False, on_progress: ProgressFn | None = None,
             command: str | None = None) -> FinetuneResult:
    """Fine-tune ``run`` for ``task`` (or train the task model from scratch) into ``out``.
    ``data_dir`` (default: ``run``'s own) must share the run's item vocabulary;
    ``from_scratch`` overrides ``task.from_scratch``."""
    t_start = time.perf_counter()
    run, out = Path(run), Path(out)
    scratch = task.from_scratch if from_scratch is None else from_scratch
    tcfg = task.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    rec, ds, data_dir = run_dataset(run, data_dir)
    model, trainable = _task_model(rec, task, scratch)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_trainable == 0:
        raise RecfmError(f"task {task.name or task.kind}: nothing to train (trainable_layers = 0 "
                         "and a surface task has no head)")
    seqs = ds.sequences
    if task.kind == "shown":
        seqs = with_shown(seqs, model.rec.tokenizer.item_index(), task.impressions)
    split = labelled_users(leave_one_out(seqs), task.train_users)
    store = SequenceStore(split.train, model.columns)
    spans = task_spans(store, model, model.fm.cfg.max_len, tcfg.window)
    if not len(spans):
        raise RecfmError(f"task {task.name or task.kind}: no training event has a target in "
                         f"the task (filter {task.items})")
    meta = {"train": asdict(tcfg), "init_from": None if scratch else str(run),
            "from_scratch": scratch, "base_run": str(run), **run_meta(data_dir, ds, command),
            "n_params": n_params, "n_trainable": n_trainable}
    trainer = _task_trainer(model, task, MemoryBatches(store, spans, tcfg.batch_size, tcfg.seed),
                            split.valid, (out, meta), scratch, trainable)
    trainer.on_progress = on_progress
    trainer.resume(resume)
    trainer.fit()
    state = trainer.state
    best = TaskModel.from_pretrained(out)
    best_valid = best.evaluate(split.valid, tcfg.eval_batch_size)
    test = best.evaluate(split.test, tcfg.eval_batch_size)
    wall = time.perf_counter() - t_start
    atomic_write_json(out / "summary.json", {
        "task": asdict(task), "from_scratch": scratch, "best_step": state["best_step"],
        "steps": state["step"], "valid": best_valid, "test": test, "n_params": n_params,
        "n_trainable": n_trainable, "wall_s": round(wall, 2), "stop_reason": trainer.reason})
    return FinetuneResult(out, state["best_step"], state["step"], best_valid, test, n_params,
                          n_trainable, wall)


def _task_model(rec: Recommender, task: TaskConfig, scratch: bool
                ) -> tuple[TaskModel, int | None]:
    """The task model (re-initialised from scratch) with its frozen layers, and the number
    of trainable top layers (None: every layer trains)."""
    seed = task.train.seed
    if scratch:
        rec = _scratch_copy(rec, seed)
    torch.manual_seed(seed)
    model = TaskModel(rec, task)
    trainable = None if scratch else task.trainable
    freeze(rec.model, trainable)
    if scratch and task.trainable is not None:
        log.info("from scratch: every layer trains (frozen random layers would be no baseline)")
    return model, trainable


def _task_trainer(model: TaskModel, task: TaskConfig, data: MemoryBatches,
                  valid: pl.DataFrame, out: tuple[Path, dict[str, Any]], scratch: bool,
                  trainable: int | None) -> Trainer:
    """``max_steps`` steps of the task's loss, validated every ``eval_every`` steps (the
    starting model a candidate); the foundation waits ``head_only_steps`` (LP-FT)."""
    tcfg = task.train
    path, meta = out
    opt = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay,
                                          1.0 if scratch else task.backbone_lr_scale),
                            lr=tcfg.lr, betas=tuple(tcfg.betas))

    def train_mode() -> None:
        model.train()
        if trainable is not None:
            freeze_modes(model, trainable)

    validation = Validation(lambda: model.evaluate(valid, tcfg.eval_batch_size),
                            key=model.key_metric(), logged=(model.key_metric(),),
                            every=task.eval_every, initial=True)
    files = RunFiles(path, lambda: model.save_pretrained(path, meta),
                     tensorboard=tcfg.tensorboard)
    # checkpoints at validations only; the step budget is max_steps (no time budget)
    return Trainer(model, opt, replace(tcfg, checkpoint_every=0), data,
                   lambda batch: (model.loss(batch), 1), task.max_steps, validation, files,
                   max_steps=task.max_steps, train_mode=train_mode,
                   hold_steps=0 if scratch else task.head_only_steps)


def freeze_modes(model: TaskModel, trainable_layers: int) -> None:
    """Frozen parts of the backbone in eval mode (no dropout), trainable parts training."""
    model.fm.train(False)
    for m in trainable_modules(model.fm, trainable_layers):
        m.train(True)
