"""Dataset adapters: MovieLens (CSV and ::), S3-Rec / SASRec sequence files, Amazon reviews.

Every fixture is written into tmp_path; the real files under /work/shared/data are checked
too when present (skipped otherwise).
"""

from __future__ import annotations

import calendar
import gzip
import json
import time
from pathlib import Path

import polars as pl
import pytest

from recfm.data import amazon, movielens, s3rec
from recfm.data.readers import RawDataset
from recfm.errors import InputError

SHARED = Path("/work/shared/data")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def raises_at(prefix: str, fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith(prefix), str(info.value)
    return info.value


def check_events(df: pl.DataFrame) -> None:
    assert df.schema["user_id"] == pl.Utf8
    assert df.schema["item_id"] == pl.Utf8
    assert df.schema["timestamp"] == pl.Int64
    assert df.columns[:3] == ["user_id", "item_id", "timestamp"]
    assert df.columns[-1] == "_line"


# --------------------------------------------------------------------------- MovieLens CSV

RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,3.5,964981247
2,1,5.0,964982224
2,3,2.0,964983815
"""

MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Babylon 5,(no genres listed)
4,Death Note: Desu nôto (2006–2007),(no genres listed)
"""

TAGS_CSV = """userId,movieId,tag,timestamp
2,1,Pixar,1445714994
2,1,pixar,1445714996
1,1, Fun,1445714992
1,2,politics,1445715207
"""


@pytest.fixture
def ml_csv(tmp_path: Path) -> Path:
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", RATINGS_CSV)
    write(root / "movies.csv", MOVIES_CSV)
    write(root / "tags.csv", TAGS_CSV)
    return root


def test_movielens_csv(ml_csv: Path) -> None:
    assert movielens.detect(ml_csv)
    ds = movielens.load(ml_csv)
    assert isinstance(ds, RawDataset)
    ev = ds.events
    check_events(ev)
    assert ev.height == 4  # ratings only: the 4 tag applications are not events
    assert ev["action"].to_list() == ["rate"] * 4
    assert ev["value"].to_list() == [4.0, 3.5, 5.0, 2.0]
    assert ev.schema["value"] == pl.Float64
    assert ev["_line"].to_list() == [2, 3, 4, 5]
    assert ev["timestamp"][0] == 964982703
    assert ds.meta["name"] == "movielens"
    assert ds.meta["has_time"] is True
    assert ds.meta["value_kind"] == "rating"
    assert ds.meta["tokenizer"] == {"value_agg": "max"}
    assert ds.events_file == str(ml_csv / "ratings.csv")
    assert ds.items_file == str(ml_csv / "movies.csv")

    items = {r["item_id"]: r for r in ds.items.to_dicts()}
    assert ds.items.schema["genres"] == pl.List(pl.Utf8)
    assert ds.items.schema["release_year"] == pl.Int64
    assert ds.items.schema["tags"] == pl.List(pl.Utf8)
    assert items["1"]["title"] == "Toy Story"
    assert items["1"]["release_year"] == 1995
    assert items["1"]["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert items["2"]["title"] == "American President, The"
    assert items["3"]["title"] == "Babylon 5"
    assert items["3"]["release_year"] is None
    assert items["3"]["genres"] == []
    assert items["4"]["title"] == "Death Note: Desu nôto"
    assert items["4"]["release_year"] == 2006
    assert items["1"]["tags"] == ["fun", "pixar"]  # distinct, lower-cased, sorted
    assert items["2"]["tags"] == ["politics"]
    assert items["3"]["tags"] == []

    assert ds.tags is not None
    assert ds.tags.height == 4
    assert ds.tags.columns == ["user_id", "item_id", "tag", "timestamp"]
    assert ds.tags["tag"][0] == "Pixar"  # the raw table keeps the text as written
    assert ds.meta["tag_count"] == 4


def test_movielens_csv_without_tags_or_movies(tmp_path: Path) -> None:
    root = write(tmp_path / "ml" / "ratings.csv", RATINGS_CSV).parent
    ds = movielens.load(root / "ratings.csv")  # the ratings file itself is fine too
    assert ds.items is None and ds.tags is None
    write(root / "movies.csv", MOVIES_CSV)
    ds = movielens.load(root)
    assert "tags" not in ds.items.columns


def test_movielens_finds_single_subfolder(ml_csv: Path) -> None:
    assert movielens.detect(ml_csv.parent)
    assert movielens.load(ml_csv.parent).events.height == 4


def test_movielens_bad_rating(ml_csv: Path) -> None:
    f = write(ml_csv / "ratings.csv", RATINGS_CSV.replace("1,2,3.5,", "1,2,abc,"))
    err = raises_at(f"{f}:3:rating: ", movielens.load, ml_csv)
    assert "'abc'" in str(err)


def test_movielens_bad_timestamp(ml_csv: Path) -> None:
    f = write(ml_csv / "ratings.csv", RATINGS_CSV.replace("964983815", "yesterday"))
    raises_at(f"{f}:5:timestamp: ", movielens.load, ml_csv)


def test_movielens_ragged_csv_and_missing_column(ml_csv: Path) -> None:
    f = write(ml_csv / "ratings.csv", RATINGS_CSV.replace("2,1,5.0,964982224", "2,1,5.0"))
    raises_at(f"{f}:4:timestamp: ", movielens.load, ml_csv)
    f = write(ml_csv / "ratings.csv", "userId,itemId,rating,timestamp\n1,1,4,5\n")
    raises_at(f"{f}:1:movieId: ", movielens.load, ml_csv)


def test_movielens_duplicate_movie(ml_csv: Path) -> None:
    f = write(ml_csv / "movies.csv", MOVIES_CSV + "2,Again (1999),Drama\n")
    raises_at(f"{f}:6:movieId: ", movielens.load, ml_csv)


def test_movielens_missing_folder(tmp_path: Path) -> None:
    assert not movielens.detect(tmp_path)
    raises_at(f"{tmp_path}: ", movielens.load, tmp_path)


# --------------------------------------------------------------------------- MovieLens ::

RATINGS_DAT = "1::1193::5::978300760\r\n1::661::3::978302109\r\n\r\n2::1193::4::978298413\r\n"
MOVIES_DAT_1M = (
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    "3::Misérables, Les (1995)::Drama\n"
)


def test_movielens_dat_latin1(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    write(root / "ratings.dat", RATINGS_DAT)
    write(root / "movies.dat", MOVIES_DAT_1M, encoding="latin-1")
    assert movielens.detect(root)
    ds = movielens.load(root)
    check_events(ds.events)
    assert ds.events.height == 3
    assert ds.events["_line"].to_list() == [1, 2, 4]  # the blank line 3 is skipped
    assert ds.events["value"].to_list() == [5.0, 3.0, 4.0]
    assert ds.events["action"].unique().to_list() == ["rate"]
    assert ds.meta["layout"] == "dat"
    items = {r["item_id"]: r for r in ds.items.to_dicts()}
    assert items["3"]["title"] == "Misérables, Les"
    assert items["3"]["release_year"] == 1995
    assert items["661"]["genres"] == ["Animation", "Children's", "Musical"]
    assert ds.tags is None and "tags" not in ds.items.columns
    with pytest.raises(InputError):  # latin-1 is not UTF-8 when UTF-8 is demanded
        movielens.load(root, encoding="utf-8")


def test_movielens_dat_utf8_with_tags(tmp_path: Path) -> None:
    root = tmp_path / "ml-10M100K"
    write(root / "ratings.dat", "15::4973::3.5::1215184630\n15::1193::4.5::1215184631\n")
    write(root / "movies.dat", "4973::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
                               "::Comedy|Romance\n1193::Cuckoo (1975)::Drama\n")
    write(root / "tags.dat", "15::4973::Excellent!::1215184630\n"
                             "15::1193::odd::name::1215184631\n"
                             "20::4973::excellent!::1215184632\n")
    ds = movielens.load(root)
    assert ds.events.height == 2
    assert ds.events["value"].to_list() == [3.5, 4.5]
    items = {r["item_id"]: r for r in ds.items.to_dicts()}
    assert items["4973"]["title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le)"
    assert items["4973"]["tags"] == ["excellent!"]
    assert items["1193"]["tags"] == ["odd::name"]  # a tag may contain the separator
    assert ds.tags.height == 3


def test_movielens_dat_fast_and_exact_readers_agree(tmp_path: Path) -> None:
    text = "1::1193::5::978300760\r\n1::661::3::978302109\r\n2::1193::4::978298413\r\n"
    fast = write(tmp_path / "fast" / "ratings.dat", text)
    # A unit separator in a field sends the file to the exact (line-splitting) reader.
    exact = write(tmp_path / "exact" / "ratings.dat", text.replace("::3::", "::3\x1f::", 1))
    a = movielens.read_dat(fast, movielens.RATINGS_DAT)
    b = movielens.read_dat(exact, movielens.RATINGS_DAT)
    assert a["_line"].to_list() == b["_line"].to_list() == [1, 2, 3]
    assert a["Timestamp"].to_list() == b["Timestamp"].to_list() == [
        "978300760", "978302109", "978298413"]
    assert b["Rating"][1] == "3\x1f"
    assert movielens.load(fast.parent).events["timestamp"].to_list() == [
        978300760, 978302109, 978298413]


def test_movielens_dat_too_few_fields(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    f = write(root / "ratings.dat", "1::1193::5::978300760\n1::661::3\n")
    err = raises_at(f"{f}:2:Timestamp: ", movielens.load, root)
    assert "4 '::'-separated fields" in str(err)


def test_movielens_dat_bad_values(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    f = write(root / "ratings.dat", "1::1193::5::978300760\n1::661::five::978302109\n")
    raises_at(f"{f}:2:Rating: ", movielens.load, root)
    f = write(root / "ratings.dat", "1::1193::5::978300760\n1::661::7::978302109\n")
    raises_at(f"{f}:2:Rating: expected a star rating", movielens.load, root)
    f = write(root / "ratings.dat", "1::1193::5::978300760\n::661::4::978302109\n")
    raises_at(f"{f}:2:UserID: ", movielens.load, root)
    write(root / "ratings.dat", "1::1193::5::978300760\n")
    f = write(root / "movies.dat", "1193::Cuckoo (1975)::Drama\n1193::Again (1975)::Drama\n")
    raises_at(f"{f}:2:MovieID: ", movielens.load, root)


# --------------------------------------------------------------------------- S3-Rec / SASRec

S3REC_TXT = "1 10 11 12\n2 11 13\n3 13 10 13\n"
ATTRS = {"10": [1, 2], "11": [2], "12": [], "13": [3, 3, 4]}


def test_s3rec_sequences_with_attributes(tmp_path: Path) -> None:
    f = write(tmp_path / "Toy.txt", S3REC_TXT)
    write(tmp_path / "Toy_item2attributes.json", json.dumps(ATTRS))
    assert s3rec.detect(f) and s3rec.detect(tmp_path)
    ds = s3rec.load(f)
    ev = ds.events
    check_events(ev)
    assert ev.height == 8
    assert ev.select("user_id", "item_id", "timestamp").rows() == [
        ("1", "10", 0), ("1", "11", 1), ("1", "12", 2),
        ("2", "11", 0), ("2", "13", 1),
        ("3", "13", 0), ("3", "10", 1), ("3", "13", 2),  # a repeat is a real interaction
    ]
    assert ev["_line"].to_list() == [1, 1, 1, 2, 2, 3, 3, 3]
    assert ds.meta == {"name": "Toy", "format": "s3rec", "layout": "sequence",
                       "has_time": False, "value_kind": None,
                       "tokenizer": {"merge_window_s": 0}}
    items = {r["item_id"]: r["attributes"] for r in ds.items.to_dicts()}
    assert ds.items.schema["attributes"] == pl.List(pl.Utf8)
    assert items == {"10": ["1", "2"], "11": ["2"], "12": [], "13": ["3", "4"]}
    assert ds.items_file == str(tmp_path / "Toy_item2attributes.json")
    # A folder plus name= gives the same.
    again = s3rec.load(tmp_path, name="Toy")
    assert again.events.equals(ds.events)


def test_s3rec_no_attributes_is_none(tmp_path: Path) -> None:
    f = write(tmp_path / "Toy.txt", S3REC_TXT)
    ds = s3rec.load(f)
    assert ds.items is None and ds.items_file is None


def test_sasrec_pairs(tmp_path: Path) -> None:
    f = write(tmp_path / "Video.txt", "1 5\n1 6\n2 5\n1 7\n2\t05\n\n")
    ds = s3rec.load(f)
    assert ds.meta["layout"] == "pairs"
    assert ds.events.select("user_id", "item_id", "timestamp").rows() == [
        ("1", "5", 0), ("1", "6", 1), ("2", "5", 0), ("1", "7", 2), ("2", "5", 1),
    ]
    assert ds.items is None
    # Timestamps are an order within each user.
    per_user = ds.events.group_by("user_id").agg(pl.col("timestamp"))
    for ts in per_user["timestamp"].to_list():
        assert ts == list(range(len(ts)))


def test_s3rec_non_integer_item(tmp_path: Path) -> None:
    f = write(tmp_path / "Toy.txt", "1 10 11\n2 10 x2 12\n")
    err = raises_at(f"{f}:2:item: ", s3rec.load, f)
    assert "token 3" in str(err) and "'x2'" in str(err)


def test_s3rec_non_integer_user_and_missing_item(tmp_path: Path) -> None:
    f = write(tmp_path / "Toy.txt", "1 10 11\nu2 10\n")
    err = raises_at(f"{f}:2:user: ", s3rec.load, f)
    assert "token 1" in str(err)
    f = write(tmp_path / "Toy.txt", "1 10 11\n2\n")
    err = raises_at(f"{f}:2:item: ", s3rec.load, f)
    assert "token 2" in str(err)


def test_s3rec_explicit_pairs_rejects_long_lines(tmp_path: Path) -> None:
    f = write(tmp_path / "Video.txt", "1 5\n1 6 7\n")
    raises_at(f"{f}:2:item: ", s3rec.load, f, layout="pairs")
    assert s3rec.load(f).meta["layout"] == "sequence"


def test_s3rec_bad_attributes(tmp_path: Path) -> None:
    f = write(tmp_path / "Toy.txt", S3REC_TXT)
    a = write(tmp_path / "Toy_item2attributes.json", '{"10": [1],\n "11": 2}')
    raises_at(f"{a}:2:attributes: ", s3rec.load, f)
    a = write(tmp_path / "Toy_item2attributes.json", '{"10": [1],\n "11": [2]')
    raises_at(f"{a}:2: ", s3rec.load, f)


def test_s3rec_folder_needs_name(tmp_path: Path) -> None:
    write(tmp_path / "A.txt", S3REC_TXT)
    write(tmp_path / "B.txt", S3REC_TXT)
    with pytest.raises(InputError, match="name="):
        s3rec.load(tmp_path)
    assert s3rec.load(tmp_path, name="B").meta["name"] == "B"


# --------------------------------------------------------------------------- Amazon

REVIEWS = [
    {"reviewerID": "U1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1252800000,
     "reviewText": "great", "reviewTime": "09 13, 2009"},
    {"reviewerID": "U1", "asin": "B2", "overall": 3.0, "reviewTime": "01 2, 2010"},
    {"reviewerID": "U2", "asin": "B1", "overall": 4.0, "unixReviewTime": 1300000000},
]

META_2014 = (
    "{'asin': 'B1', 'title': 'Lipstick', 'brand': 'Acme', 'description': 'Red.',"
    " 'categories': [['Beauty', 'Makeup'], ['Beauty', 'Lips']], 'price': 3.5}\n"
    "{'asin': 'B2', 'title': \"Nana's cream\", 'salesRank': {'Beauty': 12}}\n"
)
META_2018 = [
    {"asin": "B1", "title": "Lipstick", "category": ["Beauty", "Makeup"],
     "description": ["Soft", "red"], "brand": "Acme"},
    {"asin": "B2", "title": "Cream", "category": []},
    {"asin": "B2", "title": "Cream", "category": []},  # the 2018 files repeat records
]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_amazon_2014_literal_metadata(tmp_path: Path) -> None:
    r = write(tmp_path / "reviews_Beauty_5.json", jsonl(REVIEWS))
    m = write(tmp_path / "meta_Beauty.json", META_2014)
    assert amazon.detect(r) and amazon.detect(tmp_path)
    assert not amazon.detect(m)
    ds = amazon.load(r)  # finds meta_Beauty.json beside it
    ev = ds.events
    check_events(ev)
    assert ev.height == 3
    assert ev.select("user_id", "item_id", "timestamp", "action", "value").rows() == [
        ("U1", "B1", 1252800000, "review", 5.0),
        ("U1", "B2", calendar.timegm((2010, 1, 2, 0, 0, 0)), "review", 3.0),
        ("U2", "B1", 1300000000, "review", 4.0),
    ]
    assert ds.meta["name"] == "amazon" and ds.meta["category"] == "Beauty"
    assert ds.meta["has_time"] is True and ds.meta["value_kind"] == "rating"
    assert ds.items_file == str(m)
    items = {x["item_id"]: x for x in ds.items.to_dicts()}
    assert items["B1"]["genres"] == ["Beauty", "Makeup", "Lips"]
    assert items["B1"]["brand"] == "Acme"
    assert items["B1"]["description"] == "Red."
    assert items["B2"]["title"] == "Nana's cream"
    assert items["B2"]["genres"] == [] and items["B2"]["brand"] is None
    assert ds.items.schema["genres"] == pl.List(pl.Utf8)


def test_amazon_2018_gz_folder(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "Beauty_5.json.gz", "wt", encoding="utf-8") as f:
        f.write(jsonl(REVIEWS))
    with gzip.open(tmp_path / "meta_Beauty.json.gz", "wt", encoding="utf-8") as f:
        f.write(jsonl(META_2018))
    ds = amazon.load(tmp_path)
    assert ds.events.height == 3
    assert ds.items.height == 2
    assert ds.meta["duplicate_items_dropped"] == 1
    items = {x["item_id"]: x for x in ds.items.to_dicts()}
    assert items["B1"]["description"] == "Soft\nred"
    assert items["B1"]["genres"] == ["Beauty", "Makeup"]
    assert ds.items["_line"].to_list() == [1, 2]
    no_meta = amazon.load(tmp_path / "Beauty_5.json.gz", meta=None)
    assert no_meta.items is None
    with pytest.raises(InputError) as info:
        amazon.load(tmp_path, dedupe_items=False)
    assert str(info.value).startswith(f"{tmp_path / 'meta_Beauty.json.gz'}:3:asin: ")


def test_amazon_review_missing_asin(tmp_path: Path) -> None:
    bad = [REVIEWS[0], {"reviewerID": "U1", "overall": 5.0, "unixReviewTime": 1}]
    r = write(tmp_path / "r.json", jsonl(bad))
    raises_at(f"{r}:2:asin: ", amazon.load, r, meta=None)


def test_amazon_review_bad_values(tmp_path: Path) -> None:
    r = write(tmp_path / "r.json", jsonl([REVIEWS[0], {**REVIEWS[2], "overall": "lots"}]))
    raises_at(f"{r}:2:overall: ", amazon.load, r, meta=None)
    r = write(tmp_path / "r.json", jsonl([REVIEWS[0], {**REVIEWS[2], "overall": -1}]))
    raises_at(f"{r}:2:overall: expected a star rating", amazon.load, r, meta=None)
    r = write(tmp_path / "r.json", jsonl([{"reviewerID": "U", "asin": "B",
                                           "reviewTime": "Sept 13 2009"}]))
    raises_at(f"{r}:1:reviewTime: ", amazon.load, r, meta=None)
    r = write(tmp_path / "r.json", jsonl([{"reviewerID": "U", "asin": "B"}]))
    raises_at(f"{r}:1:unixReviewTime: ", amazon.load, r, meta=None)
    r = write(tmp_path / "r.json", jsonl([REVIEWS[0]]) + "\n" + '{"reviewerID": "U", \n')
    raises_at(f"{r}:3: expected one JSON object", amazon.load, r, meta=None)


def test_amazon_gz_error_names_line(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "r.json.gz", "wt", encoding="utf-8") as f:
        f.write(jsonl(REVIEWS) + '{"reviewerID": "U3", "asin": ""}\n')
    r = tmp_path / "r.json.gz"
    raises_at(f"{r}:4:asin: ", amazon.load, r, meta=None)


def test_amazon_metadata_missing_asin(tmp_path: Path) -> None:
    r = write(tmp_path / "reviews_X.json", jsonl(REVIEWS))
    m = write(tmp_path / "meta_X.json", META_2014 + "{'title': 'orphan'}\n")
    raises_at(f"{m}:3:asin: ", amazon.load, r)


# --------------------------------------------------------------------------- detection


def test_detect_is_exclusive(tmp_path: Path, ml_csv: Path) -> None:
    seq = write(tmp_path / "s" / "Toy.txt", S3REC_TXT)
    rev = write(tmp_path / "a" / "reviews_X.json", jsonl(REVIEWS))
    assert [movielens.detect(ml_csv), s3rec.detect(ml_csv), amazon.detect(ml_csv)] == \
        [True, False, False]
    assert [movielens.detect(seq), s3rec.detect(seq), amazon.detect(seq)] == \
        [False, True, False]
    assert [movielens.detect(rev), s3rec.detect(rev), amazon.detect(rev)] == \
        [False, False, True]
    assert not any(m.detect(tmp_path / "nothing") for m in (movielens, s3rec, amazon))


# --------------------------------------------------------------------------- real files

def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_real_ml_latest_small() -> None:
    root = _real(SHARED / "ml-latest-small")
    t0 = time.perf_counter()
    ds = movielens.load(root)
    elapsed = time.perf_counter() - t0
    assert ds.events.height == 100_836
    assert ds.events["user_id"].n_unique() == 610
    assert ds.events["item_id"].n_unique() == 9_724
    assert ds.items.height == 9_742
    assert ds.tags.height == 3_683
    assert elapsed < 3.0


@pytest.mark.parametrize("rel, users, items, events, layout", [
    ("s3rec/Beauty.txt", 22_363, 12_101, 198_502, "sequence"),
    ("amazon-games-sasrec/Video.txt", 31_013, 23_715, 287_107, "pairs"),
    ("amazon-beauty-bert4rec/beauty.txt", 40_226, 54_542, 353_962, "pairs"),
])
def test_real_sequence_files(rel: str, users: int, items: int, events: int,
                             layout: str) -> None:
    f = _real(SHARED / rel)
    t0 = time.perf_counter()
    ds = s3rec.load(f)
    elapsed = time.perf_counter() - t0
    assert ds.meta["layout"] == layout
    assert ds.events.height == events
    assert ds.events["user_id"].n_unique() == users
    assert ds.events["item_id"].n_unique() == items
    if rel.startswith("s3rec/"):
        assert ds.items is not None and ds.items.height == items
    assert elapsed < 3.0
