"""Distillation: a small student trained on a big teacher's item scores (``recfm distill``).

``loss = α · τ² · KL(softmax(t / τ) ‖ softmax(s / τ)) + (1 − α) · CE(s, next item)``; the
teacher runs in eval mode without gradients, its scores computed on the fly in chunks of
positions. The student is an ordinary run (:func:`recfm.train.loop.train` with a
:class:`~recfm.train.loop.LossHook`). Config tables: docs/guide/finetune.md.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recfm.config import from_dict, read_toml
from recfm.errors import InputError, RecfmError
from recfm.model.config import ModelConfig
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from recfm.train.config import TrainConfig
from recfm.train.loop import LossHook, TrainResult, run_dataset, train

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """How much of the loss is the teacher's, and how soft its distribution is."""

    temperature: float = 2.0
    """τ: both score vectors are divided by it before the softmax (τ > 1 softens)."""
    alpha: float = 0.7
    """Weight of the KL term; 1 − alpha weighs the next-item cross-entropy."""
    chunk: int = 4096
    """Positions whose teacher scores are computed at once (bounds memory: chunk × items)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<distill config>") -> "DistillConfig":
        cfg = from_dict(cls, data, source)
        if cfg.temperature <= 0:
            raise InputError(source, None, "temperature", "a positive number",
                             str(cfg.temperature))
        if not 0.0 <= cfg.alpha <= 1.0:
            raise InputError(source, None, "alpha", "a number in [0, 1]", str(cfg.alpha))
        if cfg.chunk < 1:
            raise InputError(source, None, "chunk", "at least 1", str(cfg.chunk))
        return cfg


def load_student_config(path: str | Path) -> tuple[ModelConfig, TrainConfig, DistillConfig]:
    """``[model]``, ``[train]`` and ``[distill]`` tables of one TOML file."""
    data = read_toml(path)
    unknown = set(data) - {"model", "train", "distill"}
    if unknown:
        raise InputError(str(path), None, sorted(unknown)[0],
                         "a [model], [train] or [distill] table", "another key")
    return (ModelConfig.from_dict(data.get("model", {}), str(path)),
            TrainConfig.from_dict(data.get("train", {}), str(path)),
            DistillConfig.from_dict(data.get("distill", {}), str(path)))


def item_logits(model, h: torch.Tensor) -> torch.Tensor:
    """(N, d) states → (N, n_items − reserved) scores of every real item."""
    logits = h @ model.item_table()[N_RESERVED_ITEMS:].T
    bias = model.hierarchy_bias(h)
    return logits + bias if bias is not None else logits


def distill_loss(student, teacher, batch: dict[str, torch.Tensor],
                 cfg: DistillConfig) -> torch.Tensor:
    """α τ² KL(teacher ‖ student) + (1 − α) CE over every position with a next item."""
    keep = batch["target"] > 0  # (B, T)
    h = student.positions(batch)[keep]  # (N, d)
    s = item_logits(student, h)  # (N, V)
    target = batch["target"][keep] - N_RESERVED_ITEMS  # (N,)
    ce = F.cross_entropy(s, target)
    if cfg.alpha == 0.0:
        return ce
    tau = cfg.temperature
    with torch.no_grad():
        ht = teacher.positions(batch)[keep]  # (N, d_teacher)
        t_logp = torch.cat([torch.log_softmax(item_logits(teacher, ht[i:i + cfg.chunk]) / tau, -1)
                            for i in range(0, ht.size(0), cfg.chunk)])  # (N, V)
    s_logp = torch.log_softmax(s / tau, dim=-1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    return cfg.alpha * tau * tau * kl + (1 - cfg.alpha) * ce


def distill(teacher_run: str | Path, out: str | Path, student_cfg: ModelConfig,
            train_cfg: TrainConfig | None = None, cfg: DistillConfig | None = None,
            data_dir: str | Path | None = None, resume: bool = False, on_progress=None,
            command: str | None = None) -> TrainResult:
    """Train ``student_cfg`` into the normal run ``out`` with :func:`distill_loss`, on
    ``data_dir`` (default: the teacher's dataset)."""
    cfg = cfg or DistillConfig()
    teacher_run = Path(teacher_run)
    rec, _, data_dir = run_dataset(teacher_run, data_dir)
    teacher = rec.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher.cfg.positions == "learned" and student_cfg.max_len > teacher.cfg.max_len:
        raise RecfmError(f"student max_len {student_cfg.max_len} is longer than the teacher's "
                         f"context ({teacher.cfg.max_len}); the teacher must see every "
                         "position the student is trained on")

    def fn(student, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return distill_loss(student, teacher, batch, cfg)

    hook = LossHook(fn, columns=list(teacher.input_columns),
                    meta={"distill": {"teacher": str(teacher_run), **asdict(cfg),
                                      "teacher_params": sum(p.numel()
                                                            for p in teacher.parameters())}})
    return train(data_dir, out, student_cfg, train_cfg or TrainConfig(), resume=resume,
                 on_progress=on_progress, command=command, loss_hook=hook)
