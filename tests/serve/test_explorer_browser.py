"""End to end in a real browser: headless Debian Chromium, driven by Playwright, opens the
explorer, picks a user, and sees rows of items made by the model.

Chromium is installed by the test set-up (``apt-get install chromium``) when it is missing;
the test is skipped, saying why, only where that is impossible. The screenshot goes to the
test's output folder, or to ``$RECFM_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recfm.serve.app import create_app
from recfm.serve.config import ServeConfig
from tests.serve.test_app import Server

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def chromium() -> str:
    """Path of Debian's Chromium, installing the package if needed; skip if impossible."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be: needs apt-get as root "
                    "(`apt-get install chromium`)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300,
                       capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                       timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"Chromium could not be installed with apt-get: {e}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get install chromium finished but no chromium binary is on PATH")
    return found


def test_explorer_page_shows_rows_for_a_user(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()
    app = create_app(served.run, ServeConfig(cache_mb=8))
    with Server(app) as base, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_function(
                "document.querySelectorAll('#user-select option').length > 1", timeout=20_000)
            user = page.eval_on_selector("#user-select option:nth-child(2)", "o => o.value")
            page.select_option("#user-select", user)
            page.wait_for_function(
                "document.querySelectorAll('.home-row').length >= 4 && "
                "document.querySelector('#status').textContent.includes('rows in')",
                timeout=30_000)
            rows = page.eval_on_selector_all(
                ".home-row", "rs => rs.map(r => [r.querySelector('h2').textContent, "
                             "r.querySelectorAll('.card').length])")
            history = page.eval_on_selector_all("#history .card", "cs => cs.length")
            titles = [t for t, _ in rows]
            assert len(rows) >= 4 and all(n > 0 for _, n in rows), rows
            assert history > 0
            assert titles[0].startswith("Top picks") and any("Because you watched" in t
                                                                 for t in titles)
            assert any("kids" in t.lower() for t in titles)
            assert any("collection" in t.lower() for t in titles)

            page.fill("#search", "the")  # search box: results, click one to type a history
            page.wait_for_selector("#search-results:not([hidden]) .card", timeout=10_000)
            page.click("#search-results .card")
            page.wait_for_function(
                "document.querySelector('#history-note').textContent === 'typed' && "
                "document.querySelectorAll('.home-row').length >= 2", timeout=30_000)
            page.select_option("#user-select", user)
            page.wait_for_function("document.querySelectorAll('.home-row').length >= 4",
                                   timeout=30_000)
            out = Path(os.environ.get("RECFM_SCREENSHOT_DIR", tmp_path))
            out.mkdir(parents=True, exist_ok=True)
            shot = out / "explorer.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert errors == []
        finally:
            browser.close()
