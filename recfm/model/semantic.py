"""Semantic ids: items as short code tuples, decoded level by level (TIGER, Rajput et al. 2023).

Every item has a tuple of ``L`` discrete codes, ``codes: (n_items, L)`` with ``codes[i, l]``
in ``[0, sizes[l])``; the reserved rows (the first ``n_reserved``) hold -1 and are never
produced. The builder makes tuples unique across real items (its last level), so a full
tuple names exactly one item.

:class:`CodeTrie` holds the tuples that may be produced (all real items, or those an
``eligible`` mask allows) as flat tensors; :class:`GenerativeHead` predicts a tuple code by
code from a user state and decodes the top-k items with a beam search that only walks the
trie; :func:`exhaustive_top_k` is its plain reference (every allowed item scored).

Probabilities are over the trie's tuples: at each level the softmax runs over the codes
that continue the prefix to at least one allowed item (the others are -inf before the
log-softmax). ``log_probs``, the beam search and ``loss(..., trie=...)`` all use this one
restriction, so a beam's score is exactly the log-probability of its item and the
probabilities of the allowed items sum to one.

Example:
    >>> codes = torch.tensor([[-1, -1], [0, 0], [0, 1], [2, 0]])  # 1 reserved row
    >>> trie = CodeTrie(codes, sizes=(3, 2), n_reserved=1)
    >>> trie.valid_codes(0, torch.tensor([0]))  # after the empty prefix
    tensor([[ True, False,  True]])
    >>> head = GenerativeHead(d_model=8, sizes=(3, 2))
    >>> items, scores = head.beam_search(torch.randn(1, 8), trie, k=5)
    >>> sorted(items[0, :3].tolist()), items[0, 3:].tolist()
    ([1, 2, 3], [-1, -1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CodeTrie:
    """The prefix tree of the items that may be produced, as flat tensors.

    Nodes at depth ``l`` are the distinct prefixes of length ``l`` of the allowed tuples
    (depth 0: the root, node 0), numbered in lexicographic order, so the children of a
    node are a contiguous range of the next depth. Each depth also has one *sentinel*
    node, numbered ``n_nodes[l]``, with no children: dead beams, padding and items outside
    the trie point there.

    Args:
        codes: (n_items, L) integer codes; rows ``< n_reserved`` are ignored (-1 there).
        sizes: (L,) number of codes at each level.
        n_reserved: how many leading rows are reserved/padding items.
        eligible: optional (n_items,) bool, the items that may be produced (business
            rules); prefixes with no eligible item below them are not in the trie.

    Attributes:
        items: (m,) the allowed item indices, ascending.
        n_nodes: nodes per depth 0 .. L (the sentinels not counted).
        leaf_item: (n_nodes[L] + 1,) item index of each full tuple; -1 at the sentinel.
        path: (n_items, L + 1) node of each item's prefix at every depth (the sentinels
            for items outside the trie).

    Raises:
        ValueError: a real item's code out of range, or two allowed items with one tuple.
    """

    def __init__(self, codes: torch.Tensor, sizes: Sequence[int], n_reserved: int,
                 eligible: torch.Tensor | None = None) -> None:
        codes = torch.as_tensor(codes).long().cpu()
        self.sizes = tuple(int(s) for s in sizes)
        if codes.dim() != 2 or codes.size(1) != len(self.sizes):
            raise ValueError(f"codes: expected shape (n_items, {len(self.sizes)}), "
                             f"found {tuple(codes.shape)}")
        self.n_items, self.n_levels = codes.shape
        self.codes = codes  # (n_items, L)
        _check_codes(codes, self.sizes, n_reserved)

        allowed = torch.ones(self.n_items, dtype=torch.bool)
        allowed[:n_reserved] = False
        if eligible is not None:
            eligible = torch.as_tensor(eligible).cpu()
            if eligible.shape != (self.n_items,):
                raise ValueError(f"eligible: expected shape ({self.n_items},), "
                                 f"found {tuple(eligible.shape)}")
            allowed &= eligible.bool()
        self.items = allowed.nonzero().squeeze(1)  # (m,)
        self._build(self.items)

    def _build(self, items: torch.Tensor) -> None:
        """The node tensors of every depth from the allowed items (m,)."""
        n_levels, m = self.n_levels, len(items)
        order = items
        for level in reversed(range(n_levels)):  # lexicographic order by stable sorts
            order = order[torch.sort(self.codes[order, level], stable=True).indices]
        tuples = self.codes[order]  # (m, L)

        self.n_nodes = [1]
        self.first_child: list[torch.Tensor] = []  # per depth l: (n_nodes[l] + 1,)
        self.n_children: list[torch.Tensor] = []  # per depth l: (n_nodes[l] + 1,)
        self.child_code: list[torch.Tensor] = []  # per depth l: (n_nodes[l + 1] + 1,)
        self.child_key: list[torch.Tensor] = []  # per depth l: (n_nodes[l + 1],) sorted
        self.fanout: list[int] = []  # per depth l: most children of one node
        self.path = torch.empty(self.n_items, n_levels + 1, dtype=torch.long)
        self.path[:, 0] = 1  # the depth-0 sentinel
        self.path[order, 0] = 0

        new = torch.zeros(m, dtype=torch.bool)  # (m,) row starts a new prefix
        new[:1] = True
        parent = torch.zeros(m, dtype=torch.long)  # (m,) depth-l node of each row
        for level in range(n_levels):
            new[1:] |= tuples[1:, level] != tuples[:-1, level]
            node = torch.cumsum(new, 0) - 1  # (m,) depth-(l+1) node of each row
            starts = new.nonzero().squeeze(1)  # (n_next,) first row of each new node
            n_prev, n_next = self.n_nodes[-1], len(starts)
            parents = parent[starts]  # (n_next,)
            code = tuples[starts, level]  # (n_next,)
            counts = torch.bincount(parents, minlength=n_prev)  # (n_prev,)
            zero = torch.zeros(1, dtype=torch.long)
            self.first_child.append(torch.cat([torch.cumsum(counts, 0) - counts, zero]))
            self.n_children.append(torch.cat([counts, zero]))
            self.child_code.append(torch.cat([code, zero]))
            self.child_key.append(parents * self.sizes[level] + code)
            self.fanout.append(max(1, int(counts.max()) if n_next else 1))
            self.path[:, level + 1] = n_next
            self.path[order, level + 1] = node
            self.n_nodes.append(n_next)
            parent = node

        if self.n_nodes[-1] < m:
            row = int((~new[1:]).nonzero()[0]) + 1
            raise ValueError(f"codes: items {int(order[row - 1])} and {int(order[row])} share "
                             f"the tuple {tuples[row].tolist()}; expected unique tuples "
                             "(the builder's last level makes them unique)")
        self.leaf_item = torch.full((self.n_nodes[-1] + 1,), -1, dtype=torch.long)
        self.leaf_item[self.path[order, n_levels]] = order

    def children(self, level: int, nodes: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The children of depth-``level`` ``nodes`` (...,), padded to the level's fanout F:
        (child nodes (..., F), their codes at ``level`` (..., F), valid (..., F)). Padding
        slots hold the depth-(level+1) sentinel and code 0."""
        offsets = torch.arange(self.fanout[level], device=nodes.device)  # (F,)
        first = self.first_child[level][nodes]  # (...)
        valid = offsets < self.n_children[level][nodes][..., None]  # (..., F)
        child = torch.where(valid, first[..., None] + offsets, self.n_nodes[level + 1])
        return child, self.child_code[level][child], valid

    def valid_codes(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(..., sizes[level]) bool: the codes that continue depth-``level`` ``nodes`` (...,)
        toward an allowed item."""
        _, code, valid = self.children(level, nodes)  # (..., F)
        mask = torch.zeros(*nodes.shape, self.sizes[level] + 1, dtype=torch.bool,
                           device=nodes.device)
        mask.scatter_(-1, torch.where(valid, code, self.sizes[level]), True)
        return mask[..., :-1]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) item index of each tuple in ``codes`` (..., L); -1 where the tuple is not
        in the trie (no such item, a reserved row, or an item that is not eligible)."""
        node = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
        found = torch.ones_like(node, dtype=torch.bool)
        for level, size in enumerate(self.sizes):
            keys = self.child_key[level]  # (n_nodes[l+1],)
            if len(keys) == 0:
                return torch.full_like(node, -1)
            code = codes[..., level]
            query = node * size + code
            pos = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
            found &= (code >= 0) & (code < size) & (keys[pos] == query)
            node = torch.where(found, pos, self.n_nodes[level + 1])
        return self.leaf_item[node]

    def contains(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) bool: which of ``items`` (...,) (indices, -1 allowed) the trie can produce."""
        inside = (items >= 0) & (items < self.n_items)
        leaf = self.path[items.clamp(0, self.n_items - 1), self.n_levels]
        return inside & (leaf < self.n_nodes[-1])

    def to(self, device: torch.device | str) -> CodeTrie:
        """This trie with its tensors on ``device`` (a shallow copy; self is unchanged)."""
        out = object.__new__(CodeTrie)
        out.__dict__.update(self.__dict__)
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(device))
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                setattr(out, name, [t.to(device) for t in value])
        return out


def _check_codes(codes: torch.Tensor, sizes: tuple[int, ...], n_reserved: int) -> None:
    """Raise ValueError naming the first real item whose code is outside [0, sizes[l])."""
    real = codes[n_reserved:]  # (n_items - n_reserved, L)
    bad = (real < 0) | (real >= torch.tensor(sizes))
    if bad.any():
        row, level = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"codes[{row + n_reserved}, {level}]: expected a code in "
                         f"[0, {sizes[level]}) for a real item, found {int(real[row, level])}")


def _child_logits(logits: torch.Tensor, code: torch.Tensor, valid: torch.Tensor
                  ) -> torch.Tensor:
    """(..., F) the logits (..., S) at the children's codes (..., F); -inf where not valid."""
    return logits.gather(-1, code).masked_fill(~valid, float("-inf"))


class GenerativeHead(nn.Module):
    """Predicts an item's code tuple level by level from a user state.

    The state after the prefix ``c_0 .. c_{l-1}`` is ``s_l = h + emb_0[c_0] + ... +
    emb_{l-1}[c_{l-1}]`` (d,), and the logits of level ``l`` are ``out_l(gelu(proj_l(
    norm_l(s_l))))`` over its ``sizes[l]`` codes: one small MLP per level, no attention, so
    a decode costs L tiny matmuls per beam.

    Args:
        d_model: width of the user state ``h``.
        sizes: (L,) number of codes at each level (as the trie's).

    Example:
        >>> head = GenerativeHead(d_model=16, sizes=(4, 4, 3))
        >>> head.loss(torch.randn(5, 16), torch.tensor([[0, 1, 2]] * 5)).shape
        torch.Size([])
    """

    def __init__(self, d_model: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.d_model = d_model
        self.code_emb = nn.ModuleList(nn.Embedding(s, d_model) for s in self.sizes[:-1])
        self.norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in self.sizes)
        self.proj = nn.ModuleList(nn.Linear(d_model, d_model) for _ in self.sizes)
        self.out = nn.ModuleList(nn.Linear(d_model, s) for s in self.sizes)
        for emb in self.code_emb:
            nn.init.normal_(emb.weight, std=0.02)

    def level_logits(self, level: int, s: torch.Tensor) -> torch.Tensor:
        """(..., sizes[level]) float logits of level ``level`` from states ``s`` (..., d)."""
        x = F.gelu(self.proj[level](self.norm[level](s)))  # (..., d)
        return self.out[level](x).float()

    def _path_log_probs(self, h: torch.Tensor, codes: torch.Tensor,
                        trie: CodeTrie | None, nodes: torch.Tensor | None) -> torch.Tensor:
        """(...,) sum over levels of log p(code | prefix), teacher-forced. h: (..., d);
        codes: (..., L). With ``trie`` (and ``nodes`` (..., L + 1), the tuples' nodes at
        every depth) each level's softmax is over the valid codes only; without, over all."""
        s = h  # (..., d)
        total = torch.zeros(codes.shape[:-1], device=h.device)
        for level in range(len(self.sizes)):
            logits = self.level_logits(level, s)  # (..., S_l)
            code = codes[..., level]  # (...)
            target = logits.gather(-1, code[..., None]).squeeze(-1)  # (...)
            if trie is None:
                total = total + target - torch.logsumexp(logits, -1)
            else:
                _, child_code, valid = trie.children(level, nodes[..., level])  # (..., F)
                x = _child_logits(logits, child_code, valid)  # (..., F)
                total = total + target - torch.logsumexp(x, -1)
            if level < len(self.sizes) - 1:
                s = s + self.code_emb[level](code)
        return total

    def loss(self, h: torch.Tensor, target_codes: torch.Tensor,
             weights: torch.Tensor | None = None, trie: CodeTrie | None = None) -> torch.Tensor:
        """Teacher-forced cross-entropy summed over levels, mean over rows (weighted mean
        with ``weights`` (N,)). h: (N, d); target_codes: (N, L). With ``trie`` the softmax
        of each level is restricted to valid codes, so the loss is the mean of
        ``-log_probs`` of the targets (every target tuple must be in the trie); without it,
        the plain softmax over all ``sizes[l]`` codes of each level."""
        target_codes = target_codes.long()
        nodes = None
        if trie is not None:
            items = trie.lookup(target_codes)  # (N,)
            if (items < 0).any():
                row = int((items < 0).nonzero()[0])
                raise ValueError(f"target_codes[{row}] = {target_codes[row].tolist()}: "
                                 "expected a tuple of an item in the trie")
            nodes = trie.path[items]  # (N, L + 1)
        nll = -self._path_log_probs(h, target_codes, trie, nodes)  # (N,)
        if weights is None:
            return nll.mean()
        weights = weights.to(nll.dtype)
        return (nll * weights).sum() / weights.sum().clamp_min(1e-12)

    def log_probs(self, h: torch.Tensor, trie: CodeTrie, targets: torch.Tensor) -> torch.Tensor:
        """(B, M) exact log-probability of each target under the trie-restricted softmax
        (each level normalised over the valid codes only, as in :meth:`beam_search`);
        -inf for targets outside the trie. h: (B, d); targets: (B, M) item indices, or
        (B, M, L) code tuples."""
        items = trie.lookup(targets.long()) if targets.dim() == 3 else targets.long()
        inside = trie.contains(items)  # (B, M)
        safe = items.clamp(0, trie.n_items - 1)
        codes = trie.codes[safe].clamp_min(0)  # (B, M, L)
        nodes = trie.path[safe]  # (B, M, L + 1)
        state = h[:, None, :].expand(-1, items.size(1), -1)  # (B, M, d)
        total = self._path_log_probs(state, codes, trie, nodes)  # (B, M)
        return torch.where(inside, total, float("-inf"))

    @torch.no_grad()
    def beam_search(self, h: torch.Tensor, trie: CodeTrie, k: int, beam: int | None = None,
                    exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most probable items under the trie-restricted softmax, by beam search.

        Walks the trie level by level, keeping the ``beam`` best prefixes per user
        (default ``max(k, 20)``); the last level keeps the ``k`` best items. Vectorised over
        users and beams: the only Python loop is over the L levels. With a beam at least
        the number of allowed items it is exact (equals :func:`exhaustive_top_k`).

        Args:
            h: (B, d) user states.
            trie: the items that may be produced.
            k: how many items per user.
            beam: prefixes kept per level.
            exclude: optional (B, n_items) bool, items to skip (already seen). They are
                dropped at the last level, not renormalised away, so the scores stay equal
                to :meth:`log_probs`; a user who saw most of the beam's items may get fewer
                than ``k``.

        Returns:
            items (B, k) long, best first, -1 padding; scores (B, k) float log-probabilities,
            -inf padding.
        """
        width = max(k, 20) if beam is None else beam
        n_levels, batch = len(self.sizes), h.size(0)
        s = h[:, None, :]  # (B, 1, d)
        node = torch.zeros(batch, 1, dtype=torch.long, device=h.device)  # (B, 1) the root
        score = torch.zeros(batch, 1, device=h.device)  # (B, 1)
        for level in range(n_levels):
            last = level == n_levels - 1
            logits = self.level_logits(level, s)  # (B, W', S_l)
            child, code, valid = trie.children(level, node)  # (B, W', F)
            x = _child_logits(logits, code, valid)  # (B, W', F)
            log_p = torch.where(valid, x - torch.logsumexp(x, -1, keepdim=True), float("-inf"))
            total = (score[..., None] + log_p).flatten(1)  # (B, W' F)
            if last and exclude is not None:
                item = trie.leaf_item[child].flatten(1)  # (B, W' F)
                seen = exclude.gather(1, item.clamp_min(0)) & (item >= 0)
                total = total.masked_fill(seen, float("-inf"))
            top = torch.topk(total, min(k if last else width, total.size(1)), dim=1)
            score = top.values  # (B, W)
            node = child.flatten(1).gather(1, top.indices)  # (B, W)
            if not last:
                parent = top.indices // child.size(-1)  # (B, W) beam each one extends
                chosen = code.flatten(1).gather(1, top.indices)  # (B, W)
                s = s.gather(1, parent[..., None].expand(-1, -1, s.size(-1)))  # (B, W, d)
                s = s + self.code_emb[level](chosen)
        items = torch.where(torch.isfinite(score), trie.leaf_item[node], -1)  # (B, k')
        return _pad(items, score, k)


def _pad(items: torch.Tensor, scores: torch.Tensor, k: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) items and scores: the (B, k') given, -1 / -inf after them."""
    missing = k - items.size(1)
    if missing > 0:
        items = F.pad(items, (0, missing), value=-1)
        scores = F.pad(scores, (0, missing), value=float("-inf"))
    return items, scores


@torch.no_grad()
def exhaustive_top_k(head: GenerativeHead, h: torch.Tensor, trie: CodeTrie, k: int,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain reference of :meth:`GenerativeHead.beam_search`: every allowed item scored with
    :meth:`GenerativeHead.log_probs`, then the top ``k``. h: (B, d); exclude: optional
    (B, n_items) bool. Returns items (B, k) (-1 padding) and scores (B, k) (-inf padding)."""
    items = trie.items.to(h.device).expand(h.size(0), -1)  # (B, m)
    scores = head.log_probs(h, trie, items)  # (B, m)
    if exclude is not None:
        scores = scores.masked_fill(exclude.gather(1, items), float("-inf"))
    top = torch.topk(scores, min(k, items.size(1)), dim=1)
    best = torch.where(torch.isfinite(top.values), items.gather(1, top.indices), -1)
    return _pad(best, top.values, k)
