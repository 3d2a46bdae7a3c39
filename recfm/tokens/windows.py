"""Training windows over long histories, and a progressive sequence-length schedule.

``TrainConfig.window`` (``truncate``, ``sliding``, ``random``) and
``TrainConfig.seq_len_schedule``; L never exceeds ``ModelConfig.max_len``. Everything here
depends only on (seed, epoch), so resume stays exact. Semantics: docs/guide/training.md.
"""

from __future__ import annotations

import numpy as np
import torch

from recfm.tokens.batching import SequenceStore, count_batches
from recfm.errors import ConfigError

MODES = ("truncate", "sliding", "random")


def seq_len_at(schedule: list[list[float]], fraction: float, max_len: int) -> int:
    """Context length at ``fraction`` ∈ [0, 1) of training (the last stage started)."""
    if not schedule:
        return max_len
    stages = sorted((float(f), int(n)) for f, n in schedule)
    length = stages[0][1]
    for start, n in stages:
        if fraction + 1e-12 >= start:
            length = n
    return length


def check_schedule(schedule: list[list[float]], max_len: int) -> None:
    """A clear error for a schedule a model of context ``max_len`` cannot train."""
    for stage in schedule:
        if len(stage) != 2:
            raise ConfigError(f"seq_len_schedule: each stage is [fraction, length]; got {stage}")
        f, n = stage
        if not 0 <= f < 1:
            raise ConfigError(f"seq_len_schedule: fraction {f} is outside [0, 1)")
        if int(n) != n or not 1 <= n <= max_len:
            raise ConfigError(f"seq_len_schedule: length {n} must be an integer in "
                             f"1..max_len ({max_len})")


def random_window_spans(lengths: np.ndarray, window: int, rng: np.random.Generator,
                        min_len: int = 2) -> np.ndarray:
    """(n, 4) spans (row, start, end, first_target) tiling every history's targets once:
    ``window`` tokens (inputs + 1), targets before ``first_target`` masked
    (:func:`mask_before_first_target`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    L = window - 1
    rows = np.arange(len(lengths))
    short = rows[(lengths >= min_len) & (lengths <= window)]
    out_short = np.stack([short, np.zeros_like(short), lengths[short],
                          np.zeros_like(short)], axis=1)
    long_rows = rows[lengths > window]
    if len(long_rows) == 0 or L < 1:
        return out_short.reshape(-1, 4)
    n = lengths[long_rows]
    o = rng.integers(0, L, len(long_rows))  # (R,) offset of the chunk grid
    full = -(-(n - 1 - o) // L)  # chunks starting at 1 + o + kL, k = 0..full-1
    head = (o > 0).astype(np.int64)  # a first chunk [1, 1 + o)
    cnt = full + head
    rep = np.repeat(np.arange(len(long_rows)), cnt)
    j = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    k = j - head[rep]  # -1: the head chunk
    o_r, n_r = o[rep], n[rep]
    first = np.where(k < 0, 1, 1 + o_r + k * L)
    end = np.where(k < 0, 1 + o_r, np.minimum(1 + o_r + (k + 1) * L, n_r))
    start = np.maximum(end - window, 0)
    out_long = np.stack([long_rows[rep], start, end, first], axis=1)
    out = np.concatenate([out_short, out_long]).astype(np.int64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def mask_before_first_target(batch: dict, spans: np.ndarray) -> None:
    """Zero ``batch['target']`` (B, T) where the target token precedes the span's
    ``first_target`` (column 3): it was trained by another window this epoch."""
    if spans.shape[1] < 4:
        return
    T = batch["target"].shape[1]
    token = spans[:, 1:2] + 1 + np.arange(T)[None, :]  # (B, T) token index of each target
    drop = torch.from_numpy(token < spans[:, 3:4])
    batch["target"][drop] = 0


def varies(window: str, schedule: list[list[float]]) -> bool:
    """Whether the spans change from epoch to epoch (so are drawn per epoch)."""
    return window == "random" or bool(schedule)


def epoch_spans(store: SequenceStore, window: str, schedule: list[list[float]], max_len: int,
                seed: int, epoch: int, fraction: float) -> np.ndarray:
    """Spans of epoch ``epoch`` at ``fraction`` of training (3 or 4 columns)."""
    if window not in MODES:
        raise ConfigError(f"window {window!r}: expected one of {', '.join(MODES)}")
    length = seq_len_at(schedule, fraction, max_len)
    if window == "random":
        rng = np.random.default_rng([seed, epoch, 9])
        return random_window_spans(store.lengths, length + 1, rng, min_len=2)
    return store.spans(length + 1, window, min_len=2)


def planned_steps(store: SequenceStore, window: str, schedule: list[list[float]],
                  max_len: int, seed: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` epochs (the cosine schedule's length)."""
    return sum(count_batches(len(epoch_spans(store, window, schedule, max_len, seed, e,
                                             e / max(epochs, 1))), batch_size)
               for e in range(epochs))
