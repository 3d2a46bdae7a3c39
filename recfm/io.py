"""Atomic writes: nothing a crash can leave half-written is ever read as whole.

Files and directories are built under a temporary sibling name and renamed into place when
complete; on failure the temporary is removed, so a failed command leaves no output. A
directory output carries a marker (``.recfm-output.json``, its kind): an existing folder is
replaced only when it is an output of the same kind and the caller asks to overwrite it, so
nothing a command did not write is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from recfm.errors import InputError, RecfmError, reading

MARKER = ".recfm-output.json"


def disk_full(e: BaseException, where: str | os.PathLike | None = None) -> bool:
    """Whether ``e`` says the disk (or quota) is full: the libraries that write files report
    it in their own exception types, by errno or in the text; torch says neither, so a
    failed write where under 1 MiB is free counts too."""
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            s in str(e) for s in ("No space left", "StorageFull", "Disk quota exceeded")):
        return True
    return where is not None and Path(where).exists() and \
        shutil.disk_usage(where).free < 1 << 20


def full_disk_error(e: BaseException, where: str | os.PathLike,
                    path: str | os.PathLike) -> RecfmError | None:
    """A one-line error naming ``path`` if ``e`` is a full disk at ``where``, else None. Judge
    it before removing the partial write: that frees the space the free-space test reads."""
    return RecfmError(f"no space left on the device while writing {path}; nothing was kept "
                      "of this write") if disk_full(e, where) else None


def _umask_mode(mode: int) -> int:
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def check_out(path: str | os.PathLike, kind: str, overwrite: bool = False,
              inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise :class:`InputError` unless ``path`` may receive a ``kind`` output: it is absent
    or an empty folder, or (with ``overwrite``) a previous ``kind`` output; and it is
    neither an input nor a folder holding one."""
    final = Path(path)
    for inp in filter(None, inputs):
        with reading(inp, "a file or folder that can be read (not a symbolic-link loop)"):
            resolved, out = Path(inp).resolve(), final.resolve()
        if out in (resolved, *resolved.parents):
            raise InputError(str(final), None, None, "an output folder apart from the inputs",
                             f"the input {inp} there")
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir():
        raise InputError(str(final), None, None, f"a folder for the {kind} output", "a file")
    names = sorted(os.listdir(final))
    if not names:
        return
    try:
        found = json.loads((final / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        found = None
    if found == kind and overwrite:
        return
    if found == kind:
        raise InputError(str(final), None, None, "a new or empty folder (--overwrite replaces "
                         f"a previous {kind} output)", f"the {kind} output of an earlier run")
    what = f"a recfm {found} output" if found else f"{len(names)} other file(s), e.g. {names[0]}"
    raise InputError(str(final), None, None, f"a new or empty folder for the {kind} output",
                     f"{what}; nothing there is replaced")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, overwrite: bool = False,
               inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds; ``path``
    is checked first (:func:`check_out`).

    Example:
        >>> with atomic_dir("out/prepared", "prepared") as tmp:   # doctest: +SKIP
        ...     (tmp / "report.json").write_text("{}")
    """
    final = Path(path)
    check_out(final, kind, overwrite, inputs)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:  # a read-only or missing parent, a file where a folder should be
        raise InputError(str(final), None, None, f"a folder recfm can create for the {kind} "
                         "output", f"{e.strerror or e} ({e.filename or final.parent})") from None
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
        atomic_write_json(tmp / MARKER, {"kind": kind})
        for p in tmp.rglob("*"):  # what a library wrote 0600 (safetensors) follows the umask
            if p.is_file():
                os.chmod(p, _umask_mode(0o666))
    except BaseException as e:
        full = full_disk_error(e, tmp, final)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    old = None
    if final.is_dir() and any(final.iterdir()):  # a previous output of this kind
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` by ``write(temporary sibling)`` and a rename, fsync-ed, with the mode
    the umask gives (``safetensors``' ``save_file`` alone makes files 0600)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode(0o666))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        full = full_disk_error(e, final.parent, final)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full is not None:
            raise full from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
