"""Headless Chromium (Debian's) driven by Playwright, for the tests that look at the UI."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("IMAGE_EMBEDDINGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_CHROMIUM = f"no Chromium at {CHROMIUM} (scripts/install_browser.sh installs Debian's)"


def has_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


@contextmanager
def chromium_page(profile: Path):
    """A page of headless Chromium on a fresh profile."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1500},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def hover_first_point(page, report) -> None:
    """Move the mouse onto the report's first map point, as a user's mouse would; `report` is the
    page or the frame that shows the report."""
    from playwright.sync_api import expect

    point = report.locator("#map .scatterlayer .point").first
    expect(point).to_be_attached()
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=3)


def click_first_point(page, report):
    """Hover the report's first map point and click it: the link under the map that the click
    shows, once visible."""
    from playwright.sync_api import expect

    hover_first_point(page, report)
    expect(report.locator("#map-tip")).to_be_visible()
    page.mouse.down()
    page.mouse.up()
    picked = report.locator("#map-picked a")
    expect(picked).to_be_visible()
    return picked
