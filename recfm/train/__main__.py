"""``python -m recfm.train …`` = ``recfm train …``; the entry point torchrun launches.

    torchrun --nproc_per_node=2 -m recfm.train DATA_DIR --out RUN [--config cfg.toml]

Each process joins the process group described by torchrun's environment (gloo on CPU,
NCCL on GPU, :mod:`recfm.train.distributed`) and runs ``python -m recfm train …``, named
by module so that the training layer never imports the CLI; only rank 0 prints.
"""

from __future__ import annotations

from recfm.train.distributed import run_cli_as_rank


def main() -> None:
    run_cli_as_rank("train")


if __name__ == "__main__":
    main()
