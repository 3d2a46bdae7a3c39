"""``python -m recfm.store …`` = ``recfm embed …``; the entry point torchrun launches.

It runs ``python -m recfm embed …`` by module name
(:func:`recfm.train.distributed.run_cli_as_rank`), so that the store never imports the CLI;
rank 0 alone publishes and prints. See docs/guide/store.md.
"""

from __future__ import annotations

from recfm.train.distributed import run_cli_as_rank


def main() -> None:
    run_cli_as_rank("embed")


if __name__ == "__main__":
    main()
