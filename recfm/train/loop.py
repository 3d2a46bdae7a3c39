"""``train``: the foundation model's training run, a configuration of the one Trainer.

The loop is :class:`recfm.train.trainer.Trainer`; this module chooses its parts: the data
(in memory, streamed shards, a DDP rank's rows, incremental fresh tokens), the loss
(``model.loss`` or a :class:`LossHook`) and leave-one-out validation by NDCG@10.
Run directory: docs/guide/training.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recfm import __version__
from recfm.tokens.batching import SequenceStore, count_batches
from recfm.content.store import load_dataset_content
from recfm.data.splits import Split, leave_one_out
from recfm.errors import ConfigError, RecfmError
from recfm.evaluate.evaluator import (GenerativeScorer, evaluate_scorer, model_scorer,
                                     popularity_scorer)
from recfm.io import atomic_write_json
from recfm.model.config import ModelConfig
from recfm.model.device import Placement, compiled
from recfm.model.foundation import FoundationModel, build_config
from recfm.pipeline import Recommender
from recfm.runinfo import run_data_dir
from recfm.tokens.prepare import PreparedDataset
from recfm.tokens import windows
from recfm.train import distributed, shards
from recfm.train.batches import MemoryBatches
from recfm.train.config import TrainConfig
from recfm.train.fresh import FRESH, fresh_spans, fresh_split, mask_context_targets
from recfm.train.run import data_fingerprint, machine_info
from recfm.train.trainer import (
    Budget,
    DataSource,
    LossFn,
    ProgressFn,
    RunFiles,
    Trainer,
    Validation,
    decay_groups,
    scale_groups,
    tokens_loss,
)

@dataclass
class TrainResult:
    run: Path
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float] | None
    epochs_run: int
    wall_s: float
    tokens_per_s: float
    n_params: int
    stop_reason: str = ""
    popularity_test: dict[str, float] | None = None


@dataclass
class LossHook:
    """Replaces ``model.loss(batch)`` in :func:`train` (distillation: recfm.consume.distill)."""

    fn: Callable[[FoundationModel, dict[str, torch.Tensor]], torch.Tensor]
    columns: list[str] = field(default_factory=list)
    """Token columns ``fn`` reads beyond the model's own (e.g. a teacher's inputs)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Recorded in the run's ``config.json``."""


def init_model(run: Path | Recommender, ds: PreparedDataset) -> Recommender:
    """The model of an existing run (or a model in memory), checked against the dataset it
    will be tuned on."""
    rec = run if isinstance(run, Recommender) else Recommender.from_pretrained(run)
    if rec.tokenizer is None or rec.tokenizer.item_ids != ds.tokenizer.item_ids:
        raise RecfmError(f"{ds.path}: its item vocabulary differs from the run {run}; tune "
                         "it on the dataset it was trained on, or on data tokenized with it "
                         "(recfm train --init-from RUN --events FILE)")
    return rec


def run_dataset(run: Path, data_dir: str | Path | None = None
                ) -> tuple[Recommender, PreparedDataset, Path]:
    """An existing run, the dataset it is tuned on (default: its training data) and that
    dataset's folder, checked to share the run's item vocabulary."""
    data_dir = Path(data_dir) if data_dir is not None else run_data_dir(run)
    if data_dir is None:
        raise RecfmError(f"{run}: the dataset it was trained on is not there; give --data DIR")
    ds = PreparedDataset.load(data_dir)
    return init_model(run, ds), ds, data_dir


def run_meta(data_dir: Path, ds: PreparedDataset, command: str | None) -> dict[str, Any]:
    """Provenance recorded in a run's ``config.json``: data, versions, machine, command."""
    return {"data": {"path": str(data_dir.resolve()), "fingerprint": data_fingerprint(data_dir),
                     "dataset": ds.report.get("dataset")},
            "recfm_version": __version__, "machine": machine_info(), "command": command}


def new_model(model_cfg: ModelConfig, ds: PreparedDataset, split: Split,
              data_dir: Path) -> Recommender:
    """A freshly initialised model for ``ds``: attributes, content and item log-frequencies."""
    mcfg, (offsets, values) = build_config(model_cfg, ds.tokenizer, ds.items, split.train)
    content = load_dataset_content(data_dir, ds.items, mcfg.n_items) if mcfg.use_content \
        else None
    if content is not None:
        mcfg = replace(mcfg, content_dim=int(content[0].shape[1]),
                       content_embedder=str(content[1].get("embedder", "")))
    model = FoundationModel(mcfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    if content is not None:
        model.item_encoder.set_content(content[0])
    counts = np.bincount(split.train["item"].explode().to_numpy(), minlength=mcfg.n_items)
    q = (counts[:mcfg.n_items] + 1.0) / (counts.sum() + mcfg.n_items)
    model.log_q.copy_(torch.from_numpy(np.log(q)).float())
    return Recommender(model, ds.tokenizer, ds.items)


def data_source(data_dir: Path, split: Split, model: FoundationModel, tcfg: TrainConfig,
                extra: list[str], fresh: bool, ddp) -> tuple[DataSource, int]:
    """The batches (in memory, streamed, a DDP rank's, or fresh tokens); the schedule's steps."""
    max_len, bs = model.cfg.max_len, tcfg.batch_size
    per_epoch = not fresh and windows.varies(tcfg.window, tcfg.seq_len_schedule)
    if per_epoch:
        windows.check_schedule(tcfg.seq_len_schedule, max_len)
    if tcfg.stream:
        if per_epoch:
            raise ConfigError("window = 'random' and seq_len_schedule need the whole dataset "
                              "in memory; they do not work with stream = true yet")
        src = shards.streamer(data_dir, model.train_columns + extra, max_len, tcfg, ddp)
        return src, src.n_batches(0) * tcfg.epochs
    store = SequenceStore(split.train, model.train_columns + extra + ([FRESH] if fresh else []))
    rows = ddp.rows if ddp is not None else None
    if fresh:  # incremental data: spans over the fresh targets, context targets masked
        spans = fresh_spans(store, max_len + 1)
        return (MemoryBatches(store, spans, bs, tcfg.seed, rows=rows,
                              transform=mask_context_targets),
                count_batches(len(spans), bs) * tcfg.epochs)
    if not per_epoch:
        spans = store.spans(max_len + 1, tcfg.window, min_len=2)
        return (MemoryBatches(store, spans, bs, tcfg.seed, rows=rows),
                count_batches(len(spans), bs) * tcfg.epochs)

    def respan(epoch: int, fraction: float) -> np.ndarray:  # random windows, length schedule
        return windows.epoch_spans(store, tcfg.window, tcfg.seq_len_schedule, max_len,
                                   tcfg.seed, epoch, fraction)

    total = windows.planned_steps(store, tcfg.window, tcfg.seq_len_schedule, max_len,
                                  tcfg.seed, tcfg.epochs, bs)
    return MemoryBatches(store, respan(0, 0.0), bs, tcfg.seed, respan, rows), total


def train(
    data_dir: str | Path,
    run: str | Path,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    resume: bool = False,
    evaluate_test: bool = True,
    on_progress: ProgressFn | None = None,
    command: str | None = None,
    init_from: str | Path | Recommender | None = None,
    split: Split | None = None,
    loss_hook: LossHook | None = None,
) -> TrainResult:
    """Train a foundation model on a prepared dataset with the leave-one-out protocol.

    ``init_from``: start from an existing run, or a model in memory (e.g. one given a
    generative head: :func:`recfm.adapt.semantic_ids.generative_model`); the dataset must
    share its item vocabulary.
    A dataset with a ``fresh`` column trains incrementally (:mod:`recfm.train.fresh`); item
    content is used when the dataset has it and ``model_cfg.use_content``. ``split``
    replaces leave-one-out (e.g. :func:`recfm.evaluate.objectives.future_holdout`).
    """
    t_start = time.perf_counter()
    data_dir, run = Path(data_dir), Path(run)
    tcfg = train_cfg or TrainConfig()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    # streaming: only a sample of users is loaded (validation, test); batches stream
    ds = PreparedDataset.load(data_dir, tcfg.stream_eval_groups if tcfg.stream else None)
    fresh = FRESH in ds.sequences.columns  # incremental data: only fresh tokens are targets
    if fresh:
        split, evaluate_test = fresh_split(ds.sequences, seed=tcfg.seed), False
    elif split is None:
        split = leave_one_out(ds.sequences)
    torch.manual_seed(tcfg.seed)
    start = init_from if isinstance(init_from, Recommender) or init_from is None \
        else Path(init_from)
    rec = init_model(start, ds) if start is not None else \
        new_model(model_cfg or ModelConfig(), ds, split, data_dir)
    model = rec.model
    n_params = sum(p.numel() for p in model.parameters())
    ddp = distributed.trainer(model, tcfg.seed, "incremental training" if fresh else
                              "a loss hook" if loss_hook is not None else None)
    at = Placement.of(tcfg.device, tcfg.precision, ddp.ctx.device if ddp is not None else None)
    model.to(at.device)
    extra = [c for c in loss_hook.columns if c not in model.train_columns] if loss_hook else []
    source, total_steps = data_source(data_dir, split, model, tcfg, extra, fresh, ddp)
    meta = {"train": asdict(tcfg), **run_meta(data_dir, ds, command), "n_params": n_params}
    if init_from is not None:
        meta.update(init_from=str(start.resolve()) if isinstance(start, Path)
                    else str(start.run_dir or "a model in memory"), incremental=fresh)
    meta.update(loss_hook.meta if loss_hook is not None else {})
    if ddp is not None:
        meta["distributed"] = {"world": ddp.ctx.world, "backend": ddp.ctx.backend}
    meta["placement"] = {"device": str(at.device), "autocast": str(at.dtype or "fp32")}
    trainer = _trainer(rec, tcfg, (source, total_steps), split, (run, meta), (ddp, at),
                       loss_hook, strict_budget=fresh)
    trainer.on_progress = on_progress
    trainer.resume(resume)
    if init_from is not None and trainer.files.main and not (run / "model.safetensors").exists():
        rec.save_pretrained(run, meta)  # a tuned run's start is a valid best-so-far model
    trainer.fit()  # a new run's model.safetensors appears with its first validation
    if ddp is not None:
        ddp.barrier()  # rank 0's last save is complete
    return _finish(run, split, trainer, evaluate_test, t_start, n_params, at)


GENERATIVE_K = 20
"""Items a generative model's beam search returns in validation and test: metrics beyond
@20 count only these."""


def selection(tcfg: TrainConfig, model: FoundationModel) -> bool:
    """Whether validation ranks by the model's generative head (``TrainConfig.selection``)."""
    if tcfg.selection not in ("auto", "score", "generative"):
        raise ConfigError(f"[train] selection: expected auto, score or generative, found "
                          f"{tcfg.selection!r}")
    if tcfg.selection == "generative" and model.generative is None:
        raise ConfigError("[train] selection = 'generative' needs a model with a generative "
                          "head (recfm train --semantic-ids RUN)")
    return tcfg.selection == "generative" or (tcfg.selection == "auto"
                                              and model.generative is not None)


def _trainer(rec: Recommender, tcfg: TrainConfig, data: tuple[DataSource, int],
             split: Split, out: tuple[Path, dict[str, Any]], where: tuple[Any, Placement],
             loss_hook: LossHook | None, strict_budget: bool) -> Trainer:
    """The Trainer of a foundation-model run: next-item loss (or the hook's), NDCG@10;
    ``where``: the DDP trainer (or None) and the placement; ``strict_budget`` (incremental
    data): the budget stops inside an epoch."""
    (run, meta), (ddp, at) = out, where
    model = rec.model
    groups = decay_groups(list(model.named_parameters()), tcfg.weight_decay)
    if tcfg.lr_scales:
        groups = scale_groups(model, groups, tcfg.lr_scales)
    opt = at.optimizer(groups, tcfg.lr, tuple(tcfg.betas))
    loss: LossFn
    if loss_hook is not None:
        loss = tokens_loss(at.loss(compiled(lambda batch: loss_hook.fn(model, batch),
                                            tcfg.compile)))
    elif ddp is not None:  # the global batch's token mean (recfm.train.distributed)
        ddp_loss = at.loss(ddp.loss)
        loss = lambda batch: (ddp_loss(batch), ddp.last_tokens)  # noqa: E731
    else:
        loss = tokens_loss(at.loss(compiled(model.loss, tcfg.compile)))
    mcfg = model.cfg

    generative = selection(tcfg, model)

    def validate() -> dict[str, float]:
        scorer = GenerativeScorer(model, k=GENERATIVE_K, placement=at) if generative \
            else model_scorer(model, at)
        return (evaluate_scorer if ddp is None else ddp.evaluate)(
            scorer, split.valid, mcfg.n_items, mcfg.max_len, model.input_columns,
            batch_size=tcfg.eval_batch_size, ks=(10, 20))

    files = RunFiles(run, lambda: rec.save_pretrained(run, meta),
                     ddp.checkpointer(run) if ddp is not None else None,
                     ddp is None or ddp.ctx.is_main, tcfg.tensorboard)
    budget = Budget(tcfg.max_minutes, strict=strict_budget) if tcfg.max_minutes else None
    return Trainer(model, opt, tcfg, data[0], loss, data[1], Validation(validate), files,
                   budget=budget, agree=ddp.broadcast if ddp is not None else None,
                   micro_batch_tokens=tcfg.micro_batch_tokens if ddp is None else 0)


def _finish(run: Path, split: Split, trainer: Trainer, evaluate_test: bool, t_start: float,
            n_params: int, at: Placement) -> TrainResult:
    """Validation and test metrics of the best model (on the training's device),
    ``summary.json``, the result."""
    state, tcfg = trainer.state, trainer.cfg
    best = FoundationModel.from_pretrained(run).to(at.device)
    cfg = best.cfg

    def metrics(scorer, frame):
        return evaluate_scorer(scorer, frame, cfg.n_items, cfg.max_len, best.input_columns,
                               batch_size=tcfg.eval_batch_size)

    # what the model was selected by: every item scored, or its generative head's beam search
    scorer = GenerativeScorer(best, k=GENERATIVE_K, placement=at) if selection(tcfg, best) \
        else model_scorer(best, at)
    best_valid = metrics(scorer, split.valid)
    test = metrics(scorer, split.test) if evaluate_test else None
    pop_test = metrics(popularity_scorer(split.train, cfg.n_items), split.test) \
        if evaluate_test else None
    wall = time.perf_counter() - t_start
    summary = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "retrieval": "generative" if isinstance(scorer, GenerativeScorer) else "score",
               "steps": state["step"], "train_s": round(state["train_s"], 2),
               "valid": best_valid, "test": test, "popularity_test": pop_test,
               "n_params": n_params, "tokens_per_s_last_epoch": round(trainer.tokens_per_s, 1),
               "wall_s": round(wall, 2), "stop_reason": trainer.reason}
    if trainer.files.main:
        atomic_write_json(run / "summary.json", summary)
    return TrainResult(run, state["best_epoch"], best_valid, test, state["epoch"], wall,
                       trainer.tokens_per_s, n_params, trainer.reason or "", pop_test)
