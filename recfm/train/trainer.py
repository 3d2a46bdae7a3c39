"""The one training loop; every way recfm trains a network is a configuration of it.

Written once: AdamW over parameter groups, warm-up + cosine decay, clipping, checkpoints
with exact resume, a metrics log, validation and model selection, early stopping with a
stated reason, a time budget. Handed in as small objects: the data source (``start(epoch,
fraction) -> n_batches``, ``batch(epoch, i)``), the loss (``loss(batch) -> (loss,
weight)``, None skips the batch) and the :class:`Validation`.

Determinism: a batch order depends only on (seed, epoch) and the torch RNG (dropout) is
checkpointed, so a run killed and resumed ends with the weights of one that never stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from recfm.train.batches import Batch, micro_batches
from recfm.train.config import TrainConfig, lr_at
from recfm.train.run import Checkpointer, MetricsLog, open_checkpoint, truncate_csv

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
LossFn = Callable[[Batch], "tuple[torch.Tensor, int] | None"]
HOLD_KEY = "fm"
"""Groups marked with this key keep a learning rate of 0 for ``Trainer.hold_steps``."""
NO_DECAY = ("ids", "facets", "positions", "output_items")
REASONS = ("epochs", "max_steps", "patience", "time budget")


class DataSource(Protocol):
    def start(self, epoch: int, fraction: float) -> int: ...

    def batch(self, epoch: int, i: int) -> Batch: ...


def decay_groups(named: Sequence[tuple[str, nn.Parameter]], weight_decay: float,
                 **extra: Any) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on matrices, none on embeddings, norms and biases."""
    decay = [p for n, p in named if p.dim() >= 2 and not any(s in n for s in NO_DECAY)]
    no_decay = [p for _, p in named if all(p is not d for d in decay)]
    return [{"params": decay, "weight_decay": weight_decay, **extra},
            {"params": no_decay, "weight_decay": 0.0, **extra}]


def scale_groups(model: nn.Module, groups: list[dict[str, Any]],
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


def tokens_loss(model_loss: Callable[[Batch], torch.Tensor]) -> LossFn:
    """A loss logged with the weight of its batch's target tokens."""
    return lambda batch: (model_loss(batch), int((batch["target"] > 0).sum()))


def backward(loss: LossFn, batch: Batch, micro_batch_tokens: int,
             params: Iterable[nn.Parameter]) -> tuple[float, int] | None:
    """Backpropagate ``loss(batch)``; its (mean loss, weight), None when it skips the batch.

    A batch over ``micro_batch_tokens`` positions runs a part at a time: each part's mean
    loss × its weight is backpropagated and the summed gradients of ``params`` divided by
    the batch's weight, which is the whole batch's gradient when the loss is a weight mean.
    """
    parts = micro_batches(batch, micro_batch_tokens) if micro_batch_tokens else [batch]
    if len(parts) == 1:
        out = loss(batch)
        if out is None:
            return None
        out[0].backward()
        return float(out[0].detach()), out[1]
    total, weight = 0.0, 0
    for part in parts:
        out = loss(part)
        if out is None or out[1] == 0:
            continue
        (out[0] * out[1]).backward()
        total += float(out[0].detach()) * out[1]
        weight += out[1]
    if weight == 0:
        return None
    for p in params:
        if p.grad is not None:
            p.grad.div_(weight)
    return total / weight, weight


@dataclass
class Validation:
    """How the model is validated, selected (higher ``key`` is better) and stopped early."""

    fn: Callable[[], dict[str, float]]
    key: str = "ndcg@10"
    logged: tuple[str, ...] = ("ndcg@10", "hr@10")  # written as valid_<name>
    every: int = 0
    """0: after every epoch. n: every n steps and after the last one."""
    initial: bool = False
    """The starting model is a candidate (step 0): fine-tuning may only help."""


@dataclass
class Budget:
    """A time budget (training + validation) in minutes."""

    minutes: float
    strict: bool = False  # also stop inside an epoch
    fit_schedule: bool = True  # after epoch 0, decay the lr over the epochs that fit


@dataclass
class RunFiles:
    """The run directory, the best model's save, the checkpointer (DDP: rank 0 writes).
    No directory: a training in memory (no checkpoint; ``save_model`` keeps the best)."""

    dir: Path | None
    save_model: Callable[[], None]
    ckpt: Any = None
    main: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.dir is not None:
            self.dir = Path(self.dir)
            self.ckpt = self.ckpt or Checkpointer(self.dir)


@dataclass
class Trainer:
    """One run of the loop; :meth:`fit` returns why it stopped (one of ``REASONS``)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    data: DataSource
    loss: LossFn
    total_steps: int  # of the learning-rate schedule
    validation: Validation | None = None
    files: RunFiles | None = None
    max_steps: int | None = None  # set: epochs are unlimited
    budget: Budget | None = None
    clip_params: list[nn.Parameter] | None = None
    train_mode: Callable[[], Any] | None = None  # default model.train(); frozen parts may not
    hold_steps: int = 0
    agree: Callable[[float], float] | None = None  # DDP: rank 0's value on every rank
    on_progress: ProgressFn | None = None
    on_epoch_end: Callable[[int, float, int], None] | None = None  # (epoch, loss, weight)
    micro_batch_tokens: int = 0  # TrainConfig.micro_batch_tokens, for batches of tokens

    def __post_init__(self) -> None:
        per_step = self.validation is not None and self.validation.every > 0
        # state keys as saved in checkpoints: per epoch (train) or per step (finetune)
        self.best_key, self.bad_key = ("best_step", "bad_evals") if per_step \
            else ("best_epoch", "bad_epochs")
        self.state: dict[str, Any] = {
            "epoch": 0, "batch": 0, "step": 0, "best": -float("inf") if per_step else -1.0,
            self.best_key: 0 if per_step else -1, self.bad_key: 0, "tokens": 0,
            "train_s": 0.0, "total_steps": self.total_steps}
        self.per_step = per_step
        if self.clip_params is None:
            self.clip_params = [p for p in self.model.parameters() if p.requires_grad]
        self.train_mode = self.train_mode or self.model.train
        self.reason: str | None = None
        self.metrics: MetricsLog | None = None
        self.tokens_per_s, self._loss_sum, self._loss_n, self._n_first = 0.0, 0.0, 0, 0

    def resume(self, resume: bool) -> bool:
        """Open the run directory; load its checkpoint when resuming. True: resumed."""
        f, s = self.files, self.state
        saved = open_checkpoint(f.dir, f.ckpt, resume, self.model, self.opt)
        if saved is not None:
            s.update(saved)
            log.info("resumed from epoch %d batch %d (step %d)", s["epoch"], s["batch"],
                     s["step"])
        if f.main:
            if resume:  # rows logged after the checkpoint are redone
                col = "step" if self.per_step else "epoch"
                truncate_csv(f.dir / "metrics.csv", col, s[col] + (col == "step"))
            self.metrics = MetricsLog(f.dir, f.tensorboard)
        return saved is not None

    def fit(self) -> str:
        """Train until a limit, early stopping or the time budget; the stop reason."""
        s = self.state
        if self.validation is not None and self.validation.initial and s["step"] == 0 \
                and not (self.files.dir / "model.safetensors").exists():
            m = self._validate(0)  # the starting model, logged as step 0
            self._log({"step": 0, "train_loss": float("nan"), **self._cols(m), "lr": 0.0},
                      progress=False)
        self.train_mode()
        while self.reason is None:
            self.reason = self._limit_reached()
            if self.reason is not None:
                break
            n = self.data.start(s["epoch"], s["epoch"] / s.get("planned_epochs", self.cfg.epochs))
            self._n_first = n if s["epoch"] == 0 else self._n_first
            self.train_mode()
            self._t_epoch, self._ep_tokens = time.perf_counter(), 0
            if not self.per_step:
                self._loss_sum, self._loss_n = 0.0, 0
            if self._batches(n):
                self._end_epoch()
        if self.metrics is not None:
            self.metrics.close()
        log.info("training stopped: %s", self.reason)
        return self.reason

    def _limit_reached(self) -> str | None:
        s = self.state
        if self.max_steps is None and s["epoch"] >= self.cfg.epochs:
            return "epochs"
        if self.max_steps is not None and s["step"] >= self.max_steps:
            return "max_steps"
        if self.per_step and s[self.bad_key] >= self.cfg.patience:
            return "patience"
        return None

    def _batches(self, n: int) -> bool:
        """Steps of the current epoch; False when stopped inside it (no epoch end)."""
        s = self.state
        for bi in range(s["batch"], n):
            batch = self.data.batch(s["epoch"], bi)
            if self.budget is not None and self.budget.strict and self.state["train_s"] \
                    + time.perf_counter() - self._t_epoch >= self.budget.minutes * 60:
                self.reason = "time budget"  # a strict budget stops inside the epoch
                break
            out = self._backward(batch)
            if out is None:
                continue
            self._step(*out, bi, n)
            if self.files is not None and self.cfg.checkpoint_every \
                    and s["step"] % self.cfg.checkpoint_every == 0:
                s["train_s"] += time.perf_counter() - self._t_epoch
                self._t_epoch = time.perf_counter()
                self.files.ckpt.save(self.model, self.opt, s)
            every = self.validation.every if self.per_step else 0
            if every and (s["step"] % every == 0 or s["step"] == self.max_steps):
                m = self._validate(s["step"])
                self._log({"step": s["step"], "train_loss": self._loss_sum / max(self._loss_n, 1),
                           **self._cols(m), "lr": self._lr})
                self._loss_sum, self._loss_n = 0.0, 0
                self.files.ckpt.save(self.model, self.opt, s)
                if s[self.bad_key] >= self.cfg.patience:
                    self.reason = "patience"
                    return False
            if self.max_steps is not None and s["step"] >= self.max_steps:
                self.reason = "max_steps"
                return False
        return True

    def _backward(self, batch: Batch) -> tuple[float, int] | None:
        """The batch's gradients (:func:`backward`) and (mean loss, weight)."""
        self.opt.zero_grad(set_to_none=True)
        return backward(self.loss, batch, self.micro_batch_tokens, self.model.parameters())

    def _step(self, value: float, weight: int, bi: int, n: int) -> None:
        """One optimizer step on the gradients of :meth:`_backward`; the loss is logged
        weighted by ``weight`` (target tokens)."""
        s = self.state
        lr = lr_at(s["step"], s["total_steps"], self.cfg)
        hold = s["step"] < self.hold_steps
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0) * (0.0 if hold and g.get(HOLD_KEY) else 1.0)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.cfg.grad_clip)
        self.opt.step()
        s.update(step=s["step"] + 1, batch=bi + 1, tokens=s["tokens"] + weight)
        self._ep_tokens += weight
        self._loss_sum += value * weight
        self._loss_n += weight
        self._lr = lr
        self.tokens_per_s = self._ep_tokens / max(time.perf_counter() - self._t_epoch, 1e-9)
        if self.on_progress:
            self.on_progress({"epoch": s["epoch"], "batch": bi + 1, "batches": n,
                              "step": s["step"], "steps": s["total_steps"],
                              "total": s["total_steps"], "loss": value,
                              "tokens_per_s": self.tokens_per_s, "lr": lr})

    def _validate(self, at: int) -> dict[str, float]:
        """Validate; keep the model if it is the best so far, else count a bad validation."""
        s, key = self.state, self.validation.key
        self.model.eval()
        m = self.validation.fn()
        self.train_mode()
        if m[key] > s["best"]:
            s.update({"best": m[key], self.best_key: at, self.bad_key: 0})
            if self.files.main:
                self.files.save_model()
        else:
            s[self.bad_key] += 1
        return m

    def _cols(self, m: dict[str, float]) -> dict[str, float]:
        return {f"valid_{k}": m[k] for k in self.validation.logged}

    def _log(self, row: dict[str, Any], progress: bool = True) -> None:
        s, index = self.state, "step" if self.per_step else "epoch"
        if self.metrics is not None:
            self.metrics.write(row, index)
        if self.on_progress and progress:
            self.on_progress({"eval" if self.per_step else "epoch_end": True, **row,
                              "best": s["best"], self.best_key: s[self.best_key]})
        log.info("%s %d loss %.4f valid %s %.4f (best %.4f @ %d)", index, row[index],
                 row["train_loss"], self.validation.key,
                 row[f"valid_{self.validation.key}"], s["best"], s[self.best_key])

    def _end_epoch(self) -> None:
        s = self.state
        train_s_epoch = time.perf_counter() - self._t_epoch
        s["train_s"] += train_s_epoch
        per_epoch = self.validation is not None and not self.per_step
        if per_epoch:
            t_eval = time.perf_counter()
            m = self._validate(s["epoch"])
            eval_s = time.perf_counter() - t_eval
            s["train_s"] += eval_s  # the budget counts validation too
            if self.budget is not None and self.budget.fit_schedule and s["epoch"] == 0:
                self._fit_schedule(train_s_epoch + eval_s)
            self._log({"epoch": s["epoch"], "step": s["step"],
                       "train_loss": self._loss_sum / max(self._loss_n, 1), **self._cols(m),
                       "tokens_per_s": round(self.tokens_per_s, 1),
                       "epoch_train_s": round(train_s_epoch, 2), "eval_s": round(eval_s, 2),
                       "lr": lr_at(s["step"], s["total_steps"], self.cfg)})
        if self.on_epoch_end:
            self.on_epoch_end(s["epoch"], self._loss_sum / max(self._loss_n, 1), self._loss_n)
        s.update(epoch=s["epoch"] + 1, batch=0)
        stop = self.reason
        if per_epoch and s[self.bad_key] >= self.cfg.patience:
            log.info("early stop: %d epochs without improvement", self.cfg.patience)
            stop = stop or "patience"
        if self.budget is not None and s["train_s"] >= self.budget.minutes * 60:
            log.info("time budget of %.1f min reached", self.budget.minutes)
            stop = stop or "time budget"
        if self.agree is not None:  # rank 0 decides for every rank
            code = self.agree(REASONS.index(stop) if stop else -1)
            stop = REASONS[int(code)] if code >= 0 else None
        self.reason = stop
        if per_epoch and self.files.ckpt is not None:
            self.files.ckpt.save(self.model, self.opt, s)

    def _fit_schedule(self, epoch_s: float) -> None:
        """Decay the learning rate over the epochs that fit the budget."""
        s = self.state
        fit = max(1, int(self.budget.minutes * 60 / max(epoch_s, 1e-9)))
        s["total_steps"] = self._n_first * min(self.cfg.epochs, fit)
        s["planned_epochs"] = min(self.cfg.epochs, fit)
        if self.agree is not None:
            s["total_steps"] = int(self.agree(s["total_steps"]))
            s["planned_epochs"] = int(self.agree(s["planned_epochs"]))
        log.info("time budget: the schedule decays over %d epochs", s["planned_epochs"])
