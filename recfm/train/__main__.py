"""``torchrun --nproc_per_node=2 -m recfm.train DATA_DIR --out RUN …`` = ``recfm train …``
on each rank: it joins torchrun's process group (:mod:`recfm.train.distributed`) and runs
the CLI by module name, so the training layer never imports it; only rank 0 prints.
"""

from __future__ import annotations

from recfm.train.distributed import run_cli_as_rank

if __name__ == "__main__":
    run_cli_as_rank("train")
