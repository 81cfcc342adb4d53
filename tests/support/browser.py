"""A real browser for the console's page tests: Debian's Chromium, driven by Playwright.

Chromium comes from Debian's chromium package, installed with apt-get through
deploy/apt_package.py when it is missing and we are root (as promtool and the
PostgreSQL server are); Playwright drives it over the DevTools protocol and never
downloads a browser of its own. The flags keep a headless Chromium off the network
(this suite reaches loopback only) and fit a root user in a container.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.promtool import apt_package

CHROMIUM: Final = Path("/usr/bin/chromium")
FLAGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@functools.cache
def chromium() -> Path:
    """Debian's Chromium, installed when missing."""
    path: Path = apt_package().ensure_executable(CHROMIUM, package="chromium")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for a module's tests. Module-scoped, not session-scoped: the sync
    API keeps an event loop running on this thread until it stops, and the suite's
    asyncio tests that follow need the thread free of one."""
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=list(FLAGS)
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        context.close()
