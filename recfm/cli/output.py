"""What the commands share: the console, a spinner, tables, and the options and checks that
several commands take (``OVERWRITE``, :func:`override`, :func:`at_least_one`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from recfm.errors import RecfmError

console = Console()  # what people read: stderr under --json
err_console = Console(stderr=True)
json_console = Console()  # the JSON of --json, alone on stdout

JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (the rest "
                    "goes to stderr).")

OVERWRITE = typer.Option(False, "--overwrite", help="Replace this command's earlier output "
                         "at --out (a folder holding anything else is never replaced).")


@contextmanager
def steps(title: str):
    """A spinner whose text follows the library's ``on_step`` callbacks."""
    with console.status(f"{title}…") as status:
        yield lambda name: status.update(f"{title}: {name}…")


def override(target, **options) -> None:
    """Lay the options given (not None) over ``target``, a config dataclass or dict."""
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(target, dict):
            target[name] = value
        else:
            setattr(target, name, value)


def at_least_one(option: str) -> Callable[[int], int]:
    """A typer callback: ``option`` below 1 is one line on stderr (exit 2), not a traceback."""
    def check(value: int) -> int:
        if value < 1:
            raise RecfmError(f"{option}: expected at least 1, found {value}")
        return value
    return check


def json_mode(on: bool) -> None:
    """Under ``--json`` everything a person reads goes to stderr, so stdout parses."""
    console.file = sys.stderr if on else None


def print_json(obj: Any) -> None:
    """``obj`` (a dict, list, or a result dataclass) as JSON on stdout."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    json_console.print_json(json.dumps(obj, default=str))


def print_train_result(result, title: str) -> None:
    """The validation (best epoch) and test metrics of a finished training, beside the
    popularity baseline's, as a table; then why training stopped."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("valid (best epoch)", justify="right")
    t.add_column("test", justify="right")
    pop = getattr(result, "popularity_test", None)
    if pop:
        t.add_column("popularity (test)", justify="right")
    for key in ("ndcg@10", "hr@10", "mrr"):
        test = f"{result.test[key]:.4f}" if result.test else "-"
        t.add_row(key, f"{result.best_valid[key]:.4f}", test,
                  *([f"{pop[key]:.4f}"] if pop else []))
    console.print(t)
    reason = getattr(result, "stop_reason", "")
    if reason == "epochs" and result.best_epoch == result.epochs_run - 1:
        reason = "the epoch cap, still improving: raise --epochs"
    elif reason:
        reason = {"epochs": "the epoch cap (the best epoch was earlier)",
                  "patience": "patience: no better validation NDCG@10 for train.patience "
                              "epochs",
                  "time budget": "the time budget (--max-minutes)"}.get(reason, reason)
    if reason:
        console.print(f"stopped by {reason}")


def print_metrics_table(res: dict, title: str) -> None:
    """One column per scorer (model, baselines), one row per ranking metric."""
    t = Table(title=title)
    t.add_column("metric")
    for name in res:
        t.add_column(name, justify="right")
    keys = [k for k in next(iter(res.values())) if "@" in k or k == "mrr"]
    for k in keys:
        t.add_row(k, *(f"{res[n][k]:.4f}" for n in res))
    console.print(t)
