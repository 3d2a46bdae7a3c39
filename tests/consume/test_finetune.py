"""Fine-tuning: surface and binary tasks train, save a loadable run, and refuse bad tasks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from recfm.consume.finetune import (
    TaskConfig,
    TaskModel,
    auc_score,
    finetune,
    labelled_users,
    load_task,
    with_shown,
)
from recfm.data.splits import leave_one_out
from recfm.errors import InputError, RecfmError
from recfm.model.config import ModelConfig
from recfm.model.foundation import FoundationModel
from recfm.pipeline import Recommender
from recfm.tokens.prepare import PreparedDataset
from recfm.train.config import TrainConfig
from recfm.train.loop import train
from tests.conftest import chain_events

MODEL = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_len=8, dropout=0.0)
TRAIN = {"batch_size": 16, "lr": 5e-3, "warmup_steps": 2, "patience": 10, "seed": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny ring world, where titles i % 3 == 0 are always completed, others never."""
    from recfm.data.readers import RawDataset
    from recfm.data.schema import normalize_events, normalize_items
    from recfm.tokens.prepare import prepare

    root = tmp_path_factory.mktemp("finetune")
    ev = chain_events(n_users=80).with_columns(
        pl.when(pl.col("item_id").str.slice(1).cast(pl.Int64) % 3 == 0)
        .then(pl.lit("complete")).otherwise(pl.lit("play")).alias("action"))
    items = normalize_items(pl.DataFrame({
        "item_id": [f"i{i}" for i in range(40)],
        "genres": [["comedy", "kids"] if i % 2 == 0 else ["drama"] for i in range(40)],
        "kids": ["true" if i % 2 == 0 else "false" for i in range(40)],
    }), "items")
    raw = RawDataset(normalize_events(ev, "events"), items, "events", "items",
                     {"name": "tiny-complete", "has_time": True})
    prepare(raw, root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="module")
def base(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finetune-base") / "run"
    train(data, run, MODEL, TrainConfig(epochs=6, tensorboard=False, **TRAIN),
          evaluate_test=False)
    return run


def task(kind: str, **kw) -> TaskConfig:
    fields = {"kind": kind, "max_steps": 40, "eval_every": 10, "train": TRAIN}
    if kind == "surface":
        fields["items"] = {"kids": True}
    return TaskConfig.from_dict({**fields, **kw})


def losses(run) -> list[float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [float(r["train_loss"]) for r in rows if int(r["step"]) > 0]


def test_surface_task_trains_and_ranks_only_the_subset(base, data, tmp_path):
    res = finetune(base, task("surface"), tmp_path / "kids")
    loss = losses(tmp_path / "kids")
    assert loss[-1] < loss[0]
    assert res.steps == 40 and 0 < res.test["users"] and 0 <= res.test["ndcg@10"] <= 1
    assert res.test["subset_items"] == 20
    FoundationModel.from_pretrained(tmp_path / "kids")  # a normal run directory
    tm = TaskModel.from_pretrained(tmp_path / "kids")
    test = leave_one_out(PreparedDataset.load(data).sequences).test
    assert tm.per_user(test)["ndcg@10"].mean() == pytest.approx(res.test["ndcg@10"])
    recs = tm.recommend(["i1", "i2", "i3"], k=10)
    assert recs.height == 10
    assert all(int(i[1:]) % 2 == 0 for i in recs["item_id"])  # kids titles only
    meta = json.loads((tmp_path / "kids" / "config.json").read_text())
    assert meta["task"]["kind"] == "surface" and meta["init_from"] == str(base)


def test_binary_task_learns_completion(base, data, tmp_path):
    res = finetune(base, task("binary", max_steps=120, eval_every=20), tmp_path / "complete")
    loss = losses(tmp_path / "complete")
    assert loss[-1] < loss[0]
    assert res.test["auc"] > 0.75  # completion is a function of the title here
    assert 0 < res.test["logloss"] < 0.69
    tm = TaskModel.from_pretrained(tmp_path / "complete")
    pu = tm.per_user(leave_one_out(PreparedDataset.load(data).sequences).test)
    assert auc_score(pu["logit"], pu["label"]) == pytest.approx(res.test["auc"])
    p = tm.predict([["i1", "i2"], ["i1", "i2"]], ["i3", "i4"])
    assert p[0] > p[1]
    FoundationModel.from_pretrained(tmp_path / "complete")


def test_a_run_saved_before_head_norm_loads_without_it(base, data, tmp_path):
    """Task runs written before ``head_norm`` existed have an un-normalised head."""
    finetune(base, task("binary", max_steps=10, head_norm=False), tmp_path / "old")
    meta_path = tmp_path / "old" / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["task"]["head_norm"]
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "old" / "manifest.json").unlink()  # such runs had no manifest either
    tm = TaskModel.from_pretrained(tmp_path / "old")
    assert not tm.task.head_norm and isinstance(tm.head.norm_h, torch.nn.Identity)
    assert np.isfinite(tm.predict([["i1", "i2"]], ["i3"])).all()
    assert isinstance(TaskModel(Recommender.from_pretrained(base), task("binary"))
                      .head.norm_e, torch.nn.LayerNorm)  # new runs normalise


def test_train_users_keeps_a_fixed_share_of_users_for_training(base, data, tmp_path):
    split = leave_one_out(PreparedDataset.load(data).sequences)
    few = labelled_users(split, 0.25)
    users = set(few.train["user_idx"].to_list())
    assert len(users) == 20 and set(few.valid["user_idx"].to_list()) <= users
    assert few.test.equals(split.test)  # tested on every user
    assert labelled_users(split, 0.25).train.equals(few.train)  # the same draw every time
    assert labelled_users(split, 1.0) is split
    res = finetune(base, task("binary", max_steps=10, train_users=0.25), tmp_path / "few")
    assert res.best_valid["users"] <= 20 < res.test["users"]


@pytest.fixture(scope="module")
def impressions(data, tmp_path_factory):
    """Before each event of the ring world: its own title shown, and title + 20 (far from
    the ring's next step) shown and not chosen; plus impressions to be ignored."""
    ev = chain_events(n_users=80)
    far = (pl.col("item_id").str.slice(1).cast(pl.Int64) + 20) % 40
    imp = pl.concat([
        ev.select("user_id", "item_id", pl.col("timestamp") - 10),
        ev.select("user_id", pl.format("i{}", far).alias("item_id"), pl.col("timestamp") - 20),
        pl.DataFrame({"user_id": ["u0", "nobody", "u0"], "item_id": ["unknown", "i1", "i2"],
                      "timestamp": [1_600_000_000 - 5, 1_600_000_000, 1_700_000_000]}),
    ]).with_columns(pl.lit("impression").alias("action"))
    path = tmp_path_factory.mktemp("impressions") / "impressions.parquet"
    imp.write_parquet(path)
    return path


def test_shown_titles_are_mapped_to_the_choice_they_were_shown_for(data, impressions):
    ds = PreparedDataset.load(data)
    index = ds.tokenizer.item_index()
    seqs = with_shown(ds.sequences, index, impressions)
    names = {v: k for k, v in index.items()}
    for row in seqs.head(10).iter_rows(named=True):
        assert len(row["shown"]) == len(row["item"])
        for item, shown in zip(row["item"], row["shown"]):
            assert shown == index[f"i{(int(names[item][1:]) + 20) % 40}"]


def test_shown_task_learns_which_shown_title_is_chosen(base, data, impressions, tmp_path):
    res = finetune(base, task("shown", impressions=str(impressions), max_steps=60),
                   tmp_path / "shown")
    assert res.test["auc"] > 0.9 and res.test["positive_rate"] == 0.5
    tm = TaskModel.from_pretrained(tmp_path / "shown")
    ds = PreparedDataset.load(data)
    test = leave_one_out(with_shown(ds.sequences, ds.tokenizer.item_index(), impressions)).test
    pu = tm.per_user(test)
    assert len(pu["logit"]) == 2 * res.test["users"]
    assert auc_score(pu["logit"], pu["label"]) == pytest.approx(res.test["auc"])
    p = tm.predict([["i1", "i2"], ["i1", "i2"]], ["i3", "i23"])  # the ring's next vs far
    assert p[0] > p[1]


def test_malformed_impressions_file_names_the_file(base, tmp_path):
    bad = tmp_path / "imp.csv"
    bad.write_text("user_id,item_id\nu0,i1\n")
    with pytest.raises(InputError, match="imp.csv"):
        finetune(base, task("shown", impressions=str(bad)), tmp_path / "x")


def test_frozen_layers_stay_bit_identical(base, tmp_path):
    finetune(base, task("binary", trainable_layers=1, max_steps=20), tmp_path / "top1")
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "top1" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("backbone.blocks.1.", "backbone.ln_f.", "heads."))
                           for k in changed)
    assert "backbone.blocks.0.attn.qkv.weight" not in changed


def test_from_scratch_starts_from_random_weights(base, tmp_path):
    res = finetune(base, task("binary", max_steps=10, eval_every=5, next_item_weight=0.5),
                   tmp_path / "scratch", from_scratch=True)
    meta = json.loads((tmp_path / "scratch" / "config.json").read_text())
    assert meta["from_scratch"] is True and meta["init_from"] is None
    assert res.n_trainable == res.n_params  # every weight trains, the head's too
    before = load_file(str(base / "model.safetensors"))["backbone.blocks.0.attn.qkv.weight"]
    after = load_file(str(tmp_path / "scratch" / "model.safetensors"))
    assert not torch.allclose(before, after["backbone.blocks.0.attn.qkv.weight"], atol=1e-3)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y] for b in s[~y]]
    assert auc_score(s, y) == pytest.approx(np.mean(pairs))


def test_head_only_steps_keep_the_backbone_then_release_it(base, tmp_path):
    """LP-FT: the first head_only_steps train the head alone, then the backbone trains too
    (the checkpoint holds the task model after the last step)."""
    before = load_file(str(base / "model.safetensors"))
    torch.manual_seed(TRAIN["seed"])  # the head finetune starts from
    init_head = TaskModel(Recommender.from_pretrained(base), task("binary")).head

    def after(steps_alone: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"alone{steps_alone}"
        finetune(base, task("binary", head_only_steps=steps_alone, max_steps=10,
                            eval_every=10), out)
        return load_file(str(out / "checkpoint" / "model.safetensors"))

    probed = after(10)  # every step head-only
    assert all(torch.equal(before[k], probed[f"fm.{k}"]) for k in before)
    assert any(not torch.equal(v, probed[f"head.{k}"])
               for k, v in init_head.state_dict().items())
    released = after(5)  # 5 steps alone, 5 with the backbone
    assert any(not torch.equal(before[k], released[f"fm.{k}"]) for k in before)
    with pytest.raises(InputError, match="head_only_steps"):
        task("surface", head_only_steps=3)


@pytest.mark.parametrize("text, key", [
    ('kind = "ranking"\n', "kind"),
    ('name = "x"\n', "kind"),
    ('kind = "binary"\nmax_stepz = 3\n', "max_stepz"),
    ('kind = "surface"\n', "items"),
    ('kind = "binary"\n[train]\nlr = "fast"\n', "lr"),
    ('kind = "binary"\nmax_steps = 0\n', "max_steps"),
    ('kind = "binary"\ntrain_users = 0.0\n', "train_users"),
    ('kind = "shown"\n', "impressions"),
    ('kind = "binary"\nimpressions = "imp.parquet"\n', "impressions"),
    ('kind = = "binary"\n', None),
])
def test_bad_task_files_are_refused(tmp_path, text, key):
    path = tmp_path / "task.toml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_task(path)
    assert str(path) in str(e.value)
    if key:
        assert e.value.column == key


def test_unknown_catalog_column_and_action_are_named(base, tmp_path):
    with pytest.raises(InputError, match="items.rating"):
        finetune(base, task("surface", items={"rating": "PG"}), tmp_path / "a")
    with pytest.raises(RecfmError, match="matches no item"):
        finetune(base, task("surface", items={"kids": "maybe"}), tmp_path / "b")
    with pytest.raises(RecfmError, match="no action 'rate'"):
        finetune(base, task("binary", label_action="rate"), tmp_path / "c")


def test_cli_bad_task_is_one_line(base, tmp_path):
    bad = tmp_path / "task.toml"
    bad.write_text('kind = "binary"\nsteps = 10\n')
    r = subprocess.run([sys.executable, "-m", "recfm", "finetune", str(base), "--task", str(bad),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}" in lines[0] and "steps" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_finetune_writes_a_run(base, tmp_path):
    from typer.testing import CliRunner

    from recfm.cli import app

    path = tmp_path / "task.toml"
    path.write_text('kind = "surface"\nname = "kids"\nmax_steps = 10\neval_every = 5\n'
                    '[items]\nkids = "true"\n[train]\nbatch_size = 16\nwarmup_steps = 2\n')
    r = CliRunner().invoke(app, ["finetune", str(base), "--task", str(path),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "ndcg@10" in r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["task"]["name"] == "kids"
