"""MovieLens downloader against a local HTTP server (never the network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recfm.data import download, movielens
from recfm.data.download import ChecksumError, DownloadError, download_movielens
from recfm.errors import RecfmError
from recfm.io import MARKER

RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,1,3.0,964982704\n"
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n"


def make_zip(folder: str, files: dict[str, str], extra: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}/", "")
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text)
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
    return buf.getvalue()


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def put(self, name: str, data: bytes) -> str:
        (self.root / "movielens").mkdir(parents=True, exist_ok=True)
        (self.root / "movielens" / name).write_bytes(data)
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "www")
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


def test_success_extracts_atomically(server: Server, tmp_path: Path) -> None:
    digest = server.put("ml-latest-small.zip", make_zip(
        "ml-latest-small", {"ratings.csv": RATINGS, "movies.csv": MOVIES}))
    dest = tmp_path / "data"
    out = download_movielens("ml-latest-small", dest, base_url=server.url, sha256=digest,
                             progress=False)
    assert out == dest / "ml-latest-small"
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "movies.csv", "ratings.csv"]
    assert (out / "ratings.csv").read_text() == RATINGS
    assert sorted(p.name for p in dest.iterdir()) == ["ml-latest-small"]  # no temporaries
    assert server.requests == ["/movielens/ml-latest-small.zip"]
    ds = movielens.load(out)
    assert ds.events.height == 2 and ds.items["title"].to_list() == ["Toy Story"]

    # Already there: returned as it is, without a request; force= downloads again.
    again = download_movielens("ml-latest-small", dest, base_url=server.url, sha256=digest,
                               progress=False)
    assert again == out and len(server.requests) == 1
    download_movielens("ml-latest-small", dest, base_url=server.url, sha256=digest.upper(),
                       progress=False, force=True)
    assert len(server.requests) == 2
    assert sorted(p.name for p in dest.iterdir()) == ["ml-latest-small"]


def test_ml10m_folder_name_and_required_sha(server: Server, tmp_path: Path) -> None:
    digest = server.put("ml-10m.zip", make_zip("ml-10M100K", {"ratings.dat": "1::2::3::4\n"}))
    with pytest.raises(DownloadError, match=r"sha256="):
        download_movielens("ml-10m", tmp_path / "d", base_url=server.url, progress=False)
    assert server.requests == [] and not (tmp_path / "d").exists()
    out = download_movielens("ml-10m", tmp_path / "d", base_url=server.url, sha256=digest,
                             progress=False)
    assert out == tmp_path / "d" / "ml-10M100K"
    assert (out / "ratings.dat").read_text() == "1::2::3::4\n"


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    data = make_zip("ml-1m", {"ratings.dat": "1::2::3::4\n"})
    found = server.put("ml-1m.zip", data)
    expected = download.MOVIELENS["ml-1m"].sha256  # the published digest: not our tiny zip
    dest = tmp_path / "new"
    with pytest.raises(ChecksumError) as info:
        download_movielens("ml-1m", dest, base_url=server.url, progress=False)
    err = info.value
    assert isinstance(err, RecfmError)
    assert "\n" not in str(err)
    assert f"expected {expected}" in str(err) and f"found {found}" in str(err)
    assert (err.expected, err.found) == (expected, found)
    assert not dest.exists()  # created by the call, removed again

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ChecksumError):
        download_movielens("ml-1m", existing, base_url=server.url, sha256="0" * 64,
                           progress=False)
    assert list(existing.iterdir()) == []


def test_http_404_is_clear(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    with pytest.raises(DownloadError) as info:
        download_movielens("ml-25m", dest, base_url=server.url, progress=False)
    msg = str(info.value)
    assert "HTTP 404" in msg and "/movielens/ml-25m.zip" in msg and "\n" not in msg
    assert not dest.exists()


def test_bad_archive_and_unsafe_paths(server: Server, tmp_path: Path) -> None:
    digest = server.put("ml-1m.zip", b"this is not a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_movielens("ml-1m", tmp_path / "a", base_url=server.url, sha256=digest,
                           progress=False)
    assert not (tmp_path / "a").exists()
    digest = server.put("ml-1m.zip", make_zip("ml-1m", {"ratings.dat": "x"},
                                              extra={"../evil.txt": "boom"}))
    with pytest.raises(DownloadError, match="unsafe path"):
        download_movielens("ml-1m", tmp_path / "b", base_url=server.url, sha256=digest,
                           progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "evil.txt").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown MovieLens dataset 'ml-7m'"):
        download_movielens("ml-7m", tmp_path)
    with pytest.raises(DownloadError, match="64 hex digits"):
        download_movielens("ml-1m", tmp_path, sha256="abc")


def test_known_urls_and_checksums() -> None:
    assert download.movielens_url("ml-1m") == \
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert download.movielens_url("ml-10m") == \
        "https://files.grouplens.org/datasets/movielens/ml-10m.zip"
    assert set(download.MOVIELENS) == {"ml-100k", "ml-latest-small", "ml-1m", "ml-10m",
                                       "ml-25m", "ml-32m"}
    # TensorFlow Datasets' url_checksums/movielens.txt (the module doc's commit)
    assert download.MOVIELENS["ml-100k"].sha256 == \
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    for spec in download.MOVIELENS.values():
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert download.MOVIELENS["ml-10m"].folder == "ml-10M100K"
