"""``python -m recfm.store …`` = ``recfm embed …``, the entry point torchrun launches; it runs
the CLI by module name, so that the store never imports it. Rank 0 alone publishes and prints.
"""

from __future__ import annotations

from recfm.train.distributed import run_cli_as_rank

if __name__ == "__main__":
    run_cli_as_rank("embed")
