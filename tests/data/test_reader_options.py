"""Files of any shape without a converter (issue 19.1): separators, headerless files with
named columns, encodings, odd suffixes, gzip, one-hot genre flags, MovieLens 100K as
distributed — and errors that say which option would read the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from recfm.data import movielens
from recfm.data.readers import ReadOptions, read_events, read_items
from recfm.errors import InputError

GENRES = list(movielens.GENRES_100K)


def write_ml100k(root: Path, n_users: int = 12, n_items: int = 30) -> Path:
    """A MovieLens 100K folder in the distributed format: tab-separated u.data without a
    header, '|'-separated latin-1 u.item with 19 genre flags, u.genre, u.user."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    lines = []
    for i in range(1, n_items + 1):
        title = "Café au lait (Métisse) (1993)" if i == 2 else f"Film {i} (199{i % 10})"
        flags = ["1" if (i + j) % 7 == 0 else "0" for j in range(len(GENRES))]
        lines.append("|".join([str(i), title, "01-Jan-1995", "", "http://us.imdb.com/x"]
                              + flags))
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "u.user").write_text("".join(f"{u}|{15 + 3 * u}|{'MF'[u % 2]}|student|0{u}123\n"
                                         for u in range(1, n_users + 1)))
    (root / "u.data").write_text("".join(
        f"{u}\t{(u * 7 + j * 3) % n_items + 1}\t{1 + (u + j) % 5}\t{881250949 + 100 * j}\n"
        for u in range(1, n_users + 1) for j in range(10)))
    return root


def test_movielens_100k_reads_as_distributed(tmp_path):
    root = write_ml100k(tmp_path / "ml-100k")
    assert movielens.detect(tmp_path) and movielens.detect(root / "u.data")
    ds = movielens.load(tmp_path)
    assert ds.events.height == 120 and ds.events["value"].max() <= 5
    assert set(ds.events["action"]) == {"rate"}
    assert ds.events.filter(pl.col("user_id") == "1")["age_group"][0] == "18-24"
    assert set(ds.events["gender"]) == {"M", "F"}
    items = ds.items.sort(pl.col("item_id").cast(pl.Int64))
    assert items["title"][1] == "Café au lait (Métisse)"  # latin-1, year taken off
    assert items["release_year"][1] == 1993
    flags = [GENRES[j] for j in range(len(GENRES)) if (7 + j) % 7 == 0]
    assert items.filter(pl.col("item_id") == "7")["genres"][0].to_list() == flags


def test_prepare_reads_movielens_100k_in_one_command(tmp_path):
    write_ml100k(tmp_path / "ml-100k")
    res = subprocess.run([sys.executable, "-m", "recfm", "prepare", "--events", "ml-100k",
                          "--out", "prep"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert report["dataset"] == "movielens" and report["users"] == 12
    assert report["input"]["format"] == "tsv" and report["input"]["header"] is None


def test_headerless_tab_file_with_named_columns_and_an_odd_suffix(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t5\t3\t881250949\n2\t6\t4\t881250950\n")
    opt = ReadOptions(format="tsv", columns=["user_id", "item_id", "value", "timestamp"])
    ev = read_events(path, options=opt)
    assert ev["item_id"].to_list() == ["5", "6"] and ev["_line"].to_list() == [1, 2]
    assert ev["value"].to_list() == [3.0, 4.0]


@pytest.mark.parametrize("sep", [";", "|", "::"])
def test_any_separator(tmp_path, sep):
    path = tmp_path / "e.csv"
    path.write_text(sep.join(["user_id", "item_id", "timestamp"]) + "\n"
                    + sep.join(["u1", "a", "100"]) + "\n")
    assert read_events(path, options=ReadOptions(sep=sep))["item_id"].to_list() == ["a"]


def test_encoding_and_gzip(tmp_path):
    path = tmp_path / "e.csv.gz"
    path.write_bytes(gzip.compress("user_id,item_id,timestamp\nJosé,a,100\n".encode("latin-1")))
    with pytest.raises(InputError, match="--encoding latin-1"):
        read_events(path)
    ev = read_events(path, options=ReadOptions(encoding="latin-1"))
    assert ev["user_id"].to_list() == ["José"]


def test_one_hot_flags_become_genres(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,Action,Comedy,Drama\na,A,1,0,1\nb,B,0,0,0\n")
    items = read_items(path, flags=["Action..Drama"])
    assert items["genres"].to_list() == [["Action", "Drama"], []]
    assert "Comedy" not in items.columns
    path.write_text("item_id,Action\na,maybe\n")
    with pytest.raises(InputError, match=r"items.csv:2:Action: expected a flag"):
        read_items(path, flags=["Action"])


@pytest.mark.parametrize("name, content, hint", [
    ("u.data", "1\t5\t3\t881250949\n", "--format tsv --no-header --columns "
     "user_id,item_id,value,timestamp"),
    ("e.csv", "1,5,881250949\n2,6,881250950\n", "--no-header --columns user_id,item_id"),
    ("e.csv", "user_id\titem_id\ttimestamp\nu\ta\t1\n", "--format tsv"),
    ("e.csv", "user,item,timestamp\nu,a,1\n", "--map user_id=NAME"),
])
def test_layout_errors_name_the_option_that_fixes_them(tmp_path, name, content, hint):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_events(path)
    assert hint in str(err.value), str(err.value)


def test_item_file_errors_name_the_item_options(tmp_path):
    path = tmp_path / "u.item"
    path.write_text("1|Film|0\n")
    with pytest.raises(InputError, match="--item-format csv --item-sep '|'"):
        read_items(path)


def test_remembered_options_apply_to_files_of_the_same_shape_only(tmp_path):
    opt = ReadOptions(format="tsv", columns=["user_id", "item_id", "value", "timestamp"],
                      map={}, constants={"action": "rate"})
    assert opt.for_file(tmp_path / "new.data") is opt  # no format of its own: same shape
    parquet = opt.for_file(tmp_path / "new.parquet")
    assert parquet.format is None and parquet.columns is None
    assert parquet.constants == {"action": "rate"} and parquet.lenient
    assert ReadOptions.from_dict(opt.to_dict() | {"flags": ["x"]}) == opt


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "recfm", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_a_run_reads_files_shaped_like_its_training_data_with_no_flags(tmp_path):
    """issue 19.6: ``recommend --events`` and incremental training take the file shape
    ``prepare`` accepted (the run remembers how its data was read)."""
    root = write_ml100k(tmp_path / "ml-100k")
    cli("prepare", "--events", str(root / "u.data"), "--format", "tsv", "--no-header",
        "--columns", "user_id,item_id,value,timestamp", "--out", "prep", cwd=tmp_path)
    (tmp_path / "cfg.toml").write_text("[model]\nd_model = 16\nn_layers = 1\nmax_len = 16\n"
                                       "[train]\nepochs = 1\nbatch_size = 8\n")
    cli("train", "prep", "--out", "run", "--config", "cfg.toml", cwd=tmp_path)
    (tmp_path / "new.data").write_text("99\t3\t5\t881260000\n99\t4\t4\t881260100\n")
    out = json.loads(cli("recommend", "run", "--events", "new.data", "--k", "3", "--json",
                         cwd=tmp_path).stdout)
    assert out[0]["user_id"] == "99" and len(out[0]["items"]) == 3
    assert {"3", "4"}.isdisjoint(r["item_id"] for r in out[0]["items"])  # seen: excluded
    cli("train", "--init-from", "run", "--events", "new.data", "--incremental", "--epochs",
        "1", "--out", "run2", cwd=tmp_path)
    # the tuned run knows the recent user and, through the run it was tuned from, the others
    out = json.loads(cli("recommend", "run2", "--user", "99", "--user", "5", "--k", "2",
                         "--json", cwd=tmp_path).stdout)
    assert [u["user_id"] for u in out] == ["99", "5"]
    from recfm.serve import Engine, ServeConfig  # and so does the server

    engine = Engine(tmp_path / "run2", ServeConfig())
    assert engine.histories.tokens("99") is not None and engine.histories.tokens("5") is not None


def test_prepare_and_describe_agree(tmp_path):
    """issue 19.13: the same item count and compression in both reports; the wall time
    includes the reading."""
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp,action\n" + "".join(
        f"u{u},i{(u + j) % 9},{100 * j},play\n" for u in range(6) for j in range(4))
        + "u1,shown-only,999,impression\n")  # an item whose one event is dropped
    cli("prepare", "--events", "e.csv", "--out", "prep", cwd=tmp_path)
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    described = json.loads(cli("data", "describe", "prep", "--json", cwd=tmp_path).stdout)
    assert report["items_with_tokens"] == described["items_with_tokens"] == 9
    assert report["items_with_events"] == 10
    assert report["items_with_events"] == described["report"]["items_with_events"]
    assert report["compression_from_input"] == described["report"]["compression_from_input"]
    assert report["wall_s"] >= report["read_s"] > 0


def test_amazon_reviews_read_later_like_the_training_dump(tmp_path):
    """The adapter's shape is remembered too: a later reviews file gives canonical events
    (no review text or style object as facets)."""
    from recfm.pipeline import Recommender

    reviews = [{"overall": 4.0, "reviewerID": f"A{u}", "asin": f"B{(u + j) % 5}",
                "style": {"Format:": " Kindle"}, "reviewText": "good", "summary": "s",
                "verified": True, "unixReviewTime": 1472688000 + 1000 * j}
               for u in range(6) for j in range(4)]
    with gzip.open(tmp_path / "Games_5.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    with gzip.open(tmp_path / "meta_Games.json.gz", "wt") as f:
        f.writelines(json.dumps({"asin": f"B{i}", "title": f"Game {i}"}) + "\n"
                     for i in range(5))
    cli("prepare", "--events", "Games_5.json.gz", "--items", "meta_Games.json.gz", "--out",
        "prep", cwd=tmp_path)
    later = Recommender.read_run_events(tmp_path / "prep", tmp_path / "Games_5.json.gz")
    assert later.columns == ["user_id", "item_id", "timestamp", "action", "value"]
    assert later.height == len(reviews) and set(later["action"]) == {"review"}


def test_catalog_and_mapped_files_get_their_own_hints(tmp_path):
    """The catalog's missing column names --item-map; a wrong separator is named even when
    --map names the columns (found by the tutorials' tests)."""
    items = tmp_path / "titles.csv"
    items.write_text("title_id,name\na,A\n")
    with pytest.raises(InputError, match="--item-map item_id=NAME"):
        read_items(items)
    semi = tmp_path / "semi.csv"
    semi.write_text("member_id;title_id;ts\nu;a;1\n")
    with pytest.raises(InputError, match="--sep ';'"):
        read_events(semi, {"user_id": "member_id", "item_id": "title_id", "timestamp": "ts"})
