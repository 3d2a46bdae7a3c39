"""`recfm …` — the command line, the top layer: commands only (parse, call the library, print;
only this package prints). One module per group of commands, each with a ``register(app)``
called below; :func:`main` turns a :class:`~recfm.errors.RecfmError` into one line on stderr
and exit status 2.

Start-up: the command modules import only typer, rich and recfm's light modules (errors,
io, runinfo, config, the config dataclasses) at their top; each command imports the
library it calls inside its body, so ``recfm --help`` and argument errors never load torch
or polars (benchmarks/cli.py measures it).
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from recfm.cli import (content, data, demo, distill_prompt, finetune, model, rank, recommend,
                       semantic, serve, store)
from recfm.cli.output import err_console, json_mode
from recfm.errors import RecfmError
from recfm.runinfo import NO_VERIFY

# help texts are plain text: rich markup would eat "[model]" and "[train]"
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="recfm: a foundation model for personalized recommendation.")


@app.callback()
def options(no_verify: bool = typer.Option(
        False, "--no-verify", help="Load runs whose files differ from the SHA-256 in their "
        "manifest.json (changed by hand, or damaged).")) -> None:
    json_mode(False)  # a command's --json turns it on
    if no_verify:  # the environment carries it to every process the command starts
        os.environ[NO_VERIFY] = "1"

# The order of registration is the order of `recfm --help`.
data.register(app)  # data synth|describe|download, prepare
model.register(app)  # train, evaluate
recommend.register(app)
content.register(app)  # content embed, add-items
semantic.register(app)  # semantic-ids
serve.register(app)
demo.register(app)
distill_prompt.register(app)  # distill, prompt-tune, prompts
store.register(app)  # embed, store versions|diff
finetune.register(app)
rank.register(app)  # rank holdout|train|evaluate|serve-hook


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RecfmError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "main"]
