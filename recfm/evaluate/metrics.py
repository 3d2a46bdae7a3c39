"""Full-ranking metrics accumulated over batches of users.

For each user the target's rank among all catalog items is computed from that batch's
(B, n_items) score matrix, then only per-K sums are kept: memory is O(batch × items +
items), never O(users × items).

Ties are counted pessimistically: an item scoring exactly as much as the target ranks
above it, so a model that gives many items the same score gains nothing from the tie.
A target that the seen-item filter removed (a repeat) scores -inf and counts as a miss.
"""

from __future__ import annotations

import numpy as np
import torch

from recfm.tokens.tokenizer import N_RESERVED_ITEMS

KS = (1, 5, 10, 20, 50, 100)


def ranks_of(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of each target. scores: (B, V); targets: (B,)."""
    t = scores.gather(1, targets[:, None])  # (B, 1)
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1
    rank = higher + ties
    # a filtered (-inf) target is ranked last
    return torch.where(torch.isfinite(t[:, 0]), rank, torch.full_like(rank, scores.size(1)))


def sampled_rank(neg_scores: torch.Tensor, negs: torch.Tensor, t: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """Pessimistic rank of the target among sampled items. neg_scores, negs: (B, N);
    t: (B, 1) target scores; targets: (B,)."""
    return ((neg_scores > t) | ((neg_scores == t) & (negs != targets[:, None]))).sum(1)


def rank_summary(ranks: np.ndarray, k: int = 10, n_boot: int = 1000, seed: int = 0
                 ) -> dict[str, float | int | list[float]]:
    """HR@k, NDCG@k and a 95% bootstrap interval of NDCG@k (``n_boot`` seeded resamples of
    the events) from per-event 0-based ranks (:func:`recfm.evaluate.ranks.target_ranks`);
    the interval says how far apart two methods must be to differ. No events: ``{"events": 0}``.

    Example:
        >>> out = rank_summary(np.array([0, 1, 20]))
        >>> round(out["hr@10"], 4), round(out["ndcg@10"], 4), out["events"]
        (0.6667, 0.5436, 3)
    """
    if len(ranks) == 0:
        return {"events": 0}
    ndcg = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    rng = np.random.default_rng(seed)
    boot = ndcg[rng.integers(0, len(ndcg), (n_boot, len(ndcg)))].mean(1)
    return {f"ndcg@{k}": float(ndcg.mean()), f"hr@{k}": float((ranks < k).mean()),
            f"ndcg@{k}_ci95": [float(np.quantile(boot, 0.025)),
                               float(np.quantile(boot, 0.975))],
            "events": int(len(ranks))}


class RankingAccumulator:
    """HR@K, NDCG@K, MRR and catalog coverage@K over a stream of batches.

    Example:
        >>> acc = RankingAccumulator(n_items=5, n_reserved=0, ks=(1, 2))
        >>> acc.add(torch.tensor([[0.1, 0.9, 0.5, 0.0, 0.0]]), torch.tensor([2]))
        >>> round(acc.result()["ndcg@2"], 4)
        0.6309
    """

    def __init__(self, n_items: int, n_reserved: int = N_RESERVED_ITEMS, ks: tuple[int, ...] = KS,
                 sampled_negatives: int = 0, seed: int = 0) -> None:
        self.ks = ks
        self.n = 0
        self.skipped = 0
        self.hr = dict.fromkeys(ks, 0.0)
        self.ndcg = dict.fromkeys(ks, 0.0)
        self.mrr = 0.0
        self.n_reserved = n_reserved
        self.catalog = n_items - n_reserved
        self.covered = {k: torch.zeros(n_items, dtype=torch.bool) for k in ks}
        self.sampled = sampled_negatives
        self.sampled_hr = dict.fromkeys(ks, 0.0)
        self.sampled_ndcg = dict.fromkeys(ks, 0.0)
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores: (B, V) with seen items already at -inf; targets: (B,) item ids (negative: no target)."""
        has = targets >= 0
        self.skipped += int((~has).sum())
        if not has.any():
            return
        scores, targets = scores[has], targets[has]
        rank = ranks_of(scores, targets).double()  # (B,)
        top = torch.topk(scores, min(max(self.ks), scores.size(1)), dim=1).indices  # (B, K)
        self.add_ranked(rank, top)
        if self.sampled:
            negs = self.draw_negatives(len(targets), scores.size(1))
            self.add_sampled_ranks(sampled_rank(scores.gather(1, negs), negs,
                                                scores.gather(1, targets[:, None]), targets))

    def add_ranked(self, rank: torch.Tensor, top: torch.Tensor) -> None:
        """Accumulate targets' 0-based ranks (B,) and each row's top items (B, ≥ max K) —
        what :meth:`add` computes from a score matrix, or a chunked scorer streams."""
        rank = rank.double()
        self.n += len(rank)
        self.mrr += float((1.0 / (rank + 1)).sum())
        for k in self.ks:
            hit = rank < k
            self.hr[k] += float(hit.sum())
            self.ndcg[k] += float((hit / torch.log2(rank + 2)).sum())
            self.covered[k][top[:, :k].reshape(-1)] = True

    def draw_negatives(self, n_rows: int, n_items: int) -> torch.Tensor:
        """(n_rows, sampled) random items for the sampled metrics (the accumulator's RNG)."""
        return torch.randint(self.n_reserved, n_items, (n_rows, self.sampled), generator=self.gen)

    def add_sampled_ranks(self, rank: torch.Tensor) -> None:
        """Extra, labelled 'sampled': rank among the target and N random unseen items."""
        rank = rank.double()
        for k in self.ks:
            hit = rank < k
            self.sampled_hr[k] += float(hit.sum())
            self.sampled_ndcg[k] += float((hit / torch.log2(rank + 2)).sum())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        out: dict[str, float] = {"users": self.n, "users_without_target": self.skipped}
        for k in self.ks:
            out[f"hr@{k}"] = self.hr[k] / n
            out[f"ndcg@{k}"] = self.ndcg[k] / n
        out["mrr"] = self.mrr / n
        for k in self.ks:
            out[f"coverage@{k}"] = int(self.covered[k].sum()) / max(self.catalog, 1)
        if self.sampled:
            for k in self.ks:
                out[f"sampled{self.sampled}_hr@{k}"] = self.sampled_hr[k] / n
                out[f"sampled{self.sampled}_ndcg@{k}"] = self.sampled_ndcg[k] / n
        return out
