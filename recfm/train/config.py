"""The training configuration (``[train]`` of a run's TOML) and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfm.config import from_dict, read_toml
from recfm.errors import InputError
from recfm.model.config import ModelConfig


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
    micro_batch_tokens: int = 4096
    """A batch with more positions (rows × length) than this runs as micro-batches of whole
    rows, their gradients added up to the batch's: the same update (exactly, when the loss
    is a mean over target tokens) with a part's activations in memory at a time. 0: never
    split. Not used with ``--nproc`` (each rank's loss is normalised by the global batch)."""
    selection: str = "auto"
    """What validation ranks with, for model selection and early stopping: ``score`` (every
    item scored), ``generative`` (the beam search of a model's generative head) or ``auto``
    (generative when the model has a generative head: what it was tuned for)."""
    eval_batch_size: int = 128
    """Users scored at a time in validation and test: small batches suit a CPU (the memory
    peak of a run: benchmarks/train_memory.py); a GPU wants more, e.g. 1024."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps inside an epoch (0: at epoch ends only)."""
    max_minutes: float | None = None
    """Stop once training + validation have taken this long (the best model is kept); the
    cosine decay then ends at the epochs that fit, estimated after the first (checkpointed)."""
    window: str = "truncate"
    """Long histories: keep the last context window (``truncate``), train on fixed sliding
    windows (``sliding``), or on windows redrawn each epoch that train every target once
    per epoch (``random``, :mod:`recfm.tokens.windows`)."""
    seq_len_schedule: list[list[float]] = field(default_factory=list)
    """Progressive context length: ``[[0, 128], [0.5, 512]]`` = 128 tokens for the first
    half of the planned epochs, 512 after (each ≤ the model's max_len). Empty: max_len."""
    threads: int | None = None
    device: str = "auto"
    """auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda[:N]."""
    precision: str = "auto"
    """auto (bf16 autocast on a GPU, fp32 on a CPU), fp32 or bf16; weights stay fp32."""
    compile: bool = False
    """torch.compile the training loss (benchmarks/gpu.py measures it; ~16 s to compile)."""
    tensorboard: bool = True
    stream: bool = False
    """Stream training batches from ``tokens.parquet`` row groups (:mod:`recfm.train.shards`);
    validation, test and facet sizes then use the first ``stream_eval_groups``' users only."""
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
