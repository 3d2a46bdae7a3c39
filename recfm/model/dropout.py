"""Dropout whose CPU mask costs a quarter of a random draw per element.

``torch.nn.Dropout`` on a CPU draws one Bernoulli sample per element from the Mersenne
Twister, which made dropout about a sixth of a CPU training step. Here one 64-bit draw
(``random_()`` on int64: 63 uniform bits) gives four 16-bit lanes, and an element is kept
when its lane is at or above the threshold of ``p``: the drop probability is ``p`` rounded
to 1/65536 (1/32768 for the fourth lane, whose top bit is always 0). Same scaling as
``nn.Dropout`` (kept elements × 1/(1 - p)), the same 1-byte mask saved for backward, the
same random stream (torch's default generator, so checkpoints resume it exactly).

On other devices (CUDA's Philox dropout is already fast) and with ``fast=False`` this is
``F.dropout``, the plain reference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANES = 4  # 16-bit lanes per int64 draw; lane 3 holds 15 random bits


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability 1 - p (CPU)."""
    n = 1
    for s in shape:
        n *= s
    draws = torch.empty((n + LANES - 1) // LANES, dtype=torch.int64).random_()  # [0, 2**63)
    lanes = draws.view(torch.int16).view(-1, LANES)  # little-endian: lane 3 = the top bits
    low = min(round(p * 65536) - 32768, 32767)  # lanes 0-2: uniform over [-32768, 32767]
    top = min(round(p * 32768), 32767)  # lane 3: uniform over [0, 32767]
    bounds = torch.tensor([low, low, low, top], dtype=torch.int16)
    keep = lanes >= bounds  # (n / 4, 4)
    if p >= 1.0:
        keep.zero_()
    return keep.view(-1)[:n].view(shape)


class _MaskedScale(torch.autograd.Function):
    """x · keep / (1 - p), saving only the boolean mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)  # where: no float copy of the mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True, fast: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``; on a CPU with ``fast``, the mask of :func:`keep_mask`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if fast and x.device.type == "cpu" and x.dtype.is_floating_point:
        return _MaskedScale.apply(x, p)
    return F.dropout(x, p, True)


class Dropout(nn.Module):
    """Drop-in ``nn.Dropout`` using :func:`dropout` (no parameters, same state dict)."""

    def __init__(self, p: float = 0.5, fast: bool = True) -> None:
        super().__init__()
        self.p, self.fast = p, fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}"
