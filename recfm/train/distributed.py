"""Multi-process training with PyTorch DistributedDataParallel (gloo on CPU, NCCL on GPU).

:func:`recfm.train.loop.train` calls into this module. Each rank's mean loss is weighted by
its share of the global batch's target tokens, so the gradient equals one process's on the
whole batch; rank 0 writes checkpoints (with every rank's RNG state) and makes the stop
decisions. Launching and what each rank does: docs/guide/training.md.
"""

from __future__ import annotations

import logging
import os
import runpy
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch import nn

from recfm.errors import RecfmError
from recfm.evaluate.evaluator import evaluate_scorer
from recfm.train.run import Checkpointer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistContext | None:
    """Join the process group torchrun describes in the environment (None: one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not dist.is_initialized():
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return current()


def current() -> DistContext | None:
    """The context of an initialised process group of more than one process, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    backend = dist.get_backend()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, device)


class _LossModule(nn.Module):
    """DDP hooks ``forward``; the model's training entry point is ``loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


class DDPTrainer:
    """The distributed parts of one training run (created by the loop when distributed)."""

    def __init__(self, ctx: DistContext, model: nn.Module, seed: int) -> None:
        self.ctx, self.model = ctx, model
        self.wrapped: nn.Module | None = None
        self.last_tokens = 0
        if ctx.device.type != "cpu":
            model.to(ctx.device)
        if ctx.rank > 0:  # rank 0 keeps the single-process dropout stream
            torch.manual_seed(seed + 1_000_003 * ctx.rank)

    def rows(self, global_batch: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch of the single-process plan."""
        mine = global_batch[self.ctx.rank::self.ctx.world]
        return mine if len(mine) else global_batch[:1]  # a tiny last batch: reuse a row

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's loss, scaled so DDP's gradient average is the global token mean: its
        *value* is the global batch's mean loss, its gradient ``n_r · W / N`` times this
        rank's mean-loss gradient."""
        if self.wrapped is None:  # built lazily: after a resume has loaded the weights
            ids = [self.ctx.local_rank] if self.ctx.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(
                _LossModule(self.model), device_ids=ids, forward_sync_buffers=False,
                find_unused_parameters=True)
        if self.ctx.device.type != "cpu":
            batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        n_local = int((batch["target"] > 0).sum())
        local = self.wrapped(batch)  # (,) mean over this rank's targets
        stats = torch.tensor([float(n_local), float(local.detach()) * n_local],
                             dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(stats)
        n_total = max(float(stats[0]), 1.0)
        self.last_tokens = int(stats[0])
        objective = local * (n_local * self.ctx.world / n_total)
        global_mean = float(stats[1]) / n_total
        return objective + (global_mean - objective).detach()

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.ctx.device)
        dist.broadcast(t, 0)
        return float(t[0])

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self.ctx.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def all_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0])

    def barrier(self) -> None:
        dist.barrier()

    def evaluate(self, scorer, frame: pl.DataFrame, n_items: int, max_len: int,
                 columns: list[str], batch_size: int = 512, ks: tuple[int, ...] = (10, 20)
                 ) -> dict[str, float]:
        """evaluate_scorer on rows ``rank::world`` of ``frame``, all-reduced (user means)."""
        if self.ctx.device.type != "cpu":  # histories are built on the CPU
            device, on_cpu = self.ctx.device, scorer

            def scorer(rows, batch):
                return on_cpu(rows, {k: v.to(device) for k, v in batch.items()}).cpu()
        part = frame.gather_every(self.ctx.world, offset=self.ctx.rank)
        keys = [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks] + ["mrr"]
        if part.height:
            m = evaluate_scorer(scorer, part, n_items, max_len, columns, batch_size=batch_size,
                                ks=ks)
            sums = np.array([m["users"]] + [m[k] * m["users"] for k in keys])
        else:
            sums = np.zeros(len(keys) + 1)
        sums = self.all_sum(sums)
        n = max(sums[0], 1.0)
        out = {k: float(v / n) for k, v in zip(keys, sums[1:])}
        out["users"] = int(sums[0])
        return out

    def checkpointer(self, run: Path) -> "RankZeroCheckpointer":
        return RankZeroCheckpointer(run, self)


def trainer(model: nn.Module, seed: int, unsupported: str | None = None
            ) -> DDPTrainer | None:
    """The run's :class:`DDPTrainer` when this process is one of several, else None."""
    ctx = current()
    if ctx is None:
        return None
    if unsupported:
        raise RecfmError(f"{unsupported} is not supported with several processes yet; "
                         "train it with one process")
    log.info("distributed training: rank %d of %d (%s)", ctx.rank, ctx.world, ctx.backend)
    return DDPTrainer(ctx, model, seed)


class RankZeroCheckpointer:
    """:class:`recfm.train.run.Checkpointer` written by rank 0 only, with every rank's RNG."""

    def __init__(self, run: Path, trainer: DDPTrainer) -> None:
        self.inner, self.trainer = Checkpointer(run), trainer
        self.dir = self.inner.dir

    def exists(self) -> bool:
        return self.inner.exists()

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        states: list[Any] = [None] * self.trainer.ctx.world
        dist.all_gather_object(states, torch.get_rng_state())
        if self.trainer.ctx.is_main:
            self.inner.save(model, opt, {**state, "rank_rng": states,
                                         "world": self.trainer.ctx.world})
        dist.barrier()  # nobody reads a checkpoint rank 0 is still writing

    def load(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
        state = self.inner.load(model, opt)
        rngs = state.pop("rank_rng", None)
        saved_world = state.pop("world", 1)
        rank = self.trainer.ctx.rank
        if rngs is not None and saved_world == self.trainer.ctx.world:
            torch.set_rng_state(rngs[rank])
        elif rank > 0:  # a checkpoint from another world size: a fresh stream per rank
            torch.manual_seed(int(state.get("step", 0)) + 1_000_003 * rank)
        return state


# ----------------------------------------------------------------------------- launching


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch_command(nproc: int, args: Sequence[str], port: int | None = None,
                   module: str = "recfm.train") -> list[str]:
    """The torchrun command of ``python -m <module> <args>`` on ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1",
            f"--master_port={port or free_port()}", "-m", module, *args]


def launch(nproc: int, args: Sequence[str], module: str = "recfm.train") -> int:
    """Run ``python -m <module> <args>`` on ``nproc`` local processes; the exit status."""
    env = dict(os.environ)
    # torchrun would otherwise set 1 thread per process only when OMP_NUM_THREADS is unset;
    # share this machine's cores between the processes explicitly
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(launch_command(nproc, args, module=module), env=env).returncode


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each rank is given)."""
    out = list(argv)
    while "--nproc" in out:
        del out[out.index("--nproc"):out.index("--nproc") + 2]
    return [a for a in out if not a.startswith("--nproc=")]


def run_module_as_rank(module: str, argv: Sequence[str]) -> None:
    """``python -m <module> <argv>`` as a torchrun rank: join the group, silence stdout
    but rank 0's, leave at the end. Named, not imported: this layer never imports the CLI."""
    ctx = init_from_env()
    if ctx is not None and not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # one progress bar and summary, rank 0's
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_cli_as_rank(command: str) -> None:
    """``recfm <command> <argv>`` as one rank (the ``python -m recfm.train`` entry point)."""
    run_module_as_rank("recfm", [command, *sys.argv[1:]])
