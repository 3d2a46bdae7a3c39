"""``python -m recfm.train …`` = ``recfm train …``; the entry point torchrun launches.

    torchrun --nproc_per_node=2 -m recfm.train DATA_DIR --out RUN [--config cfg.toml]

Each process joins the process group described by torchrun's environment (gloo on CPU,
NCCL on GPU, :mod:`recfm.train.distributed`); only rank 0 prints.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from recfm.train.distributed import init_from_env

    ctx = init_from_env()
    if ctx is not None and not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # one progress bar, rank 0's
    from recfm.cli import main as cli_main

    sys.argv = ["recfm", "train", *sys.argv[1:]]
    try:
        cli_main()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
