"""Compute a run's user and item embeddings and publish them as a store version. Items are
the output item table, so user · item is the model's score; with N processes rank 0 alone
checks the ranks' shards and publishes. Details: docs/guide/store.md.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recfm.errors import InputError, RecfmError
from recfm.io import atomic_write_bytes
from recfm.pipeline import Recommender
from recfm.runinfo import model_version, run_data_dir
from recfm.store.backends import open_store
from recfm.store.base import EmbeddingStore, VersionInfo, table_vectors
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from recfm.train.distributed import current
from recfm.train.run import data_fingerprint

log = logging.getLogger(__name__)

POOLINGS = ("last", "mean_last", "attention", "last_attention", "layer_mean", "layer_mix",
            "mean")
STALE_STAGING_S = 6 * 3600.0
ProgressFn = Callable[[int, int], None]


def _sha256_12(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def embed(run: str | Path, data_dir: str | Path | None, store: str | Path | EmbeddingStore,
          batch_size: int = 256, pooling: str | None = None, keep: int | None = None,
          chunk_users: int = 4096, on_progress: ProgressFn | None = None) -> VersionInfo:
    """Encode every user of ``data_dir`` (default: the run's training data) and every item
    with the model of ``run``, and publish them to ``store`` as a new version.

    ``pooling``: one of :data:`POOLINGS` (default: the model's ``user_repr``).
    ``on_progress(users_done, users)`` after each chunk of this rank's users. The metadata
    records run, model and tokenizer hashes, data fingerprint, pooling, counts and
    ``extra.users_per_s``.
    """
    ctx = current()  # None: one process
    run = Path(run)
    if pooling is not None and pooling not in POOLINGS:
        raise RecfmError(f"pooling: expected one of {', '.join(POOLINGS)}, found {pooling!r}")
    if data_dir is None:
        data_dir = run_data_dir(run)
        if data_dir is None:
            raise RecfmError(f"{run}: its training data is not at the path in config.json; "
                             "give the prepared dataset with --data")
    data_dir = Path(data_dir)
    rec = Recommender.from_pretrained(run)
    tokens = data_dir / "tokens.parquet"
    if not tokens.is_file():
        raise InputError(str(tokens), None, None, "a prepared dataset (run `recfm prepare`)",
                         "nothing at that path")
    seqs = pl.read_parquet(tokens)
    data_items = pl.read_parquet(data_dir / "items.parquet", columns=["item_id"])
    data_ids = data_items["item_id"].cast(pl.Utf8).to_list()
    run_ids = rec.tokenizer.item_ids if rec.tokenizer else []
    if run_ids[:len(data_ids)] != data_ids:
        raise RecfmError(f"{data_dir}: its item vocabulary differs from the run {run}; embed "
                         "users of data tokenized with that run's vocabulary")
    pooling = pooling or rec.cfg.user_repr
    st = store if isinstance(store, EmbeddingStore) else open_store(store, keep=keep)

    # users: this process's rows (all, or r::world), encoded by _encode
    n = seqs.height
    user_ids = seqs["user_id"].cast(pl.Utf8).to_list()
    staging = None
    if ctx is not None:  # every rank uses rank 0's staging directory name
        if ctx.is_main:
            remove_stale_staging(st.root)
        name = [f".embed-staging-{uuid.uuid4().hex[:12]}" if ctx.is_main else None]
        torch.distributed.broadcast_object_list(name, src=0)
        staging = st.root / name[0]
        torch.distributed.barrier()  # a common start for the job's users/s
    mine = np.arange(n) if ctx is None else np.arange(ctx.rank, n, ctx.world)
    t0 = time.perf_counter()
    vectors = _encode(rec, seqs, mine, pooling, batch_size, chunk_users, on_progress)
    if ctx is None:
        return _publish_users_items(rec, st, run, data_dir, run_ids, user_ids, vectors,
                                    pooling, time.perf_counter() - t0, batch_size, 1)
    _write_shard(staging / f"users-rank{ctx.rank:05d}.parquet", mine,
                 [user_ids[i] for i in mine], vectors)
    torch.distributed.barrier()  # every shard is on disk
    if not ctx.is_main:
        return _share_outcome(ctx)
    try:
        vectors = _gather_shards(staging, ctx.world, user_ids, rec.cfg.d_model)
        info = _publish_users_items(rec, st, run, data_dir, run_ids, user_ids, vectors,
                                    pooling, time.perf_counter() - t0, batch_size, ctx.world)
    except Exception as e:
        _share_outcome(ctx, error=f"{type(e).__name__}: {e}")  # the other ranks fail too
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _share_outcome(ctx, info)


def remove_stale_staging(root: Path, max_age_s: float = STALE_STAGING_S) -> list[Path]:
    """Remove (and return) ``.embed-staging-*`` directories that killed jobs left under ``root``
    (not modified for ``max_age_s``)."""
    removed = []
    now = time.time()
    for path in Path(root).glob(".embed-staging-*"):
        try:
            age = now - max([path.stat().st_mtime] + [f.stat().st_mtime for f in path.iterdir()])
        except FileNotFoundError:  # its job finished meanwhile
            continue
        if age > max_age_s:
            log.warning("%s: removing %s, left by an embed job that stopped %.1f h ago",
                        root, path.name, age / 3600)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _encode(rec: Recommender, seqs: pl.DataFrame, rows: np.ndarray, pooling: str,
            batch_size: int, chunk_users: int, on_progress: ProgressFn | None) -> np.ndarray:
    """(len(rows), d) user vectors of dataset rows ``rows``, in that order."""
    order = np.argsort(np.minimum(seqs["length"].to_numpy()[rows], rec.cfg.max_len),
                       kind="stable")
    columns = [c for c in rec.model.input_columns if c in seqs.columns]
    frame = seqs.select(columns)
    vectors = np.empty((len(rows), rec.cfg.d_model), dtype=np.float32)
    done = 0
    for s in range(0, len(rows), chunk_users):
        part = order[s:s + chunk_users]  # positions in ``rows``
        try:
            vectors[part] = rec.encode_users(frame[rows[part]], pooling=pooling,
                                            batch_size=batch_size).numpy()
        except ValueError as e:  # e.g. attention pooling of a model trained without it
            raise RecfmError(f"pooling {pooling!r}: {e}") from None
        done += len(part)
        if on_progress:
            on_progress(done, len(rows))
    return vectors


def _write_shard(path: Path, rows: np.ndarray, ids: list[str], vectors: np.ndarray) -> None:
    """One rank's users as Parquet ``row (int64), id, vector`` (atomic)."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({"row": pa.array(rows.astype(np.int64)), "id": pa.array(ids, pa.utf8()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def _gather_shards(staging: Path, world: int, user_ids: list[str], dim: int) -> np.ndarray:
    """(n, d) user vectors in dataset order from the ranks' shards; each user exactly once."""
    n = len(user_ids)
    vectors = np.zeros((n, dim), dtype=np.float32)
    seen = np.zeros(n, dtype=np.int64)
    for r in range(world):
        path = staging / f"users-rank{r:05d}.parquet"
        if not path.is_file():
            raise RecfmError(f"{path}: expected rank {r}'s shard of user vectors, found "
                             "nothing at that path")
        table = pq.read_table(path)
        rows = table.column("row").to_numpy()
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise RecfmError(f"{path}: column row: expected dataset rows 0..{n - 1}, found "
                             f"{int(rows.max() if rows.max() >= n else rows.min())}")
        ids = table.column("id").to_pylist()
        bad = next((k for k, (i, u) in enumerate(zip(rows, ids)) if user_ids[i] != u), None)
        if bad is not None:
            raise RecfmError(f"{path}: row {bad}, column id: expected {user_ids[rows[bad]]!r}, "
                             f"found {ids[bad]!r}")
        np.add.at(seen, rows, 1)
        if len(rows):
            vectors[rows] = table_vectors(table)
    if (seen != 1).any():
        i = int(np.nonzero(seen != 1)[0][0])
        raise RecfmError(f"{staging}: expected the shards to hold each of {n:,} users exactly "
                         f"once, found user {user_ids[i]!r} {int(seen[i])} times")
    return vectors


def _share_outcome(ctx, info: VersionInfo | None = None, error: str | None = None
                   ) -> VersionInfo:
    """Rank 0 sends its outcome (the published version or its error); the others get it."""
    box = [None if info is None else asdict(info), error]
    torch.distributed.broadcast_object_list(box, src=0)
    if ctx.is_main:
        return info  # type: ignore[return-value]  (on an error rank 0 raises its own)
    if box[1] is not None:
        raise RecfmError(f"rank 0 failed to publish the shards: {box[1]}")
    return VersionInfo.from_dict(box[0])


def _publish_users_items(rec: Recommender, st: EmbeddingStore, run: Path, data_dir: Path,
                         run_ids: list[str], user_ids: list[str], vectors: np.ndarray,
                         pooling: str, encode_s: float, batch_size: int, world: int
                         ) -> VersionInfo:
    """Compute the item vectors and publish them with the users' as one version."""
    n = len(user_ids)
    with torch.no_grad():
        items = rec.model.item_table()[N_RESERVED_ITEMS:].detach().float().numpy()  # (N, d)
    titles = None
    if rec.items is not None and "title" in rec.items.columns:
        title_of = dict(zip(rec.items["item_id"].cast(pl.Utf8).to_list(),
                            rec.items["title"].cast(pl.Utf8).to_list()))
        titles = [title_of.get(i) for i in run_ids]

    users_per_s = n / encode_s if encode_s > 0 else float("inf")
    log.info("encoded %d users in %.2f s (%.0f users/s), %d items", n, encode_s, users_per_s,
             len(run_ids))
    meta = {
        "pooling": pooling, "run": str(run.resolve()), "model_version": model_version(run),
        "tokenizer_sha256": _sha256_12(run / "tokenizer.json"),
        "data": str(data_dir.resolve()), "data_fingerprint": data_fingerprint(data_dir),
        "model": {"d_model": rec.cfg.d_model, "n_layers": rec.cfg.n_layers,
                  "max_len": rec.cfg.max_len, "user_repr": rec.cfg.user_repr},
        "encode_s": round(encode_s, 4), "users_per_s": round(users_per_s, 1),
        "batch_size": batch_size, "threads": torch.get_num_threads(),
        "user_vectors": "the model's user representation after each user's last token",
        "item_vectors": "the model's output item table; score = user · item",
    }
    if world > 1:
        meta["world"] = world
    return st.publish(user_ids, vectors, run_ids, items, meta, titles)
