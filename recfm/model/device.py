"""Where the network runs: the device, mixed precision and compiled kernels.

For training, ``TrainConfig.device`` (``auto`` picks CUDA when torch sees a GPU), ``precision`` (``auto``:
bf16 autocast on a GPU, fp32 on a CPU; the weights and the optimizer stay fp32) and
``compile``. Batches are built on the CPU (pinned when bound for a GPU) and moved here;
scores come back to the CPU for the evaluator. The plain path — CPU, fp32, eager — is the
default on a machine without a GPU and the reference every other path is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recfm.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` (also ``cuda:N``) → a device torch can use."""
    if name.split(":")[0] not in DEVICES:
        raise ConfigError(f"device: expected one of {', '.join(DEVICES)}, found {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch sees no CUDA GPU here "
                          "(torch.cuda.is_available() is False); use cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    """A device and the autocast dtype of its forward passes (None: fp32)."""

    device: torch.device
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, device: str = "auto", precision: str = "auto",
           on: torch.device | None = None) -> "Placement":
        """From the config's names; ``on``: a device already chosen (a DDP rank's)."""
        dev = on if on is not None else resolve_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, found "
                              f"{precision!r}")
        bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
        return cls(dev, torch.bfloat16 if bf16 else None)

    @property
    def plain(self) -> bool:
        return self.device.type == "cpu" and self.dtype is None

    def to(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch``'s tensors on this device (pinned first on the way to a GPU)."""
        if self.device.type == "cpu":
            return batch
        return {k: (v.pin_memory() if v.device.type == "cpu" else v)
                .to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss(self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
             ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """``fn`` on this device under autocast (the plain path: ``fn`` itself)."""
        if self.plain:
            return fn

        def placed(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.autocast():
                return fn(self.to(batch))
        return placed

    def scorer(self, scorer: Callable[[np.ndarray, dict[str, torch.Tensor]], torch.Tensor]
               ) -> Callable[[np.ndarray, dict[str, torch.Tensor]], torch.Tensor]:
        """An evaluator's scorer run here; fp32 scores back on the CPU."""
        if self.plain:
            return scorer

        def placed(rows: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.autocast():
                return scorer(rows, self.to(batch)).float().cpu()
        return placed

    def optimizer(self, groups: list[dict], lr: float, betas: tuple[float, float]
                  ) -> torch.optim.Optimizer:
        """AdamW over fp32 master weights, one fused kernel per step (CPU and CUDA)."""
        return torch.optim.AdamW(groups, lr=lr, betas=betas,
                                 fused=True if self.device.type in ("cpu", "cuda") else None)


def compiled(fn: Callable, enabled: bool) -> Callable:
    """``torch.compile(fn)`` when ``enabled`` (dynamic shapes: batches vary in length)."""
    return torch.compile(fn, dynamic=True) if enabled else fn
