"""The store itself, on hand-made vectors: reads, search, retention, atomic publish."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recfm.errors import RecfmError
from recfm.store import open_store
from recfm.store import base as store_base
from recfm.store import lance as store_lance

BACKENDS = ["lancedb", "parquet"]


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def publish_random(st, n_users: int = 30, n_items: int = 20, seed: int = 0):
    users, items = vectors(n_users, seed=seed), vectors(n_items, seed=seed + 100)
    uids = [f"u{i}" for i in range(n_users)]
    iids = [f"i{i}" for i in range(n_items)]
    info = st.publish(uids, users, iids, items, {"pooling": "last", "note": "hand-made"},
                      item_titles=[f"Title {i}" for i in range(n_items)])
    return info, uids, users, iids, items


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_follow_the_ids_asked_and_unknown_ids_are_clear(tmp_path, backend):
    st = open_store(tmp_path / "s", backend=backend)
    info, uids, users, iids, items = publish_random(st)
    assert (info.version, info.users, info.items, info.dim) == (1, 30, 20, 8)
    assert info.pooling == "last" and info.extra["note"] == "hand-made"
    ask = ["u7", "u0", "u29", "u7"]
    np.testing.assert_array_equal(st.user_vectors(ask), users[[7, 0, 29, 7]])
    np.testing.assert_array_equal(st.item_vectors(["i3"]), items[[3]])
    with pytest.raises(RecfmError, match="'nobody'.*1 more"):
        st.user_vectors(["u1", "nobody", "ghost"])
    got = st.user_vectors(["u1", "nobody"], missing="nan")
    np.testing.assert_array_equal(got[0], users[1])
    assert np.isnan(got[1]).all()


def test_lancedb_id_lookup_matches_the_full_scan_reference(tmp_path, monkeypatch):
    st = open_store(tmp_path / "s")
    _, uids, users, _, _ = publish_random(st, n_users=50)
    ask = [f"u{i}" for i in (49, 3, 3, 17)] + ["o'brien"]
    filtered = st.user_vectors(ask, missing="nan")
    monkeypatch.setattr(store_lance, "FULL_SCAN_IDS", 0)
    monkeypatch.setattr(store_lance, "LOOKUP_CHUNK", 2)
    np.testing.assert_array_equal(st.user_vectors(ask, missing="nan"), filtered)
    np.testing.assert_array_equal(filtered[:4], users[[49, 3, 3, 17]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_and_similar_items_match_exact_numpy(tmp_path, backend):
    st = open_store(tmp_path / "s", backend=backend)
    _, _, users, iids, items = publish_random(st)
    q = users[4]
    dot = items @ q
    res = st.nearest_items(q, k=5)
    assert res["item_id"].to_list() == [iids[i] for i in np.argsort(-dot)[:5]]
    np.testing.assert_allclose(res["score"].to_numpy(), np.sort(dot)[::-1][:5], rtol=1e-5)
    assert res["rank"].to_list() == [1, 2, 3, 4, 5] and res["title"][0].startswith("Title")
    cos = items @ items[2] / (np.linalg.norm(items, axis=1) * np.linalg.norm(items[2]))
    cos[2] = -np.inf
    sim = st.similar_items("i2", k=4)
    assert "i2" not in sim["item_id"].to_list()
    assert sim["item_id"].to_list() == [iids[i] for i in np.argsort(-cos)[:4]]
    np.testing.assert_allclose(sim["score"].to_numpy(), np.sort(cos)[::-1][:4], rtol=1e-4)
    assert st.nearest_items(q, k=3, exclude=["i0", "i1"])["item_id"].is_in(["i0", "i1"]).sum() == 0
    with pytest.raises(RecfmError, match="dimension 8, found 3"):
        st.nearest_items([1.0, 2.0, 3.0])
    with pytest.raises(RecfmError, match="known ids, found 'nope'"):
        st.similar_items("nope")


@pytest.mark.parametrize("backend", BACKENDS)
def test_retention_keeps_the_last_n_and_pinned_reads(tmp_path, backend):
    path = tmp_path / "s"
    st = open_store(path, keep=2, backend=backend)
    for seed in range(3):
        publish_random(st, seed=seed)
    assert [v.version for v in st.versions()] == [2, 3]
    assert sorted(st._table_names()) == ["items_v000002", "items_v000003",
                                         "users_v000002", "users_v000003"]
    pinned = open_store(path, version=2)
    np.testing.assert_array_equal(pinned.user_vectors(["u0"])[0], vectors(30, seed=1)[0])
    assert pinned.current_version == 2 and open_store(path).current_version == 3
    with pytest.raises(RecfmError, match="read-only"):
        publish_random(pinned)
    with pytest.raises(RecfmError, match="versions 2, 3, found version 1"):
        open_store(path, version=1)
    publish_random(open_store(path), seed=9)  # keep 2 is the store's setting now
    assert [v.version for v in open_store(path).versions()] == [3, 4]
    with pytest.raises(RecfmError, match="version 2"):
        pinned.user_vectors(["u0"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_publish_leaves_the_old_version_and_is_cleaned_up(tmp_path, backend,
                                                                    monkeypatch):
    st = open_store(tmp_path / "s", backend=backend)
    _, _, users, _, _ = publish_random(st, seed=0)

    def crash(*_a, **_k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(store_base, "atomic_write_json", crash)
        with pytest.raises(OSError):
            publish_random(st, seed=1)
    assert "users_v000002" in st._table_names()  # written, but named by no manifest
    assert st.current_version == 1
    np.testing.assert_array_equal(st.user_vectors(["u0"])[0], users[0])
    info, *_ = publish_random(st, seed=2)
    assert info.version == 2 and st.current_version == 2
    np.testing.assert_array_equal(st.user_vectors(["u0"])[0], vectors(30, seed=2)[0])


def test_bad_input_and_bad_locations(tmp_path):
    st = open_store(tmp_path / "s")
    with pytest.raises(RecfmError, match="unique ids, found 'a' twice"):
        st.publish(["a", "a"], np.zeros((2, 3)), ["i"], np.zeros((1, 3)))
    with pytest.raises(RecfmError, match="one dimension, found 3 and 4"):
        st.publish(["a"], np.zeros((1, 3)), ["i"], np.zeros((1, 4)))
    with pytest.raises(RecfmError, match="finite vectors.*'b'"):
        st.publish(["a", "b"], np.array([[0.0], [np.nan]]), ["i"], np.zeros((1, 1)))
    with pytest.raises(RecfmError, match="found nothing at that path"):
        st.versions()
    with pytest.raises(RecfmError, match="s3:// URI"):
        open_store("s3://bucket/emb")
    publish_random(st)
    with pytest.raises(RecfmError, match="expected a parquet store, found a lancedb store"):
        open_store(tmp_path / "s", backend="parquet")
    assert open_store(f"file://{tmp_path / 's'}").current_version == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": 1,\n "current": }')
    with pytest.raises(RecfmError, match=r"bad/manifest.json:2: expected a store manifest"):
        open_store(tmp_path / "bad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_readers_never_see_a_mixed_or_partial_version(tmp_path, backend):
    """Publish N versions (version v: 20 + v users, 10 + v items, every value = v) while a
    reader loops over every read path; every answer must be one whole version."""
    path, n_versions, d = tmp_path / "s", 12, 4

    def publish(st, v: int) -> None:
        nu, ni = 20 + v, 10 + v
        info = st.publish([f"u{i}" for i in range(nu)], np.full((nu, d), float(v)),
                          [f"i{i}" for i in range(ni)], np.full((ni, d), float(v)))
        assert info.version == v

    writer = open_store(path, keep=1, backend=backend)  # old tables go at once
    publish(writer, 1)
    seen: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]

    def read_loop() -> None:
        reader = open_store(path)
        try:
            while not done.is_set():
                users = reader.table("users")
                v = int(users["version"][0])
                assert (users["version"] == v).all()
                assert users.height == 20 + v, "partial user table"
                assert (users["vector"].arr.min() == v).all() and \
                    (users["vector"].arr.max() == v).all(), "mixed vectors"
                meta = {m.version: m for m in reader.versions()}
                if v in meta:
                    assert meta[v].users == users.height and meta[v].items == 10 + v
                seen.add(v)
                vec = reader.user_vectors([f"u{i}" for i in range(21)])
                assert (vec == vec[0, 0]).all(), "user vectors from two versions"
                near = reader.nearest_items(np.ones(d), k=50)
                s = near["score"].to_numpy()
                assert len(s) == 10 + s[0] / d and np.allclose(s, s[0]), "mixed item table"
                reads[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t = threading.Thread(target=read_loop)
    t.start()
    for v in range(2, n_versions + 1):
        publish(writer, v)
        if v % 2 == 0:  # on a loaded machine the writer could outrun the reader entirely
            before, deadline = reads[0], time.time() + 10
            while reads[0] == before and not errors and time.time() < deadline:
                time.sleep(0.01)
    done.set()
    t.join(timeout=60)
    assert not errors, errors[0]
    assert reads[0] >= 3 and len(seen) >= 2
    assert [v.version for v in writer.versions()] == [n_versions]
