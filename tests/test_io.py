"""Output folders: written atomically, and never replacing what a command did not write."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from safetensors.numpy import save_file

from recfm.errors import InputError
from recfm.io import MARKER, atomic_dir, atomic_write_file


def write_out(path, kind="prepared", text="new", **kw):
    with atomic_dir(path, kind, **kw) as tmp:
        (tmp / "data.txt").write_text(text)


def test_a_new_or_empty_folder_gets_the_output_and_its_kind(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("new", "empty"):
        write_out(tmp_path / name)
        assert (tmp_path / name / "data.txt").read_text() == "new"
        assert json.loads((tmp_path / name / MARKER).read_text()) == {"kind": "prepared"}


def test_a_folder_with_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e.csv").write_text("mine")
    with pytest.raises(InputError, match="other file.*e.csv; nothing there is replaced"):
        write_out(tmp_path / "d", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["e.csv"]


def test_an_earlier_output_is_replaced_only_with_overwrite_and_only_of_its_kind(tmp_path):
    out = tmp_path / "out"
    write_out(out, text="first")
    with pytest.raises(InputError, match="--overwrite"):
        write_out(out, text="second")
    with pytest.raises(InputError, match="found a recfm prepared output"):
        write_out(out, kind="world", overwrite=True)
    assert (out / "data.txt").read_text() == "first"
    write_out(out, text="third", overwrite=True)
    assert (out / "data.txt").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left aside


def test_a_file_or_a_folder_holding_an_input_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(InputError, match="a file"):
        write_out(tmp_path / "f", overwrite=True)
    assert (tmp_path / "f").read_text() == "mine"
    with pytest.raises(InputError, match="the input .* there"):
        write_out(tmp_path / "in", inputs=[tmp_path / "in" / "sub" / "e.csv"])
    with pytest.raises(InputError, match="the input .* there"):
        write_out(tmp_path / "f", inputs=[tmp_path / "f"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_files_written_0600_by_a_library_follow_the_umask(tmp_path):
    def weights(path):
        save_file({"w": np.zeros(2, np.float32)}, str(path))  # makes the file 0600

    umask = os.umask(0o027)
    try:
        atomic_write_file(tmp_path / "model.safetensors", weights)
        with atomic_dir(tmp_path / "out", "rank-data") as tmp:
            weights(tmp / "arrays.safetensors")
    finally:
        os.umask(umask)
    for path in (tmp_path / "model.safetensors", tmp_path / "out" / "arrays.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    import errno

    from recfm.errors import RecfmError

    with pytest.raises(RecfmError, match="no space left on the device while writing"):
        with atomic_dir(tmp_path / "out", "prepared") as tmp:
            (tmp / "part").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")

    def safetensors_full(tmp):  # safetensors reports it in its own exception, by text
        tmp.write_bytes(b"half")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    with pytest.raises(RecfmError, match="model.safetensors"):
        atomic_write_file(tmp_path / "model.safetensors", safetensors_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_input_that_is_a_symlink_loop_is_one_clear_error(tmp_path):
    loop = tmp_path / "e.csv"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="symbolic-link loop"):
        with atomic_dir(tmp_path / "out", "prepared", inputs=[loop]):
            pass
