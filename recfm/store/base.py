"""The embedding store: versions, an atomically swapped manifest, retention, and reads.

A version's tables are written under fresh names before ``manifest.json`` is replaced
(:func:`recfm.io.atomic_write_json`), and readers read only tables the manifest named, so
a reader sees the old version or the new one, never a mix; every row carries its
``version`` and reads check it. Layout, retention and backends: docs/guide/store.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from recfm import __version__
from recfm.errors import RecfmError
from recfm.io import atomic_write_json
from recfm.store.stability import stability_report

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
LOCK = ".publish.lock"
DEFAULT_KEEP = 3
TABLE_NAME = re.compile(r"^(users|items)_v(\d{6})$")
Metric = Literal["cosine", "dot"]
Missing = Literal["error", "nan"]
T = TypeVar("T")


@dataclass
class VersionInfo:
    """Metadata of one published version (one entry of the manifest)."""

    version: int
    created_at: str
    users: int
    """Rows of the user table."""
    items: int
    """Rows of the item table."""
    dim: int
    users_table: str
    items_table: str
    pooling: str | None = None
    """How user vectors were pooled from the model's hidden states."""
    run: str | None = None
    """The model run the embeddings came from."""
    model_version: str | None = None
    """``<run name>@<sha256 of config and weights>``."""
    tokenizer_sha256: str | None = None
    item_titles: bool = False
    """Whether the item table has a ``title`` column."""
    recfm_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the publisher recorded (data fingerprint, users/s, ...)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VersionInfo":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def vectors_table(ids: Sequence[str], vectors: np.ndarray, version: int,
                  titles: Sequence[str | None] | None = None) -> pa.Table:
    """Arrow table ``id, version, [title,] vector`` of (n, d) float32 vectors."""
    n, d = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    cols: dict[str, pa.Array] = {"id": pa.array([str(i) for i in ids], pa.utf8()),
                                 "version": pa.array(np.full(n, version, dtype=np.int32))}
    if titles is not None:
        cols["title"] = pa.array(list(titles), pa.utf8())
    cols["vector"] = pa.FixedSizeListArray.from_arrays(flat, d)
    return pa.table(cols)


def table_vectors(table: pa.Table) -> np.ndarray:
    """(n, d) float32 matrix of a table's ``vector`` column."""
    col = table.column("vector").combine_chunks()
    d = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32,
                                                                              copy=False)


def _check_vectors(what: str, ids: Sequence[str], vectors: np.ndarray) -> None:
    if vectors.ndim != 2:
        raise RecfmError(f"publish: {what} vectors: expected a 2-D array, found shape "
                         f"{tuple(vectors.shape)}")
    if len(ids) != vectors.shape[0]:
        raise RecfmError(f"publish: {what}: expected one vector per id ({len(ids):,} ids), "
                         f"found {vectors.shape[0]:,} vectors")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise RecfmError(f"publish: {what}: expected unique ids, found {dup!r} twice")
    if not np.isfinite(vectors).all():
        row = int(np.nonzero(~np.isfinite(vectors).all(1))[0][0])
        raise RecfmError(f"publish: {what}: expected finite vectors, found NaN/inf for id "
                         f"{ids[row]!r}")


def read_manifest(root: Path, missing_ok: bool = False) -> dict[str, Any] | None:
    """The store manifest at ``root`` (None if there is none and ``missing_ok``)."""
    path = root / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RecfmError(f"{root}: expected an embedding store ({MANIFEST}), found nothing "
                         "at that path (publish one with `recfm embed`)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecfmError(f"{path}:{e.lineno}: expected a store manifest (JSON), found "
                         f"{e.msg.lower()} at column {e.colno}") from None
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != MANIFEST_FORMAT:
        raise RecfmError(f"{path}: expected store format {MANIFEST_FORMAT}, found {found!r}")
    return data


class EmbeddingStore(ABC):
    """Versioned user and item embeddings (docs/guide/store.md).

    Example:
        >>> store = open_store("emb")                                   # doctest: +SKIP
        >>> store.user_vectors(["u1", "u2"])          # (2, d), current version
        >>> store.similar_items("i0042", k=10)         # frame: rank, item_id, score, title
        >>> open_store("emb", version=3).versions()    # pinned reads
    """

    backend: ClassVar[str]

    def __init__(self, root: str | Path, version: int | None = None,
                 keep: int | None = None) -> None:
        self.root = Path(root)
        self.pinned = version
        self._keep = keep
        if keep is not None and keep < 1:
            raise RecfmError(f"keep: expected at least 1 version, found {keep}")

    # ------------------------------------------------------------------ backend primitives

    @abstractmethod
    def _write_table(self, name: str, table: pa.Table) -> None:
        """Create table ``name``; it need not be readable by others until the manifest names it."""

    @abstractmethod
    def _read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        ...

    @abstractmethod
    def _drop_table(self, name: str) -> None:
        ...

    @abstractmethod
    def _table_names(self) -> list[str]:
        ...

    # Errors a backend raises when a table vanished under a reader (dropped by retention).
    _gone_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def _lookup(self, name: str, ids: list[str], columns: list[str]) -> pa.Table:
        """Rows of ``ids`` (any order; unknown ids absent). Reference: a full read."""
        table = self._read_table(name, columns)
        return table.filter(pc.is_in(table.column("id"), pa.array(ids, pa.utf8())))

    def _search(self, name: str, vector: np.ndarray, k: int, metric: Metric,
                columns: list[str]) -> pa.Table:
        """The ``k`` best rows for ``vector`` with a ``score`` column, best first (reference:
        exact scores over the whole table)."""
        table = self._read_table(name, columns + ["vector"])
        mat = table_vectors(table)  # (n, d)
        q = vector.astype(np.float32)
        scores = mat @ q  # (n,)
        if metric == "cosine":
            norms = np.linalg.norm(mat, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
            scores = scores / np.maximum(norms, 1e-12)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        top = top[np.lexsort((top, -scores[top]))]
        return table.select(columns).take(pa.array(top)).append_column(
            "score", pa.array(scores[top].astype(np.float64)))

    # ------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def keep(self) -> int:
        """How many versions a publish retains."""
        if self._keep is not None:
            return self._keep
        manifest = read_manifest(self.root, missing_ok=True)
        return int(manifest["keep"]) if manifest else DEFAULT_KEEP

    def versions(self) -> list[VersionInfo]:
        """Retained versions, oldest first."""
        return [VersionInfo.from_dict(v) for v in read_manifest(self.root)["versions"]]

    @property
    def current_version(self) -> int:
        """The version reads resolve to now (the pinned one, or the manifest's current)."""
        return self._resolve().version

    def _resolve(self, version: int | None = None) -> VersionInfo:
        """The metadata of ``version`` (default: the pinned or current one)."""
        manifest = read_manifest(self.root)
        want = version if version is not None else self.pinned
        if want is None:
            want = manifest["current"]
        for v in manifest["versions"]:
            if v["version"] == want:
                return VersionInfo.from_dict(v)
        have = ", ".join(str(v["version"]) for v in manifest["versions"]) or "none"
        raise RecfmError(f"{self.root}: expected one of versions {have}, found version {want} "
                         "(unknown, or dropped by retention)")

    def _read(self, fn: Callable[[VersionInfo], T], version: int | None = None) -> T:
        """Run ``fn`` against one resolved version; re-resolve if retention dropped it meanwhile."""
        for _ in range(10):
            info = self._resolve(version)
            try:
                return fn(info)
            except self._gone_errors:
                manifest = read_manifest(self.root)
                if any(v["version"] == info.version for v in manifest["versions"]):
                    raise  # the version is still there: a real error
                if version is not None or self.pinned is not None:
                    raise RecfmError(f"{self.root}: version {info.version} was dropped by "
                                     f"retention (keep {manifest['keep']}) while reading it"
                                     ) from None
                log.info("version %d dropped while reading; reading the current one",
                         info.version)
        raise RecfmError(f"{self.root}: the store changed under every attempt to read it")

    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ publish

    def publish(self, user_ids: Sequence[str], user_vectors: np.ndarray,
                item_ids: Sequence[str], item_vectors: np.ndarray,
                meta: dict[str, Any] | None = None,
                item_titles: Sequence[str | None] | None = None) -> VersionInfo:
        """Publish a new version atomically and drop versions beyond ``keep``. ``meta``: values
        of :class:`VersionInfo` fields (``pooling``, ``run``, ...); other keys go to ``extra``."""
        if self.pinned is not None:
            raise RecfmError(f"{self.root}: opened at version {self.pinned} (read-only); "
                             "open it without a version to publish")
        user_vectors = np.asarray(user_vectors, dtype=np.float32)
        item_vectors = np.asarray(item_vectors, dtype=np.float32)
        user_ids, item_ids = [str(i) for i in user_ids], [str(i) for i in item_ids]
        _check_vectors("users", user_ids, user_vectors)
        _check_vectors("items", item_ids, item_vectors)
        if user_vectors.shape[1] != item_vectors.shape[1]:
            raise RecfmError(f"publish: expected user and item vectors of one dimension, found "
                             f"{user_vectors.shape[1]} and {item_vectors.shape[1]}")
        meta = dict(meta or {})
        known = {f.name for f in fields(VersionInfo)} - {
            "version", "created_at", "users", "items", "dim", "users_table", "items_table",
            "item_titles", "extra"}
        info_kw = {k: meta.pop(k) for k in list(meta) if k in known}
        t0 = time.perf_counter()
        with self._publish_lock():
            manifest = read_manifest(self.root, missing_ok=True) or {
                "format": MANIFEST_FORMAT, "backend": self.backend, "current": None,
                "last_version": 0, "keep": DEFAULT_KEEP, "versions": []}
            self._drop_orphans(manifest)
            v = int(manifest["last_version"]) + 1
            users_table, items_table = f"users_v{v:06d}", f"items_v{v:06d}"
            self._write_table(users_table, vectors_table(user_ids, user_vectors, v))
            self._write_table(items_table, vectors_table(item_ids, item_vectors, v, item_titles))
            meta["publish_s"] = round(time.perf_counter() - t0, 4)
            info = VersionInfo(version=v, created_at=datetime.now(timezone.utc).isoformat(
                timespec="seconds"), users=len(user_ids), items=len(item_ids),
                dim=int(user_vectors.shape[1]), users_table=users_table,
                items_table=items_table, item_titles=item_titles is not None, extra=meta,
                **info_kw)
            keep = self._keep if self._keep is not None else int(manifest["keep"])
            versions = manifest["versions"] + [asdict(info)]
            dropped = versions[:-keep]
            manifest.update(current=v, last_version=v, keep=keep, versions=versions[-keep:])
            atomic_write_json(self.manifest_path, manifest)  # the atomic switch
            for old in dropped:
                self._drop_version(old)
        log.info("published version %d to %s: %d users, %d items, dim %d (%.2f s)", v,
                 self.root, info.users, info.items, info.dim, time.perf_counter() - t0)
        return info

    def _drop_version(self, entry: dict[str, Any]) -> None:
        for name in (entry["users_table"], entry["items_table"]):
            if name in self._table_names():
                self._drop_table(name)
        log.info("dropped version %d (retention)", entry["version"])

    def _drop_orphans(self, manifest: dict[str, Any]) -> None:
        """Remove tables a crashed publish wrote but no manifest names (publish lock held)."""
        named = {n for v in manifest["versions"] for n in (v["users_table"], v["items_table"])}
        for name in self._table_names():
            if TABLE_NAME.match(name) and name not in named:
                log.warning("%s: removing table %s left by an interrupted publish",
                            self.root, name)
                self._drop_table(name)

    # ------------------------------------------------------------------ reads

    def _vectors(self, info: VersionInfo, table: str, ids: Sequence[str],
                 missing: Missing) -> np.ndarray:
        ids = [str(i) for i in ids]
        got = self._lookup(table, list(dict.fromkeys(ids)), ["id", "version", "vector"])
        self._check_rows(got, info, table)
        row = {i: r for r, i in enumerate(got.column("id").to_pylist())}
        unknown = [i for i in ids if i not in row]
        if unknown and missing == "error":
            more = f" (and {len(unknown) - 1:,} more)" if len(unknown) > 1 else ""
            raise RecfmError(f"{self.root}: version {info.version}: expected known ids, found "
                             f"{unknown[0]!r}{more}")
        mat = table_vectors(got) if got.num_rows else np.zeros((0, info.dim), np.float32)
        out = np.full((len(ids), info.dim), np.nan, dtype=np.float32)
        pos = np.array([row.get(i, -1) for i in ids], dtype=np.int64)
        out[pos >= 0] = mat[pos[pos >= 0]]
        return out

    def _check_rows(self, table: pa.Table, info: VersionInfo, name: str) -> None:
        if table.num_rows and pc.any(pc.not_equal(table.column("version"),
                                                 info.version)).as_py():
            raise RecfmError(f"{self.root}: table {name} holds rows of another version than "
                             f"{info.version} (corrupt store)")

    def user_vectors(self, ids: Sequence[str], missing: Missing = "error") -> np.ndarray:
        """(n, d) float32 vectors of users ``ids``, in the order asked; an unknown id raises
        (``missing="error"``) or gets a row of NaN (``"nan"``)."""
        return self._read(lambda info: self._vectors(info, info.users_table, ids, missing))

    def item_vectors(self, ids: Sequence[str], missing: Missing = "error") -> np.ndarray:
        """(n, d) float32 vectors of items ``ids``, in the order asked (see user_vectors)."""
        return self._read(lambda info: self._vectors(info, info.items_table, ids, missing))

    def table(self, kind: Literal["users", "items"], version: int | None = None
              ) -> pl.DataFrame:
        """The whole user or item table of one version: id, version, [title,] vector."""
        if kind not in ("users", "items"):
            raise RecfmError(f"table: expected users or items, found {kind!r}")

        def read(info: VersionInfo) -> pl.DataFrame:
            name = info.users_table if kind == "users" else info.items_table
            t = self._read_table(name)
            self._check_rows(t, info, name)
            return pl.from_arrow(t)

        return self._read(read, version)

    def nearest_items(self, vector: Sequence[float] | np.ndarray, k: int = 10,
                      metric: Metric = "dot", exclude: Sequence[str] = ()) -> pl.DataFrame:
        """The ``k`` items closest to ``vector``: rank, item_id, score[, title]. ``"dot"`` is the
        model's own scoring: a user vector gives that user's recommendations (seen items kept)."""
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        return self._read(lambda info: self._nearest(info, q, k, metric, set(exclude)))

    def similar_items(self, item_id: str, k: int = 10, metric: Metric = "cosine"
                      ) -> pl.DataFrame:
        """The ``k`` items most similar to ``item_id`` (itself excluded), cosine by default."""
        def read(info: VersionInfo) -> pl.DataFrame:
            q = self._vectors(info, info.items_table, [item_id], "error")[0]
            return self._nearest(info, q, k, metric, {str(item_id)})

        return self._read(read)

    def _nearest(self, info: VersionInfo, q: np.ndarray, k: int, metric: Metric,
                 exclude: set[str]) -> pl.DataFrame:
        if metric not in ("dot", "cosine"):
            raise RecfmError(f"metric: expected dot or cosine, found {metric!r}")
        if q.shape[0] != info.dim:
            raise RecfmError(f"{self.root}: version {info.version}: expected a vector of "
                             f"dimension {info.dim}, found {q.shape[0]}")
        if k < 1:
            raise RecfmError(f"k: expected at least 1, found {k}")
        columns = ["id", "version"] + (["title"] if info.item_titles else [])
        hits = self._search(info.items_table, q, k + len(exclude), metric, columns)
        self._check_rows(hits, info, info.items_table)
        frame = pl.from_arrow(hits).rename({"id": "item_id"}).drop("version")
        frame = frame.filter(~pl.col("item_id").is_in(list(exclude))).head(k)
        frame = frame.with_columns(pl.col("score").cast(pl.Float64))
        order = ["item_id", "score"] + (["title"] if "title" in frame.columns else [])
        return frame.select(order).with_row_index("rank", offset=1).with_columns(
            pl.col("rank").cast(pl.Int64))

    def diff(self, a: int | None = None, b: int | None = None, k: int = 10,
             sample_users: int = 2000, seed: int = 0) -> dict[str, Any]:
        """:func:`~recfm.store.stability.stability_report` between versions ``a`` and ``b``
        (default: the two latest)."""
        versions = [v.version for v in self.versions()]
        b = b if b is not None else versions[-1]
        if a is None:
            earlier = [v for v in versions if v < b]
            if not earlier:
                raise RecfmError(f"{self.root}: diff needs a version before {b}; versions: "
                                 f"{', '.join(map(str, versions))}")
            a = earlier[-1]
        ua, ia, ub, ib = (_ids_vectors(self.table(kind, v)) for v in (a, b)
                          for kind in ("users", "items"))
        report = stability_report(ua, ub, ia, ib, k=k, sample_users=sample_users, seed=seed)
        return {"a": a, "b": b, **report}


def _ids_vectors(frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    return frame["id"].to_list(), table_vectors(frame.select("vector").to_arrow())
