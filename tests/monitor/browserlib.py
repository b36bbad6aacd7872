"""Headless Chromium for the monitor's browser tests (Playwright driving the Debian package)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("SWF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

# CI sets SWF_REQUIRE_BROWSER: there a missing Chromium fails the tests instead of skipping them.
_REQUIRED = os.environ.get("SWF_REQUIRE_BROWSER", "") not in ("", "0", "false")

needs_chromium = pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not _REQUIRED,
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)",
)


def launch_browser() -> Iterator[Any]:
    """A headless Chromium until the generator is closed: the body of the ``browser`` fixtures."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are still
    # sync.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with playwright_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


browser = pytest.fixture(scope="module", name="browser")(launch_browser)
"""The fixture, for test directories without one in their conftest (tests/monitor has one)."""
