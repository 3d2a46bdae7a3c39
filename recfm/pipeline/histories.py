"""The known users of a run: the prepared histories that ``recommend --user`` and the
server look users up in."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recfm.errors import reading
from recfm.runinfo import run_data_dir


def history_sources(run: str | Path, data: str | Path | None = None) -> list[Path]:
    """``data``, else the run's own dataset and — an incremental run's holds only the
    users of its recent events — the dataset of the run it was tuned from (first wins)."""
    if data is not None:
        return [Path(data)]
    return [d for d in dict.fromkeys((run_data_dir(run, own=True), run_data_dir(run))) if d]


def known_histories(sources: list[Path]) -> pl.DataFrame:
    """The sequences of every user of ``sources``, a user's first found kept; the columns
    all of them have."""
    frames = []
    for d in sources:
        with reading(d / "tokens.parquet", "prepared token sequences (Parquet)"):
            frames.append(pl.read_parquet(d / "tokens.parquet"))
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    return pl.concat([f.select(common) for f in frames], how="vertical_relaxed") \
        .unique("user_id", keep="first", maintain_order=True)
