"""The HTTP API: answers, 4xx for every kind of bad input, metrics, micro-batching, and a
hot reload under load with no failed request."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from recfm.runinfo import write_manifest
from recfm.serve.app import create_app
from recfm.serve.config import ServeConfig


@pytest.fixture(scope="module")
def user(client) -> str:
    return client.get("/v1/users", params={"limit": 5, "min_tokens": 10}).json()["users"][0]


def test_recommend_embed_similar_collections(client, user):
    r = client.post("/v1/recommend", json={"user_id": user, "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 7 and body["how"] == "model" and body["model_version"]
    assert [i["rank"] for i in body["items"]] == list(range(1, 8))
    seen = {i["item_id"] for i in client.get(f"/v1/users/{user}", params={"last": 1000})
            .json()["history"]}
    assert not seen & {i["item_id"] for i in body["items"]}

    again = client.post("/v1/recommend", json={"user_id": user, "k": 7}).json()
    assert again["cache"] == "hit" and again["items"] == body["items"]

    kids = client.post("/v1/recommend", json={"user_id": user, "k": 5, "surface": "kids",
                                              "filters": {"genres": ["animation"]}}).json()
    assert len(kids["items"]) == 5 and all("animation" in i["genres"] for i in kids["items"])

    new_user = client.post("/v1/recommend", json={"events": [
        {"item_id": body["items"][0]["item_id"], "timestamp": 1_735_000_000, "action": "play",
         "value": 3000, "device": "tv"}], "k": 3}).json()
    assert new_user["history_tokens"] == 1 and len(new_user["items"]) == 3

    cold = client.post("/v1/recommend", json={"user_id": "someone-new", "k": 4}).json()
    # a user_id the served data lacks: a new member, and the answer says so
    assert cold["how"].startswith("model: user 'someone-new' is not among the known users: no "
                                  "history") and len(cold["items"]) == 4
    vec = client.post("/v1/users/embed", json={"user_id": "someone-new"}).json()
    assert "is not among the known users" in vec["how"]
    assert cold["history_tokens"] == 0

    def first(**context):  # a brand-new member: no user_id, no events
        r = client.post("/v1/recommend", json={"k": 10, "exclude_seen": False,
                                               "context": context})
        assert r.status_code == 200 and len(r.json()["items"]) == 10, r.text
        return [(i["item_id"], round(i["score"], 5)) for i in r.json()["items"]]

    assert first() == first()
    assert first(country="BR", device="tv") != first(country="DE", device="mobile")
    assert client.post("/v1/recommend", json={"context": {"device": "fridge"}}).status_code \
        == 422

    emb = client.post("/v1/users/embed", json={"user_id": user}).json()
    assert len(emb["vector"]) == emb["dim"] == 16

    item = body["items"][0]["item_id"]
    sim = client.get(f"/v1/items/{item}/similar", params={"k": 5}).json()
    assert len(sim["items"]) == 5 and item not in {i["item_id"] for i in sim["items"]}

    col = client.post("/v1/collections", json={"user_id": user, "n": 6, "max_per_genre": 2,
                                               "compare_plain": True}).json()
    assert len(col["items"]) == 6 and col["max_genre_count"] <= 2
    assert col["plain_top_n"] and len(col["plain_top_n"]["items"]) == 6

    found = client.get("/v1/items", params={"q": sim["item"]["title"][:5]}).json()["items"]
    assert found and client.get("/healthz").json()["status"] == "ok"


BAD = [
    ("POST", "/v1/recommend", {"content": b'{"user_id": "u1", ', "headers":
                               {"content-type": "application/json"}}, 422, "json"),
    ("POST", "/v1/recommend", {"json": {"user_id": "u1", "colour": "red"}}, 422, "colour"),
    ("POST", "/v1/recommend", {"json": {"user_id": "u1", "k": 1001}}, 422, "1000"),
    ("POST", "/v1/recommend", {"json": {"user_id": "u1", "k": "ten"}}, 422, "integer"),
    ("POST", "/v1/recommend", {"json": {"user_id": 42}}, 422, "string"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": "i0001"}] * 10_000}}, 422,
     "5000"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": "no-such-item"}]}}, 422,
     "no-such-item"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": "i0001",
                                                    "timestamp": "yesterday"}]}}, 422,
     "timestamp"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": "i0001", "mood": "x"}]}}, 422,
     "mood"),
    ("POST", "/v1/recommend", {"json": {"events": [{"timestamp": 5}]}}, 422, "item_id"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": ["i0001"]}]}}, 422, "item_id"),
    ("POST", "/v1/recommend", {"json": {"events": [{"item_id": "i0001", "value": "long"}]}},
     422, "value"),
    ("POST", "/v1/recommend", {"json": {"events": ["i0001"]}}, 422, "events"),
    ("POST", "/v1/recommend", {"json": {"user_id": "u1", "surface": "moon"}}, 422, "moon"),
    ("POST", "/v1/recommend", {"json": {"user_id": "u1", "filters": {"genres": ["zzz"]}}}, 422,
     "zzz"),
    ("POST", "/v1/users/embed", {"json": {}}, 422, "user_id"),
    ("POST", "/v1/recommend", {"json": [1, 2]}, 422, "dictionary"),
    ("POST", "/v1/recommend", {"content": b'{"user_id": "' + b"x" * 2_000_000 + b'"}',
                               "headers": {"content-type": "application/json"}}, 413, "bytes"),
    ("GET", "/v1/items/no-such-item/similar", {}, 404, "no-such-item"),
    ("GET", "/v1/items/i0001/similar", {"params": {"k": 0}}, 422, "greater"),
    ("GET", "/v1/users/nobody", {}, 404, "nobody"),
    ("POST", "/v1/collections", {"json": {"user_id": "u1", "n": 51}}, 422, "50"),
    ("POST", "/admin/reload", {"json": {"run": "/tmp"}}, 403, "RECFM_ADMIN_TOKEN"),
]


@pytest.mark.parametrize("method,path,kw,status,says", BAD, ids=[b[4] for b in BAD])
def test_bad_input_is_a_4xx_that_says_why(client, method, path, kw, status, says):
    r = client.request(method, path, **kw)
    assert r.status_code == status, r.text[:300]
    assert says.lower() in r.text.lower()
    assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_latency_and_batches(app, user):
    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*[c.post("/v1/recommend", json={
                "events": [{"item_id": f"i{(7 * i + j) % 150 + 1:04d}"} for j in range(12)]})
                for i in range(24)])
            return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 24
    with TestClient(app) as c:
        text = c.get("/metrics").text
    assert 'recfm_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert 'recfm_request_duration_seconds_bucket{method="POST",route="/v1/recommend",le="+Inf"}' \
        in text
    assert "recfm_model_info{" in text and "recfm_user_state_cache_entries" in text
    sizes = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith("recfm_batch_size_")}
    assert sizes["recfm_batch_size_count"] < sizes["recfm_batch_size_sum"]  # some batches > 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn on 127.0.0.1 in a thread, for tests that need a real socket."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_reload_under_load_fails_no_request(served, monkeypatch):
    monkeypatch.setenv("RECFM_ADMIN_TOKEN", "s3cret")
    app = create_app(served.run, ServeConfig(cache_mb=8))
    results: list[int | str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load(base: str, i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            n = 0
            while not stop.is_set() and n < 400:
                try:
                    r = c.post("/v1/recommend", json={"events": [
                        {"item_id": f"i{(i + n + j) % 150 + 1:04d}"} for j in range(10)], "k": 5})
                    results.append(r.status_code)
                    versions.add(r.json()["model_version"])
                except httpx.HTTPError as e:
                    results.append(type(e).__name__)
                n += 1

    with Server(app) as base:
        workers = [threading.Thread(target=load, args=(base, i)) for i in range(4)]
        for w in workers:
            w.start()
        with httpx.Client(base_url=base, timeout=60) as admin:
            assert admin.post("/admin/reload", json={"run": str(served.run2)}).status_code == 401
            assert admin.post("/admin/reload", json={"run": str(served.run2)},
                              headers={"Authorization": "Bearer nope"}).status_code == 401
            auth = {"Authorization": "Bearer s3cret"}
            bad = admin.post("/admin/reload", json={"run": str(served.run.parent / "nothing")},
                             headers=auth)
            assert bad.status_code == 422 and "still serving" in bad.text
            out = admin.post("/admin/reload", json={"run": "/etc"}, headers=auth)
            assert out.status_code == 403 and "outside the runs root" in out.text
            nul = admin.post("/admin/reload", json={"run": "ru\u0000n"}, headers=auth)
            assert nul.status_code == 422 and "/admin/reload" in nul.text
            for run in (served.run2, served.run):
                time.sleep(0.3)
                r = admin.post("/admin/reload", json={"run": str(run)}, headers=auth)
                assert r.status_code == 200, r.text
            time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join()
    assert len(results) >= 100
    assert [r for r in results if r != 200] == []
    assert len(versions) == 2  # both models answered during the test


def run_with_data_path(src, dst, path: str):
    """A copy of the run ``src`` at ``dst`` whose config.json records ``path`` as its data."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["data"]["path"] = path
    (dst / "config.json").write_text(json.dumps(config))
    write_manifest(dst, ["config.json"])  # as if saved so
    return dst


def test_reload_keeps_the_served_data_and_refuses_to_lose_known_users(served, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("RECFM_ADMIN_TOKEN", "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    lost = run_with_data_path(served.run, tmp_path / "run", "elsewhere/prepared")
    with TestClient(create_app(lost, ServeConfig(cache_mb=8), served.data)) as c:
        known = c.get("/healthz").json()["known_users"]
        assert known == 300
        assert c.post("/admin/reload", json={"run": str(lost)}, headers=auth).status_code == 200
        assert c.get("/healthz").json()["known_users"] == known  # the data it started with
    with TestClient(create_app(served.run, ServeConfig(cache_mb=8, runs_root="/"))) as c:
        before = c.get("/healthz").json()
        r = c.post("/admin/reload", json={"run": str(lost)}, headers=auth)
        assert r.status_code == 422 and "elsewhere/prepared" in r.text and "300" in r.text
        after = c.get("/healthz").json()
        assert (after["model_version"], after["known_users"]) == (before["model_version"], 300)


def test_a_server_without_its_known_users_says_so(served, tmp_path):
    lost = run_with_data_path(served.run, tmp_path / "run", "elsewhere/prepared")
    with TestClient(create_app(lost, ServeConfig(cache_mb=8))) as c:
        health = c.get("/healthz").json()
    assert health["status"] == "degraded" and health["known_users"] == 0
    assert "elsewhere/prepared" in health["degraded"]


NOT_JSON = [  # (path, raw body, the field the answer names)
    ("/v1/recommend", b'{"user_id": "u1", "k": NaN}', "k"),
    ("/v1/recommend", b'{"user_id": "u1", "k": 1e400}', "k"),
    ("/v1/recommend", b'{"events": [{"item_id": "i0001", "value": -Infinity}]}', "value"),
    ("/v1/recommend", b'{"user_id": "\\ud800"}', "user_id"),
    ("/v1/recommend", b'{"\\ud800": 1}', "body"),
    ("/v1/users/embed", b'{"events": [{"item_id": "\\udfff"}]}', "item_id"),
    ("/v1/collections", b'{"user_id": "u1", "n": Infinity}', "n"),
    ("/admin/reload", b'{"run": NaN}', "run"),
    ("/admin/reload", b'{"run": "r", "data": "\\ud800"}', "data"),
]


@pytest.mark.parametrize("path,body,field", NOT_JSON, ids=[f"{p}:{f}" for p, _, f in NOT_JSON])
def test_nan_infinity_and_lone_surrogates_are_a_422_naming_the_field(client, path, body, field):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert any(field in err["loc"] for err in r.json()["detail"])
