"""A corrupt or mismatched run is one InputError naming the bad file, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recfm.errors import InputError
from recfm.pipeline import Recommender

OLD_RUN = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


def _edit_json(name: str, edit):
    def apply(run: Path) -> None:
        data = json.loads((run / name).read_text())
        edit(data)
        (run / name).write_text(json.dumps(data))
    return apply


def _cut(name: str, keep: int):
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[:keep])


CORRUPTIONS = {
    "weights truncated": ("model.safetensors", _cut("model.safetensors", 1000)),
    "weights garbage": ("model.safetensors",
                        lambda r: (r / "model.safetensors").write_bytes(b"\0junk" * 50)),
    "weights empty": ("model.safetensors", _cut("model.safetensors", 0)),
    "config truncated": ("config.json", _cut("config.json", 40)),
    "config without model": ("config.json", _edit_json("config.json",
                                                       lambda c: c.pop("model"))),
    "config not an object": ("config.json", lambda r: (r / "config.json").write_text("[1]")),
    "d_model unlike the weights": ("model.safetensors", _edit_json(
        "config.json", lambda c: c["model"].update(d_model=2 * c["model"]["d_model"]))),
    "one layer too many": ("model.safetensors", _edit_json(
        "config.json", lambda c: c["model"].update(n_layers=c["model"]["n_layers"] + 1))),
    "tokenizer truncated": ("tokenizer.json", _cut("tokenizer.json", 60)),
    "tokenizer empty": ("tokenizer.json", lambda r: (r / "tokenizer.json").write_text("{}")),
    "tokenizer without facets": ("tokenizer.json", _edit_json("tokenizer.json",
                                                              lambda t: t.pop("facets"))),
    "items truncated": ("items.parquet", _cut("items.parquet", 200)),
    "items garbage": ("items.parquet", lambda r: (r / "items.parquet").write_bytes(b"PAR1x")),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupt_run_names_its_bad_file(tmp_path, case):
    bad_file, corrupt = CORRUPTIONS[case]
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    corrupt(run)
    with pytest.raises(InputError) as e:
        Recommender.from_pretrained(run)
    assert e.value.file == str(run / bad_file)
    assert "\n" not in str(e.value)


def _saved(tmp_path: Path) -> Path:
    """The fixture run saved again by this version: with a manifest."""
    run = tmp_path / "saved"
    Recommender.from_pretrained(OLD_RUN).save_pretrained(run, {})
    return run


@pytest.mark.parametrize("name", ["model.safetensors", "items.parquet", "tokenizer.json",
                                  "config.json"])
def test_a_flipped_byte_is_caught_by_the_manifest(tmp_path, name):
    run = _saved(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())["sha256"]
    assert set(manifest) == {"config.json", "model.safetensors", "tokenizer.json",
                             "items.parquet"}
    data = bytearray((run / name).read_bytes())
    if name.endswith(".json"):  # a change that still parses: one more space
        data = data.replace(b'": ', b'":  ', 1)
    else:  # the middle of the file: tensor data or column pages, which load without a word
        data[len(data) // 2] ^= 0x01
    (run / name).write_bytes(bytes(data))
    with pytest.raises(InputError, match="--no-verify") as e:
        Recommender.from_pretrained(run)
    assert e.value.file == str(run / name)


def test_no_verify_loads_a_changed_run_and_an_old_run_has_nothing_to_check(tmp_path):
    run = _saved(tmp_path)
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the last weight's low bits: still a valid float
    path.write_bytes(bytes(data))
    Recommender.from_pretrained(run, verify=False)
    assert not (OLD_RUN / "manifest.json").exists()
    Recommender.from_pretrained(OLD_RUN)  # saved before manifests
