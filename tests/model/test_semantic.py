"""Semantic ids: the trie holds exactly the allowed tuples, the beam search equals the
exhaustive reference, its scores are log_probs, and the head learns."""

from __future__ import annotations

import doctest

import pytest
import torch

from recfm.model import semantic
from recfm.model.semantic import CodeTrie, GenerativeHead, exhaustive_top_k

N_RESERVED = 4
SIZES = (3, 4, 5)


def catalog(n_real: int, sizes: tuple[int, ...] = SIZES, seed: int = 0) -> torch.Tensor:
    """(N_RESERVED + n_real, L) codes: -1 reserved rows, then distinct random tuples."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(int(torch.tensor(sizes).prod()), generator=g)[:n_real]  # (n_real,)
    cols = []
    for size in reversed(sizes):
        cols.append(flat % size)
        flat = flat // size
    real = torch.stack(cols[::-1], dim=1)  # (n_real, L)
    return torch.cat([torch.full((N_RESERVED, len(sizes)), -1), real])


def head_and_states(d: int = 8, batch: int = 3, sizes: tuple[int, ...] = SIZES,
                    seed: int = 0) -> tuple[GenerativeHead, torch.Tensor]:
    torch.manual_seed(seed)
    return GenerativeHead(d, sizes), torch.randn(batch, d)


def test_docstring_examples_run():
    assert doctest.testmod(semantic).failed == 0


def test_valid_codes_are_the_prefixes_of_allowed_items():
    codes = catalog(30)
    eligible = torch.rand(len(codes), generator=torch.Generator().manual_seed(1)) < 0.6
    trie = CodeTrie(codes, SIZES, N_RESERVED, eligible)
    allowed = [i for i in range(N_RESERVED, len(codes)) if eligible[i]]
    assert trie.items.tolist() == allowed
    for level in range(len(SIZES)):
        for item in allowed:
            prefix = codes[item, :level].tolist()
            expected = {int(codes[j, level]) for j in allowed
                        if codes[j, :level].tolist() == prefix}
            mask = trie.valid_codes(level, trie.path[item, level])  # (S_l,)
            assert set(mask.nonzero().squeeze(1).tolist()) == expected


def test_lookup_round_trips_and_rejects_tuples_outside_the_trie():
    codes = catalog(20)
    eligible = torch.ones(len(codes), dtype=torch.bool)
    eligible[7] = False
    trie = CodeTrie(codes, SIZES, N_RESERVED, eligible)
    found = trie.lookup(codes)  # (n_items,)
    expected = torch.arange(len(codes))
    expected[:N_RESERVED] = -1
    expected[7] = -1
    assert found.tolist() == expected.tolist()
    taken = {tuple(t) for t in codes.tolist()}
    missing = next(t for t in [(a, b, c) for a in range(3) for b in range(4) for c in range(5)]
                   if t not in taken)
    assert int(trie.lookup(torch.tensor(missing))) == -1
    assert trie.contains(torch.tensor([-1, 0, 7, 8])).tolist() == [False, False, False, True]


def test_prefixes_without_an_eligible_item_are_pruned():
    codes = catalog(40)
    eligible = codes[:, 0] != 1  # no item whose first code is 1
    trie = CodeTrie(codes, SIZES, N_RESERVED, eligible)
    assert trie.valid_codes(0, torch.tensor(0)).tolist() == [True, False, True]
    head, h = head_and_states()
    items, _ = head.beam_search(h, trie, k=50, beam=100)
    produced = items[items >= 0]
    assert len(produced) == 3 * len(trie.items)
    assert bool(eligible[produced].all())
    assert bool((produced >= N_RESERVED).all())


def test_rejects_duplicate_tuples_and_codes_out_of_range():
    codes = catalog(10)
    dup = codes.clone()
    dup[9] = dup[5]
    with pytest.raises(ValueError, match="items 5 and 9 share"):
        CodeTrie(dup, SIZES, N_RESERVED)
    CodeTrie(dup, SIZES, N_RESERVED, eligible=torch.arange(len(dup)) != 9)  # one is enough
    bad = codes.clone()
    bad[6, 2] = 5
    with pytest.raises(ValueError, match=r"codes\[6, 2\].*\[0, 5\).*found 5"):
        CodeTrie(bad, SIZES, N_RESERVED)


@pytest.mark.parametrize("restricted", [False, True])
def test_full_beam_equals_exhaustive(restricted):
    codes = catalog(45)
    eligible = (torch.arange(len(codes)) % 3 != 0) if restricted else None
    trie = CodeTrie(codes, SIZES, N_RESERVED, eligible)
    head, h = head_and_states(batch=4)
    exclude = torch.zeros(4, len(codes), dtype=torch.bool)
    exclude[0, trie.items[:5]] = True
    items, scores = head.beam_search(h, trie, k=8, beam=len(codes), exclude=exclude)
    ref_items, ref_scores = exhaustive_top_k(head, h, trie, k=8, exclude=exclude)
    assert torch.equal(items, ref_items)
    torch.testing.assert_close(scores, ref_scores)
    assert not bool(exclude.gather(1, items).any())


def test_small_beam_scores_are_log_probs_of_the_items():
    codes = catalog(50)
    trie = CodeTrie(codes, SIZES, N_RESERVED)
    head, h = head_and_states(batch=5)
    items, scores = head.beam_search(h, trie, k=4, beam=4)
    assert bool((items >= N_RESERVED).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    torch.testing.assert_close(scores, head.log_probs(h, trie, items))
    torch.testing.assert_close(scores, head.log_probs(h, trie, codes[items]))  # as tuples
    assert torch.equal(head.beam_search(h, trie.to("cpu"), k=4, beam=4)[0], items)


def test_log_probs_are_a_distribution_over_the_allowed_items():
    codes = catalog(25)
    eligible = torch.arange(len(codes)) % 2 == 0
    trie = CodeTrie(codes, SIZES, N_RESERVED, eligible)
    head, h = head_and_states(batch=2)
    every = torch.arange(len(codes)).expand(2, -1)  # (2, n_items)
    lp = head.log_probs(h, trie, every)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(2))
    assert bool(torch.isinf(lp[:, ~eligible]).all())
    assert bool(torch.isinf(lp[:, :N_RESERVED]).all())


def test_loss_with_the_trie_is_minus_mean_log_probs():
    codes = catalog(30)
    trie = CodeTrie(codes, SIZES, N_RESERVED)
    head, h = head_and_states(batch=6)
    items = torch.arange(N_RESERVED, N_RESERVED + 6)
    lp = head.log_probs(h, trie, items[:, None]).squeeze(1)  # (6,)
    torch.testing.assert_close(head.loss(h, codes[items], trie=trie), -lp.mean())
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(head.loss(h, codes[items], w, trie=trie),
                               -(lp * w).sum() / w.sum())
    with torch.no_grad():  # fewer competing codes: the restricted loss is the smaller
        assert float(head.loss(h, codes[items], trie=trie)) < float(head.loss(h, codes[items]))
    with pytest.raises(ValueError, match="in the trie"):
        head.loss(h, codes[:6], trie=trie)


def test_fewer_items_than_k_pad_with_minus_one():
    codes = catalog(6)
    trie = CodeTrie(codes, SIZES, N_RESERVED)
    head, h = head_and_states(batch=2)
    items, scores = head.beam_search(h, trie, k=10)
    assert sorted(items[0, :6].tolist()) == list(range(N_RESERVED, N_RESERVED + 6))
    assert items[:, 6:].eq(-1).all() and torch.isinf(scores[:, 6:]).all()
    assert torch.isfinite(scores[:, :6]).all()
    none = CodeTrie(codes, SIZES, N_RESERVED, eligible=torch.zeros(len(codes), dtype=torch.bool))
    items, scores = head.beam_search(h, none, k=3)
    assert items.eq(-1).all() and torch.isinf(scores).all()
    assert exhaustive_top_k(head, h, none, k=3)[0].eq(-1).all()


def test_head_learns_the_codes_of_target_items():
    torch.manual_seed(0)
    codes = catalog(60)
    trie = CodeTrie(codes, SIZES, N_RESERVED)
    head = GenerativeHead(16, SIZES)
    h = torch.randn(32, 16)  # fixed random states
    targets = torch.randint(N_RESERVED, len(codes), (32,))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = float(head.loss(h, codes[targets]).detach())
    for _ in range(150):
        opt.zero_grad()
        loss = head.loss(h, codes[targets])
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first
    items, _ = head.beam_search(h, trie, k=1)
    assert float((items[:, 0] == targets).float().mean()) > 0.9
