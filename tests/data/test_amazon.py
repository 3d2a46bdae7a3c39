"""The Amazon adapter on raw 2018 category dumps: unknown items, HTML in item text, the
root category, repeated metadata records, and `recfm prepare` with default flags.

Every fixture is written into tmp_path in the exact format of the 2018 release
(``Category_5.json.gz`` reviews, ``meta_Category.json.gz`` metadata).
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recfm.cli import app
from recfm.data import amazon
from recfm.errors import InputError
from recfm.tokens.prepare import load_raw, prepare

MARKUP = '<span class="a-size-medium a-color-secondary"'


def review(user: str, asin: str, day: int) -> dict:
    ts = 1472688000 + 86400 * day
    return {"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": user,
            "asin": asin, "style": {"Format:": " Video Game"}, "reviewerName": "Sam",
            "reviewText": "Works well.", "summary": "Five Stars", "unixReviewTime": ts}


def meta(asin: str, title: str = MARKUP, category: list[str] | None = None,
         description: list[str] | None = None, brand: str = "Logitech",
         feature: list[str] | None = None) -> dict:
    return {"category": ["Video Games", "PC", "Accessories"] if category is None else category,
            "tech1": "", "description": description if description is not None else
            ["<p>Precise &amp; quiet wireless mouse with a long battery life</p>"],
            "fit": "", "title": title, "also_buy": [], "brand": brand,
            "feature": feature or [], "rank": [">#1,234 in Video Games (See top 100)"],
            "main_cat": "Video Games", "price": "$9.99", "asin": asin}


def write_gz(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def dump(tmp_path: Path) -> tuple[Path, Path]:
    """12 items (10 with a markup title, one listed twice, genres with &amp;), 12 users
    with 3 reviews each, and 2 reviews of an asin the metadata lacks."""
    items = [meta(f"B{i:03d}", category=["Video Games", "PC", "Mice &amp; Keyboards"])
             for i in range(10)]
    items += [meta("B010", title="Halo &amp; Friends <b>Deluxe</b>\n  Edition"),
              meta("B011", title="Zelda", brand="Nintendo")]
    items.insert(3, meta("B003", category=[], description=[], brand=""))  # a poorer repeat
    reviews = [review(f"A{u:02d}", f"B{(u + k) % 12:03d}", k) for u in range(12)
               for k in range(3)]
    reviews[4]["asin"] = reviews[9]["asin"] = "B999"
    return (write_gz(tmp_path / "Video_Games_5.json.gz", reviews),
            write_gz(tmp_path / "meta_Video_Games.json.gz", items))


# --------------------------------------------------------------------------- finding 3


def test_reviews_of_unknown_items_are_dropped_and_counted(tmp_path: Path) -> None:
    reviews, meta_file = dump(tmp_path)
    raw = amazon.load(reviews, meta_file)
    assert raw.events.height == 36  # the adapter keeps every review; the tokenizer drops
    assert raw.meta["tokenizer"]["unknown_items"] == "drop"
    assert raw.meta["report"]["reviews_of_unknown_items"] == 2
    assert raw.meta["report"]["unknown_items"] == 1
    report = prepare(raw, tmp_path / "prepared")
    assert report["dropped"]["item_not_in_catalog"] == 2
    assert report["events_in"] == 36 and report["events_kept"] == 34
    assert report["adapter"]["reviews_of_unknown_items"] == 2


def test_strict_refuses_unknown_items_naming_the_line_and_the_option(tmp_path: Path) -> None:
    reviews, meta_file = dump(tmp_path)
    with pytest.raises(InputError) as info:
        amazon.load(reviews, meta_file, strict=True)
    message = str(info.value)
    assert message.startswith(f"{reviews}:5:asin: expected an asin present in the metadata")
    assert "--strict" in message and "'B999'" in message
    with pytest.raises(InputError, match="--strict"):
        load_raw(reviews, meta_file, strict=True)
    assert load_raw(reviews, meta_file).meta["report"]["reviews_of_unknown_items"] == 2


# --------------------------------------------------------------------------- finding 4


def test_item_text_is_cleaned_of_html(tmp_path: Path) -> None:
    items = {x["item_id"]: x for x in amazon.load(*dump(tmp_path)).items.to_dicts()}
    assert items["B010"]["title"] == "Halo & Friends Deluxe Edition"
    assert items["B000"]["description"] == (
        "Precise & quiet wireless mouse with a long battery life")
    assert items["B000"]["genres"] == ["PC", "Mice & Keyboards"]
    assert all("<" not in x["title"] and "&amp;" not in x["title"] for x in items.values())


def test_a_markup_title_falls_back_to_brand_and_description(tmp_path: Path) -> None:
    records = [
        meta("B1"),
        meta("B2", description=[], feature=["Ergonomic &amp; light", "USB"]),
        meta("B3", description=[]),
        meta("B4", brand=""),
        meta("B5", brand="", description=["<br>"]),
        meta("B6", title="  "),
    ]
    m = write_gz(tmp_path / "meta_Video_Games.json.gz", records)
    r = write_gz(tmp_path / "Video_Games_5.json.gz", [review("A1", "B1", 0)])
    raw = amazon.load(r, m)
    titles = dict(raw.items.select("item_id", "title").rows())
    words = "Precise & quiet wireless mouse with a long"  # the first eight words
    assert titles == {"B1": f"Logitech - {words}", "B2": "Logitech - Ergonomic & light USB",
                      "B3": "Logitech", "B4": words, "B5": None, "B6": f"Logitech - {words}"}
    assert raw.meta["report"]["titles_from_fallback"] == 5
    assert raw.meta["report"]["titles_missing"] == 1


def test_the_root_category_of_the_dump_is_not_a_genre(tmp_path: Path) -> None:
    raw = amazon.load(*dump(tmp_path))
    assert raw.meta["root_category"] == "Video Games"
    genres = raw.items["genres"].explode().drop_nulls().to_list()
    assert "Video Games" not in genres and "PC" in genres
    # A category only some items share is a genre; so is any category of a tiny catalog.
    mixed = [meta(f"B{i}", category=["Video Games" if i < 6 else "Toys", "PC"])
             for i in range(10)]
    m = write_gz(tmp_path / "mixed.json.gz", mixed)
    items, report = amazon.read_metadata(m)
    assert report["root_category"] is None and items["genres"][0].to_list() == [
        "Video Games", "PC"]
    assert amazon.root_category([{"Video Games"}] * 9) is None


def test_repeated_metadata_records_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    reviews, meta_file = dump(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recfm.data.amazon"):
        raw = amazon.load(reviews, meta_file)
    assert raw.items.height == 12 and raw.meta["duplicate_items_dropped"] == 1
    assert raw.meta["report"]["duplicate_items_dropped"] == 1
    warning = next(r.getMessage() for r in caplog.records if "repeated" in r.getMessage())
    assert str(meta_file) in warning and ": 1 repeated metadata record" in warning
    # The more complete record wins over a poorer one read first.
    poor_first = [meta("B1", title="", category=[], brand=""), meta("B1", title="Mouse")]
    items, report = amazon.read_metadata(write_gz(tmp_path / "m.json.gz", poor_first))
    assert items.select("item_id", "title", "brand", "_line").rows() == [
        ("B1", "Mouse", "Logitech", 2)]
    assert report["duplicate_items_dropped"] == 1
    with pytest.raises(InputError, match="dedupe_items=True"):
        amazon.load(reviews, meta_file, dedupe_items=False)


def test_most_titles_alike_is_a_warning(tmp_path: Path, caplog) -> None:
    records = [meta(f"B{i}", title="Mouse") for i in range(3)] + [meta("B9", title="Pad")]
    with caplog.at_level(logging.WARNING, logger="recfm.data.amazon"):
        _, report = amazon.read_metadata(write_gz(tmp_path / "m.json.gz", records))
    assert report["repeated_title"] == {"title": "Mouse", "items": 3}
    assert any("3 of 4 items have the title 'Mouse'" in r.getMessage() for r in caplog.records)


def test_layout_errors_name_the_option_that_fixes_them(tmp_path: Path) -> None:
    write_gz(tmp_path / "Video_Games_5.json.gz", [review("A1", "B1", 0)])
    write_gz(tmp_path / "Toys_5.json.gz", [review("A1", "B1", 0)])
    with pytest.raises(InputError, match="--items"):
        amazon.load(tmp_path)
    (tmp_path / "Toys_5.json.gz").unlink()
    write_gz(tmp_path / "meta_Video_Games.json.gz", [meta("B1")])
    write_gz(tmp_path / "meta_Toys.json.gz", [meta("B1")])
    with pytest.raises(InputError, match="meta= / --items"):
        amazon.load(tmp_path)


# --------------------------------------------------------------------------- the CLI


def test_cli_prepare_on_a_raw_2018_dump_with_default_flags(tmp_path: Path) -> None:
    reviews, meta_file = dump(tmp_path)
    out = tmp_path / "prepared"
    r = CliRunner().invoke(app, ["prepare", "--events", str(reviews), "--items",
                                 str(meta_file), "--out", str(out)])
    assert r.exit_code == 0, r.output
    items = pl.read_parquet(out / "items.parquet")
    titles = items["title"].to_list()
    assert titles and all(t and "<" not in t and "&amp;" not in t for t in titles)
    assert "Zelda" in titles and "Halo & Friends Deluxe Edition" in titles
    assert "Video Games" not in items["genres"].explode().to_list()
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"]["item_not_in_catalog"] == 2
    assert report["adapter"]["duplicate_items_dropped"] == 1
