"""Evaluation of the richer objectives: future windows, facet heads, engagement, stability.

The *future holdout* keeps each user's last ``window`` tokens out of training altogether:
the model learns from the rest (with its own leave-one-out validation for early stopping),
and is evaluated on the held-out future — the first held-out item (next-item NDCG@10),
all held-out items (window NDCG@10), the held-out token's facets (facet-head accuracy),
and which recommended items the user goes on to complete (completed share@10).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

from recfm.tokens.batching import SequenceStore, history_batches
from recfm.data.splits import Split, drop_last, history_rows, leave_one_out, list_columns
from recfm.model.objectives import majority_accuracy, rollout_scores, window_head
from recfm.tokens.tokenizer import N_RESERVED_ITEMS


def future_holdout(seqs: pl.DataFrame, window: int = 10, min_history: int = 3
                   ) -> tuple[Split, pl.DataFrame]:
    """(training split, holdout frame: history list columns, ``target`` (first held-out item),
    ``target_<facet>``, lists ``window_item``, ``window_action``); short users train on all."""
    cols = list_columns(seqs)
    n = pl.col("length")
    long = seqs.filter(n >= window + min_history)
    short = seqs.filter(n < window + min_history)
    cut = n - window
    split = leave_one_out(pl.concat([drop_last(long, window), short]).sort("user_idx"))
    held = [pl.col("item").list.slice(cut, window).alias("window_item")]
    if "action" in cols:
        held.append(pl.col("action").list.slice(cut, window).alias("window_action"))
    holdout = history_rows(long, cut, extra=held)
    return split, holdout


def _window_gain(ranked: list[int], future: set[int], k: int) -> tuple[float, float]:
    """(NDCG@k, HR@k) of one ranking against a set of future items."""
    hits = [p for p, item in enumerate(ranked) if item in future]
    ideal = sum(1 / math.log2(p + 2) for p in range(min(k, len(future))))
    return sum(1 / math.log2(p + 2) for p in hits) / ideal, float(bool(hits))


@torch.no_grad()
def holdout_metrics(model, holdout: pl.DataFrame, complete_code: int | None = None,
                    k: int = 10, batch_size: int = 512, pooling: str | None = None,
                    window_horizon: str = "window", rollout_depth: int = 2
                    ) -> dict[str, float]:
    """Next-item and window NDCG@k / HR@k, and the completed share of the top k.

    The next item and completed share are ranked by the next-item head; the window by
    ``model.score(u, window_horizon)`` (``window_scored_by``: which head), and then by the
    next-item head too (``window_ndcg@10_next_head``). ``window_ndcg@10_rollout`` ranks it
    by :func:`~recfm.model.objectives.rollout_scores` of ``rollout_depth`` (0 or a
    ``pooling``: skipped).
    """
    model.eval()
    head = window_head(model.heads) if window_horizon == "window" else "next"
    store = SequenceStore(holdout, model.input_columns)
    target = holdout["target"].to_numpy()
    win = holdout["window_item"].to_list()
    acts = holdout["window_action"].to_list() if "window_action" in holdout.columns else None
    rollout = rollout_depth > 0 and pooling is None
    rankings = [""]  # the window ranked by its head; then by the next-item head, by rollout
    if head != "next":
        rankings.append("_next_head")
    if rollout:
        rankings.append("_rollout")
    keys = ["ndcg@10", "hr@10", "window_ndcg@10", "window_hr@10", "completed_share@10"]
    keys += [f"window_{m}@10{by}" for by in rankings[1:] for m in ("ndcg", "hr")]
    sums = dict.fromkeys(keys, 0.0)
    n = 0
    for rows, batch in history_batches(store, model.cfg.max_len, batch_size, by_length=True):
        u = model.last_hidden(batch, pooling)
        b, seen = store.history_items(rows)
        seen_idx = (torch.from_numpy(b), torch.from_numpy(seen))
        scores = model.score(u).clone()
        scores[seen_idx] = float("-inf")
        top = torch.topk(scores, k, dim=1).indices.numpy()  # (B, k)
        tops = {"": top, "_next_head": top}
        if head != "next":
            ws = model.score(u, window_horizon).clone()
            ws[seen_idx] = float("-inf")
            tops[""] = torch.topk(ws, k, dim=1).indices.numpy()  # (B, k)
        if rollout:
            exclude = torch.zeros(len(rows), model.cfg.n_items, dtype=torch.bool)
            exclude[seen_idx] = True
            tops["_rollout"] = torch.topk(rollout_scores(model, batch, exclude, rollout_depth),
                                          k, dim=1).indices.numpy()  # (B, k)
        for i, r in enumerate(rows):
            ranked = list(top[i])
            ndcg, hr = _window_gain(ranked, {int(target[r])}, k)  # one future item: the next
            sums["ndcg@10"] += ndcg
            sums["hr@10"] += hr
            future = set(win[r]) - set(seen[b == i].tolist())
            if future:
                for by in rankings:
                    ndcg, hr = _window_gain(list(tops[by][i]), future, k)
                    sums[f"window_ndcg@10{by}"] += ndcg
                    sums[f"window_hr@10{by}"] += hr
            if acts is not None and complete_code is not None:
                done = {it for it, a in zip(win[r], acts[r]) if a == complete_code}
                sums["completed_share@10"] += len(done & set(ranked)) / k
            n += 1
    out: dict = {key: v / max(n, 1) for key, v in sums.items()}
    out["users"] = n
    out["window_scored_by"] = head
    return out


@torch.no_grad()
def facet_accuracy(model, holdout: pl.DataFrame, train: pl.DataFrame,
                   batch_size: int = 512) -> dict[str, float]:
    """Each facet head's accuracy on the first held-out token vs its majority class."""
    model.eval()
    out: dict[str, float] = {}
    if not model.heads.facets:
        return out
    store = SequenceStore(holdout, model.input_columns)
    preds: dict[str, list[np.ndarray]] = {n: [] for n in model.heads.facets}
    order: list[np.ndarray] = []
    for rows, batch in history_batches(store, model.cfg.max_len, batch_size):
        u = model.last_hidden(batch)
        for name, head in model.heads.facets.items():
            preds[name].append(head(u).argmax(-1).numpy())
        order.append(rows)
    rows = np.concatenate(order)
    target_items = torch.from_numpy(holdout["target"].to_numpy()[rows].astype(np.int64))
    train_items = torch.from_numpy(train["item"].explode().to_numpy().astype(np.int64))
    for name in model.heads.facets:
        pred = np.concatenate(preds[name])
        if name == "genres":
            truth = model.item_genres[target_items].numpy()
            acc = float(truth[np.arange(len(pred)), pred].mean())
            freq = model.item_genres[train_items].sum(0).argmax().item()
            out["genres_acc"], out["genres_majority_acc"] = acc, float(truth[:, freq].mean())
            continue
        if name == "entity_type":
            truth = model.item_entity[target_items].numpy()
            train_t = model.item_entity[train_items].numpy()
        else:
            truth = holdout[f"target_{name}"].to_numpy()[rows]
            train_t = train[name].explode().to_numpy()
        keep = truth > 0
        out[f"{name}_acc"] = float((pred[keep] == truth[keep]).mean())
        out[f"{name}_majority_acc"] = majority_accuracy(train_t[train_t > 0], truth[keep])
    return out


@torch.no_grad()
def stability(model, seqs: pl.DataFrame, appended: tuple[int, ...] = (1, 5, 20),
              pooling: str | None = None, max_users: int = 2000, k: int = 10
              ) -> dict[str, float]:
    """Cosine between a user's vector before and after appending j real events, and the
    top-k overlap of their recommendations; over users with more than max(j) + 2 tokens."""
    model.eval()
    m = max(appended)
    users = seqs.filter(pl.col("length") >= m + 3).head(max_users)
    if users.height == 0:
        return {}
    cols = [c for c in model.input_columns if c in users.columns]
    base_len = pl.col("length") - m
    out = {}

    def encode(frame):
        batches = history_batches(SequenceStore(frame, cols), model.cfg.max_len, 512)
        u = torch.cat([model.last_hidden(batch, pooling) for _, batch in batches])
        s = model.score(u)
        s[:, :N_RESERVED_ITEMS] = float("-inf")
        return u, torch.topk(s, k, dim=1).indices

    u0, top0 = encode(users.with_columns([pl.col(c).list.head(base_len) for c in cols]))
    for j in appended:
        uj, topj = encode(users.with_columns([pl.col(c).list.head(base_len + j) for c in cols]))
        out[f"stability_cos@{j}"] = float(torch.cosine_similarity(u0, uj).mean())
        overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top0, topj)]
        out[f"stability_overlap@{j}"] = float(np.mean(overlap))
    return out
