"""Next-item losses: full softmax over the catalog, or sampled softmax with logQ correction.

Sampled softmax (Bengio & Senécal 2008; Yi et al. 2019 for the logQ correction in
two-tower retrieval): each positive competes with ``n`` sampled negatives; subtracting
log q(item) from every logit undoes the sampler's bias toward popular items, so the
sampled loss estimates the full one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recfm.tokens.tokenizer import N_RESERVED_ITEMS


def full_softmax_loss(h: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                      label_smoothing: float = 0.0, temperature: float = 1.0,
                      weights: torch.Tensor | None = None,
                      logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over every real item. h: (N, d), targets: (N,), table: (V, d)."""
    logits = h @ table[N_RESERVED_ITEMS:].T  # (N, V - reserved)
    if logit_bias is not None:
        logits = logits + logit_bias
    if temperature != 1.0:
        logits = logits / temperature
    loss = F.cross_entropy(logits, targets - N_RESERVED_ITEMS, reduction="none",
                           label_smoothing=label_smoothing)
    return _reduce(loss, weights)


def sample_negatives(n: int, targets: torch.Tensor, n_items: int, mode: str,
                     generator: torch.Generator | None = None,
                     log_q: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) negative item ids: uniform over the catalog, other in-batch targets, half each,
    or (``popularity``) drawn with replacement from exp(``log_q``) (V,) — O(n log V) by
    inverse CDF, so a million-item catalog costs no (n, V) tensor."""
    device = targets.device
    if mode == "popularity":
        if log_q is None:
            raise ValueError("popularity negatives need log_q, the sampler's log probabilities")
        q = torch.exp(log_q.double())
        q[:N_RESERVED_ITEMS] = 0.0
        cdf = torch.cumsum(q, 0)  # (V,)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device) * cdf[-1]
        return torch.searchsorted(cdf, u, right=True).clamp(N_RESERVED_ITEMS, n_items - 1)
    uniform = torch.randint(N_RESERVED_ITEMS, n_items, (n,), device=device, generator=generator)
    if mode == "uniform":
        return uniform
    pick = torch.randint(0, targets.numel(), (n,), device=device, generator=generator)
    in_batch = targets.reshape(-1)[pick]
    if mode == "in_batch":
        return in_batch
    half = n // 2
    return torch.cat([uniform[:half], in_batch[half:]])


def sampled_softmax_loss(h: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                         negatives: torch.Tensor, log_q: torch.Tensor | None,
                         label_smoothing: float = 0.0, temperature: float = 1.0,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over [positive, shared negatives]; accidental hits are masked.

    h: (N, d); targets: (N,); negatives: (M,); log_q: (V,) log sampling probability or None.
    """
    pos = (h * table[targets]).sum(-1, keepdim=True)  # (N, 1)
    neg = h @ table[negatives].T  # (N, M)
    if log_q is not None:
        pos = pos - log_q[targets][:, None]
        neg = neg - log_q[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature  # (N, 1 + M)
    zeros = torch.zeros(len(targets), dtype=torch.long, device=h.device)
    if label_smoothing > 0:
        # smoothing over -inf (masked) logits would be infinite: smooth over finite ones only
        logp = torch.log_softmax(logits, dim=1)
        finite = torch.isfinite(logp)
        smooth = -(logp.masked_fill(~finite, 0).sum(1) / finite.sum(1))
        loss = (1 - label_smoothing) * -logp[:, 0] + label_smoothing * smooth
    else:
        loss = F.cross_entropy(logits, zeros, reduction="none")
    return _reduce(loss, weights)


def _reduce(loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return loss.mean()
    return (loss * weights).sum() / weights.sum().clamp_min(1e-12)
