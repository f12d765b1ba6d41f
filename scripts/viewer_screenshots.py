"""Remake the screenshots of the web trace viewer in docs/images/ (from the fixture traces).

Usage: .venv/bin/python scripts/viewer_screenshots.py [OUT_DIR]

Needs Debian's ``chromium`` and Playwright for Python (``pip install -e '.[dev]'``); no
browser is downloaded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from rlm.trace import load
from rlm.trace.fixtures import fixture_path
from rlm.trace.web import TraceServer

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _open(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]")


def shoot(out: Path) -> list[Path]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    tree = load(fixture_path("tree"))
    south = next(node for node in tree.walk() if node.question == "survey south")
    shots = []
    with sync_playwright() as playwright, TraceServer(fixture_path("tree")) as server:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 960})
        _open(page, server.url)
        shots.append(out / "viewer-tree.png")
        page.screenshot(path=shots[-1])
        page.click(f'.row.node[data-run-id="{south.run_id}"]')
        shots.append(out / "viewer-node.png")
        page.locator("#detail").screenshot(path=shots[-1])
        page.fill("#search", "leaf says")
        page.wait_for_selector("#search-results:not([hidden])")
        shots.append(out / "viewer-search.png")
        page.locator("#search-results").screenshot(path=shots[-1])
        browser.close()
    return shots


if __name__ == "__main__":
    for path in shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)
