"""Two processes on 127.0.0.1 (gloo) train like one process on the same global batches."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import recfm.train.distributed as distributed
import recfm.train.loop as loop
from recfm.model.config import ModelConfig
from recfm.train.config import TrainConfig
from recfm.train.distributed import free_port
from recfm.train.run import Checkpointer

# dropout off: it is the one source of randomness that differs between ranks
MODEL = dict(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
# a constant learning rate: a 1-epoch run resumed for 2 epochs follows the 2-epoch schedule
TRAIN = dict(batch_size=16, lr=3e-3, warmup_steps=1, min_lr_ratio=1.0, tensorboard=False,
             eval_batch_size=64, seed=3)

_LAST: dict[str, dict[str, torch.Tensor]] = {}


def _capture(cls) -> None:
    """Keep a copy of the parameters each checkpoint of this process sees (every rank)."""
    real = cls.save

    def save(self, model, opt, state):
        _LAST["params"] = {k: v.detach().clone().contiguous()
                           for k, v in model.state_dict().items()}
        return real(self, model, opt, state)

    cls.save = save


def _run(data: Path, run: Path, epochs: int, resume: bool = False) -> list[float]:
    """Train; the per-step losses (each the mean over the global batch's targets)."""
    losses: list[float] = []

    def on_progress(p: dict) -> None:
        if "loss" in p:
            losses.append(p["loss"])

    loop.train(data, run, ModelConfig(**MODEL), TrainConfig(epochs=epochs, **TRAIN),
               resume=resume, evaluate_test=False, on_progress=on_progress)
    return losses


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _capture(distributed.RankZeroCheckpointer)
    try:
        out_dir = Path(out)
        losses = _run(Path(data), out_dir / "ddp", epochs=2)
        save_file(_LAST["params"], str(out_dir / f"rank{rank}.safetensors"))
        resumed = _run(Path(data), out_dir / "resumed", epochs=2, resume=True)
        save_file(_LAST["params"], str(out_dir / f"resumed-rank{rank}.safetensors"))
        # streamed batches: each rank reads only its own row groups of tokens.parquet
        streamed: list[float] = []
        loop.train(out_dir / "grouped", out_dir / "stream", ModelConfig(**MODEL),
                   TrainConfig(epochs=1, stream=True, stream_window_groups=2, **TRAIN),
                   on_progress=lambda p: streamed.append(p["loss"]) if "loss" in p else None)
        save_file(_LAST["params"], str(out_dir / f"stream-rank{rank}.safetensors"))
        (out_dir / f"rank{rank}.json").write_text(json.dumps({"losses": losses,
                                                              "resumed": resumed,
                                                              "streamed": streamed}))
    finally:
        dist.destroy_process_group()


def _assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to float summation order (Adam turns a 1e-7 gradient difference on a ~0
    gradient into at most an lr-sized step, so element-wise atol is lr-scaled)."""
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=TRAIN["lr"] / 10, msg=k)
    diff = sum(float((a[k] - b[k]).double().norm() ** 2) for k in a) ** 0.5
    norm = sum(float(b[k].double().norm() ** 2) for k in a) ** 0.5
    assert diff / norm < 1e-5


def test_two_gloo_processes_match_one_process(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(Checkpointer, "save", Checkpointer.save)  # restored after
    _capture(Checkpointer)
    single = _run(tiny_prepared, tmp_path / "single", epochs=2)
    single_params = _LAST["params"]
    _run(tiny_prepared, tmp_path / "resumed", epochs=1)  # two processes resume this one
    (tmp_path / "grouped").mkdir()  # the same data in row groups of 7 users, to stream
    for name in ("items.parquet", "tokenizer.json", "report.json"):
        shutil.copy(tiny_prepared / name, tmp_path / "grouped" / name)
    pq.write_table(pq.read_table(tiny_prepared / "tokens.parquet"),
                   tmp_path / "grouped" / "tokens.parquet", row_group_size=7)

    mp.start_processes(_worker, args=(2, free_port(), str(tiny_prepared), str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")

    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    p0 = load_file(str(tmp_path / "rank0.safetensors"))
    p1 = load_file(str(tmp_path / "rank1.safetensors"))
    # DDP keeps the two replicas identical, bit for bit
    assert p0.keys() == p1.keys() == single_params.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    # each step's global-batch loss is the one-process loss of the same batch
    assert len(r0["losses"]) == len(single) >= 6
    np.testing.assert_allclose(r0["losses"], single, rtol=1e-5)
    assert r0["losses"] == r1["losses"]
    _assert_same_model(p0, single_params)
    # a one-process checkpoint resumed by two processes ends where one process ends
    q0 = load_file(str(tmp_path / "resumed-rank0.safetensors"))
    q1 = load_file(str(tmp_path / "resumed-rank1.safetensors"))
    np.testing.assert_allclose(r0["resumed"], single[len(single) // 2:], rtol=1e-5)
    for k in q0:
        assert torch.equal(q0[k], q1[k]), k
    _assert_same_model(q0, single_params)
    # streamed training (9 row groups: 5 on rank 0, 4 on rank 1) keeps replicas identical
    s0 = load_file(str(tmp_path / "stream-rank0.safetensors"))
    s1 = load_file(str(tmp_path / "stream-rank1.safetensors"))
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    assert r0["streamed"] == r1["streamed"] and len(r0["streamed"]) >= 4
    # rank 0 alone wrote the run directory: one header + one row per epoch
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().splitlines()) == 3
    summary = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert summary["distributed"] == {"world": 2, "backend": "gloo"}


def test_recfm_train_nproc_2_runs_through_torchrun(tiny_prepared, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[model]\nd_model = 16\nn_layers = 1\nmax_len = 8\n"
                   "[train]\nepochs = 1\nbatch_size = 16\nthreads = 1\ntensorboard = false\n")
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "recfm", "train", str(tiny_prepared), "--out",
                          str(run), "--config", str(cfg), "--nproc", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("best epoch 0, 1 epochs") == 1  # rank 0 alone prints
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world": 2, "backend": "gloo"}
    assert "--nproc" not in config["command"]
    assert (run / "checkpoint" / "state.pt").is_file()
