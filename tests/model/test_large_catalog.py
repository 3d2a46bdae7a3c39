"""Large catalogs: the chunked full softmax equals the plain one, popularity-sampled softmax
with logQ estimates the full softmax, chunked top-k and chunked full-ranking evaluation
equal the unchunked ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.evaluate.evaluator import evaluate_scorer, model_scorer, popularity_scorer
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.model.heads import full_softmax_loss, sample_negatives, sampled_softmax_loss
from recfm.model.scoring import chunked_topk
from recfm.tokens.prepare import PreparedDataset
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from recfm.train.batches import make_batch


@pytest.mark.parametrize("smoothing, temperature, weighted, chunk", [
    (0.0, 1.0, False, 50), (0.1, 1.0, False, 37), (0.0, 0.5, True, 1000), (0.2, 2.0, True, 7),
    (0.0, 1.0, False, 10**9)])
def test_chunked_softmax_equals_the_plain_loss(smoothing, temperature, weighted, chunk):
    torch.manual_seed(0)
    N, V, d = 23, 40, 8
    h = torch.randn(N, d, dtype=torch.float64, requires_grad=True)
    table = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(N_RESERVED_ITEMS, V, (N,))
    w = torch.rand(N, dtype=torch.float64) if weighted else None
    plain = full_softmax_loss(h, targets, table, smoothing, temperature, w)
    chunked = full_softmax_loss(h, targets, table, smoothing, temperature, w, chunk=chunk)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(plain * 1.7, (h, table)),
                    torch.autograd.grad(chunked * 1.7, (h, table))):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(full_softmax_loss(h, targets, table, smoothing, temperature,
                                                     w, chunk=chunk), plain.detach())


def test_chunked_softmax_holds_only_a_chunk_of_logits():
    """The largest tensor the loss allocates is rows × V, not N × V (saved tensors count)."""
    N, V, d, chunk = 512, 2000, 16, 64 * 2000
    h = torch.randn(N, d, requires_grad=True)
    table = torch.randn(V + N_RESERVED_ITEMS, d, requires_grad=True)
    targets = torch.randint(N_RESERVED_ITEMS, V + N_RESERVED_ITEMS, (N,))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = full_softmax_loss(h, targets, table, chunk=chunk)
    loss.backward()
    assert max(sizes) < N * V / 4
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_softmax_loss(h, targets, table)
    assert max(sizes) >= N * V  # the plain loss keeps every logit for its backward


def test_popularity_negatives_follow_q():
    V = 20
    counts = torch.arange(V, dtype=torch.float64) + 1.0
    counts[:N_RESERVED_ITEMS] = 0
    log_q = torch.log(counts / counts.sum()).float()
    gen = torch.Generator().manual_seed(0)
    negs = sample_negatives(200_000, torch.tensor([5]), V, "popularity", gen, log_q)
    freq = torch.bincount(negs, minlength=V).double() / len(negs)
    assert freq[:N_RESERVED_ITEMS].sum() == 0
    torch.testing.assert_close(freq, counts / counts.sum(), atol=3e-3, rtol=0)


def test_logq_correction_makes_sampled_gradient_match_full():
    """Sampled softmax with popularity negatives: with logQ its gradient estimates the
    full softmax's; without, it is biased toward pushing popular items down."""
    torch.manual_seed(0)
    V, d, N = 40, 8, 6
    table = torch.randn(V, d) * 0.5
    targets = torch.randint(N_RESERVED_ITEMS, V, (N,))
    pop = torch.linspace(1.0, 30.0, V, dtype=torch.float64)
    pop[:N_RESERVED_ITEMS] = 0
    log_q = torch.log(pop / pop.sum()).float()
    h = torch.randn(N, d, requires_grad=True)
    full = torch.autograd.grad(full_softmax_loss(h, targets, table), h)[0]
    gen = torch.Generator().manual_seed(1)
    negs = sample_negatives(20_000, targets, V, "popularity", gen, log_q)
    with_q = torch.autograd.grad(sampled_softmax_loss(h, targets, table, negs, log_q), h)[0]
    without = torch.autograd.grad(sampled_softmax_loss(h, targets, table, negs, None), h)[0]
    err_q = (with_q - full).norm() / full.norm()
    err_plain = (without - full).norm() / full.norm()
    assert err_q < 0.05
    assert err_plain > 3 * err_q


def sampled_model(prepared):
    """A tiny model with popularity-sampled softmax on ``prepared``, its dataset and split."""
    ds = PreparedDataset.load(prepared)
    split = leave_one_out(ds.sequences)
    base = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0,
                       loss="sampled", negatives="popularity", n_negatives=16)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items, split.train)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    return ds, split, model


def test_rows_path_equals_whole_table(tiny_prepared):
    """Sampled softmax builds only the rows of its targets and negatives, and the input
    side only the batch's items: the same numbers as indexing the whole item table."""
    _, _, model = sampled_model(tiny_prepared)
    enc = model.item_encoder
    assert enc.use_attrs and enc.attr_values.numel() > 0
    ids = torch.tensor([0, 3, 7, 8, 20])
    torch.testing.assert_close(enc.rows(ids), enc.table()[ids])
    items = torch.tensor([[3, 7, 7, 0], [20, 3, 0, 0]])
    torch.testing.assert_close(enc(items), torch.nn.functional.embedding(items, enc.table()))
    assert model._loss_table() is None
    h = torch.randn(6, 16)
    target = torch.tensor([3, 4, 5, 9, 9, 30])
    grads = []
    for table in (model.item_table(), None):
        model.zero_grad()
        gen = torch.Generator().manual_seed(3)
        loss = model._item_loss(h, target, table, None, gen)
        loss.backward()
        grads.append((loss.detach(), enc.ids.weight.grad.clone(), enc.attrs.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_chunked_topk_equals_topk_with_exclusions():
    torch.manual_seed(0)
    users, table = torch.randn(5, 8), torch.randn(1000, 8)
    seen = (np.array([0, 0, 3]), np.array([10, 999, 512]))
    full = users @ table.T
    full[torch.from_numpy(seen[0]), torch.from_numpy(seen[1])] = float("-inf")
    ref = torch.topk(full, 20)
    vals, idx = chunked_topk(lambda s, e: users @ table[s:e].T, 1000, 20, chunk=96, seen=seen)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(vals, ref.values)


def test_model_top_items_by_chunks_equals_full_scores(tiny_prepared):
    ds = PreparedDataset.load(tiny_prepared)
    cfg, (offsets, values) = build_config(ModelConfig(d_model=16, n_layers=1, n_heads=2),
                                          ds.tokenizer, ds.items)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items).eval()
    model.item_encoder.set_attributes(offsets, values)
    users = torch.randn(4, 16)
    ref = torch.topk(model.score(users), 10)
    vals, idx = model.top_items(users, 10, chunk=9)
    assert torch.equal(idx, ref.indices)
    torch.testing.assert_close(vals, ref.values)


def test_chunked_evaluation_equals_unchunked(tiny_prepared):
    _, split, model = sampled_model(tiny_prepared)
    # one optimizer step on the popularity-sampled loss, so scores are not at init
    store = SequenceStore(split.train, model.train_columns)
    loss = model.loss(make_batch(store, store.spans(9, min_len=2)[:32]))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval()
    cols, n = model.input_columns, model.cfg.n_items
    kw = dict(batch_size=16, ks=(1, 5, 10), sampled_negatives=10)
    whole = evaluate_scorer(model_scorer(model), split.test, n, 8, cols, item_chunk=0, **kw)
    chunked = evaluate_scorer(model_scorer(model), split.test, n, 8, cols, item_chunk=7, **kw)
    assert whole.keys() == chunked.keys()
    for k in whole:
        assert abs(whole[k] - chunked[k]) < 1e-9, k
    pop = popularity_scorer(split.train, n)
    whole = evaluate_scorer(pop, split.test, n, 8, cols, item_chunk=0, **kw)
    chunked = evaluate_scorer(pop, split.test, n, 8, cols, item_chunk=6, **kw)
    for k in whole:
        if not k.startswith("coverage"):  # top-k order among exact ties may differ
            assert abs(whole[k] - chunked[k]) < 1e-9, k


def test_chunked_softmax_is_exact_for_a_target_the_softmax_underflows():
    """A target ~200 nats below the best item: its softmax is 0 in fp32, the loss is not."""
    h = torch.tensor([[1.0, 0.0]], requires_grad=True)
    table = torch.tensor([[0.0, 0.0]] * N_RESERVED_ITEMS + [[200.0, 0.0], [0.0, 0.0]],
                         requires_grad=True)
    targets = torch.tensor([N_RESERVED_ITEMS + 1])
    plain = full_softmax_loss(h, targets, table)
    chunked = full_softmax_loss(h, targets, table, chunk=4)
    assert torch.isfinite(chunked) and abs(float((chunked - plain).detach())) < 1e-4
    assert abs(float(plain.detach()) - 200.0) < 1e-3
