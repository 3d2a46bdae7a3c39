"""The training loop: AdamW, warm-up + cosine, clipping, validation, early stopping, resume.

Readable top to bottom (nanoGPT's ``train.py`` is the model). A run directory::

    config.json            model + train config, data fingerprint, versions, command
    model.safetensors      the best weights so far (by validation NDCG@10)
    tokenizer.json, items.parquet   what the model needs at inference
    checkpoint/model.safetensors, checkpoint/state.pt   the last checkpoint (resume)
    metrics.csv, tb/       one row per epoch (and TensorBoard events)
    summary.json           best epoch and metrics, test metrics at the end

Determinism: the batch order of epoch ``e`` depends only on (seed, e); dropout uses the
torch RNG, whose state is checkpointed. So a run killed at any point and resumed from
its last checkpoint ends with the same weights as a run that never stopped.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from recfm import __version__
from recfm.batching import SequenceStore, count_batches
from recfm.config import from_dict
from recfm.data.splits import Split, leave_one_out
from recfm.evaluate.evaluator import evaluate_scorer, model_scorer, popularity_scorer
from recfm.io import atomic_write_json
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.prepare import PreparedDataset
from recfm.train import windows
from recfm.train.windows import mask_before_first_target

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and schedule. Saved in ``config.json`` beside the model config."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] | list[float] = (0.9, 0.98)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    patience: int = 10
    """Stop after this many epochs without a better validation NDCG@10."""
    eval_batch_size: int = 512
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps inside an epoch (0: at epoch ends only)."""
    max_minutes: float | None = None
    """Stop once training + validation have taken this long (the best checkpoint is kept). The
    cosine schedule is then fitted to the budget: after the first epoch, the number of
    epochs that fit is estimated and the decay ends there (recorded in the checkpoint)."""
    window: str = "truncate"
    """Long histories: keep the last context window (``truncate``), train on fixed sliding
    windows (``sliding``), or on windows redrawn each epoch that train every target once
    per epoch (``random``, :mod:`recfm.train.windows`)."""
    seq_len_schedule: list[list[float]] = field(default_factory=list)
    """Progressive context length: ``[[0, 128], [0.5, 512]]`` = 128 tokens for the first
    half of the planned epochs, 512 after (each ≤ the model's max_len). Empty: max_len."""
    threads: int | None = None
    tensorboard: bool = True
    stream: bool = False
    """Read training batches lazily from ``tokens.parquet`` row groups (datasets larger than
    memory; each process its own groups, :mod:`recfm.train.shards`). Validation, test and
    facet sizes then use the first ``stream_eval_groups`` row groups' users only."""
    stream_window_groups: int = 4
    """Row groups held in memory (and shuffled together) at a time when streaming."""
    stream_eval_groups: int = 2
    lr_scales: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by parameter-name prefix (the longest matching prefix wins),
    e.g. ``{"item_encoder.ids": 10.0, "backbone": 0.1}`` (incremental training: new titles'
    id rows start from zero and must move fast). Empty: one rate for every parameter."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<train config>") -> "TrainConfig":
        return from_dict(cls, data, source)


def load_run_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read ``[model]`` and ``[train]`` tables from one TOML file."""
    from recfm.config import read_toml
    from recfm.errors import InputError

    data = read_toml(path)
    unknown = set(data) - {"model", "train"}
    if unknown:
        raise InputError(str(path), None, sorted(unknown)[0], "a [model] or [train] table",
                         "another key")
    return (ModelConfig.from_dict(data.get("model", {}), str(path)),
            TrainConfig.from_dict(data.get("train", {}), str(path)))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio × lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * ratio


def scale_groups(model: torch.nn.Module, groups: list[dict[str, Any]],
                 scales: dict[str, float]) -> list[dict[str, Any]]:
    """Split optimizer parameter groups by ``TrainConfig.lr_scales`` (an ``lr_scale`` key)."""
    names = {id(p): n for n, p in model.named_parameters()}

    def scale_of(p: torch.Tensor) -> float:
        hits = [k for k in scales if names.get(id(p), "").startswith(k)]
        return float(scales[max(hits, key=len)]) if hits else 1.0

    out = []
    for g in groups:
        by: dict[float, list] = {}
        for p in g["params"]:
            by.setdefault(scale_of(p), []).append(p)
        out += [{**g, "params": ps, "lr_scale": sc} for sc, ps in sorted(by.items())]
    return out


def epoch_plan(spans: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-bucketed batches of span indices; depends only on (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    lens = spans[:, 2] - spans[:, 1]
    order = np.argsort(lens + rng.uniform(0, 2, len(lens)), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def make_batch(store: SequenceStore, spans: np.ndarray) -> dict[str, torch.Tensor]:
    """Inputs = tokens[:-1] of each span, ``target`` = items[1:].

    The whole spans are kept as ``future_<column>`` (B, T + 1): objectives that look
    further ahead than the next token (multi-token, future window, facet heads) read them.
    """
    full = store.gather(spans)
    batch = {k: v[:, :-1] for k, v in full.items()}
    batch["target"] = full["item"][:, 1:].clone()
    batch.update({f"future_{k}": v for k, v in full.items()})
    mask_before_first_target(batch, spans)  # random windows: each target once per epoch
    return batch


def data_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("tokens.parquet", "items.parquet", "tokenizer.json"):
        p = path / name
        if p.is_file():
            with p.open("rb") as f:  # in blocks: the token file may not fit in memory
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


class Checkpointer:
    """Atomic save / load of everything needed to resume exactly."""

    def __init__(self, run: Path) -> None:
        self.dir = run / "checkpoint"

    def exists(self) -> bool:
        return (self.dir / "state.pt").is_file()

    def save(self, model: FoundationModel, opt: torch.optim.Optimizer, state: dict) -> None:
        tmp = self.dir.parent / ".checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    **state}, tmp / "state.pt")
        # swap the directory in one rename; the old one is removed after
        old = self.dir.parent / ".checkpoint.old"
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        if old.exists():
            for p in old.iterdir():
                p.unlink()
            old.rmdir()

    def load(self, model: FoundationModel, opt: torch.optim.Optimizer) -> dict:
        state = torch.load(self.dir / "state.pt", weights_only=True)
        model.load_state_dict(load_file(str(self.dir / "model.safetensors")))
        opt.load_state_dict(state.pop("optimizer"))
        torch.set_rng_state(state.pop("torch_rng"))
        return state


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


ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class LossHook:
    """Replaces ``model.loss(batch)`` in :func:`train` (distillation: recfm.consume.distill)."""

    fn: Callable[[FoundationModel, dict[str, torch.Tensor]], torch.Tensor]
    columns: list[str] = field(default_factory=list)
    """Token columns ``fn`` reads beyond the model's own (e.g. a teacher's inputs)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Recorded in the run's ``config.json``."""


def _init_model(run: Path, ds: PreparedDataset) -> FoundationModel:
    """The model of an existing run, checked against the dataset it will be tuned on."""
    from recfm.errors import RecfmError

    model = FoundationModel.from_pretrained(run)
    if model.tokenizer is None or model.tokenizer.item_ids != ds.tokenizer.item_ids:
        raise RecfmError(f"{ds.path}: its item vocabulary differs from the run {run}; fine-tune "
                         "on data tokenized with that run (recfm train --init-from RUN "
                         "--events FILE)")
    return model


def _recover_interrupted_checkpoint(run: Path) -> None:
    """A crash between the two renames of Checkpointer.save leaves only .checkpoint.old."""
    ckpt, old = run / "checkpoint", run / ".checkpoint.old"
    if not ckpt.exists() and old.exists():
        os.replace(old, ckpt)


def train(
    data_dir: str | Path,
    run: str | Path,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    resume: bool = False,
    evaluate_test: bool = True,
    on_progress: ProgressFn | None = None,
    command: str | None = None,
    init_from: str | Path | None = None,
    split: Split | None = None,
    loss_hook: LossHook | None = None,
) -> TrainResult:
    """Train a foundation model on a prepared dataset with the leave-one-out protocol.

    ``init_from``: start from the weights and config of an existing run (fine-tuning); the
    dataset must use that run's item vocabulary. A dataset with a ``fresh`` list column (see
    :func:`recfm.adapt.incremental.build_incremental_dataset`) trains incrementally: only
    fresh tokens are targets, older ones are context, and a sample of users' last fresh
    token validates. Item content (``content.parquet``, :mod:`recfm.content`) is combined
    with the id embeddings when the dataset has it and ``model_cfg.use_content``.
    ``split`` replaces the default leave-one-out split (e.g. a future holdout,
    :func:`recfm.evaluate.objectives.future_holdout`).
    """
    t_start = time.perf_counter()
    data_dir, run = Path(data_dir), Path(run)
    tcfg = train_cfg or TrainConfig()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    if tcfg.stream:  # only a sample of users is loaded; batches stream (recfm.train.shards)
        from recfm.train.shards import load_sample
        ds = load_sample(data_dir, tcfg.stream_eval_groups)
    else:
        ds = PreparedDataset.load(data_dir)
    fresh = "fresh" in ds.sequences.columns  # incremental data: only fresh tokens are targets
    if fresh:
        from recfm.adapt.incremental import fresh_split
        split = fresh_split(ds.sequences, seed=tcfg.seed)
        evaluate_test = False
    elif split is None:
        split = leave_one_out(ds.sequences)
    torch.manual_seed(tcfg.seed)
    if init_from is not None:
        model = _init_model(Path(init_from), ds)
        mcfg = model.cfg
        model.train()
    else:
        mcfg, (offsets, values) = build_config(model_cfg or ModelConfig(), ds.tokenizer,
                                               ds.items, split.train)
        content = None
        if mcfg.use_content:
            from recfm.content.store import load_dataset_content
            content = load_dataset_content(data_dir, ds.items, mcfg.n_items)
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
    n_params = sum(p.numel() for p in model.parameters())
    from recfm.train import distributed  # several processes: DDP (recfm.train.distributed)
    ddp = distributed.trainer(model, tcfg.seed, "incremental training" if fresh else
                              "a loss hook" if loss_hook is not None else None)
    main = ddp is None or ddp.is_main  # rank 0 writes the run directory

    hook_columns = [c for c in loss_hook.columns if c not in model.train_columns] \
        if loss_hook is not None else []
    store = SequenceStore(split.train, model.train_columns + hook_columns
                          + (["fresh"] if fresh else []))
    if fresh:
        from recfm.adapt.incremental import fresh_spans
        spans = fresh_spans(store, mcfg.max_len + 1)
    else:
        spans = store.spans(mcfg.max_len + 1, tcfg.window, min_len=2)
    per_epoch = not fresh and windows.varies(tcfg.window, tcfg.seq_len_schedule)
    if per_epoch:  # random windows or a sequence-length schedule: spans drawn per epoch
        windows.check_schedule(tcfg.seq_len_schedule, mcfg.max_len)
        spans = windows.epoch_spans(store, tcfg.window, tcfg.seq_len_schedule, mcfg.max_len,
                                    tcfg.seed, 0, 0.0)
    n_batches = count_batches(len(spans), tcfg.batch_size)
    total_steps = n_batches * tcfg.epochs
    if per_epoch:
        total_steps = windows.planned_steps(store, tcfg.window, tcfg.seq_len_schedule,
                                            mcfg.max_len, tcfg.seed, tcfg.epochs,
                                            tcfg.batch_size)
    streamer = None
    if tcfg.stream:
        if per_epoch:
            from recfm.errors import ConfigError
            raise ConfigError("window = 'random' and seq_len_schedule need the whole dataset in "
                             "memory; they do not work with stream = true yet")
        from recfm.train.shards import streamer as make_streamer
        streamer = make_streamer(data_dir, model.train_columns + hook_columns, mcfg.max_len,
                                 tcfg, ddp)
        n_batches = streamer.n_batches(0)
        total_steps = n_batches * tcfg.epochs

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "ids" not in n
             and "facets" not in n and "positions" not in n and "output_items" not in n]
    no_decay = [p for p in model.parameters() if all(p is not d for d in decay)]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if tcfg.lr_scales:
        groups = scale_groups(model, groups, tcfg.lr_scales)
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas))

    run.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_checkpoint(run)
    ckpt = Checkpointer(run) if ddp is None else ddp.checkpointer(run)
    state = {"epoch": 0, "batch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0,
             "tokens": 0, "train_s": 0.0, "total_steps": total_steps}
    if resume and ckpt.exists():
        state.update(ckpt.load(model, opt))
        log.info("resumed from epoch %d batch %d (step %d)", state["epoch"], state["batch"],
                 state["step"])
    elif (run / "checkpoint").exists() and not resume:
        from recfm.errors import RecfmError
        raise RecfmError(f"{run}: a run already exists here; pass --resume to continue it "
                         "or choose another --out")
    meta = {
        "train": asdict(tcfg),
        "data": {"path": str(data_dir), "fingerprint": data_fingerprint(data_dir),
                 "dataset": ds.report.get("dataset")},
        "recfm_version": __version__, "machine": machine_info(), "command": command,
        "n_params": n_params,
    }
    if init_from is not None:
        meta["init_from"] = str(init_from)
        meta["incremental"] = fresh
    if loss_hook is not None:
        meta.update(loss_hook.meta)
    if ddp is not None:
        meta["distributed"] = {"world": ddp.ctx.world, "backend": ddp.ctx.backend}
    if not (run / "model.safetensors").exists() and main:
        model.save_pretrained(run, meta)
    metrics_path = run / "metrics.csv"
    if resume and main:
        _truncate_csv(metrics_path, state["epoch"])
    writer = None
    if tcfg.tensorboard and main:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run / "tb"))
        except ImportError:  # tensorboard is optional at run time
            log.warning("tensorboard is not installed; metrics go to metrics.csv only")

    valid_cols = model.input_columns
    popularity = popularity_scorer(split.train, mcfg.n_items)
    t_budget = tcfg.max_minutes * 60 if tcfg.max_minutes else None
    tokens_per_s = 0.0
    stop = False
    epoch = state["epoch"]
    while epoch < tcfg.epochs and not stop:
        if per_epoch:
            spans = windows.epoch_spans(store, tcfg.window, tcfg.seq_len_schedule,
                                        mcfg.max_len, tcfg.seed, epoch,
                                        epoch / state.get("planned_epochs", tcfg.epochs))
        plan = epoch_plan(spans, tcfg.batch_size, tcfg.seed, epoch) if streamer is None \
            else range(streamer.n_batches(epoch))
        model.train()
        t_epoch = time.perf_counter()
        ep_tokens, ep_loss, ep_n = 0, 0.0, 0
        for bi in range(state["batch"], len(plan)):
            batch = streamer.batch(epoch, bi) if streamer is not None else \
                make_batch(store, spans[plan[bi] if ddp is None else ddp.rows(plan[bi])])
            if fresh:
                from recfm.adapt.incremental import mask_context_targets
                mask_context_targets(batch)
                if t_budget is not None and \
                        state["train_s"] + time.perf_counter() - t_epoch >= t_budget:
                    break  # a fine-tune's budget is strict: stop inside the epoch
            lr = lr_at(state["step"], state["total_steps"], tcfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            loss = loss_hook.fn(model, batch) if loss_hook is not None else \
                model.loss(batch) if ddp is None else ddp.loss(batch)  # global batch's mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            n_tok = int((batch["target"] > 0).sum()) if ddp is None else ddp.last_tokens
            state["step"] += 1
            state["batch"] = bi + 1
            state["tokens"] += n_tok
            ep_tokens += n_tok
            ep_loss += float(loss.detach()) * n_tok
            ep_n += n_tok
            elapsed = time.perf_counter() - t_epoch
            tokens_per_s = ep_tokens / max(elapsed, 1e-9)
            if on_progress:
                on_progress({"epoch": epoch, "batch": bi + 1, "batches": len(plan),
                             "loss": float(loss.detach()), "tokens_per_s": tokens_per_s, "lr": lr})
            if tcfg.checkpoint_every and state["step"] % tcfg.checkpoint_every == 0:
                state["train_s"] += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                ckpt.save(model, opt, state)
        state["train_s"] += time.perf_counter() - t_epoch
        train_s_epoch = time.perf_counter() - t_epoch

        t_eval = time.perf_counter()
        model.eval()
        valid = (evaluate_scorer if ddp is None else ddp.evaluate)(
            model_scorer(model), split.valid, mcfg.n_items, mcfg.max_len, valid_cols,
            batch_size=tcfg.eval_batch_size, ks=(10, 20))
        eval_s = time.perf_counter() - t_eval
        state["train_s"] += eval_s  # the budget counts validation too
        if t_budget is not None and epoch == 0:
            fit = max(1, int(t_budget / max(train_s_epoch + eval_s, 1e-9)))
            state["total_steps"] = n_batches * min(tcfg.epochs, fit)
            state["planned_epochs"] = min(tcfg.epochs, fit)
            if ddp is not None:  # rank 0's clock decides for every rank
                state["total_steps"] = int(ddp.broadcast(state["total_steps"]))
                state["planned_epochs"] = int(ddp.broadcast(state["planned_epochs"]))
            log.info("time budget: the schedule decays over %d epochs", min(tcfg.epochs, fit))
        improved = valid["ndcg@10"] > state["best"]
        if improved:
            state.update(best=valid["ndcg@10"], best_epoch=epoch, bad_epochs=0)
            if main:
                model.save_pretrained(run, meta)
        else:
            state["bad_epochs"] += 1
        row = {"epoch": epoch, "step": state["step"], "train_loss": ep_loss / max(ep_n, 1),
               "valid_ndcg@10": valid["ndcg@10"], "valid_hr@10": valid["hr@10"],
               "tokens_per_s": round(tokens_per_s, 1), "epoch_train_s": round(train_s_epoch, 2),
               "eval_s": round(eval_s, 2), "lr": lr_at(state["step"], state["total_steps"], tcfg)}
        if main:
            _append_csv(metrics_path, row)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch)
            writer.flush()
        if on_progress:
            on_progress({"epoch_end": True, **row, "best": state["best"],
                         "best_epoch": state["best_epoch"]})
        log.info("epoch %d loss %.4f valid ndcg@10 %.4f (best %.4f @ %d)", epoch,
                 row["train_loss"], valid["ndcg@10"], state["best"], state["best_epoch"])
        epoch += 1
        state.update(epoch=epoch, batch=0)
        if state["bad_epochs"] >= tcfg.patience:
            log.info("early stop: %d epochs without improvement", tcfg.patience)
            stop = True
        if t_budget is not None and state["train_s"] >= t_budget:
            log.info("time budget of %.1f min reached", tcfg.max_minutes)
            stop = True
        if ddp is not None:
            stop = bool(ddp.broadcast(stop))
        ckpt.save(model, opt, state)
    if writer is not None:
        writer.close()

    if ddp is not None:
        ddp.barrier()  # rank 0's last save is complete
    best = FoundationModel.from_pretrained(run)
    best_valid = evaluate_scorer(model_scorer(best), split.valid, mcfg.n_items, mcfg.max_len,
                                 valid_cols, batch_size=tcfg.eval_batch_size)
    test = None
    if evaluate_test:
        test = evaluate_scorer(model_scorer(best), split.test, mcfg.n_items, mcfg.max_len,
                               valid_cols, batch_size=tcfg.eval_batch_size)
    pop_test = evaluate_scorer(popularity, split.test, mcfg.n_items, mcfg.max_len, valid_cols,
                               batch_size=tcfg.eval_batch_size) if evaluate_test else None
    wall = time.perf_counter() - t_start
    summary = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "steps": state["step"], "train_s": round(state["train_s"], 2),
               "valid": best_valid, "test": test, "popularity_test": pop_test,
               "n_params": n_params, "tokens_per_s_last_epoch": round(tokens_per_s, 1),
               "wall_s": round(wall, 2)}
    if main:
        atomic_write_json(run / "summary.json", summary)
    return TrainResult(run, state["best_epoch"], best_valid, test, state["epoch"], wall,
                       tokens_per_s, n_params)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())



def _truncate_csv(path: Path, epoch: int) -> None:
    """Drop rows of epochs at or after ``epoch`` (logged before a crash, redone on resume)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) < epoch]
    if len(keep) == len(rows):
        return
    path.unlink()
    for r in keep:
        _append_csv(path, r)
