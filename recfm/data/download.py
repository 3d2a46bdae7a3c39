"""Download a MovieLens archive from GroupLens, verify its SHA-256 and extract it atomically.

A bad digest leaves nothing behind; a good archive appears whole or not at all. GroupLens
publishes only MD5: the SHA-256 values below come from TensorFlow Datasets'
``tensorflow_datasets/url_checksums/movielens.txt`` (commit
1c076ac3c19c8ea83e1d1a75e0623c9a699e0d7c). Usage and checksums: docs/guide/data.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recfm.errors import RecfmError
from recfm.io import atomic_dir

BASE_URL = "https://files.grouplens.org/datasets/movielens"
_CHUNK = 1 << 20


class DownloadError(RecfmError):
    """A download that could not be done: bad name, HTTP error, broken archive, …"""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256."""

    def __init__(self, url: str, expected: str, found: str) -> None:
        self.url, self.expected, self.found = url, expected, found
        super().__init__(f"{url}: SHA-256 mismatch: expected {expected}, found {found}")


@dataclass(frozen=True)
class Archive:
    name: str
    zip_name: str
    folder: str  # the folder the archive extracts to
    sha256: str | None
    size: int | None  # bytes, where the checksum source records it


MOVIELENS: dict[str, Archive] = {
    "ml-100k": Archive(
        "ml-100k", "ml-100k.zip", "ml-100k",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029),
    # SHA-256 and size: TensorFlow Datasets' checksums (see the module doc). None is
    # published for ml-10m (GroupLens's ml-10m.zip.md5 is ce571fd55effeba0271552578f2648bd)
    # or ml-32m: the caller must give sha256=.
    "ml-latest-small": Archive(
        "ml-latest-small", "ml-latest-small.zip", "ml-latest-small",
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", 978202),
    "ml-1m": Archive(
        "ml-1m", "ml-1m.zip", "ml-1m",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549),
    "ml-10m": Archive("ml-10m", "ml-10m.zip", "ml-10M100K", None, None),
    "ml-25m": Archive(
        "ml-25m", "ml-25m.zip", "ml-25m",
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", 261978986),
    "ml-32m": Archive("ml-32m", "ml-32m.zip", "ml-32m", None, None),
}


def movielens_url(name: str, base_url: str | None = None) -> str:
    return f"{(base_url or BASE_URL).rstrip('/')}/{_spec(name).zip_name}"


def _spec(name: str) -> Archive:
    spec = MOVIELENS.get(name)
    if spec is None:
        raise DownloadError(f"unknown MovieLens dataset {name!r}: expected one of "
                            f"{', '.join(MOVIELENS)}")
    return spec


def _expected_digest(spec: Archive, sha256: str | None) -> str:
    digest = sha256 if sha256 is not None else spec.sha256
    if digest is None:
        raise DownloadError(f"no published SHA-256 is known for {spec.zip_name}: pass the "
                            "archive's SHA-256 explicitly (sha256=...)")
    digest = digest.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise DownloadError(f"expected a SHA-256 of 64 hex digits, found {sha256!r}")
    return digest


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None, label: str):
    """Yields ``advance(n)`` of a rich progress bar on a terminal; None otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    # deferred: the data layer draws a bar only on a terminal
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _fetch(url: str, out, progress: bool, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the hex SHA-256."""
    h = hashlib.sha256()
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from None
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"{url}: cannot download ({type(e).__name__}: {e})") from None
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        got = 0
        with _progress_bar(progress, total, Path(url).name) as advance:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f"{url}: download interrupted after {got} bytes "
                                        f"({type(e).__name__})") from None
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                if advance is not None:
                    advance(len(chunk))
    if total is not None and got != total:
        raise DownloadError(f"{url}: incomplete download: {got} of {total} bytes")
    return h.hexdigest()


def _members(zf: zipfile.ZipFile, url: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Members with safe relative paths, the single top-level folder (if any) stripped."""
    infos = [i for i in zf.infolist()
             if not i.filename.startswith("__MACOSX/") and i.filename.strip("/")]
    paths = []
    for info in infos:
        p = PurePosixPath(info.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", info.filename):
            raise DownloadError(f"{url}: unsafe path in archive: {info.filename!r}")
        paths.append(p)
    if len({p.parts[0] for p in paths}) != 1 or all(len(p.parts) == 1 for p in paths):
        return list(zip(infos, paths))
    # below the single top folder; the folder's own entry is dropped
    return [(i, PurePosixPath(*p.parts[1:])) for i, p in zip(infos, paths) if len(p.parts) > 1]


def _extract(archive: Path, target: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info, rel in _members(zf, url):
                dest = target.joinpath(*rel.parts)
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DownloadError(f"{url}: not a valid zip archive ({e})") from None


def download_movielens(name: str, dest_dir: str | os.PathLike, *, base_url: str | None = None,
                       sha256: str | None = None, progress: bool = True,
                       force: bool = False, timeout: float = 60.0) -> Path:
    """Download MovieLens ``name`` (ml-latest-small, ml-1m, ml-10m, ml-25m or ml-32m) into
    ``dest_dir`` and return the extracted folder (an existing one unless ``force``).
    ``base_url`` replaces GroupLens's (a mirror, a test server); ``sha256`` overrides the known
    digest (required for ml-10m and ml-32m: none is published); ``progress``: a rich bar on a
    terminal. Raises :class:`DownloadError` (or :class:`ChecksumError`) in one line.
    """
    spec = _spec(name)
    expected = _expected_digest(spec, sha256)
    dest = Path(dest_dir)
    final = dest / spec.folder
    if final.is_dir() and any(final.iterdir()) and not force:
        return final
    url = movielens_url(name, base_url)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.zip_name}.", suffix=".part", dir=dest)
    except OSError as e:
        raise DownloadError(f"cannot write to {dest}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            found = _fetch(url, out, progress, timeout)
        if found != expected:
            raise ChecksumError(url, expected, found)
        with atomic_dir(final, "download", force) as staging:
            _extract(tmp, staging, url)
        ok = True
    except OSError as e:
        raise DownloadError(f"{url}: cannot save the archive under {dest} "
                            f"({e.strerror or e})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if not ok and created:
            with contextlib.suppress(OSError):
                dest.rmdir()  # only if still empty
    return final
