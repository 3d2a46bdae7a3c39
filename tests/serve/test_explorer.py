"""The explorer page opens on something: ``/?user=ID`` or ``/?history=a,b`` from the address,
else a default user the server picks; example ids come from the served catalog."""

from __future__ import annotations

import re

import httpx
import polars as pl
import pytest

from recfm.serve.app import EXPLORER_EXAMPLES, EXPLORER_MIN_EVENTS, create_app
from recfm.serve.config import ServeConfig
from recfm.tokens.tokenizer import N_RESERVED_ITEMS
from tests.serve.test_app import Server
from tests.serve.test_explorer_browser import CHROMIUM_FLAGS, chromium


def test_page_has_no_hard_coded_ids_and_reads_user_and_history_from_the_address(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert not re.search(r"\bi\d{3,}\b", html), "a synthetic item id is written into the page"
    assert "new URLSearchParams(location.search)" in html
    assert 'params.get("user")' in html and 'params.get("history")' in html
    assert "replaceState" in html and '"/v1/explorer"' in html


def test_default_user_is_the_first_with_a_long_history(client):
    view = client.get("/v1/explorer").json()
    first_long = client.get("/v1/users", params={"limit": 1, "min_tokens": EXPLORER_MIN_EVENTS})
    assert view["default_user"] == first_long.json()["users"][0]
    stored = client.get(f"/v1/users/{view['default_user']}").json()
    assert stored["history_tokens"] >= EXPLORER_MIN_EVENTS
    assert view["history"] == [] and view["unknown_items"] == []


def test_example_ids_are_the_most_frequent_items_of_the_served_catalog(client, app, served):
    engine = app.state.service.engine
    examples = client.get("/v1/explorer").json()["example_items"]
    assert len(examples) == EXPLORER_EXAMPLES
    assert all(e["item_id"] in engine.index_of and e["title"] for e in examples)

    counts = (pl.read_parquet(served.data / "tokens.parquet").select(pl.col("item").explode())
              .filter(pl.col("item") >= N_RESERVED_ITEMS)["item"].value_counts(sort=True))
    least = int(counts["count"][EXPLORER_EXAMPLES - 1])  # the examples' smallest count
    top = {engine.item_ids[i] for i, n in counts.iter_rows() if n > least}
    tied = {engine.item_ids[i] for i, n in counts.iter_rows() if n == least}
    got = {e["item_id"] for e in examples}
    assert top <= got <= top | tied


def test_example_ids_without_known_users_are_the_catalogs_first_items(client, app,
                                                                      monkeypatch):
    engine = app.state.service.engine
    monkeypatch.setattr(engine, "histories", None)
    view = client.get("/v1/explorer").json()
    assert view["default_user"] is None
    assert [e["item_id"] for e in view["example_items"]] == \
        engine.item_ids[N_RESERVED_ITEMS:N_RESERVED_ITEMS + EXPLORER_EXAMPLES]


def test_a_history_is_split_into_catalog_items_and_unknown_ids(client, app):
    engine = app.state.service.engine
    a, b = engine.item_ids[N_RESERVED_ITEMS + 5], engine.item_ids[N_RESERVED_ITEMS + 1]
    r = client.get("/v1/explorer", params={"history": [a, "no-such-item", b, "nor-this"]})
    assert r.status_code == 200, r.text
    view = r.json()
    assert [i["item_id"] for i in view["history"]] == [a, b]
    assert all(i["title"] for i in view["history"])
    assert view["unknown_items"] == ["no-such-item", "nor-this"]


def test_the_page_opens_the_view_the_address_names(served):
    """In headless Chromium: the default user, ?user=, ?history= (an unknown id named on the
    page), an unknown user, and the address following the user's choice."""
    playwright = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()
    app = create_app(served.run, ServeConfig(cache_mb=8))
    engine = app.state.service.engine
    a, b = engine.item_ids[N_RESERVED_ITEMS + 5], engine.item_ids[N_RESERVED_ITEMS + 1]
    rows_shown = ("document.querySelectorAll('.home-row').length >= 2 && "
                  "document.querySelector('#status').textContent.includes('rows in')")
    with Server(app) as base, playwright.sync_playwright() as p:
        view = httpx.get(base + "/v1/explorer", timeout=30).json()
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base + "/")  # no parameter: the default user, named in the address
            page.wait_for_function(rows_shown, timeout=30_000)
            assert page.input_value("#user-select") == view["default_user"]
            assert page.evaluate("location.search") == "?user=" + view["default_user"]
            placeholder = page.get_attribute("#history-input", "placeholder")
            assert placeholder == "e.g. " + " ".join(i["item_id"] for i in view["example_items"])

            user = view["default_user"]
            listed = page.eval_on_selector_all("#user-select option", "os => os.map(o => o.value)")
            other = next(u for u in listed if u and u != user)
            page.select_option("#user-select", other)  # a choice updates the address
            page.wait_for_function(f"location.search === '?user={other}'", timeout=10_000)

            page.goto(f"{base}/?user={other}")
            page.wait_for_function(rows_shown, timeout=30_000)
            assert page.input_value("#user-select") == other
            assert page.is_hidden("#message")

            page.goto(f"{base}/?history={a},no-such-item,{b}")
            page.wait_for_function(rows_shown, timeout=30_000)
            assert "no-such-item" in page.text_content("#message")
            assert page.is_visible("#message")
            shown = page.eval_on_selector_all("#history .card",
                                              "cs => cs.map(c => c.dataset.itemId)")
            assert shown == [a, b]

            page.goto(f"{base}/?user=nobody-at-all")
            page.wait_for_function("!document.querySelector('#message').hidden", timeout=30_000)
            assert "nobody-at-all" in page.text_content("#message")
            assert page.is_hidden("#history")
            assert errors == []
        finally:
            browser.close()
