"""Prompt tuning: soft tokens move recommendations to a surface, the foundation untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recfm.consume.prompt import (
    PromptConfig,
    prompt_tune,
    surface_items,
    surface_share,
    top_k_items,
)
from recfm.data.splits import leave_one_out
from recfm.errors import InputError, RecfmError
from recfm.model.config import ModelConfig
from recfm.model.prompt import prefix_from_tokens, prompted_backbone
from recfm.pipeline import Recommender
from recfm.pipeline.prompts import prompt_metadata, prompt_names, state_sha256
from recfm.tokens.prepare import PreparedDataset
from recfm.runinfo import weights_sha256
from recfm.train.config import TrainConfig
from recfm.train.loop import train

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=20, dropout=0.1)
SURFACE = {"item.kids": "true"}  # the synthetic world's kids titles


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world (kids titles and profiles) and a small model trained on it."""
    from recfm.data import synthetic
    from recfm.tokens.prepare import prepare

    root = tmp_path_factory.mktemp("prompt")
    cfg = synthetic.SynthConfig(n_users=400, n_items=150, events_per_user=40, seed=0)
    synthetic.write_world(synthetic.generate(cfg), root / "world", cfg)
    prepare(synthetic.load_world(root / "world"), root / "prepared")
    train(root / "prepared", root / "run", MODEL, TrainConfig(
        epochs=6, batch_size=32, lr=5e-3, warmup_steps=5, seed=0, tensorboard=False),
        evaluate_test=False)
    return root


@pytest.fixture(scope="module")
def run(world):
    return world / "run"


@pytest.fixture(scope="module")
def test_frame(world):
    return leave_one_out(PreparedDataset.load(world / "prepared").sequences).test


def history(fm, frame, row: int) -> list[str]:
    return [fm.tokenizer.item_ids[i - 3] for i in frame["item"][row]]


def test_prompt_moves_recommendations_and_keeps_the_foundation(run, test_frame):
    fm = Recommender.from_pretrained(run)
    kids = surface_items(SURFACE, fm.items, fm.cfg.n_items)
    before_hash, before_state = weights_sha256(run), state_sha256(fm.model)
    before_top = top_k_items(fm, test_frame, k=5)
    h = history(fm, test_frame, 0)
    before_rec = fm.recommend(h, k=5)

    res = prompt_tune(run, PromptConfig(name="kids", tokens=4, surface=SURFACE, epochs=6,
                                        batch_size=32, lr=0.1, warmup_steps=2))
    assert res.loss_last < res.loss_first
    assert weights_sha256(run) == before_hash  # model.safetensors untouched
    assert prompt_names(run) == ["kids"]
    assert prompt_metadata(run, "kids")["backbone_sha256"] == before_hash

    fm.load_prompts()  # the same model object: no reload
    assert state_sha256(fm.model) == before_state
    after_top = top_k_items(fm, test_frame, k=5)
    np.testing.assert_array_equal(after_top, before_top)  # unprompted: unchanged
    assert fm.recommend(h, k=5).equals(before_rec)
    prompted = top_k_items(fm, test_frame, k=5, prompt="kids")
    assert (prompted != before_top).any()
    share_before = surface_share(before_top, kids).mean()
    share_after = surface_share(prompted, kids).mean()
    assert share_after > share_before + 0.3
    recs = fm.recommend(h, k=5, prompt="kids")  # the single-user API
    assert recs.height == 5 and not recs.equals(before_rec)


def test_prompts_swap_without_reloading(run, test_frame):
    fm = Recommender.from_pretrained(run)
    with pytest.raises(RecfmError, match="no prompt 'nope'"):
        fm.recommend(history(fm, test_frame, 0), k=3, prompt="nope")
    plain = top_k_items(fm, test_frame, k=5)
    fm.add_prompt("zero", torch.zeros(2, fm.cfg.d_model))  # input depth
    a = top_k_items(fm, test_frame, k=5, prompt="zero")
    fm.add_prompt("zero", torch.randn(2, fm.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 5)
    b = top_k_items(fm, test_frame, k=5, prompt="zero")
    assert (a != b).any()  # replaced in place, same model object
    np.testing.assert_array_equal(top_k_items(fm, test_frame, k=5), plain)
    with pytest.raises(RecfmError, match=r"expected a \(k, 32\) or \(2, 2, k, 32\) tensor"):
        fm.add_prompt("bad", torch.zeros(2, 7))
    with pytest.raises(RecfmError, match="prompt name"):
        fm.add_prompt("../x", torch.zeros(2, 32))


def test_history_positions_see_the_prompt_causally():
    """Outputs at history positions depend on the prompt; the prompt never on the history."""
    from recfm.model.backbone import Backbone

    torch.manual_seed(0)
    for positions in ("learned", "rope"):
        bb = Backbone(ModelConfig(d_model=16, n_layers=2, n_heads=2, positions=positions,
                                  dropout=0.0)).eval()
        x, valid = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
        valid[1, 3:] = False
        p = torch.randn(3, 16)
        out = prompted_backbone(bb, x, valid, p)
        assert out.shape == (2, 5, 16)
        assert not torch.allclose(out, bb(x, valid))
        # a prompt-only forward equals the prompt positions of the full one
        full = bb(torch.cat([p[None].expand(2, 3, 16), x], 1),
                  torch.cat([torch.ones(2, 3, dtype=torch.bool), valid], 1))
        torch.testing.assert_close(full[:, 3:], out)
        alone = bb(p[None], torch.ones(1, 3, dtype=torch.bool))
        torch.testing.assert_close(full[:1, :3], alone)
        # a deep prompt made of the keys / values these tokens leave is the same prompt
        deep = prefix_from_tokens(bb, p)
        assert deep.shape == (2, 2, 3, 16)
        out_deep = prompted_backbone(bb, x, valid, deep)
        torch.testing.assert_close(out_deep[0], out[0])
        torch.testing.assert_close(out_deep[1, :3], out[1, :3])  # real positions of row 1


def test_surface_errors(run):
    fm = Recommender.from_pretrained(run)
    with pytest.raises(InputError, match="no such column"):
        surface_items({"item.colour": "red"}, fm.items, fm.cfg.n_items)
    with pytest.raises(InputError, match="genres"):
        surface_items({"item.genres": "no-such-genre"}, fm.items, fm.cfg.n_items)
    with pytest.raises(InputError, match="surface"):
        PromptConfig.from_dict({"name": "x"})
    with pytest.raises(InputError, match="no such facet"):
        prompt_tune(run, PromptConfig(name="x", surface={"planet": "mars"}))


def test_cli_prompt_tune_and_list(run, test_frame, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from recfm.cli import app

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint", "prompts"))
    before = weights_sha256(copy)
    r = CliRunner().invoke(app, ["prompt-tune", str(copy), "--name", "kids", "--surface",
                                 "item.kids=true", "--tokens", "2", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert (copy / "prompts" / "kids.safetensors").is_file()
    assert (copy / "prompts" / "kids.json").is_file()
    assert weights_sha256(copy) == before
    r = CliRunner().invoke(app, ["prompts", str(copy)])
    assert r.exit_code == 0 and "kids" in r.output and "item.kids=true" in r.output
    r = CliRunner().invoke(app, ["prompt-tune", str(copy), "--name", "x", "--surface", "oops"])
    assert isinstance(r.exception, InputError) and "KEY=VALUE" in str(r.exception)
    user = test_frame["user_id"][0]
    r = CliRunner().invoke(app, ["recommend", str(copy), "--user", user, "--prompt", "kids"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["recommend", str(copy), "--user", user, "--prompt", "adults"])
    assert isinstance(r.exception, RecfmError) and "no prompt 'adults'" in str(r.exception)


def test_seen_before_matches_a_loop():
    from recfm.consume.prompt import seen_before

    g = torch.Generator().manual_seed(0)
    items = torch.randint(3, 12, (3, 6), generator=g)
    items[2, 4:] = 0  # right padding
    rows = items > 0
    seen = seen_before(items, rows, 12)
    b, t = rows.nonzero(as_tuple=True)
    for n, (bi, ti) in enumerate(zip(b.tolist(), t.tolist())):
        want = set(items[bi, :ti + 1].tolist())
        got = set(seen[n].nonzero()[:, 0].tolist()) - {0}
        assert got == want


def test_rank_loss_counts_only_unseen_items_that_outrank_the_surface():
    from recfm.consume.prompt import rank_loss

    on = torch.tensor([True, True, True, False, False, False])
    none_seen = torch.zeros(1, 6, dtype=torch.bool)
    good = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.0, -1.0]])  # top 2 on the surface, by far
    bad = torch.tensor([[1.0, 0.0, -1.0, 9.0, 8.0, 7.0]])
    assert rank_loss(good, on, none_seen, k=2, margin=1.0) < 0.01
    assert rank_loss(bad, on, none_seen, k=2, margin=1.0) > 5.0
    # an off-surface item the user has seen is excluded, as recommend excludes it
    seen_top = torch.tensor([[9.0, 8.0, 7.0, 20.0, 0.0, -1.0]])
    seen = torch.tensor([[False, False, False, True, False, False]])
    assert rank_loss(seen_top, on, seen, k=2, margin=1.0) < 0.01
    assert rank_loss(seen_top, on, none_seen, k=2, margin=1.0) > 5.0
    # gradients raise the k-th surface item and lower the offending off-surface ones
    x = bad.clone().requires_grad_(True)
    rank_loss(x, on, none_seen, k=2, margin=1.0).backward()
    assert x.grad[0, 1] < 0 and x.grad[0, 3] > 0 and x.grad[0, 4] > 0
    assert x.grad[0, 0] == 0  # above the k-th: not pushed


def test_rank_term_lifts_the_worst_users(run, test_frame):
    """With the top-k term the prompt puts more users fully on the surface."""
    fm = Recommender.from_pretrained(run)
    kids = surface_items(SURFACE, fm.items, fm.cfg.n_items)
    shares = {}
    for name, weight in (("plain", 0.0), ("ranked", 2.0)):
        prompt_tune(run, PromptConfig(name=name, tokens=4, surface=SURFACE, epochs=4,
                                      batch_size=32, lr=0.1, warmup_steps=2,
                                      rank_weight=weight, rank_k=5))
        fm.load_prompts()
        shares[name] = surface_share(top_k_items(fm, test_frame, k=5, prompt=name), kids)
    assert (shares["ranked"] == 1.0).mean() > (shares["plain"] == 1.0).mean()
    assert shares["ranked"].min() >= shares["plain"].min()
    with pytest.raises(InputError, match="rank_k"):
        PromptConfig.from_dict({"surface": SURFACE, "rank_k": 0})
