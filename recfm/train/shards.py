"""Training batches streamed lazily from the token Parquet (datasets larger than memory).

Rank ``r`` of ``w`` owns row groups ``g ≡ r (mod w)`` and visits them in a (seed, epoch,
rank)-permuted order, a window of groups at a time: memory is one window, and a resumed run
replays the same batches. Ranks with fewer batches start their plan over, so every rank
runs the same number of steps. Details: docs/guide/training.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.errors import RecfmError
from recfm.tokens.tokenizer import context_windows
from recfm.train.batches import make_batch

log = logging.getLogger(__name__)

LOO_MIN_LENGTH = 3
"""Users this long or longer give their last two tokens to validation and test."""


class ParquetTokens:
    """Lazy view of a ``tokens.parquet``: row groups are read only when asked for.

    Example:
        >>> src = ParquetTokens("prepared/tokens.parquet")          # doctest: +SKIP
        >>> src.read([0, 3], ["item", "action"]).height              # doctest: +SKIP
        4096
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = pq.ParquetFile(self.path)
        self.n_groups = self.file.metadata.num_row_groups
        self.columns = self.file.schema_arrow.names

    def read(self, groups: Sequence[int], columns: Sequence[str] | None = None
             ) -> pl.DataFrame:
        """The rows of ``groups`` (in that order), only ``columns`` (+ user_idx, length)."""
        cols = None
        if columns is not None:
            keep = ["user_idx", "user_id", "length", *columns]
            cols = [c for c in dict.fromkeys(keep) if c in self.columns]
        table = self.file.read_row_groups(list(groups), columns=cols)
        return pl.from_arrow(table)

    def lengths(self, groups: Sequence[int]) -> list[np.ndarray]:
        """Sequence lengths of each group (reads the small ``length`` column only)."""
        out = []
        for g in groups:
            t = self.file.read_row_group(g, columns=["length"])
            out.append(t.column("length").to_numpy().astype(np.int64))
        return out

    def rank_groups(self, rank: int, world: int) -> list[int]:
        """Row groups owned by ``rank``: ``g ≡ rank (mod world)``."""
        return list(range(rank, self.n_groups, world))


def train_part(frame: pl.DataFrame) -> pl.DataFrame:
    """The leave-one-out training part of a chunk of users (see :func:`leave_one_out`)."""
    return leave_one_out(frame, LOO_MIN_LENGTH).train


def _train_length(n: np.ndarray) -> np.ndarray:
    return np.where(n >= LOO_MIN_LENGTH, n - 2, n)


class StreamingBatches:
    """Rank ``rank``'s batches, streamed from its own row groups of the token Parquet."""

    def __init__(self, src: ParquetTokens, columns: Sequence[str], max_len: int,
                 batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 window: str = "truncate", window_groups: int = 4,
                 agree: Callable[[int], int] | None = None) -> None:
        self.src, self.columns = src, list(columns)
        self.max_len, self.seed, self.rank, self.world = max_len, seed, rank, world
        self.local_bs = max(1, batch_size // world)
        self.window, self.window_groups = window, max(1, window_groups)
        self.groups = src.rank_groups(rank, world)
        # spans per group from the length column alone (no token is read here)
        self._spans_per_group = {
            g: sum(len(context_windows(int(n), max_len + 1, window))
                   for n in _train_length(lens) if n >= 2)
            for g, lens in zip(self.groups, src.lengths(self.groups))}
        self._agree = agree  # every rank's step count: the maximum over ranks
        self._n_epoch: tuple[int, int] | None = None
        self._cache: tuple[int, int, list[np.ndarray], SequenceStore, np.ndarray] | None = None

    def _windows(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        order = [self.groups[i] for i in rng.permutation(len(self.groups))]
        k = self.window_groups
        return [order[i:i + k] for i in range(0, len(order), k)]

    def _window_batches(self, epoch: int) -> list[int]:
        return [-(-sum(self._spans_per_group[g] for g in w) // self.local_bs)
                for w in self._windows(epoch)]

    def own_batches(self, epoch: int) -> int:
        """Batches this rank's groups give (before padding to the busiest rank)."""
        return sum(self._window_batches(epoch))

    def n_batches(self, epoch: int) -> int:
        """Steps of ``epoch`` (the same on every rank: a collective call when distributed)."""
        if self._n_epoch is None or self._n_epoch[0] != epoch:
            own = self.own_batches(epoch)
            self._n_epoch = (epoch, self._agree(own) if self._agree else own)
        return self._n_epoch[1]

    def start(self, epoch: int, fraction: float) -> int:
        """The data-source entry of :class:`recfm.train.trainer.Trainer`: steps of ``epoch``."""
        return self.n_batches(epoch)

    def batch(self, epoch: int, i: int) -> dict[str, torch.Tensor]:
        per_window = self._window_batches(epoch)
        i = i % max(sum(per_window), 1)  # ranks with fewer batches start over
        w = 0
        while i >= per_window[w]:
            i -= per_window[w]
            w += 1
        if self._cache is None or self._cache[:2] != (epoch, w):
            groups = self._windows(epoch)[w]
            frame = train_part(self.src.read(groups, self.columns))
            store = SequenceStore(frame, self.columns)
            spans = store.spans(self.max_len + 1, self.window, min_len=2)
            rng = np.random.default_rng([self.seed, epoch, self.rank, w])
            order = rng.permutation(len(spans))
            plan = [order[j:j + self.local_bs] for j in range(0, len(order), self.local_bs)]
            self._cache = (epoch, w, plan, store, spans)
        _, _, plan, store, spans = self._cache
        return make_batch(store, spans[plan[i]])

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(self.own_batches(epoch)):
            yield self.batch(epoch, i)


def streamer(data_dir: str | Path, columns: Sequence[str], max_len: int, tcfg, ddp=None
             ) -> StreamingBatches:
    """The streamed batches of this rank for a :class:`recfm.train.config.TrainConfig`."""
    rank, world = (ddp.ctx.rank, ddp.ctx.world) if ddp is not None else (0, 1)
    src = ParquetTokens(Path(data_dir) / "tokens.parquet")
    if src.n_groups < world:
        raise RecfmError(f"{src.path}: {src.n_groups} row group(s) cannot be shared by "
                         f"{world} processes; stream a larger dataset or use fewer processes")
    return StreamingBatches(src, columns, max_len, tcfg.batch_size, tcfg.seed, rank, world,
                            tcfg.window, tcfg.stream_window_groups,
                            ddp.all_max if ddp is not None else None)
