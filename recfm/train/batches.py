"""Training batches from token spans: the per-epoch plan and the in-memory data source.

A data source gives the :class:`recfm.train.trainer.Trainer` the batches of an epoch:
``start(epoch, fraction) -> n_batches``, then ``batch(epoch, i)``. :class:`MemoryBatches`
holds the whole training split (one process, or a DDP rank taking its rows of each global
batch); :class:`recfm.train.shards.StreamingBatches` reads row groups lazily.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recfm.tokens.batching import SequenceStore
from recfm.tokens.windows import mask_before_first_target

Batch = dict[str, torch.Tensor]


def epoch_plan(spans: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-bucketed batches of span indices; depends only on (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    lens = spans[:, 2] - spans[:, 1]
    order = np.argsort(lens + rng.uniform(0, 2, len(lens)), kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def make_batch(store: SequenceStore, spans: np.ndarray) -> Batch:
    """Inputs = tokens[:-1] of each span, ``target`` = items[1:]; the whole spans as
    ``future_<column>`` (B, T + 1), for objectives that look beyond the next token."""
    full = store.gather(spans)
    batch = {k: v[:, :-1] for k, v in full.items()}
    batch["target"] = full["item"][:, 1:].clone()
    batch.update({f"future_{k}": v for k, v in full.items()})
    mask_before_first_target(batch, spans)  # random windows: each target once per epoch
    return batch


def micro_batches(batch: Batch, max_positions: int) -> list[Batch]:
    """``batch`` as parts of whole rows with about ``max_positions`` (rows × T) each, as
    even as the rows allow; ``[batch]`` when it fits or ``max_positions`` is 0."""
    B, T = batch["target"].shape
    if max_positions <= 0 or B * T <= max_positions or B == 1:
        return [batch]
    n_parts = min(B, -(-B * T // max_positions))
    rows = -(-B // n_parts)
    return [{k: v[s:s + rows] for k, v in batch.items()} for s in range(0, B, rows)]


class MemoryBatches:
    """Batches of spans of a :class:`SequenceStore` held in memory.

    ``respan(epoch, fraction)``: an epoch's spans when they change per epoch (random windows,
    a length schedule). ``rows``: this DDP rank's rows of a global batch. ``transform``:
    applied to each batch in place (incremental data: context targets off).
    """

    def __init__(self, store: SequenceStore, spans: np.ndarray, batch_size: int, seed: int,
                 respan: Callable[[int, float], np.ndarray] | None = None,
                 rows: Callable[[np.ndarray], np.ndarray] | None = None,
                 transform: Callable[[Batch], None] | None = None) -> None:
        self.store, self.spans, self.batch_size, self.seed = store, spans, batch_size, seed
        self.respan, self.rows, self.transform = respan, rows, transform
        self.plan: list[np.ndarray] = []

    def start(self, epoch: int, fraction: float) -> int:
        if self.respan is not None:
            self.spans = self.respan(epoch, fraction)
        self.plan = epoch_plan(self.spans, self.batch_size, self.seed, epoch)
        return len(self.plan)

    def batch(self, epoch: int, i: int) -> Batch:
        idx = self.plan[i] if self.rows is None else self.rows(self.plan[i])
        batch = make_batch(self.store, self.spans[idx])
        if self.transform is not None:
            self.transform(batch)
        return batch
