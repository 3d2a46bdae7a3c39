"""``python -m recfm.store …`` = ``recfm embed …``; the entry point torchrun launches.

    torchrun --nproc_per_node=2 -m recfm.store RUN --store PATH [--data DATA]

Each process joins the process group described by torchrun's environment
(:func:`recfm.train.distributed.init_from_env`), embeds its shard of the users, and rank 0
publishes one version (:mod:`recfm.store.embed`); only rank 0 prints.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from recfm.train.distributed import init_from_env

    ctx = init_from_env()
    if ctx is not None and not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # one progress bar and summary, rank 0's
    from recfm.cli import main as cli_main

    sys.argv = ["recfm", "embed", *sys.argv[1:]]
    try:
        cli_main()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
