"""Compute a run's user and item embeddings and publish them as a store version.

User vectors come from :meth:`FoundationModel.encode_users` over every user's whole
history in a prepared dataset (the last ``max_len`` tokens, as the model sees them at
serving time); item vectors are the model's output item table
(:meth:`FoundationModel.item_table`, reserved rows left out), so a user vector dotted with
the item vectors gives the model's recommendation scores (without hierarchical bias).

Users are encoded in chunks sorted by history length, so each batch pads only to similar
lengths; the vectors are put back in the dataset's user order before publishing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recfm.errors import InputError, RecfmError
from recfm.store.base import EmbeddingStore, VersionInfo
from recfm.tokenizer import N_RESERVED_ITEMS

log = logging.getLogger(__name__)

POOLINGS = ("last", "mean_last", "attention", "layer_mean", "layer_mix", "mean")
ProgressFn = Callable[[int, int], None]


def _sha256_12(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def embed(run: str | Path, data_dir: str | Path | None, store: str | Path | EmbeddingStore,
          batch_size: int = 256, pooling: str | None = None, keep: int | None = None,
          chunk_users: int = 4096, on_progress: ProgressFn | None = None) -> VersionInfo:
    """Encode every user of ``data_dir`` (default: the run's training data) and every item
    with the model of ``run``, and publish them to ``store`` as a new version.

    ``pooling``: how a user vector is read from the hidden states (``last``, ``mean_last``,
    ``attention``, ``layer_mean``, ``layer_mix``, ``mean``); default: the representation
    the model was trained with. ``on_progress(users_done, users)`` after each chunk.
    The version's metadata records the run, model and tokenizer hashes, data fingerprint,
    pooling, counts and the encoding throughput (``extra.users_per_s``).
    """
    from recfm.adapt.incremental import run_data_dir
    from recfm.model.foundation import FoundationModel
    from recfm.serve.engine import model_version
    from recfm.store import open_store
    from recfm.train.loop import data_fingerprint

    run = Path(run)
    if pooling is not None and pooling not in POOLINGS:
        raise RecfmError(f"pooling: expected one of {', '.join(POOLINGS)}, found {pooling!r}")
    if data_dir is None:
        data_dir = run_data_dir(run)
        if data_dir is None:
            raise RecfmError(f"{run}: its training data is not at the path in config.json; "
                             "give the prepared dataset with --data")
    data_dir = Path(data_dir)
    fm = FoundationModel.from_pretrained(run)
    tokens = data_dir / "tokens.parquet"
    if not tokens.is_file():
        raise InputError(str(tokens), None, None, "a prepared dataset (run `recfm prepare`)",
                         "nothing at that path")
    seqs = pl.read_parquet(tokens)
    data_items = pl.read_parquet(data_dir / "items.parquet", columns=["item_id"])
    data_ids = data_items["item_id"].cast(pl.Utf8).to_list()
    run_ids = fm.tokenizer.item_ids if fm.tokenizer else []
    if run_ids[:len(data_ids)] != data_ids:
        raise RecfmError(f"{data_dir}: its item vocabulary differs from the run {run}; embed "
                         "users of data tokenized with that run's vocabulary")
    pooling = pooling or fm.cfg.user_repr
    st = store if isinstance(store, EmbeddingStore) else open_store(store, keep=keep)

    # users: chunks sorted by (clipped) history length, put back in dataset order after
    n = seqs.height
    order = np.argsort(np.minimum(seqs["length"].to_numpy(), fm.cfg.max_len), kind="stable")
    columns = [c for c in fm.input_columns if c in seqs.columns]
    vectors = np.empty((n, fm.cfg.d_model), dtype=np.float32)
    t0 = time.perf_counter()
    done = 0
    for s in range(0, n, chunk_users):
        rows = order[s:s + chunk_users]
        chunk = seqs.select(columns)[rows]
        try:
            vectors[rows] = fm.encode_users(chunk, pooling=pooling,
                                            batch_size=batch_size).numpy()
        except ValueError as e:  # e.g. attention pooling of a model trained without it
            raise RecfmError(f"pooling {pooling!r}: {e}") from None
        done += len(rows)
        if on_progress:
            on_progress(done, n)
    encode_s = time.perf_counter() - t0
    with torch.no_grad():
        items = fm.item_table()[N_RESERVED_ITEMS:].detach().float().numpy()  # (n_items, d)
    titles = None
    if fm.items is not None and "title" in fm.items.columns:
        title_of = dict(zip(fm.items["item_id"].cast(pl.Utf8).to_list(),
                            fm.items["title"].cast(pl.Utf8).to_list()))
        titles = [title_of.get(i) for i in run_ids]

    users_per_s = n / encode_s if encode_s > 0 else float("inf")
    log.info("encoded %d users in %.2f s (%.0f users/s), %d items", n, encode_s, users_per_s,
             len(run_ids))
    meta = {
        "pooling": pooling, "run": str(run.resolve()), "model_version": model_version(run),
        "tokenizer_sha256": _sha256_12(run / "tokenizer.json"),
        "data": str(data_dir.resolve()), "data_fingerprint": data_fingerprint(data_dir),
        "model": {"d_model": fm.cfg.d_model, "n_layers": fm.cfg.n_layers,
                  "max_len": fm.cfg.max_len, "user_repr": fm.cfg.user_repr},
        "encode_s": round(encode_s, 4), "users_per_s": round(users_per_s, 1),
        "batch_size": batch_size, "threads": torch.get_num_threads(),
        "user_vectors": "the model's user representation after each user's last token",
        "item_vectors": "the model's output item table; score = user · item",
    }
    user_ids = seqs["user_id"].cast(pl.Utf8).to_list()
    return st.publish(user_ids, vectors, run_ids, items, meta, titles)
