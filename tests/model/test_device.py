"""Device, precision and compile choices (issue 22.1): every branch that a CPU can run is
run here — bf16 autocast included; what needs a GPU carries the ``gpu`` marker."""

from __future__ import annotations

import pytest
import torch

from recfm.errors import ConfigError
from recfm.evaluate.evaluator import evaluate_scorer, model_scorer
from recfm.model.config import ModelConfig
from recfm.model.device import Placement, resolve_device
from recfm.model.heads import ChunkedSoftmaxLoss
from recfm.train.config import TrainConfig
from recfm.train.loop import train

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU")


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="expected one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert Placement.of("cpu").plain and Placement.of("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        Placement.of("cpu", "fp8")


def test_chunked_loss_under_bf16_autocast_matches_fp32_and_keeps_fp32_gradients():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    table = torch.randn(50, 16, generator=g, requires_grad=True)
    t, w = torch.randint(0, 50, (37,), generator=g), torch.ones(37)
    ref = ChunkedSoftmaxLoss.apply(h, table, t, w, 0.1, 1.0, 8)
    ref_h, ref_t = torch.autograd.grad(ref, (h, table))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ChunkedSoftmaxLoss.apply(h, table, t, w, 0.1, 1.0, 8)
    gh, gt = torch.autograd.grad(out, (h, table))
    assert out.dtype == torch.float32 and gh.dtype == gt.dtype == torch.float32
    assert abs(float(out.detach() - ref.detach())) < 0.02 * abs(float(ref.detach()))
    for a, b in ((gh, ref_h), (gt, ref_t)):
        assert float((a - b).norm() / b.norm()) < 0.05


def test_bf16_training_on_the_cpu_runs_the_placed_path(tiny_prepared, tmp_path):
    model = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=16)
    base = dict(epochs=2, batch_size=16, tensorboard=False, device="cpu")
    fp32 = train(tiny_prepared, tmp_path / "fp32", model, TrainConfig(**base))
    bf16 = train(tiny_prepared, tmp_path / "bf16", model, TrainConfig(**base, precision="bf16"))
    assert bf16.best_valid["ndcg@10"] > 0 and bf16.test["ndcg@10"] > 0
    # the same schedule and data: bf16 rounding moves the metrics a little, not a lot
    assert abs(bf16.best_valid["ndcg@10"] - fp32.best_valid["ndcg@10"]) < 0.15


def test_a_placed_scorer_returns_fp32_scores_on_the_cpu(tiny_prepared, tmp_path):
    from recfm.data.splits import leave_one_out
    from recfm.model.foundation import FoundationModel
    from recfm.tokens.prepare import PreparedDataset

    run = tmp_path / "run"
    train(tiny_prepared, run, ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=16),
          TrainConfig(epochs=1, batch_size=16, tensorboard=False))
    model = FoundationModel.from_pretrained(run).eval()
    valid = leave_one_out(PreparedDataset.load(tiny_prepared).sequences).valid
    args = (valid, model.cfg.n_items, model.cfg.max_len, model.input_columns)
    plain = evaluate_scorer(model_scorer(model), *args)
    placed = evaluate_scorer(model_scorer(model, Placement.of("cpu", "bf16")), *args)
    assert abs(plain["ndcg@10"] - placed["ndcg@10"]) < 0.1
    chunked = evaluate_scorer(model_scorer(model, Placement.of("cpu", "fp32")), *args,
                              item_chunk=7)
    assert chunked["ndcg@10"] == pytest.approx(plain["ndcg@10"])


@pytest.mark.gpu
@gpu
def test_training_on_a_gpu_in_bf16_with_fused_adamw(tiny_prepared, tmp_path):
    res = train(tiny_prepared, tmp_path / "gpu", ModelConfig(d_model=16, n_layers=1, n_heads=2,
                                                             max_len=16),
                TrainConfig(epochs=2, batch_size=16, tensorboard=False, device="cuda"))
    assert res.best_valid["ndcg@10"] > 0
