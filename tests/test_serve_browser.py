"""The play page in a real browser: Debian's Chromium driven by Playwright.

Skipped where /usr/bin/chromium is missing (``make test`` on a bare machine); CI installs it
(.ci/run). Screenshots go to $DUNGEON_SCREENSHOT_DIR when set, else the test's tmp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import SlowGenerator, running_server

from dungeon import saves

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium here")


def _turns_are(page, n: int) -> None:
    page.wait_for_function(
        "n => document.querySelector('#story').dataset.turns === String(n)"
        " && !document.querySelector('#send').disabled",
        arg=n,
        timeout=30_000,
    )


def test_play_two_turns_undo_one_and_the_page_agrees_with_the_save(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("DUNGEON_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    folder = tmp_path / "saves"
    with (
        running_server(SlowGenerator(delay=0.01), saves=folder) as server,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            problems: list[str] = []
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            elsewhere: list[str] = []
            page.on(
                "request",
                lambda req: (
                    None
                    if req.url.startswith((server.url, "blob:", "data:"))
                    else elsewhere.append(req.url)
                ),
            )

            page.goto(server.url + "/")
            page.wait_for_selector("#scenario option", state="attached")
            page.screenshot(path=str(shots / "serve-start.png"), full_page=True)
            page.select_option("#scenario", "fantasy")
            page.fill("#seed", "7")
            page.select_option("#start-candidates", "2")
            page.click("#start-scenario")
            page.wait_for_selector("#game:not([hidden])")

            page.fill("#text", "look around")
            page.click("#send")
            _turns_are(page, 1)
            # Two responses were written: flip to the second and keep it.
            assert page.inner_text("#which") == "response 1 of 2"
            page.click("#next")
            page.wait_for_function(
                "document.querySelector('#which').textContent === 'response 2 of 2'"
                " && !document.querySelector('#send').disabled"
            )
            page.click("#notes summary")
            page.select_option("#game-candidates", "1")
            page.wait_for_function("!document.querySelector('#send').disabled")
            page.select_option("#mode", "say")
            page.fill("#text", "is anyone there?")
            page.press("#text", "Enter")
            _turns_are(page, 2)
            page.screenshot(path=str(shots / "serve-desktop.png"), full_page=True)

            page.click("#undo")
            _turns_are(page, 1)
            game_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('game')")
            story = saves.load(folder / f"{game_id}.json").story
            assert len(story.turns) == 1 and len(story.undone) == 1
            assert page.inner_text("#story .premise") == story.premise
            assert page.locator("#story p.response").all_text_contents() == [
                t.response for t in story.turns
            ]
            assert page.locator("#story p.player").all_text_contents() == [
                "> " + t.action for t in story.turns
            ]
            assert not page.is_disabled("#redo")
            assert story.turns[0].chosen == 1  # the flipped-to response is the one kept

            # A reload comes back to the same game, as saved.
            page.reload()
            _turns_are(page, 1)
            assert page.locator("#story p.response").all_text_contents() == [
                t.response for t in story.turns
            ]

            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            page.fill("#text", "run to the door")
            page.click("#send")
            _turns_are(page, 2)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "the page scrolls sideways on a phone"
            page.screenshot(path=str(shots / "serve-phone.png"), full_page=True)

            assert problems == []
            assert elsewhere == [], "the page must work offline (no CDN)"
        finally:
            browser.close()


def test_the_page_asks_for_the_api_key_once_and_plays(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    key = "page-test-key-123"
    with (
        running_server(SlowGenerator(delay=0.0), saves=tmp_path, api_key=key) as server,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            asked: list[str] = []

            def answer(dialog) -> None:
                asked.append(dialog.message)
                dialog.accept(key)

            page.on("dialog", answer)
            page.goto(server.url + "/")
            page.wait_for_selector("#scenario option", state="attached")
            page.click("#start-scenario")
            page.wait_for_selector("#game:not([hidden])")
            page.fill("#text", "knock")
            page.click("#send")
            _turns_are(page, 1)
            assert len(asked) == 1 and "API key" in asked[0]  # asked once, then remembered
        finally:
            browser.close()
