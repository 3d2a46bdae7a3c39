"""/v1/recommend with retrieval = generative: beam search over the eligible items' codes."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from recfm.serve.app import create_app
from recfm.serve.config import ServeConfig


@pytest.fixture(scope="module")
def gen_client(served, tmp_path_factory):
    from recfm.adapt.semantic_ids import SemanticIdConfig, build_semantic_ids, generative_model
    from recfm.train.config import TrainConfig
    from recfm.train.loop import train

    root = tmp_path_factory.mktemp("generative")
    shutil.copytree(served.run, root / "base")  # the shared run stays as it is
    build_semantic_ids(root / "base", SemanticIdConfig(levels=2, codes=8))
    train(served.data, root / "gen", None, TrainConfig(epochs=1, batch_size=64,
          warmup_steps=2, tensorboard=False), init_from=generative_model(root / "base"))
    with TestClient(create_app(root / "gen", ServeConfig(cache_mb=8), served.data)) as c:
        yield c


def test_generative_retrieval_answers_under_the_rules_without_seen_items(gen_client):
    user = gen_client.get("/v1/users", params={"limit": 5, "min_tokens": 10}).json()["users"][0]
    body = gen_client.post("/v1/recommend", json={"user_id": user, "k": 6,
                                                  "retrieval": "generative"}).json()
    assert body["retrieval"] == "generative" and len(body["items"]) == 6
    scores = [i["score"] for i in body["items"]]
    assert all(s <= 0 for s in scores) and scores == sorted(scores, reverse=True)
    seen = {i["item_id"] for i in gen_client.get(f"/v1/users/{user}", params={"last": 1000})
            .json()["history"]}
    assert not seen & {i["item_id"] for i in body["items"]}
    kids = gen_client.post("/v1/recommend", json={
        "user_id": user, "k": 5, "surface": "kids", "filters": {"genres": ["animation"]},
        "retrieval": "generative"}).json()
    assert kids["items"] and all("animation" in i["genres"] for i in kids["items"])
    scored = gen_client.post("/v1/recommend", json={"user_id": user, "k": 6}).json()
    assert scored["retrieval"] == "exact"  # the default still scores every item


def test_a_model_without_a_generative_head_refuses_it_by_name(client):
    r = client.post("/v1/recommend", json={"user_id": "u1", "retrieval": "generative"})
    assert r.status_code == 422 and "retrieval" in r.text and "semantic" in r.text
    bad = client.post("/v1/recommend", json={"user_id": "u1", "retrieval": "magic"})
    assert bad.status_code == 422 and "retrieval" in bad.text
