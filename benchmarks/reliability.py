"""The fault matrix of issue 18: bad inputs, kills, corrupt runs, bad HTTP bodies, reload, soak.

    python -m benchmarks.reliability [--soak-minutes 10] [--soak-cache-mb MB] [--quick] [--seed 0]

Everything runs on a small synthetic world the script makes under ``--work``
(``recfm data synth`` 300 users × 200 items, ``recfm prepare``, ``recfm train`` with a
tiny model, threads=1 so training is deterministic). Parts:

1. bad_inputs: bad event files (and bad ``--out`` folders) fed to ``recfm prepare``. Clean:
   exit 2 with exactly one line on stderr, or exit 0 (accepted). ``traceback``: a
   traceback, or an exit status other than 0/2; ``data_lost``: a file that was there before
   changed or disappeared, or a failed command left something behind (SHA-256 of every file
   under the case's folder before and after).
2. kills: ``RECFM_KILL_AT="<step>@<n>"`` for every save step × n in {1, 2}, plus kills at
   random times, each followed by ``recfm train --resume``; ``identical`` counts resumes whose
   weights (final and checkpoint) are byte-identical to an uninterrupted run's. A kill that
   never fires (the run finished) is not counted as tried.
3. corrupt_runs: copies of the run with one file damaged, tried with ``recfm recommend``,
   ``recfm evaluate``, ``recfm train --resume`` (checkpoint damage) and a hot reload into a
   live app. Clean: exit 2 with one line; a reload: 422 and the served version unchanged.
4. http: bad bodies (NaN/Infinity, lone surrogates, deep nesting, oversize, wrong types,
   bad k, unknown fields, non-JSON, invalid UTF-8) to every model route and /admin/reload,
   in process; every response >= 500 (or exception) counts in ``5xx``.
5. reload: ``known_users`` of /healthz before and after reloading the same run.
6. soak: ``recfm serve`` on 127.0.0.1, 8 client threads for ``--soak-minutes``; server RSS
   (VmRSS) sampled every 5 s; ``rss_mb_start`` is the sample at the end of the first minute.

Writes ``benchmarks/results/reliability.json`` (every case's name and outcome in ``extra``;
``--quick`` writes its JSON under ``--work`` instead).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_result

TINY_TOML = """[model]
d_model = 16
n_layers = 1
n_heads = 2
max_len = 16

[train]
epochs = 3
tensorboard = false
threads = 1
checkpoint_every = 3
"""
TOKEN = "reliability-token"
TIMEOUT_S = 180


# ---------------------------------------------------------------------------------- helpers

def child_env(**extra: str) -> dict[str, str]:
    """The environment of every recfm subprocess: no fault injection or --no-verify leaking
    in from outside, no colours, a wide terminal."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RECFM_KILL_AT", "RECFM_NO_VERIFY", "RECFM_ADMIN_TOKEN")}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", **extra)
    return env


def recfm(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``recfm ARGS`` in a subprocess; a timeout comes back as returncode None."""
    cmd = [sys.executable, "-m", "recfm", *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=cwd, env=env or child_env(), capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return subprocess.CompletedProcess(cmd, None, out or "", (err or "") + "\n(timeout)")


def judge(p: subprocess.CompletedProcess) -> dict[str, Any]:
    """Exit status and stderr of a command that should refuse: clean is exit 2 with exactly
    one non-empty line on stderr and no traceback."""
    lines = p.stderr.rstrip("\n").splitlines()
    traceback = "Traceback" in p.stderr or "Traceback" in p.stdout
    clean = p.returncode == 2 and len(lines) == 1 and bool(lines[0].strip()) and not traceback
    return {"rc": p.returncode, "clean": clean, "traceback": traceback,
            "stderr_lines": len(lines), "stderr": shorten(p.stderr)}


def shorten(text: str, n: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n // 2] + " … " + text[-n // 2:]


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every path under ``folder``: the SHA-256 of each file, None for a folder."""
    out: dict[str, str | None] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "symlink:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = None
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_world(work: Path) -> dict[str, Any]:
    """Synthetic events W, prepared P, run R (relative names, cwd = work)."""
    if work.exists():
        shutil.rmtree(work)  # this benchmark's own folder
    work.mkdir(parents=True)
    (work / "tiny.toml").write_text(TINY_TOML)
    for args in (("data", "synth", "--out", "W", "--users", "300", "--items", "200",
                  "--events-per-user", "30"),
                 ("prepare", "--events", "W", "--out", "P"),
                 ("train", "P", "--out", "R", "--config", "tiny.toml")):
        p = recfm(*args, cwd=work)
        if p.returncode != 0:
            raise SystemExit(f"recfm {' '.join(args)} failed:\n{p.stderr}")
    import polars as pl

    users = pl.read_parquet(work / "P" / "tokens.parquet").filter(pl.col("length") >= 2)
    items = pl.read_parquet(work / "P" / "items.parquet")["item_id"].to_list()
    return {"users": users["user_id"].to_list(), "items": items}


# ------------------------------------------------------------------------------ bad inputs

def bad_input_cases(work: Path) -> dict[str, Callable[[Path], tuple[Path, Path, list[str]]]]:
    """name → builder(case folder) → (events path, --out path, extra args)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = pl.read_parquet(work / "W" / "events.parquet")
    base = events.filter(pl.col("action") == "play").select(
        "user_id", "item_id", "timestamp").head(400)
    n = len(base)
    header = "user_id,item_id,timestamp\n"
    good_rows = "".join(f"{u},{i},{t}\n" for u, i, t in base.head(20).iter_rows())

    def csv_text(text: str | bytes, name: str = "e.csv"):
        def build(d: Path):
            f = d / name
            f.write_bytes(text if isinstance(text, bytes) else text.encode())
            return f, d / "out", []
        return build

    def csv_with(last_ts: str, col: str = "timestamp"):
        """Good rows plus one whose ``col`` is ``last_ts``."""
        row = {"user_id": "u1", "item_id": "i0001", "timestamp": "1706273411", col: last_ts}
        return csv_text(header + good_rows + f"{row['user_id']},{row['item_id']},"
                        f"{row['timestamp']}\n")

    def jsonl(lines: list[str] | bytes, name: str = "e.jsonl"):
        data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
        return csv_text(data, name)

    good_json = [json.dumps({"user_id": u, "item_id": i, "timestamp": t})
                 for u, i, t in base.head(20).iter_rows()]

    def json_with(ts: str = "1", item: str = '"i1"', user: str = '"u1"') -> Callable:
        """Good lines plus one whose fields are these JSON texts (raw tokens allowed)."""
        return jsonl(good_json + [f'{{"user_id": {user}, "item_id": {item}, "timestamp": {ts}}}'])

    def parquet(table: pa.Table | pl.DataFrame, name: str = "e.parquet"):
        def build(d: Path):
            f = d / name
            if isinstance(table, pl.DataFrame):
                table.write_parquet(f)
            else:
                pq.write_table(table, f)
            return f, d / "out", []
        return build

    users = pa.array(base["user_id"].to_list())
    items_ = pa.array(base["item_id"].to_list())
    ts = pa.array(base["timestamp"].to_list(), pa.int64())

    def table(**cols: pa.Array) -> pa.Table:
        c = {"user_id": users, "item_id": items_, "timestamp": ts, **cols}
        return pa.table({k: v for k, v in c.items() if v is not None})

    def with_ts(values: list, typ: pa.DataType | None = None) -> pa.Table:
        vals = (values * n)[:n]
        return table(timestamp=pa.array(vals, typ))

    good_parquet = base.to_arrow()

    def truncated_parquet(d: Path):
        f = d / "e.parquet"
        pq.write_table(good_parquet, f)
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        return f, d / "out", []

    def raw(data: bytes, name: str):
        return csv_text(data, name)

    def out_equals_input(d: Path):
        (d / "d").mkdir()
        f = d / "d" / "e.csv"
        base.write_csv(f)
        return f, d / "d", []

    def out_contains_input(d: Path):
        (d / "d" / "sub").mkdir(parents=True)
        f = d / "d" / "sub" / "e.csv"
        base.write_csv(f)
        return f, d / "d", []

    def out_contains_input_overwrite(d: Path):
        f, out, _ = out_contains_input(d)
        return f, out, ["--overwrite"]

    def out_existing_file(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        (d / "notes.txt").write_text("a user's notes\n")
        return f, d / "notes.txt", []

    def out_existing_file_overwrite(d: Path):
        f, out, _ = out_existing_file(d)
        return f, out, ["--overwrite"]

    def out_user_folder(d: Path, overwrite: bool = False):
        f = d / "e.csv"
        base.write_csv(f)
        (d / "mine").mkdir()
        (d / "mine" / "thesis.txt").write_text("years of work\n")
        return f, d / "mine", ["--overwrite"] if overwrite else []

    def out_below_file(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        (d / "notes.txt").write_text("a user's notes\n")
        return f, d / "notes.txt" / "sub", []

    def out_previous_prepare(d: Path, bad: bool = False, overwrite: bool = False):
        f = d / "e.csv"
        base.write_csv(f)
        p = recfm("prepare", "--events", f, "--out", d / "prev", cwd=d)
        assert p.returncode == 0, p.stderr
        if bad:
            f = d / "bad.csv"
            f.write_text("user_id,item_id\nu1,i1\n")
        return f, d / "prev", ["--overwrite"] if overwrite else []

    def out_synth_world_overwrite(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        shutil.copytree(work / "W", d / "world")
        return f, d / "world", ["--overwrite"]

    def out_is_input_file(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        return f, f, []

    def events_is_directory(d: Path):
        (d / "e.csv").mkdir()
        return d / "e.csv", d / "out", []

    def events_unknown_folder(d: Path):
        (d / "stuff").mkdir()
        (d / "stuff" / "readme.txt").write_text("nothing here\n")
        return d / "stuff", d / "out", []

    def events_missing(d: Path):
        return d / "nope.csv", d / "out", []

    def events_symlink_loop(d: Path):
        (d / "e.csv").symlink_to(d / "e.csv")
        return d / "e.csv", d / "out", []

    def items_bad(content: bytes, name: str = "items.csv"):
        def build(d: Path):
            f = d / "e.csv"
            base.write_csv(f)
            (d / name).write_bytes(content)
            return f, d / "out", ["--items", str(d / name)]
        return build

    def bad_map(d: Path):
        f = d / "e.csv"
        base.rename({"user_id": "uid"}).write_csv(f)
        return f, d / "out", ["--map", "user_id=nope"]

    def bad_format(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        return f, d / "out", ["--format", "movielens"]

    def tokenizer_bad(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        (d / "tok.toml").write_text("merge_gap_s = 'soon'\n[[[broken\n")
        return f, d / "out", ["--tokenizer", str(d / "tok.toml")]

    def valid_csv(d: Path):
        f = d / "e.csv"
        base.write_csv(f)
        return f, d / "out", []

    rng = np.random.default_rng(0)
    gz = gzip.compress((header + good_rows).encode())

    cases: dict[str, Callable] = {
        # CSV
        "csv_empty": csv_text(""),
        "csv_header_only": csv_text(header),
        "csv_missing_user_id": csv_text("item_id,timestamp\ni1,1706273411\n"),
        "csv_missing_item_id": csv_text("user_id,timestamp\nu1,1706273411\n"),
        "csv_missing_timestamp": csv_text("user_id,item_id\nu1,i1\n"),
        "csv_unknown_columns_only": csv_text("a,b,c\n1,2,3\n"),
        "csv_timestamp_word": csv_with("yesterday"),
        "csv_timestamp_nan": csv_with("nan"),
        "csv_timestamp_inf": csv_with("inf"),
        "csv_timestamp_negative": csv_with("-5"),
        "csv_timestamp_9e15": csv_with("9000000000000000"),
        "csv_timestamp_1e300": csv_with("1e300"),
        "csv_timestamp_bool": csv_with("true"),
        "csv_timestamp_empty": csv_with(""),
        "csv_timestamp_bad_iso_date": csv_with("2024-13-45T99:00:00"),
        "csv_user_id_empty": csv_text(header + good_rows + ",i0001,1706273411\n"),
        "csv_non_utf8": csv_text((header + good_rows).encode() + b"u1,i\xff\xfe,1706273411\n"),
        "csv_gzip_named_csv": csv_text(gz),
        "csv_zip_named_csv": csv_text(b"PK\x03\x04" + os.urandom(200)),
        "csv_parquet_named_csv": csv_text(b"PAR1" + os.urandom(200) + b"PAR1"),
        "csv_ragged_rows": csv_text(header + good_rows + "u1,i1,1706273411,extra,more\n"),
        "csv_unterminated_quote": csv_text(header + good_rows + 'u1,"i1,1706273411\n'),
        "csv_nul_bytes": csv_text((header + good_rows).encode() + b"u1,i\x00\x001,1706273411\n"),
        "csv_semicolon_separated": csv_text(header.replace(",", ";") + "u1;i1;1706273411\n"),
        "csv_duplicate_columns": csv_text("user_id,user_id,item_id,timestamp\nu1,u2,i1,1\n"),
        "csv_value_text": csv_text("user_id,item_id,timestamp,value\nu1,i1,1706273411,abc\n"),
        "csv_value_inf": csv_text("user_id,item_id,timestamp,value\nu1,i1,1706273411,inf\n"),
        "csv_huge_field": csv_text(header + good_rows + "u1," + "x" * 2_000_000 + ",1706273411\n"),
        "csv_bom_header": csv_text(b"\xef\xbb\xbf" + (header + good_rows).encode()),
        "csv_random_binary": raw(rng.bytes(4096), "e.csv"),
        # TSV
        "tsv_empty": csv_text("", "e.tsv"),
        "tsv_missing_columns": csv_text("user_id\titem_id\nu1\ti1\n", "e.tsv"),
        "tsv_comma_content": csv_text(header + good_rows, "e.tsv"),
        "tsv_timestamp_word": csv_text("user_id\titem_id\ttimestamp\nu1\ti1\tnoon\n", "e.tsv"),
        "tsv_non_utf8": csv_text(b"user_id\titem_id\ttimestamp\nu1\t\xc3\x28\t1\n", "e.tsv"),
        # JSON lines
        "jsonl_empty": jsonl(b""),
        "jsonl_blank_lines": jsonl(b"\n\n\n"),
        "jsonl_not_json": jsonl(["hello world"]),
        "jsonl_top_level_array": jsonl(good_json + ["[1, 2, 3]"]),
        "jsonl_top_level_string": jsonl(good_json + ['"u1"']),
        "jsonl_missing_column": jsonl(['{"user_id": "u1", "item_id": "i1"}']),
        "jsonl_timestamp_word": json_with('"noon"'),
        "jsonl_timestamp_NaN": json_with("NaN"),
        "jsonl_timestamp_Infinity": json_with("Infinity"),
        "jsonl_timestamp_-Infinity": json_with("-Infinity"),
        "jsonl_timestamp_bool": json_with("true"),
        "jsonl_timestamp_9e15": json_with("9000000000000000"),
        "jsonl_timestamp_1e400": json_with("1e400"),
        "jsonl_timestamp_2pow70": json_with(str(2 ** 70)),
        "jsonl_timestamp_negative": json_with("-1"),
        "jsonl_timestamp_null": json_with("null"),
        "jsonl_timestamp_object": json_with('{"s": 1}'),
        "jsonl_item_id_list": json_with(item='["i1"]'),
        "jsonl_item_id_object": json_with(item='{"a": 1}'),
        "jsonl_user_id_list": json_with(user="[1, 2]"),
        "jsonl_user_id_bool": json_with(user="false"),
        "jsonl_deep_nesting_100k": json_with(item="[" * 100_000 + "]" * 100_000),
        "jsonl_lone_surrogate": json_with(item='"\\ud800"'),
        "jsonl_truncated_last_line": jsonl(good_json + ['{"user_id": "u1", "item_id": "i']),
        "jsonl_non_utf8": jsonl(("\n".join(good_json) + "\n").encode()
                                + b'{"user_id": "u\xff", "item_id": "i1", "timestamp": 1}\n'),
        "jsonl_random_binary": raw(rng.bytes(4096), "e.jsonl"),
        "jsonl_gzip_named_jsonl": raw(gzip.compress(("\n".join(good_json)).encode()), "e.jsonl"),
        # Parquet
        "parquet_missing_column": parquet(table(timestamp=None)),
        "parquet_zero_rows": parquet(good_parquet.slice(0, 0)),
        "parquet_timestamp_2pow62": parquet(with_ts([2 ** 62], pa.int64())),
        "parquet_timestamp_9e15": parquet(with_ts([9 * 10 ** 15], pa.int64())),
        "parquet_timestamp_negative": parquet(with_ts([-10 ** 12], pa.int64())),
        "parquet_timestamp_float_nan": parquet(with_ts([float("nan")], pa.float64())),
        "parquet_timestamp_float_inf": parquet(with_ts([float("inf")], pa.float64())),
        "parquet_timestamp_bool": parquet(with_ts([True], pa.bool_())),
        "parquet_timestamp_string": parquet(with_ts(["later"], pa.string())),
        "parquet_timestamp_duration": parquet(with_ts([1_000_000], pa.duration("ms"))),
        "parquet_timestamp_time64": parquet(with_ts([1_000_000], pa.time64("us"))),
        "parquet_timestamp_date_year_1": parquet(with_ts([-719162], pa.date32())),
        "parquet_timestamp_all_null": parquet(with_ts([None], pa.int64())),
        "parquet_user_id_list": parquet(table(user_id=pa.array([[1, 2]] * n))),
        "parquet_user_id_struct": parquet(table(user_id=pa.array([{"a": 1}] * n))),
        "parquet_user_id_all_null": parquet(table(user_id=pa.array([None] * n, pa.string()))),
        "parquet_item_id_binary": parquet(table(item_id=pa.array([b"\xff\x00"] * n))),
        "parquet_item_id_list": parquet(table(item_id=pa.array([["i1"]] * n))),
        "parquet_item_id_struct": parquet(table(item_id=pa.array([{"x": "i1"}] * n))),
        "parquet_item_id_dictionary": parquet(table(
            item_id=pa.array(base["item_id"].to_list()).dictionary_encode())),
        "parquet_item_id_float_nan": parquet(table(item_id=pa.array([float("nan")] * n))),
        "parquet_truncated": truncated_parquet,
        "parquet_empty_file": raw(b"", "e.parquet"),
        "parquet_random_binary": raw(rng.bytes(4096), "e.parquet"),
        "parquet_csv_content": raw((header + good_rows).encode(), "e.parquet"),
        # paths
        "random_binary_no_known_suffix": raw(rng.bytes(4096), "e.bin"),
        "events_missing_file": events_missing,
        "events_directory_named_csv": events_is_directory,
        "events_folder_unknown_layout": events_unknown_folder,
        "events_symlink_loop": events_symlink_loop,
        "out_equals_input_folder": out_equals_input,
        "out_contains_input": out_contains_input,
        "out_contains_input_overwrite": out_contains_input_overwrite,
        "out_is_the_input_file": out_is_input_file,
        "out_existing_file": out_existing_file,
        "out_existing_file_overwrite": out_existing_file_overwrite,
        "out_user_folder": out_user_folder,
        "out_user_folder_overwrite": lambda d: out_user_folder(d, overwrite=True),
        "out_below_a_file": out_below_file,
        "out_previous_prepare_no_overwrite": out_previous_prepare,
        "out_previous_prepare_overwrite_bad_input":
            lambda d: out_previous_prepare(d, bad=True, overwrite=True),
        "out_synth_world_overwrite": out_synth_world_overwrite,
        # other options
        "items_missing_item_id": items_bad(b"title\nfoo\n"),
        "items_random_binary": items_bad(rng.bytes(2048), "items.parquet"),
        "map_unknown_column": bad_map,
        "format_mismatch_movielens": bad_format,
        "tokenizer_toml_broken": tokenizer_bad,
        # controls: valid input (accepted)
        "valid_csv": valid_csv,
        "valid_parquet": parquet(good_parquet),
        "out_previous_prepare_overwrite": lambda d: out_previous_prepare(d, overwrite=True),
    }
    return cases


# A recfm output a case asks, with --overwrite, to replace: its files may change on success.
REPLACES = {"out_previous_prepare_overwrite": "prev"}


def run_bad_inputs(work: Path, quick: bool) -> tuple[dict, list[dict]]:
    cases = bad_input_cases(work)
    names = list(cases)
    if quick:
        names = names[::12] + ["out_equals_input_folder", "out_previous_prepare_overwrite"]
    root = work / "bad_inputs"
    details = []
    for name in names:
        d = root / name
        d.mkdir(parents=True)
        events, out, extra = cases[name](d)
        before = snapshot(d)
        p = recfm("prepare", "--events", events, "--out", out, *extra, cwd=d)
        after = snapshot(d)
        j = judge(p)
        changed = sorted(k for k, v in before.items() if after.get(k, "gone") != v)
        mine = REPLACES.get(name) if p.returncode == 0 else None
        replaced = [k for k in changed if mine and (k == mine or k.startswith(mine + "/"))]
        changed = [k for k in changed if k not in replaced]
        left = sorted(set(after) - set(before)) if p.returncode != 0 else []
        accepted = p.returncode == 0
        outcome = ("accepted" if accepted else "clean" if j["clean"] else "not clean")
        details.append({"name": name, "outcome": outcome, "rc": j["rc"],
                        "traceback": j["traceback"], "stderr_lines": j["stderr_lines"],
                        "stderr": j["stderr"], "changed_or_lost": changed, "left_behind": left,
                        "replaced_as_asked": replaced})
        print(f"bad_input {name}: {outcome} rc={p.returncode}"
              + (f" lost={changed + left}" if changed or left else ""), flush=True)
    metrics = {
        "tried": len(details),
        "clean": sum(r["outcome"] in ("clean", "accepted") for r in details),
        "traceback": sum(r["traceback"] or r["rc"] not in (0, 2) for r in details),
        "data_lost": sum(bool(r["changed_or_lost"] or r["left_behind"]) for r in details),
    }
    return metrics, details


# ----------------------------------------------------------------------------------- kills

def weights(run: Path) -> tuple[bytes | None, bytes | None]:
    def read(p: Path) -> bytes | None:
        return p.read_bytes() if p.is_file() else None
    return read(run / "model.safetensors"), read(run / "checkpoint" / "model.safetensors")


def run_kills(work: Path, quick: bool, seed: int) -> tuple[dict, list[dict]]:
    from recfm.train.run import SAVE_STEPS

    reference = weights(work / "R")
    root = work / "kills"
    root.mkdir()
    train = ("train", "P", "--config", "tiny.toml")
    details = []

    def resume_and_compare(name: str, out: Path, how: str, rc: int | None) -> None:
        p = recfm(*train, "--out", out, "--resume", cwd=work)
        same = p.returncode == 0 and weights(out) == reference
        details.append({"name": name, "kill": how, "kill_rc": rc, "resume_rc": p.returncode,
                        "identical": same, "resume_stderr": "" if same else shorten(p.stderr)})
        print(f"kill {name}: resume rc={p.returncode} identical={same}", flush=True)

    steps = [(s, n) for s in SAVE_STEPS for n in (1, 2)]
    if quick:
        steps = [(SAVE_STEPS[2], 2)]
    for step, n in steps:
        name = f"{step}@{n}"
        out = root / name.replace(" ", "_").replace("@", "-")
        p = recfm(*train, "--out", out, cwd=work, env=child_env(RECFM_KILL_AT=name))
        if p.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
            resume_and_compare(name, out, "RECFM_KILL_AT", p.returncode)
        else:  # never reached (the run finished), or failed on its own
            details.append({"name": name, "kill": "RECFM_KILL_AT", "kill_rc": p.returncode,
                            "not_fired": p.returncode == 0, "stderr": shorten(p.stderr)})
            print(f"kill {name}: did not fire (rc={p.returncode})", flush=True)
    rng = random.Random(seed)
    for i in range(1 if quick else 4):
        delay = rng.uniform(0.5, 3.0)
        name = f"random-{i} after {delay:.2f} s"
        out = root / f"random-{i}"
        proc = subprocess.Popen([sys.executable, "-m", "recfm", *train, "--out", str(out)],
                                cwd=work, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
            resume_and_compare(name, out, "SIGKILL at a random time", proc.wait())
        else:
            details.append({"name": name, "kill": "SIGKILL at a random time",
                            "kill_rc": proc.returncode, "not_fired": True})
            print(f"kill {name}: finished before the kill", flush=True)
    tried = [r for r in details if "identical" in r]
    return {"tried": len(tried), "identical": sum(r["identical"] for r in tried)}, details


# ---------------------------------------------------------------------------- corrupt runs

def corrupt_variants() -> dict[str, tuple[str, Callable[[Path], None], bool]]:
    """name → (damaged file, damage(path), reseal): ``reseal`` records the damaged file's
    digest in manifest.json (a hand edit), so the loader's own checks are what is tested;
    the flipped-byte variants keep the old digest (what the manifest is for)."""

    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def garbage(p: Path) -> None:
        p.write_bytes(random.Random(1).randbytes(p.stat().st_size))

    def empty(p: Path) -> None:
        p.write_bytes(b"")

    def flip(p: Path) -> None:
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))

    def edit_json(fn: Callable[[Any], Any]) -> Callable[[Path], None]:
        def damage(p: Path) -> None:
            p.write_text(json.dumps(fn(json.loads(p.read_text()))))
        return damage

    def model_set(**kw: Any) -> Callable[[Any], Any]:
        def fn(c: dict) -> dict:
            c["model"].update(kw)
            return c
        return fn

    def huge_header(p: Path) -> None:  # a safetensors header length far past the file's end
        b = p.read_bytes()
        p.write_bytes((2 ** 40).to_bytes(8, "little") + b[8:])

    def drop(p: Path) -> None:
        p.unlink()

    W, C, T, I = "model.safetensors", "config.json", "tokenizer.json", "items.parquet"
    S, CW = "checkpoint/state.pt", "checkpoint/model.safetensors"
    return {
        "model_truncated": (W, truncate, True),
        "model_garbage": (W, garbage, True),
        "model_empty": (W, empty, True),
        "model_header_length_huge": (W, huge_header, True),
        "model_missing": (W, drop, False),
        "model_flipped_byte": (W, flip, False),
        "config_truncated": (C, truncate, True),
        "config_empty": (C, empty, True),
        "config_without_model": (C, edit_json(lambda c: {k: v for k, v in c.items()
                                                         if k != "model"}), True),
        "config_d_model_unlike_weights": (C, edit_json(model_set(d_model=32)), True),
        "config_n_layers_unlike_weights": (C, edit_json(model_set(n_layers=2)), True),
        "config_n_items_unlike_weights": (C, edit_json(model_set(n_items=999)), True),
        "config_is_a_list": (C, edit_json(lambda c: [c]), True),
        "config_flipped_byte": (C, flip, False),
        "tokenizer_truncated": (T, truncate, True),
        "tokenizer_empty": (T, empty, True),
        "tokenizer_format_99": (T, edit_json(lambda t: {**t, "format": 99}), True),
        "tokenizer_is_a_list": (T, edit_json(lambda t: [t]), True),
        "items_truncated": (I, truncate, True),
        "items_garbage": (I, garbage, True),
        "items_flipped_byte": (I, flip, False),
        "manifest_garbage": ("manifest.json", garbage, False),
        "checkpoint_state_truncated": (S, truncate, False),
        "checkpoint_state_empty": (S, empty, False),
        "checkpoint_state_garbage": (S, garbage, False),
        "checkpoint_weights_truncated": (CW, truncate, False),
    }


def reseal(run: Path, name: str) -> None:
    m = run / "manifest.json"
    if m.is_file():
        manifest = json.loads(m.read_text())
        if name in manifest.get("sha256", {}):
            manifest["sha256"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
            m.write_text(json.dumps(manifest, indent=2))


def run_corrupt(work: Path, world: dict, quick: bool) -> tuple[dict, list[dict]]:
    from fastapi.testclient import TestClient

    from recfm.serve import create_app
    from recfm.serve.config import ServeConfig

    variants = corrupt_variants()
    names = list(variants)
    if quick:
        names = ["model_truncated", "config_without_model", "items_flipped_byte",
                 "checkpoint_state_truncated"]
    root = work / "corrupt"
    root.mkdir()
    user = world["users"][0]
    details = []
    runs = {}
    for name in names:
        file, damage, resealed = variants[name]
        run = root / name
        shutil.copytree(work / "R", run)
        damage(run / file)
        if resealed:
            reseal(run, file)
        runs[name] = run
        trials = ([("train --resume", ("train", "P", "--out", run, "--config", "tiny.toml",
                                       "--resume"))] if file.startswith("checkpoint/") else
                  [("recommend", ("recommend", run, "--user", user, "--k", "3")),
                   ("evaluate", ("evaluate", run, "--data", "P"))])
        for what, args in trials:
            j = judge(recfm(*args, cwd=work))
            details.append({"name": name, "file": file, "trial": what, **j})
            print(f"corrupt {name} / {what}: {'clean' if j['clean'] else 'NOT CLEAN'} "
                  f"rc={j['rc']}", flush=True)

    os.environ["RECFM_ADMIN_TOKEN"] = TOKEN
    auth = {"Authorization": f"Bearer {TOKEN}"}
    app = create_app(work / "R", ServeConfig(cache_mb=8, runs_root="/"))
    with TestClient(app) as client:
        version = client.get("/healthz").json()["model_version"]
        for name, run in runs.items():
            if variants[name][0].startswith("checkpoint/"):
                continue  # serving never reads the checkpoint
            try:
                r = client.post("/admin/reload", json={"run": str(run)}, headers=auth)
                status, body = r.status_code, shorten(r.text)
            except Exception as e:  # noqa: BLE001 — an exception is a finding, recorded
                status, body = 500, f"exception: {e!r}"
            now = client.get("/healthz").json()["model_version"]
            clean = status == 422 and now == version
            details.append({"name": name, "file": variants[name][0], "trial": "reload",
                            "status": status, "clean": clean, "version_kept": now == version,
                            "body": body})
            print(f"corrupt {name} / reload: {'clean' if clean else 'NOT CLEAN'} {status}",
                  flush=True)
            if now != version:  # back to the good run for the next case
                client.post("/admin/reload", json={"run": str(work / "R")}, headers=auth)
                version = client.get("/healthz").json()["model_version"]
    return {"tried": len(details), "clean": sum(r["clean"] for r in details)}, details


# ------------------------------------------------------------------------------------ http

def http_cases(world: dict, run: Path) -> list[tuple[str, str, str, dict]]:
    """(name, method, path, request kwargs) of bad requests."""
    user, item = world["users"][0], world["items"][0]
    json_h = {"Content-Type": "application/json"}
    auth = {**json_h, "Authorization": f"Bearer {TOKEN}"}
    bodies: dict[str, dict[str, Any]] = {
        "/v1/recommend": {"user_id": user, "k": 5},
        "/v1/users/embed": {"user_id": user},
        "/v1/collections": {"user_id": user, "n": 5},
        "/admin/reload": {"run": str(run)},
    }
    numeric = {"/v1/recommend": ["k"], "/v1/users/embed": [],
               "/v1/collections": ["n", "beam_width", "max_per_genre"], "/admin/reload": []}
    fields = {
        "/v1/recommend": ["user_id", "events", "ignore_unknown_items", "surface", "k",
                          "exclude_seen", "filters"],
        "/v1/users/embed": ["user_id", "events", "ignore_unknown_items"],
        "/v1/collections": ["user_id", "events", "ignore_unknown_items", "surface", "n",
                            "beam_width", "max_per_genre", "exclude_seen", "filters",
                            "compare_plain"],
        "/admin/reload": ["run", "data"],
    }
    right = {**dict.fromkeys(("user_id", "surface", "run", "data"), ("str",)),
             **dict.fromkeys(("k", "n", "beam_width"), ("int",)),
             "max_per_genre": ("int",),
             **dict.fromkeys(("ignore_unknown_items", "exclude_seen", "compare_plain"),
                             ("bool",))}  # the types a field accepts: not a bad body
    wrong = {"int": 7, "float": 1.5, "str": "x", "bool": True, "list": [1], "dict": {"a": 1},
             "huge_int": 10 ** 30, "neg": -1}
    out: list[tuple[str, str, str, dict]] = []

    def raw(path: str, name: str, content: bytes, headers: dict) -> None:
        for h_name, h in ([("", headers)] if path != "/admin/reload" else
                          [(" (token)", auth), (" (no token)", json_h)]):
            out.append((f"{path} {name}{h_name}", "POST", path,
                        {"content": content, "headers": h}))

    def body(path: str, name: str, obj: Any, tokens: dict[str, str] | None = None) -> None:
        text = json.dumps(obj, allow_nan=True)
        for placeholder, token in (tokens or {}).items():
            text = text.replace(f'"{placeholder}"', token)
        raw(path, name, text.encode(), json_h)

    for path, good in bodies.items():
        first = next(iter(good))
        for tok in ("NaN", "Infinity", "-Infinity"):
            for f in numeric[path] or list(good)[:1]:
                body(path, f"{f}={tok}", {**good, f: "@@"}, {"@@": tok})
            body(path, f"events.timestamp={tok}" if path != "/admin/reload" else f"extra={tok}",
                 {**good, "events": [{"item_id": item, "timestamp": "@@"}]}
                 if path != "/admin/reload" else {**good, "extra": "@@"}, {"@@": tok})
        body(path, "lone surrogate in a string", {**good, first: "@@"},
             {"@@": '"\\ud800"'})
        body(path, "lone low surrogate in a key", {**good, "@@": 1}, {"@@": '"\\udfff"'})
        raw(path, "10k-deep array", b"[" * 10_000 + b"]" * 10_000, json_h)
        raw(path, "10k-deep object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, json_h)
        body(path, "10k-deep value in a field", {**good, "filters": "@@"},
             {"@@": "[" * 10_000 + "]" * 10_000})
        body(path, "body over the size limit", {**good, "pad": "x" * 1_100_000})
        out.append((f"{path} body over the size limit, chunked", "POST", path,
                    {"content": iter([b'{"user_id": "' + b"x" * 65536] * 20 + [b'"}']),
                     "headers": auth if path == "/admin/reload" else json_h}))
        for f in fields[path]:
            for tname, v in wrong.items():
                if tname not in right.get(f, ()):
                    body(path, f"{f} as {tname}", {**good, f: v})
        for f in numeric[path]:
            for v in (0, -5, 10 ** 6, 2 ** 63, 10 ** 100):
                body(path, f"{f}={v}", {**good, f: v})
        body(path, "unknown field", {**good, "bogus": 1})
        raw(path, "empty body", b"", json_h)
        raw(path, "non-JSON", b"{not json at all", json_h)
        raw(path, "random bytes", random.Random(2).randbytes(512), json_h)
        raw(path, "invalid UTF-8", b'{"' + first.encode() + b'": "\xff\xfe\xc3("}', json_h)
        raw(path, "UTF-8 encoded surrogate", b'{"' + first.encode()
            + b'": "\xed\xa0\x80"}', json_h)
        raw(path, "JSON without content type", json.dumps(good).encode(), {})
        raw(path, "JSON as text/plain", json.dumps(good).encode(), {"Content-Type": "text/plain"})
        for name, obj in (("array", [good]), ("null", None), ("string", "x"), ("number", 3),
                          ("empty object", {})):
            body(path, f"{name} instead of an object", obj)
        if path != "/admin/reload":
            for name, ev in (("events as object", {"item_id": item}),
                             ("events item_id list", [{"item_id": [item]}]),
                             ("events item_id surrogate", [{"item_id": "@@"}]),
                             ("events 6000", [{"item_id": item}] * 6000),
                             ("events unknown key", [{"item_id": item, "x": 1}]),
                             ("events timestamp 9e15", [{"item_id": item,
                                                         "timestamp": 9 * 10 ** 15}]),
                             ("events timestamp bad ISO", [{"item_id": item,
                                                            "timestamp": "2024-13-45"}]),
                             ("events value 1e300", [{"item_id": item, "value": 1e300}]),
                             ("events unknown item", [{"item_id": "no-such-item"}]),
                             ("events empty list", [])):
                body(path, name, {"events": ev}, {"@@": '"\\ud800"'})
            body(path, "filters genres surrogate", {**good, "filters": {"genres": ["@@"]}},
                 {"@@": '"\\ud800"'})
            body(path, "user_id unknown", {"user_id": "no-such-user"})
        else:
            body(path, "run outside the runs root", {"run": "/etc"})
            body(path, "run missing", {"run": str(run) + "-missing"})
            body(path, "run is a file", {"run": str(run / "config.json")})
            body(path, "data with a NUL byte", {**good, "data": "\u0000"})
            body(path, "run with a NUL byte", {"run": str(run) + "\u0000"})
            out.append(("/admin/reload wrong token", "POST", path,
                        {"content": json.dumps(good).encode(),
                         "headers": {**json_h, "Authorization": "Bearer wrong"}}))
            out.append(("/admin/reload surrogate token", "POST", path,
                        {"content": json.dumps(good).encode(),
                         "headers": {**json_h, "Authorization": b"Bearer \xff\xfe"}}))
    sim = f"/v1/items/{item}/similar"
    for name, params in (("k=0", "k=0"), ("k=-5", "k=-5"), ("k huge", "k=" + "9" * 40),
                         ("k=NaN", "k=NaN"), ("k=Infinity", "k=Infinity"), ("k=abc", "k=abc"),
                         ("k=1.5", "k=1.5"), ("k empty", "k="), ("surface long", "surface="
                                                                  + "s" * 500),
                         ("genres 200", "&".join(["genres=g"] * 200)),
                         ("kids_only=maybe", "kids_only=maybe"),
                         ("invalid UTF-8 in a value", "surface=%ff%fe"),
                         ("encoded surrogate", "surface=%ed%a0%80"),
                         ("unknown param", "bogus=1")):
        out.append((f"similar {name}", "GET", f"{sim}?{params}", {}))
    for name, item_path in (("unknown item", "no-such-item"), ("invalid UTF-8 id", "%ff%fe"),
                            ("encoded surrogate id", "%ed%a0%80"), ("long id", "i" * 5000),
                            ("NUL in id", "%00")):
        out.append((f"similar {name}", "GET", f"/v1/items/{item_path}/similar", {}))
    return out


def run_http(work: Path, world: dict) -> tuple[dict, list[dict]]:
    from fastapi.testclient import TestClient

    from recfm.serve import create_app
    from recfm.serve.config import ServeConfig

    os.environ["RECFM_ADMIN_TOKEN"] = TOKEN
    run = work / "R"
    app = create_app(run, ServeConfig(cache_mb=8, runs_root="/"))
    details = []
    with TestClient(app) as client:
        for name, method, path, kw in http_cases(world, run):
            try:
                r = client.request(method, path, **kw)
                status, body = r.status_code, shorten(r.text, 200)
            except Exception as e:  # noqa: BLE001 — an exception is a finding, recorded
                status, body = None, f"exception: {e!r}"
            details.append({"name": name, "status": status, "body": body})
            if status is None or status >= 500:
                print(f"http {name}: {status} {body}", flush=True)
    bad = [r for r in details if r["status"] is None or r["status"] >= 500]
    return {"tried": len(details), "5xx": len(bad)}, details


# ---------------------------------------------------------------------------------- reload

def run_reload(work: Path) -> tuple[dict, dict]:
    """known_users before and after reloading the served run (from another working
    directory than the one the run was trained in)."""
    from fastapi.testclient import TestClient

    from recfm.serve import create_app

    os.environ["RECFM_ADMIN_TOKEN"] = TOKEN
    run = work / "R"
    app = create_app(run)
    with TestClient(app) as client:
        before = client.get("/healthz").json()
        r = client.post("/admin/reload", json={"run": str(run)},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        after = client.get("/healthz").json()
    print(f"reload: known_users {before['known_users']} → {after['known_users']} "
          f"({r.status_code})", flush=True)
    return ({"known_users_before": before["known_users"],
             "known_users_after": after["known_users"]},
            {"status": r.status_code, "response": r.json(), "healthz_before": before,
             "healthz_after": after})


# ------------------------------------------------------------------------------------ soak

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cache_mb(base: str) -> float | None:
    """The server's user-state cache (MB), from /metrics: RSS grows with it up to its bound."""
    import httpx

    try:
        for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
            if line.startswith("recfm_user_state_cache_bytes"):
                return round(float(line.split()[-1]) / 2 ** 20, 1)
    except (httpx.HTTPError, ValueError):
        pass
    return None


def soak_request(client: Any, rng: random.Random, world: dict) -> Any:
    users, items = world["users"], world["items"]
    kind = rng.choice(("recommend_user", "recommend_events", "embed", "similar",
                       "collections"))
    if kind == "recommend_user":
        return kind, client.post("/v1/recommend", json={"user_id": rng.choice(users), "k": 10})
    if kind == "recommend_events":
        t0 = 1_700_000_000
        events = [{"item_id": rng.choice(items), "timestamp": t0 + 600 * i}
                  for i in range(rng.randint(1, 20))]
        return kind, client.post("/v1/recommend", json={"events": events, "k": 10})
    if kind == "embed":
        return kind, client.post("/v1/users/embed", json={"user_id": rng.choice(users)})
    if kind == "similar":
        return kind, client.get(f"/v1/items/{rng.choice(items)}/similar", params={"k": 10})
    return kind, client.post("/v1/collections", json={"user_id": rng.choice(users), "n": 5})


def run_soak(work: Path, world: dict, minutes: float, quick: bool, seed: int,
             cache: float | None = None, concurrency: int = 8) -> tuple[dict, dict]:
    import httpx

    from recfm.serve.config import ServeConfig

    port = free_port()
    elsewhere = work / "elsewhere"  # the server's working directory is not the run's
    elsewhere.mkdir(exist_ok=True)
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "recfm", "serve", str(work / "R"),
                               "--port", str(port),
                               *(["--cache-mb", str(cache)] if cache is not None else [])],
                              cwd=elsewhere, env=child_env(),
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                health = httpx.get(base + "/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("recfm serve did not start: "
                                     + (work / "serve.log").read_text())
                time.sleep(0.25)
        counts = {"requests": 0, "errors": 0}
        by_kind: dict[str, list[int]] = {}
        errors: list[str] = []
        lock = threading.Lock()
        t0 = time.time()
        end = t0 + minutes * 60
        samples: list[tuple[float, float | None, float | None]] = []

        def sample() -> None:
            samples.append((round(time.time() - t0, 1), rss_mb(server.pid), cache_mb(base)))
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                sample()
                stop.wait(5)

        def client_loop(i: int) -> None:
            rng = random.Random(seed * 100 + i)
            with httpx.Client(base_url=base, timeout=30) as client:
                while time.time() < end:
                    kind = "?"
                    try:
                        kind, r = soak_request(client, rng, world)
                        ok, what = 200 <= r.status_code < 300, f"{r.status_code} {r.text[:200]}"
                    except Exception as e:  # noqa: BLE001 — an error is a finding, counted
                        ok, what = False, repr(e)
                    with lock:
                        counts["requests"] += 1
                        by_kind.setdefault(kind, [0, 0])[0] += 1
                        if not ok:
                            counts["errors"] += 1
                            by_kind[kind][1] += 1
                            if len(errors) < 20:
                                errors.append(f"{kind}: {what}")

        threads = [threading.Thread(target=sampler)] + [
            threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
        sample()
        stop.set()
        threads[0].join()
        wall = time.time() - t0
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    valid = [(t, m) for t, m, _ in samples if m is not None]
    after_minute = [m for t, m in valid if t >= 60]
    start = valid[0][1] if quick or not after_minute else after_minute[0]
    print(f"soak: {counts['requests']:,} requests, {counts['errors']} errors, RSS "
          f"{start:.1f} → {valid[-1][1]:.1f} MB, user-state cache {samples[0][2]} → "
          f"{samples[-1][2]} MB", flush=True)
    return ({"requests": counts["requests"], "errors": counts["errors"],
             "rss_mb_start": round(start, 1), "rss_mb_end": round(valid[-1][1], 1),
             "minutes": round(wall / 60, 2), "concurrency": concurrency},
            {"rps": round(counts["requests"] / wall, 1), "by_kind_requests_errors": by_kind,
             "error_examples": errors, "rss_samples_s_mb": [[t, round(m, 1)] for t, m in valid],
             "cache_mb_samples_s_mb": [[t, c] for t, _, c in samples],
             "cache_mb_limit": cache if cache is not None else ServeConfig().cache_mb,
             "healthz_at_start": health, "server_log_tail": shorten(
                 (work / "serve.log").read_text(errors="replace"), 2000)})


# ------------------------------------------------------------------------------------ main

def table(metrics: dict, extra: dict) -> str:
    def not_clean(rows: list[dict], ok: Callable[[dict], bool]) -> str:
        names = [r["name"] + (f" ({r['trial']})" if "trial" in r else "")
                 for r in rows if not ok(r)]
        return ", ".join(names) or "—"

    b, k, c, h = (metrics[p] for p in ("bad_inputs", "kills", "corrupt_runs", "http"))
    rl, s = metrics["reload"], metrics["soak"]
    cache = extra["soak"]["cache_mb_samples_s_mb"]
    rows = [
        ("bad inputs (`recfm prepare`)", b["tried"],
         f"{b['clean']} clean, {b['traceback']} traceback, {b['data_lost']} data lost",
         not_clean(extra["bad_inputs"], lambda r: r["outcome"] != "not clean"
                   and not r["changed_or_lost"] and not r["left_behind"])),
        ("kills + `--resume`", k["tried"], f"{k['identical']} byte-identical",
         not_clean([r for r in extra["kills"] if "identical" in r], lambda r: r["identical"])),
        ("corrupt runs", c["tried"], f"{c['clean']} clean",
         not_clean(extra["corrupt_runs"], lambda r: r["clean"])),
        ("HTTP bad requests", h["tried"], f"{h['5xx']} × 5xx",
         not_clean(extra["http"], lambda r: r["status"] is not None and r["status"] < 500)),
        ("reload of the same run", 1,
         f"known_users {rl['known_users_before']} → {rl['known_users_after']}", "—"),
        (f"soak ({s['minutes']} min, concurrency {s['concurrency']})", s["requests"],
         (f"{s['errors']} errors, RSS {s['rss_mb_start']} → {s['rss_mb_end']} MB (user-state "
          f"cache {cache[0][1]} → {cache[-1][1]} MB, bound {extra['soak']['cache_mb_limit']:g})"),
         "—"),
    ]
    return ("| part | tried | result | not clean |\n|---|---:|---|---|\n"
            + "\n".join(f"| {a} | {n:,} | {r} | {bad} |" for a, n, r, bad in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument("--soak-cache-mb", type=float, default=None,
                    help="The soak server's user-state cache (default: recfm serve's).")
    ap.add_argument("--quick", action="store_true",
                    help="A few cases of each part and a 0.2-minute soak (a smoke test); "
                         "writes its JSON under --work, not to results/.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / ".work")
    args = ap.parse_args()
    soak_minutes = 0.2 if args.quick else args.soak_minutes

    t0 = time.perf_counter()
    work = (args.work / ("reliability-quick" if args.quick else "reliability")).resolve()
    world = make_world(work)
    print(f"world ready in {time.perf_counter() - t0:.1f} s", flush=True)
    metrics: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    timings: dict[str, float] = {}
    parts = (("bad_inputs", lambda: run_bad_inputs(work, args.quick)),
             ("kills", lambda: run_kills(work, args.quick, args.seed)),
             ("corrupt_runs", lambda: run_corrupt(work, world, args.quick)),
             ("http", lambda: run_http(work, world)),
             ("reload", lambda: run_reload(work)),
             ("soak", lambda: run_soak(work, world, soak_minutes, args.quick, args.seed,
                                             args.soak_cache_mb)))
    for name, part in parts:
        t = time.perf_counter()
        metrics[name], extra[name] = part()
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {metrics[name]} ({timings[name]} s)", flush=True)
    extra["part_wall_s"] = timings
    extra["world"] = {"synth": "--users 300 --items 200 --events-per-user 30",
                      "train_config": TINY_TOML, "quick": args.quick}
    md = table(metrics, extra)
    if args.quick:  # a smoke test: its counts are not the benchmark's, keep them out of results/
        path = work / "reliability.json"
        path.write_text(json.dumps({"metrics": metrics, "extra": extra}, indent=1))
        print(md)
    else:
        path = write_result("reliability", "synthetic world (300 users, 200 items)", args.seed,
                            time.perf_counter() - t0, metrics, extra, table_md=md)
    print(json.dumps(metrics, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
