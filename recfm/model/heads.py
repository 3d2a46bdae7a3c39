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
                      logit_bias: torch.Tensor | None = None,
                      chunk: int = 0) -> torch.Tensor:
    """Cross-entropy over every real item. h: (N, d), targets: (N,), table: (V, d).
    ``chunk`` > 0 (without an (N, V) ``logit_bias``): :class:`ChunkedSoftmaxLoss`, at most
    ``chunk`` logits held at a time; 0: the plain reference."""
    if chunk > 0 and logit_bias is None:
        n = len(targets)
        w = (weights / weights.sum().clamp_min(1e-12) if weights is not None
             else torch.full((n,), 1.0 / max(n, 1), device=h.device, dtype=h.dtype))
        rows = max(1, chunk // max(1, table.size(0) - N_RESERVED_ITEMS))
        return ChunkedSoftmaxLoss.apply(h, table[N_RESERVED_ITEMS:], targets - N_RESERVED_ITEMS,
                                        w.detach(), label_smoothing, temperature, rows)
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
    """Softmax over [positive, shared negatives], accidental hits masked. h: (N, d); targets:
    (N,); negatives: (M,); log_q: (V,) log sampling probability or None."""
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


class ChunkedSoftmaxLoss(torch.autograd.Function):
    """Σ_i w_i · CE(h_i · tableᵀ / τ, target_i) in chunks of ``rows`` rows of ``h``, each
    chunk's gradients computed while its logits are at hand (Liger-Kernel's fused linear
    cross-entropy): same matmuls as the plain loss, memory rows × V instead of N × V.

    h: (N, d); table: (V, d); targets: (N,) in [0, V); w: (N,) constant row weights.
    """

    @staticmethod
    def forward(ctx, h, table, targets, w, smoothing: float, temperature: float, rows: int):
        want_h, want_t = ctx.needs_input_grad[:2]
        kind = h.device.type
        # under autocast (bf16 on a GPU) the matmuls run in its dtype, the softmax in fp32
        mm = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype
        acc = h.dtype if mm == h.dtype else torch.float32
        with torch.autocast(kind, enabled=False):
            grad_h = torch.zeros_like(h) if want_h else None
            grad_t = torch.zeros_like(table) if want_t else None
            total = h.new_zeros((), dtype=torch.float64)
            n_items = table.size(0)
            tab = table.to(mm)
            # label smoothing's mean logit and the -ε/V part of its gradient act through
            # the column sums: n × d work instead of passes over the n × V logits
            tab_sum = table.to(acc).sum(0) if smoothing else None  # (d,)
            h_sum = torch.zeros(h.size(1), dtype=acc, device=h.device) if smoothing else None
            for s in range(0, h.size(0), rows):
                hc, tc, wc = h[s:s + rows].to(mm), targets[s:s + rows, None], w[s:s + rows]
                z = (hc @ tab.T).to(acc)  # (n, V)
                if temperature != 1.0:
                    z.div_(temperature)
                zt = z.gather(1, tc)[:, 0]
                if want_h or want_t:
                    p = torch.softmax(z, dim=-1)  # one fused pass-set; z is then free
                    pt = p.gather(1, tc)[:, 0]
                    lse = zt - torch.log(pt)
                    # a target too unlikely for the softmax's precision (0 or subnormal)
                    tiny = pt < torch.finfo(p.dtype).tiny
                    if tiny.any():
                        lse[tiny] = torch.logsumexp(z[tiny], dim=-1)
                else:
                    lse = torch.logsumexp(z, dim=-1)
                del z
                loss = lse - (1 - smoothing) * zt
                if smoothing:
                    loss = loss - smoothing * (hc.to(acc) @ tab_sum) / (n_items * temperature)
                total += (wc * loss).sum(dtype=torch.float64)
                if not (want_h or want_t):
                    continue
                # dL/dz = w · (softmax − (1 − ε)·onehot − ε / V) / τ: the row weights and
                # the constant go onto the n × d operands, never the n × V matrix
                p.scatter_add_(1, tc, torch.full_like(tc, smoothing - 1, dtype=p.dtype))
                scale = (wc / temperature).to(acc)[:, None]  # (n, 1)
                pm = p.to(mm)
                if want_h:
                    gh = (pm @ tab).to(acc) * scale
                    if smoothing:
                        gh -= (smoothing / n_items) * scale * tab_sum
                    grad_h[s:s + rows] = gh
                if want_t:
                    hs = (hc.to(acc) * scale)
                    if mm == grad_t.dtype:
                        grad_t.addmm_(pm.T, hs.to(mm))
                    else:
                        grad_t += (pm.T @ hs.to(mm)).to(grad_t.dtype)
                    if smoothing:
                        h_sum += hs.sum(0)
            if smoothing and want_t:
                grad_t -= (smoothing / n_items) * h_sum[None, :].to(grad_t.dtype)
        ctx.save_for_backward(*(t for t in (grad_h, grad_t) if t is not None))
        ctx.which = (want_h, want_t)
        return total.to(torch.promote_types(h.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_out if want else None for want in ctx.which]
        return (*grads, None, None, None, None, None)
