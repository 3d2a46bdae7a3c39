"""Objectives beyond the next item: heads train, weights mask, windows and pooling are causal."""

from __future__ import annotations

import pytest
import torch

from recfm.tokens.batching import SequenceStore
from recfm.data.splits import leave_one_out
from recfm.evaluate.objectives import facet_accuracy, future_holdout, holdout_metrics, stability
from recfm.model.config import ModelConfig, ObjectiveConfig
from recfm.model.foundation import FoundationModel, build_config
from recfm.model.objectives import multi_label_window, position_repr
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.train.batches import make_batch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world: actions, devices, entity types and genres."""
    from recfm.data import synthetic
    from recfm.tokens.prepare import prepare

    root = tmp_path_factory.mktemp("obj")
    cfg = synthetic.SynthConfig(seed=3, n_users=120, n_items=60, events_per_user=60)
    synthetic.write_world(synthetic.generate(cfg), root / "world", cfg)
    prepare(synthetic.load_world(root / "world"), root / "prepared")
    return PreparedDataset.load(root / "prepared")


def make_model(ds, **kw) -> tuple[FoundationModel, SequenceStore]:
    train = leave_one_out(ds.sequences).train
    base = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_len=12, dropout=0.0, **kw)
    cfg, (offsets, values) = build_config(base, ds.tokenizer, ds.items, train)
    torch.manual_seed(0)
    model = FoundationModel(cfg, ds.tokenizer, ds.items)
    model.item_encoder.set_attributes(offsets, values)
    return model, SequenceStore(train, model.train_columns)


ALL = ObjectiveConfig(
    facet_heads={"action": 0.3, "entity_type": 0.3, "genres": 0.3, "gap_bucket": 0.1,
                 "device": 0.1, "value_bucket": 0.1},
    hierarchical=True, multi_token_k=3, window_events=4, window_days=30.0,
    action_weights={"complete": 1.0, "play": 0.5, "trailer": 0.1}, value_weighting="log")


@pytest.mark.parametrize("repr_", ["last", "mean_last", "attention", "last_attention",
                                   "layer_mean", "layer_mix"])
def test_every_objective_trains(world, repr_):
    model, store = make_model(world, objectives=ALL, user_repr=repr_)
    batch = make_batch(store, store.spans(13, min_len=2)[:64])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = float(model.loss(batch).detach())
    assert set(model.last_losses) == {"next_item", "multi_token", "window", "facet_action",
                                      "facet_entity_type", "facet_genres", "facet_gap_bucket",
                                      "facet_device", "facet_value_bucket"}
    for _ in range(25):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch).detach()) < first


def test_zero_action_weight_masks_targets(world):
    actions = world.tokenizer.facets["action"]
    masked = ObjectiveConfig(action_weights={a: 0.0 for a in actions if a != "complete"})
    model, store = make_model(world, objectives=masked)
    batch = make_batch(store, store.spans(13, min_len=2)[:32])
    base = float(model.loss(batch).detach())
    # changing the targets of non-complete tokens must not change the loss
    code = {a: i + 2 for i, a in enumerate(actions)}
    not_complete = batch["future_action"][:, 1:] != code["complete"]
    batch["target"] = torch.where(not_complete & (batch["target"] > 0),
                                  torch.full_like(batch["target"], 3), batch["target"])
    assert float(model.loss(batch).detach()) == pytest.approx(base, rel=1e-6)


def test_unknown_action_or_facet_is_refused(world):
    with pytest.raises(ValueError, match="no action 'binge'"):
        make_model(world, objectives=ObjectiveConfig(action_weights={"binge": 1.0}))
    with pytest.raises(ValueError, match="facet head 'mood'"):
        make_model(world, objectives=ObjectiveConfig(facet_heads={"mood": 1.0}))


def test_future_window_targets():
    future = torch.tensor([[5, 6, 7, 8, 0]])
    ts = torch.tensor([[0, 10, 20, 100_000_000, 0]])
    tgt, mask = multi_label_window(future, ts, 2, days=1.0)
    assert tgt[0, 0].tolist() == [6, 7] and mask[0, 0].tolist() == [True, True]
    assert mask[0, 1].tolist() == [True, False]      # item 8 is 3 years later
    assert mask[0, 3].tolist() == [False, False]     # padding


@pytest.mark.parametrize("mode", ["mean_last", "attention", "last_attention", "layer_mix",
                                  "last"])
def test_user_representations_are_causal(world, mode):
    model, store = make_model(world, user_repr=mode)
    model.eval()
    batch = store.gather(store.spans(12)[:4])
    a = model.positions(batch)
    batch2 = {k: v.clone() for k, v in batch.items()}
    batch2["item"][:, -1] = torch.where(batch2["item"][:, -1] > 0, 3, 0)
    b = model.positions(batch2)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=1e-5, rtol=1e-5)
    assert position_repr([a], batch["item"] > 0, "last", 4, None) is a


def test_last_attention_starts_as_the_last_position_and_learns_its_gate(world):
    model, store = make_model(world, user_repr="last_attention")
    batch = make_batch(store, store.spans(13, min_len=2)[:32])
    model.eval()
    torch.testing.assert_close(model.positions(batch), model.positions(batch, "last"))
    model.train()
    model.loss(batch).backward()
    assert model.heads.pool_gate.grad is not None and model.heads.pool_gate.grad.abs().sum() > 0
    with torch.no_grad():
        model.heads.pool_gate.fill_(1.0)
    model.eval()
    assert not torch.allclose(model.positions(batch), model.positions(batch, "last"))


def test_holdout_metrics_facets_and_stability(world):
    split, holdout = future_holdout(world.sequences, window=5)
    assert holdout.height > 0
    assert (holdout["window_item"].list.len() == 5).all()
    # nothing of the held-out window is in training
    tr = split.train.join(holdout.select("user_idx", "length"), on="user_idx")
    assert (tr["length"] <= tr["length_right"] - 2).all()
    model, _ = make_model(world, objectives=ObjectiveConfig(
        facet_heads={"action": 1.0, "genres": 1.0, "entity_type": 1.0}))
    code = world.tokenizer.facets["action"].index("complete") + 2
    m = holdout_metrics(model, holdout, complete_code=code)
    assert 0 <= m["ndcg@10"] <= m["hr@10"] <= 1 and 0 <= m["window_ndcg@10"] <= 1
    assert 0 <= m["completed_share@10"] <= 1
    acc = facet_accuracy(model, holdout, split.train)
    assert {"action_acc", "action_majority_acc", "genres_acc", "entity_type_acc"} <= set(acc)
    st = stability(model, world.sequences, appended=(1, 5))
    assert -1 <= st["stability_cos@5"] <= 1 and 0 <= st["stability_overlap@1"] <= 1


def test_window_horizon_scores(world):
    """The window ranking comes from the head trained for it, and is refused by name."""
    from recfm.model.objectives import window_head
    from recfm.tokens.tokenizer import N_RESERVED_ITEMS as R

    store = SequenceStore(leave_one_out(world.sequences).train, ["item"])
    batch = store.gather(store.spans(12)[:6])
    # next-item only: the window is ranked by the next-item scores
    plain, _ = make_model(world)
    u = plain.last_hidden(batch)
    assert window_head(plain.heads) == "next"
    torch.testing.assert_close(plain.score(u, "window"), plain.score(u))
    with pytest.raises(ValueError, match="unknown horizon 'month'"):
        plain.score(u, "month")
    # future-window head: its own logits
    win, _ = make_model(world, objectives=ObjectiveConfig(window_events=4))
    torch.nn.init.normal_(win.heads.window.lin.weight, std=0.3)
    u = win.last_hidden(batch)
    s = win.score(u, "window")
    expect = win.heads.window(u) @ win.item_table()[R:].T
    assert window_head(win.heads) == "window"
    torch.testing.assert_close(s[:, R:], expect)
    assert torch.isinf(s[:, :R]).all() and not torch.allclose(s, win.score(u))
    # multi-token: log of the mean of the k offsets' probabilities, a distribution; with the
    # offset heads still the identity (zero-initialised) it is the next-item log-softmax
    multi, _ = make_model(world, objectives=ObjectiveConfig(multi_token_k=3))
    u = multi.last_hidden(batch)
    assert window_head(multi.heads) == "multi"
    s = multi.score(u, "window")
    torch.testing.assert_close(s[:, R:], torch.log_softmax(multi.score(u)[:, R:], -1))
    torch.nn.init.normal_(multi.heads.multi[0].lin.weight, std=0.3)
    s = multi.score(u, "window")
    torch.testing.assert_close(s[:, R:].exp().sum(-1), torch.ones(len(u)))
    p = [torch.softmax(multi.score(u)[:, R:], -1),
         torch.softmax(multi.heads.multi[0](u) @ multi.item_table()[R:].T, -1),
         torch.softmax(multi.heads.multi[1](u) @ multi.item_table()[R:].T, -1)]
    torch.testing.assert_close(s[:, R:].exp(), sum(p) / 3)


def test_recommend_window_and_holdout_heads(world):
    split, holdout = future_holdout(world.sequences, window=5)
    model, _ = make_model(world, objectives=ObjectiveConfig(window_events=5))
    torch.nn.init.normal_(model.heads.window.lin.weight, std=0.3)
    model.eval()
    history = world.tokenizer.item_ids[:4]
    rec = Recommender(model, world.tokenizer, world.items)
    nxt = rec.recommend(history, k=5)
    win = rec.recommend(history, k=5, horizon="window")
    assert win.height == 5 and not set(history) & set(win["item_id"].to_list())
    assert nxt["item_id"].to_list() != win["item_id"].to_list()
    m = holdout_metrics(model, holdout)
    assert m["window_scored_by"] == "window"
    assert 0 <= m["window_ndcg@10_next_head"] <= 1 and 0 <= m["window_ndcg@10"] <= 1
    # ranking the window with the next-item head gives the next-head number exactly
    m_next = holdout_metrics(model, holdout, window_horizon="next")
    assert m_next["window_scored_by"] == "next" and "window_ndcg@10_next_head" not in m_next
    assert m_next["window_ndcg@10"] == pytest.approx(m["window_ndcg@10_next_head"])
    assert m_next["ndcg@10"] == pytest.approx(m["ndcg@10"])


def test_rollout_is_the_expected_count_of_the_next_items(world):
    """Depth 1 is the next-item distribution; depth 2 with a beam over every item is
    p1 + sum_a p1(a) p(. | history + a), computed here one continuation at a time."""
    from recfm.model.objectives import rollout_scores
    from recfm.tokens.tokenizer import N_RESERVED_ITEMS as R

    model, _ = make_model(world)
    model.eval()
    store = SequenceStore(leave_one_out(world.sequences).train, ["item"])
    batch = store.gather(store.spans(12)[:3])
    V = model.cfg.n_items
    exclude = torch.zeros(3, V, dtype=torch.bool)
    exclude[:, :R] = True
    exclude[0, batch["item"][0][batch["item"][0] > 0]] = True  # row 0: its history is out

    def probs(items: torch.Tensor, excl: torch.Tensor) -> torch.Tensor:
        s = model.score(model.last_hidden({"item": items}))
        return torch.softmax(s.masked_fill(excl, float("-inf")), -1)

    with torch.no_grad():
        p1 = probs(batch["item"], exclude)
        torch.testing.assert_close(rollout_scores(model, batch, exclude, depth=1)[:, R:],
                                   p1[:, R:])
        two = rollout_scores(model, batch, exclude, depth=2, beam=V)  # exact: every path
        for row in range(3):
            hist = batch["item"][row][batch["item"][row] > 0]
            expect = p1[row].clone()
            for a in range(R, V):
                if exclude[row, a]:
                    continue
                excl = exclude[row].clone()
                excl[a] = True
                expect += p1[row, a] * probs(torch.cat([hist, torch.tensor([a])])[None],
                                             excl[None])[0]
            torch.testing.assert_close(two[row, R:], expect[R:], rtol=1e-4, atol=1e-6)
        history0 = exclude[0].clone()
        history0[:R] = False
        assert history0.any() and (two[0, history0] == 0).all()
        assert torch.isinf(two[:, :R]).all()
        torch.testing.assert_close(two[:, R:].sum(-1), torch.full((3,), 2.0))  # two items
        narrow = rollout_scores(model, batch, exclude, depth=3, beam=4)
        torch.testing.assert_close(narrow[:, R:].sum(-1), torch.full((3,), 3.0))
    with pytest.raises(ValueError, match="depth >= 1"):
        rollout_scores(model, batch, exclude, depth=0)


def test_rollout_appends_after_the_last_token_and_keeps_the_context_length():
    from recfm.model.objectives import _append_token

    batch = {"item": torch.tensor([[5, 6, 0], [7, 8, 9]]),
             "action": torch.tensor([[2, 3, 0], [4, 4, 2]])}
    out = _append_token(batch, torch.tensor([0, 0, 1]), torch.tensor([11, 12, 13]), max_len=3)
    # row 0 had room: the item goes after its last token, which lends it its action;
    # row 1 was full: it drops its first token
    assert out["item"].tolist() == [[5, 6, 11], [5, 6, 12], [8, 9, 13]]
    assert out["action"].tolist() == [[2, 3, 3], [2, 3, 3], [4, 2, 2]]


def test_recommend_and_holdout_rollout(world):
    split, holdout = future_holdout(world.sequences, window=5)
    model, _ = make_model(world)
    model.eval()
    history = world.tokenizer.item_ids[:4]
    rec = Recommender(model, world.tokenizer, world.items)
    rolled = rec.recommend(history, k=5, horizon="rollout")
    assert rolled.height == 5 and not set(history) & set(rolled["item_id"].to_list())
    assert rolled["score"].to_list() == sorted(rolled["score"].to_list(), reverse=True)
    with pytest.raises(ValueError, match="from histories"):
        model.score(rec.encode_users([history]), "rollout")
    with pytest.raises(ValueError, match="prompt"):
        rec.recommend(history, horizon="rollout", prompt="kids")
    m = holdout_metrics(model, holdout)
    assert 0 <= m["window_ndcg@10_rollout"] <= 1
    # a rollout of depth 1 ranks by the next-item head: the window number is the same
    one = holdout_metrics(model, holdout, rollout_depth=1)
    assert one["window_ndcg@10_rollout"] == pytest.approx(m["window_ndcg@10"])
    assert "window_ndcg@10_rollout" not in holdout_metrics(model, holdout, rollout_depth=0)
