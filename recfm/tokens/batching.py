"""Token sequences (Polars list columns) → padded tensors, fast.

:class:`SequenceStore` flattens each list column once into a NumPy array plus offsets
(CSR), so building a batch is NumPy fancy indexing, not Python loops over tokens.
Batches are right-padded to the longest sequence *in the batch* and, for training,
bucketed by length: padding every sequence to the context length would spend most of
the compute on padding when most histories are short.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import torch

from recfm.tokens.tokenizer import context_windows


class SequenceStore:
    """Read-only CSR view of a sequences frame (one row per user, list columns)."""

    def __init__(self, seqs: pl.DataFrame, columns: Sequence[str]) -> None:
        self.columns = [c for c in columns if c in seqs.columns]
        if "item" not in self.columns:
            self.columns.insert(0, "item")
        lengths = seqs["item"].list.len().to_numpy().astype(np.int64)
        self.lengths = lengths
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.values = {}
        for c in self.columns:
            flat = seqs[c].explode().fill_null(0).to_numpy()
            # integer codes stay int64 (embedding lookups); values and the like stay float
            self.values[c] = (flat.astype(np.float32) if flat.dtype.kind == "f"
                              else flat.astype(np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def spans(self, max_len: int, mode: str = "truncate", stride: int | None = None,
              min_len: int = 1) -> np.ndarray:
        """(n, 3) array of (row, start, end) windows of at most ``max_len`` tokens."""
        out = []
        for row, n in enumerate(self.lengths):
            if n < min_len:
                continue
            for s, e in context_windows(int(n), max_len, mode, stride):
                out.append((row, s, e))
        return np.asarray(out, dtype=np.int64).reshape(-1, 3)

    def gather(self, spans: np.ndarray) -> dict[str, torch.Tensor]:
        """Right-padded (B, T) tensors for the given (row, start, end) spans."""
        starts = self.offsets[spans[:, 0]] + spans[:, 1]
        lens = spans[:, 2] - spans[:, 1]
        T = int(lens.max()) if len(lens) else 0
        pos = np.arange(T)[None, :]
        valid = pos < lens[:, None]  # (B, T)
        idx = np.where(valid, starts[:, None] + pos, 0)
        out = {}
        for c in self.columns:
            v = self.values[c][idx]
            v[~valid] = 0
            out[c] = torch.from_numpy(v)
        return out

    def history_items(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch position, item) pairs of every item in each row's full history."""
        lens = self.lengths[rows]
        b = np.repeat(np.arange(len(rows)), lens)
        starts = np.repeat(self.offsets[rows], lens)
        within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        return b, self.values["item"][starts + within]


def count_batches(n_spans: int, batch_size: int) -> int:
    return (n_spans + batch_size - 1) // batch_size


def history_batches(store: SequenceStore, max_len: int, batch_size: int,
                    by_length: bool = False
                    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(rows, batch) over every row, each the last ``max_len`` tokens, in row order or with
    ``by_length`` grouped by length (short histories are not padded to long ones)."""
    spans = np.stack([np.arange(len(store)),
                      np.maximum(store.lengths - max_len, 0), store.lengths], axis=1)
    order = (np.argsort(np.minimum(store.lengths, max_len), kind="stable") if by_length
             else np.arange(len(store)))
    for i in range(0, len(store), batch_size):
        rows = order[i:i + batch_size]
        yield rows, store.gather(spans[rows])
