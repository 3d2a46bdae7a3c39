"""``python -m recfm.store …`` = ``recfm embed …``; the entry point torchrun launches.

    torchrun --nproc_per_node=2 -m recfm.store RUN --store PATH [--data DATA]

Each process joins the process group described by torchrun's environment
(:func:`recfm.train.distributed.run_cli_as_rank`, which runs ``python -m recfm embed …`` by
module name, so that the store never imports the CLI), embeds its shard of the users, and
rank 0 publishes one version (:mod:`recfm.store.embed`); only rank 0 prints.
"""

from __future__ import annotations

from recfm.train.distributed import run_cli_as_rank


def main() -> None:
    run_cli_as_rank("embed")


if __name__ == "__main__":
    main()
